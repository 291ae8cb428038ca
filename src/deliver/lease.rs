//! Exactly one hub delivers to each push destination. A store one hub owns
//! grants that at once; a store several hubs share (PostgreSQL) grants it
//! to one hub at a time as a lease the holder renews (heartbeat). When the
//! holder dies its lease runs out, and another hub's worker takes over from
//! the destination's durable ack floor: takes read the store, not memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the holder renews, and others ask (one small UPDATE a second
/// per destination and hub). Takeover after a holder dies: at most
/// `LEASE_TTL + RENEW` (6 s), well inside the 10 s the team promises.
pub const RENEW: Duration = Duration::from_secs(1);

pub(crate) struct DeliveryLease {
    name: String,
    held: bool,
    next_check: Instant,
}

impl DeliveryLease {
    pub(crate) fn new(name: &str) -> Self {
        DeliveryLease {
            name: name.to_string(),
            held: false,
            next_check: Instant::now(),
        }
    }

    /// Whether this hub may deliver now, renewing the lease when due. When
    /// it may not, it first waits one renewal period (or until `stop`).
    pub(crate) async fn hold(&mut self, store: &Arc<dyn Store>, stop: &CancellationToken) -> bool {
        let now = Instant::now();
        if self.held && now < self.next_check {
            return true;
        }
        let ttl = LEASE_TTL.as_micros() as u64;
        let granted = match store.delivery_lease(&self.name, ttl).await {
            Ok(g) => g,
            Err(e) => {
                // Unknown: another hub may hold it by now. Stop until known.
                tracing::warn!(destination = %self.name, error = %e, "cannot renew the delivery lease; pausing delivery");
                false
            }
        };
        if granted != self.held {
            if granted {
                tracing::info!(destination = %self.name, "this hub delivers to the destination now (lease taken)");
            } else {
                tracing::info!(destination = %self.name, "another hub delivers to the destination (lease lost or held elsewhere)");
            }
        }
        self.held = granted;
        self.next_check = now + RENEW;
        if !granted {
            tokio::select! {
                () = tokio::time::sleep(RENEW) => {}
                () = stop.cancelled() => {}
            }
        }
        granted
    }

    /// Gives the lease up at shutdown, so another hub takes over at once.
    pub(crate) async fn release(self, store: &Arc<dyn Store>) {
        if self.held
            && let Err(e) = store.delivery_lease_release(&self.name).await
        {
            tracing::warn!(destination = %self.name, error = %e, "could not give up the delivery lease; another hub takes over when it runs out");
        }
    }
}
