//! The checks that types alone cannot make, each with a message that says
//! what to fix.

use super::*;

impl Config {
    /// Checks what types alone cannot, with a message saying what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.served_municipalities()?;
        let v = &self.default_vendor;
        if v.is_empty()
            || v.len() > 64
            || !v
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Invalid(format!(
                "default_vendor {v:?}: use 1-64 characters of a-z, 0-9 and '-'"
            )));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "public_url {u:?}: must start with http:// or https://"
            )));
        }
        self.validate_destinations()?;
        self.validate_security()?;
        crate::auth::config::validate(self)?;
        if self.store.max_batch == 0 {
            return Err(ConfigError::Invalid(
                "store.max_batch must be at least 1".into(),
            ));
        }
        self.validate_postgres()?;
        self.validate_retention()
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        let window = self.store.idempotency_window_days;
        if window == 0 || window > 36_500 {
            return Err(ConfigError::Invalid(format!(
                "store.idempotency_window_days = {window}: use 1-36500"
            )));
        }
        let names = ["alarms_days", "notes_days", "measurements_days"];
        let check = |section: String, r: &RetentionConfig| {
            for (name, days) in names.iter().zip(r.days()) {
                match days {
                    Some(d) if d > 36_500 => {
                        return Err(ConfigError::Invalid(format!(
                            "{section}.{name} = {d}: use at most 36500 days, or leave it out to keep events forever"
                        )));
                    }
                    Some(d) if d < window => {
                        return Err(ConfigError::Invalid(format!(
                            "{section}.{name} = {d} is shorter than store.idempotency_window_days = {window}: a resend after {d} days would be stored and delivered again; raise it or shorten the window"
                        )));
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        check("retention".into(), &self.retention)?;
        for m in &self.municipalities {
            check(
                format!("municipalities.{}.retention", m.orgnr),
                &m.retention,
            )?;
        }
        Ok(())
    }

    fn validate_postgres(&self) -> Result<(), ConfigError> {
        if self.store.backend != StoreBackend::Postgres {
            return Ok(());
        }
        let Some(url) = self.store.url.as_deref().filter(|u| !u.is_empty()) else {
            return Err(ConfigError::Invalid(
                "store.backend = \"postgres\" needs store.url, e.g. \"postgres://knutepunkt@db.internal:5432/knutepunkt\"".into(),
            ));
        };
        if let Err(e) = url.parse::<tokio_postgres::Config>() {
            return Err(ConfigError::Invalid(format!(
                "store.url is not a PostgreSQL connection string ({e}); use postgres://user@host:port/database"
            )));
        }
        if !(1..=1000).contains(&self.store.pool_size) {
            return Err(ConfigError::Invalid(format!(
                "store.pool_size = {}: use 1-1000",
                self.store.pool_size
            )));
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        if self.tls.is_none() && !self.insecure_dev {
            return Err(ConfigError::Invalid(
                "no [tls] section: configure tls.cert_file, tls.key_file and tls.vendor_ca_file (`knutepunkt dev-certs` makes a set for testing), or run with --insecure-dev on a development machine".into(),
            ));
        }
        let mut ids = BTreeSet::new();
        for v in &self.vendors {
            if v.id.is_empty()
                || v.id.len() > 64
                || !v
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(ConfigError::Invalid(format!(
                    "vendors: id {:?}: use 1-64 characters of a-z, 0-9 and '-'",
                    v.id
                )));
            }
            if !ids.insert(v.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "vendors: id {:?} is listed twice",
                    v.id
                )));
            }
            for m in &v.municipalities {
                Orgnr::parse(m).map_err(|e| {
                    ConfigError::Invalid(format!("vendors.{}: municipality {m:?} {e}", v.id))
                })?;
            }
            if v.rate_per_sec == 0 || v.burst == 0 || v.max_streams == 0 || v.max_message_bytes == 0
            {
                return Err(ConfigError::Invalid(format!(
                    "vendors.{}: rate_per_sec, burst, max_streams and max_message_bytes must be at least 1",
                    v.id
                )));
            }
        }
        Ok(())
    }

    fn validate_destinations(&self) -> Result<(), ConfigError> {
        let all: Vec<&Destination> = self
            .municipalities
            .iter()
            .flat_map(|m| &m.destinations)
            .collect();
        let mut names = BTreeSet::new();
        for d in &all {
            destination_name(d).map_err(|why| invalid(d, why))?;
            if !names.insert(d.name.as_str()) {
                return Err(invalid(
                    d,
                    "name is used twice; names must be unique across the hub",
                ));
            }
            destination_settings(d).map_err(|why| invalid(d, why))?;
        }
        for m in &self.municipalities {
            for d in &m.destinations {
                escalation_target(&m.destinations, d, &names).map_err(|why| invalid(d, why))?;
            }
        }
        no_escalation_cycle(&all)
    }
}

fn invalid(d: &Destination, why: &str) -> ConfigError {
    ConfigError::Invalid(format!("destination {:?}: {why}", d.name))
}

fn destination_name(d: &Destination) -> Result<(), &'static str> {
    let ok = !d.name.is_empty()
        && d.name.len() <= 64
        && d.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("name: use 1-64 characters of a-z, 0-9 and '-'")
    }
}

/// The url that the kind needs (or refuses) and the numbers that must be
/// at least 1.
fn destination_settings(d: &Destination) -> Result<(), &'static str> {
    match (d.kind, &d.url) {
        (DestinationKind::Push, None) => return Err("kind = \"push\" needs url"),
        (DestinationKind::Push, Some(u))
            if !(u.starts_with("https://") || u.starts_with("http://")) =>
        {
            return Err("url must start with https:// (or http:// on loopback for tests)");
        }
        (DestinationKind::Pull, Some(_)) => return Err("kind = \"pull\" takes no url"),
        _ => {}
    }
    if d.max_batch == 0 || d.max_rate == 0 || d.breaker_failures == 0 || d.lease_secs == 0 {
        return Err("max_batch, max_rate, breaker_failures and lease_secs must be at least 1");
    }
    if d.backoff_base_ms == 0 || d.backoff_cap_ms < d.backoff_base_ms {
        return Err("backoff_base_ms must be at least 1 and at most backoff_cap_ms");
    }
    Ok(())
}

/// `escalate_to` names another configured destination of the same
/// municipality (`siblings`): an alarm never leaves its municipality, as
/// the fallback would deliver (or let its EPJ pull) another tenant's data.
fn escalation_target(
    siblings: &[Destination],
    d: &Destination,
    names: &BTreeSet<&str>,
) -> Result<(), &'static str> {
    let Some(e) = &d.escalate_to else {
        return Ok(());
    };
    if e == &d.name {
        return Err("escalate_to names the destination itself");
    }
    if !names.contains(e.as_str()) {
        return Err("escalate_to names no configured destination");
    }
    if !siblings.iter().any(|f| &f.name == e) {
        return Err("escalate_to names a destination of another municipality; \
                    name one of this municipality's destinations");
    }
    Ok(())
}

/// A cycle (a -> b -> a) would hand an alarm round and round, and the
/// embedded store locks a consumer and then its fallback.
fn no_escalation_cycle(all: &[&Destination]) -> Result<(), ConfigError> {
    let next: std::collections::BTreeMap<&str, &str> = all
        .iter()
        .filter_map(|d| d.escalate_to.as_deref().map(|e| (d.name.as_str(), e)))
        .collect();
    for d in all {
        let mut at = d.name.as_str();
        for _ in 0..next.len() {
            match next.get(at) {
                Some(n) if *n == d.name => {
                    return Err(invalid(
                        d,
                        "escalate_to leads back to this destination (an escalation \
                         cycle); let the last fallback escalate to none",
                    ));
                }
                Some(n) => at = n,
                None => break,
            }
        }
    }
    Ok(())
}
