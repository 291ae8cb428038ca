//! What the rest of the hub reads from a loaded config: store options,
//! consumers, destinations and the municipalities served.

use super::*;

impl Config {
    /// The retention policy the store applies, in microseconds.
    pub fn retention_policy(&self) -> crate::store::RetentionPolicy {
        let us = |days: [Option<u64>; 3]| days.map(|d| d.map(|d| d.saturating_mul(86_400_000_000)));
        crate::store::RetentionPolicy {
            default: us(self.retention.days()),
            per_municipality: self
                .municipalities
                .iter()
                .filter_map(|m| {
                    let org = Orgnr::parse(&m.orgnr).ok()?;
                    Some((org, us(m.retention.over(&self.retention).days())))
                })
                .collect(),
        }
    }

    /// The store's options from `[store]`.
    pub fn store_options(&self) -> crate::store::embedded::EmbeddedOptions {
        crate::store::embedded::EmbeddedOptions {
            max_batch: self.store.max_batch,
            min_free_bytes: self.store.min_free_bytes,
            cache_bytes: self.store.cache_bytes,
            idempotency_window_us: self
                .store
                .idempotency_window_days
                .saturating_mul(86_400_000_000),
            ..crate::store::embedded::EmbeddedOptions::default()
        }
    }

    /// The PostgreSQL store's options from `[store]` (backend "postgres").
    pub fn postgres_options(&self) -> crate::store::postgres::PostgresOptions {
        let defaults = crate::store::postgres::PostgresOptions::default();
        crate::store::postgres::PostgresOptions {
            url: self.store.url.clone().unwrap_or_default(),
            pool_size: self.store.pool_size,
            schema: None,
            hub_id: self.store.hub_id.clone().unwrap_or(defaults.hub_id),
            max_batch: self.store.max_batch,
            idempotency_window_us: self
                .store
                .idempotency_window_days
                .saturating_mul(86_400_000_000),
            queue_depth: defaults.queue_depth,
            ca_file: self.store.ca_file.clone(),
        }
    }

    /// One consumer per configured destination, for the store.
    pub fn consumer_specs(&self) -> Vec<crate::store::ConsumerSpec> {
        let us = |secs: u64| secs.saturating_mul(1_000_000);
        self.destinations()
            .into_iter()
            .map(|(org, d)| crate::store::ConsumerSpec {
                name: d.name,
                municipality: org,
                escalation_only: d.escalation_only,
                escalate_to: d.escalate_to,
                red_deadline_us: us(self.delivery.deadline_red_secs),
                yellow_deadline_us: us(self.delivery.deadline_yellow_secs),
            })
            .collect()
    }

    /// Every configured destination with the orgnr it belongs to.
    pub fn destinations(&self) -> Vec<(Orgnr, Destination)> {
        self.municipalities
            .iter()
            .filter_map(|m| Orgnr::parse(&m.orgnr).ok().map(|o| (o, m)))
            .flat_map(|(o, m)| m.destinations.iter().map(move |d| (o, d.clone())))
            .collect()
    }

    /// The configured municipalities, or `None` when any orgnr is served.
    pub fn served_municipalities(&self) -> Result<Option<BTreeSet<Orgnr>>, ConfigError> {
        if self.municipalities.is_empty() {
            return Ok(None);
        }
        self.municipalities
            .iter()
            .map(|m| {
                Orgnr::parse(&m.orgnr).map_err(|e| {
                    ConfigError::Invalid(format!("municipalities: orgnr {:?} {e}", m.orgnr))
                })
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Some)
    }
}
