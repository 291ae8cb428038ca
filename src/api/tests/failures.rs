//! A store whose reads and writes fail: 500s that reveal nothing.

use futures::future::BoxFuture;

use super::*;
use crate::store::{
    AuditLog, Consumers, PutError, ReplayGuard, SearchQuery, StoreError, StoreFuture,
};

/// A store whose reads fail, to check that 500s reveal nothing.
struct FailingStore;

fn boom<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(async { Err(StoreError::Read("boom".into())) })
}

impl EventLog for FailingStore {
    fn put(&self, _: NewRecord) -> BoxFuture<'_, Result<PutOutcome, PutError>> {
        Box::pin(async { Err(PutError::Unavailable("test".into())) })
    }
    fn get(
        &self,
        _: Orgnr,
        _: ResourceType,
        _: uuid::Uuid,
    ) -> StoreFuture<'_, Option<StoredResource>> {
        Box::pin(async { Err(StoreError::Read("/var/lib/knutepunkt/db: I/O error".into())) })
    }
    fn search(&self, _: SearchQuery) -> StoreFuture<'_, SearchPage> {
        Box::pin(async { Err(StoreError::Corrupt("record 17: bad bytes".into())) })
    }
    fn ready(&self) -> Result<(), String> {
        Err("disk full".into())
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
    fn apply_retention(
        &self,
        _: crate::store::RetentionPolicy,
        _: u64,
    ) -> StoreFuture<'_, crate::store::RetentionReport> {
        boom()
    }
}

impl Consumers for FailingStore {
    fn take(
        &self,
        _: &str,
        _: usize,
        _: u64,
        _: Option<u64>,
    ) -> StoreFuture<'_, Vec<crate::store::OutboxItem>> {
        boom()
    }
    fn settle(
        &self,
        _: &str,
        _: Vec<(u64, crate::store::Settle)>,
    ) -> StoreFuture<'_, crate::store::SettleReport> {
        boom()
    }
    fn stats(&self, _: &str) -> StoreFuture<'_, crate::store::ConsumerStats> {
        boom()
    }
    fn escalate_overdue(&self, _: u64) -> StoreFuture<'_, Vec<crate::store::Escalation>> {
        boom()
    }
    fn dead_letters(
        &self,
        _: crate::store::DeadLetterFilter,
        _: usize,
    ) -> StoreFuture<'_, Vec<crate::store::DeadLetter>> {
        boom()
    }
    fn dead_letter_replay(&self, _: &str, _: u64) -> StoreFuture<'_, bool> {
        boom()
    }
    fn dead_letter_discard(&self, _: &str, _: u64, _: String) -> StoreFuture<'_, bool> {
        boom()
    }
    fn delivery_state(
        &self,
        _: &str,
        _: u64,
    ) -> StoreFuture<'_, Option<crate::store::DeliveryState>> {
        boom()
    }
}

impl AuditLog for FailingStore {
    fn audit_append(&self, _: Vec<crate::store::audit::AuditRecord>) -> StoreFuture<'_, Vec<u64>> {
        boom()
    }
    fn audit_search(
        &self,
        _: crate::store::audit::AuditQuery,
    ) -> StoreFuture<'_, crate::store::audit::AuditPage> {
        boom()
    }
    fn audit_prune(&self, _: u64) -> StoreFuture<'_, usize> {
        boom()
    }
}

impl ReplayGuard for FailingStore {
    fn jti_claim(&self, _: &str, _: &str, _: u64, _: u64) -> StoreFuture<'_, bool> {
        boom()
    }
    fn jti_prune(&self, _: u64) -> StoreFuture<'_, usize> {
        boom()
    }
}

#[tokio::test]
async fn store_failures_are_500_without_details() {
    let failing: Arc<dyn Store> = Arc::new(FailingStore);
    let app = router(ApiState {
        store: failing.clone(),
        municipalities: None,
        public_url: None,
        pull: Arc::default(),
        destinations: Arc::default(),
        https: false,
        auth: insecure_authority(failing.clone()),
        audit: crate::audit::Auditor::new(failing, vec![7; 32]),
    });
    for path in [
        format!("{}/Observation?{}", base(OSLO), subject(1)),
        format!("{}/Observation/{}", base(OSLO), uuid::Uuid::from_u128(5)),
    ] {
        let msg = get(&app, &path)
            .await
            .outcome(StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !msg.contains("/var/lib") && !msg.contains("record 17"),
            "{msg}"
        );
    }
    let a = get(&app, "/readyz").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.text.contains("disk full"));
    // Nothing to ask the store for data, but the search is still audited,
    // and an audit write that fails means no answer (500).
    let msg = get(
        &app,
        &format!("{}/Observation?_lastUpdated=lt1970-01-01", base(OSLO)),
    )
    .await
    .outcome(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(msg.contains("audit record"), "{msg}");
}
