use super::*;

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("knutepunkt.example.toml");
    let cfg = Config::load(Some(&path), &Overrides::default());
    assert!(cfg.is_ok(), "{cfg:?}");
}

#[test]
fn postgres_backend_needs_a_url() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("knutepunkt.example.toml");
    let Ok(mut cfg) = Config::load(Some(&path), &Overrides::default()) else {
        panic!("example config does not load");
    };
    assert_eq!(cfg.store.backend, StoreBackend::Embedded, "default");
    cfg.store.backend = StoreBackend::Postgres;
    let err = cfg
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("store.url"), "{err}");
    cfg.store.url = Some("postgres://knutepunkt@db.internal:5432/knutepunkt".into());
    assert!(cfg.validate().is_ok());
    assert_eq!(cfg.postgres_options().pool_size, 16);
    cfg.store.pool_size = 0;
    assert!(cfg.validate().is_err());
}

#[test]
fn unknown_keys_and_bad_orgnr_are_rejected() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "data_dirr = \"/x\"\n").unwrap_or_else(|e| panic!("{e}"));
    let err = Config::load(Some(&f), &Overrides::default());
    assert!(format!("{err:?}").contains("data_dirr"), "{err:?}");
    std::fs::write(&f, "[[municipalities]]\norgnr = \"123456789\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(Config::load(Some(&f), &Overrides::default()).is_err());
}

#[test]
fn retention_per_municipality_overrides_the_hub_wide_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = dir.path().join("c.toml");
    let toml = "insecure_dev = true\n\
        [retention]\nmeasurements_days = 90\nnotes_days = 365\n\
        [[municipalities]]\norgnr = \"958935420\"\n\
        [municipalities.retention]\nmeasurements_days = 30\n\
        [[municipalities]]\norgnr = \"964338531\"\n";
    std::fs::write(&f, toml).unwrap_or_else(|e| panic!("{e}"));
    let cfg = Config::load(Some(&f), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    let p = cfg.retention_policy();
    let day = 86_400_000_000u64;
    let oslo = Orgnr::parse("958935420").unwrap_or_else(|e| panic!("{e}"));
    let bergen = Orgnr::parse("964338531").unwrap_or_else(|e| panic!("{e}"));
    let other = Orgnr::parse("974760673").unwrap_or_else(|e| panic!("{e}"));
    use crate::store::DataClass::{Alarm, Measurement, Note};
    assert_eq!(p.keep_us(oslo, Measurement), Some(30 * day));
    assert_eq!(p.keep_us(oslo, Note), Some(365 * day), "inherited");
    assert_eq!(p.keep_us(oslo, Alarm), None, "kept forever");
    assert_eq!(p.keep_us(bergen, Measurement), Some(90 * day));
    assert_eq!(p.keep_us(other, Note), Some(365 * day));
    assert_eq!(cfg.store.idempotency_window_days, 30, "default");

    // Shorter than the idempotency window: refused, saying why.
    std::fs::write(&f, "insecure_dev = true\n[retention]\nalarms_days = 7\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = format!("{:?}", Config::load(Some(&f), &Overrides::default()));
    assert!(err.contains("idempotency_window_days"), "{err}");
    std::fs::write(&f, "insecure_dev = true\n[retention]\nalarm_days = 70\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = format!("{:?}", Config::load(Some(&f), &Overrides::default()));
    assert!(err.contains("alarm_days"), "unknown key refused: {err}");
}

#[test]
fn flags_override_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "grpc_addr = \"127.0.0.1:1111\"\n").unwrap_or_else(|e| panic!("{e}"));
    let flags = Overrides {
        grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 2222))),
        insecure_dev: Some(true),
        ..Overrides::default()
    };
    let cfg = Config::load(Some(&f), &flags).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.grpc_addr.port(), 2222);
}

#[test]
fn escalation_stays_in_its_municipality() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = dir.path().join("c.toml");
    let toml = |fallback_org: &str| {
        format!(
            "insecure_dev = true\n\
             [[municipalities]]\norgnr = \"958935420\"\n\
             [[municipalities.destinations]]\nname = \"oslo-epj\"\nkind = \"pull\"\n\
             escalate_to = \"vakt\"\n\
             [[municipalities]]\norgnr = \"{fallback_org}\"\n\
             [[municipalities.destinations]]\nname = \"vakt\"\nkind = \"pull\"\n\
             escalation_only = true\n"
        )
    };
    // Another municipality's fallback would get Oslo's alarms: refused.
    std::fs::write(&f, toml("964338531")).unwrap_or_else(|e| panic!("{e}"));
    let err = format!("{:?}", Config::load(Some(&f), &Overrides::default()));
    assert!(err.contains("another municipality"), "{err}");
    // The same fallback in Oslo's own list is fine.
    let same = "insecure_dev = true\n\
        [[municipalities]]\norgnr = \"958935420\"\n\
        [[municipalities.destinations]]\nname = \"oslo-epj\"\nkind = \"pull\"\n\
        escalate_to = \"vakt\"\n\
        [[municipalities.destinations]]\nname = \"vakt\"\nkind = \"pull\"\n\
        escalation_only = true\n";
    std::fs::write(&f, same).unwrap_or_else(|e| panic!("{e}"));
    let ok = Config::load(Some(&f), &Overrides::default());
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn an_escalation_cycle_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = dir.path().join("c.toml");
    let dest = |name: &str, to: &str| {
        format!(
            "[[municipalities.destinations]]\nname = \"{name}\"\nkind = \"pull\"\n\
             escalate_to = \"{to}\"\n"
        )
    };
    let head = "insecure_dev = true\n[[municipalities]]\norgnr = \"958935420\"\n";
    let cycle = format!(
        "{head}{}{}{}",
        dest("a", "b"),
        dest("b", "c"),
        dest("c", "a")
    );
    std::fs::write(&f, cycle).unwrap_or_else(|e| panic!("{e}"));
    let err = format!("{:?}", Config::load(Some(&f), &Overrides::default()));
    assert!(err.contains("escalation cycle"), "{err}");
    // A chain that ends is fine.
    let chain = format!(
        "{head}{}{}[[municipalities.destinations]]\nname = \"c\"\nkind = \"pull\"\n",
        dest("a", "b"),
        dest("b", "c")
    );
    std::fs::write(&f, chain).unwrap_or_else(|e| panic!("{e}"));
    let ok = Config::load(Some(&f), &Overrides::default());
    assert!(ok.is_ok(), "{ok:?}");
}

/// Each destination setting that cannot work is refused with what to
/// change; a well-formed pair loads.
#[test]
fn a_destination_that_cannot_work_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = dir.path().join("c.toml");
    let head = "insecure_dev = true\n[[municipalities]]\norgnr = \"958935420\"\n";
    let load = |dests: &str| {
        std::fs::write(&f, format!("{head}{dests}")).unwrap_or_else(|e| panic!("{e}"));
        format!("{:?}", Config::load(Some(&f), &Overrides::default()))
    };
    let pull = |name: &str, extra: &str| {
        format!("[[municipalities.destinations]]\nname = \"{name}\"\nkind = \"pull\"\n{extra}")
    };
    let push = |extra: &str| {
        format!("[[municipalities.destinations]]\nname = \"epj\"\nkind = \"push\"\n{extra}")
    };
    for (dests, says) in [
        (pull("Oslo EPJ", ""), "use 1-64 characters"),
        (pull("vakt", "") + &pull("vakt", ""), "used twice"),
        (push(""), "needs url"),
        (push("url = \"ftp://epj\"\n"), "must start with https://"),
        (pull("vakt", "url = \"https://epj\"\n"), "takes no url"),
        (pull("vakt", "lease_secs = 0\n"), "at least 1"),
        (
            push("url = \"https://epj\"\nbackoff_base_ms = 500\nbackoff_cap_ms = 100\n"),
            "at most backoff_cap_ms",
        ),
        (
            pull("vakt", "escalate_to = \"vakt\"\n"),
            "names the destination itself",
        ),
        (
            pull("vakt", "escalate_to = \"nobody\"\n"),
            "names no configured destination",
        ),
    ] {
        let err = load(&dests);
        assert!(err.contains(says), "{dests}: {err}");
    }
    let fine = load(&(push("url = \"https://epj\"\n") + &pull("vakt", "")));
    assert!(fine.starts_with("Ok("), "{fine}");
}
