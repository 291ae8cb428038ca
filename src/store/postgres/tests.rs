//! What the model-based test cannot show: behaviour between two hubs on
//! one schema (the push delivery lease).

use std::time::Duration;

use super::{PostgresOptions, PostgresStore};
use crate::store::Consumers;
use crate::store::model_test::{pg_admin, postgres_available, test_pg_url};

fn spec(name: &str) -> crate::store::ConsumerSpec {
    crate::store::ConsumerSpec {
        name: name.into(),
        municipality: crate::domain::Orgnr::from_u32(958_935_420),
        escalation_only: false,
        escalate_to: None,
        red_deadline_us: 30_000_000,
        yellow_deadline_us: 300_000_000,
    }
}

async fn hub(schema: &str, id: &str) -> PostgresStore {
    let opts = PostgresOptions {
        url: test_pg_url(),
        pool_size: 2,
        schema: Some(schema.into()),
        hub_id: id.into(),
        ..PostgresOptions::default()
    };
    PostgresStore::open(opts, vec![spec("oslo-epj")])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn one_hub_at_a_time_holds_a_push_destination() {
    if !postgres_available("one_hub_at_a_time_holds_a_push_destination") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let schema = format!("kp_test_{}", uuid::Uuid::new_v4().simple());
        pg_admin(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (hub(&schema, "hub-a").await, hub(&schema, "hub-b").await);
        let ttl = 300_000;
        let lease = |s: &PostgresStore| {
            let s = s.clone();
            async move { s.delivery_lease("oslo-epj", ttl).await }
        };
        assert_eq!(lease(&a).await, Ok(true), "free: a takes it");
        assert_eq!(lease(&b).await, Ok(false), "a holds it");
        assert_eq!(lease(&a).await, Ok(true), "a renews");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(lease(&b).await, Ok(true), "a's lease ran out: b takes over");
        assert_eq!(lease(&a).await, Ok(false), "b holds it now");
        assert_eq!(b.delivery_lease_release("oslo-epj").await, Ok(()));
        assert_eq!(lease(&a).await, Ok(true), "released: a takes it at once");
        assert!(a.delivery_lease("no-such", ttl).await.is_err());
        a.close().await;
        b.close().await;
        pg_admin(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn printed_urls_hide_the_password() {
    use super::redact_url;
    assert_eq!(
        redact_url("postgres://kp:s3cret@db:5432/kp"),
        "postgres://kp:***@db:5432/kp"
    );
    assert_eq!(
        redact_url("postgres://kp@db:5432/kp"),
        "postgres://kp@db:5432/kp"
    );
    assert_eq!(
        redact_url("host=db user=kp password=s3cret"),
        "host=db user=kp password=***"
    );
}
