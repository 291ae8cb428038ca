//! TLS between hub and PostgreSQL (`[store] ca_file`), against a private
//! server with TLS on ([`PgServer::enable_tls`], certificates from
//! `knutepunkt dev-certs`): every connection the hub opens uses TLS, and a
//! server whose certificate the configured CA did not sign is refused at
//! start with an error that names the cause. Without PostgreSQL's binaries
//! the test says it skipped; under `CI=true` it fails.

use std::path::Path;
use std::process::Command;

use conformance_tests::harness::{Hub, HubOptions, ReceiptStatus, binary, events, ok};
use conformance_tests::pg;
use conformance_tests::pgserver::PgServer;

const TEST: &str = "postgres_tls";

fn dev_certs(out: &Path) {
    let r = ok(Command::new(ok(binary("knutepunkt")))
        .args(["dev-certs", "--vendor", "demo-vendor", "--out"])
        .arg(out)
        .output());
    assert!(
        r.status.success(),
        "dev-certs failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// (TLS, plain) connections named `knutepunkt` on the server.
async fn hub_connections(url: &str) -> (i64, i64) {
    let (client, conn) = ok(tokio_postgres::connect(url, tokio_postgres::NoTls).await);
    let task = tokio::spawn(conn);
    let row = ok(client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'knutepunkt'",
            &[],
        )
        .await);
    drop(client);
    let _ = task.await;
    (row.get(0), row.get(1))
}

fn opts(schema: &std::sync::Arc<pg::Schema>, ca: &Path) -> HubOptions {
    HubOptions {
        pg: Some(schema.clone()),
        hub_id: Some("tls-hub".into()),
        env: vec![("KNUTEPUNKT_STORE__CA_FILE".into(), ca.display().to_string())],
        ..HubOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_talks_tls_to_postgresql_and_refuses_a_server_it_cannot_verify() {
    let server = match ok(tokio::task::spawn_blocking(PgServer::start).await) {
        Ok(Ok(s)) => s,
        Ok(Err(why)) => return conformance_tests::harness::skip(TEST, &why.0),
        Err(e) => panic!("{TEST}: the private PostgreSQL did not start: {e:#}"),
    };
    let certs = ok(tempfile::tempdir());
    let (ours, other) = (certs.path().join("ours"), certs.path().join("other"));
    dev_certs(&ours);
    dev_certs(&other);
    ok(server.enable_tls(&ours.join("server.pem"), &ours.join("server.key")));
    let schema = ok(pg::schema_in(&server.url()).await);

    // The CA that signed the server's certificate: the hub works, over TLS.
    let dir = ok(tempfile::tempdir());
    let mut hub = ok(Hub::start(dir.path(), opts(&schema, &ours.join("ca.pem"))).await);
    let mut c = ok(hub.client().await);
    let r = ok(c.submit(events::heart_rate("tls-1", events::OSLO, 1)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    let (tls, plain) = hub_connections(&server.url()).await;
    assert!(
        tls >= 2,
        "the hub has no TLS connections ({tls} TLS, {plain} plain)"
    );
    assert_eq!(plain, 0, "the hub opened {plain} connections without TLS");
    ok(hub.stop().await);

    // Another CA: the hub must not start, and must say why.
    let dir = ok(tempfile::tempdir());
    let refused = Hub::start(dir.path(), opts(&schema, &other.join("ca.pem"))).await;
    let Err(e) = refused else {
        panic!("the hub started against a server its CA did not sign");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "the refusal does not name the certificate: {e}"
    );
}
