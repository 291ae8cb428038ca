//! Entry points for the fuzz targets in `fuzz/`, one per input the hub
//! parses from outside: a vendor's protobuf event, FHIR search parameters,
//! `_lastUpdated`, the token endpoint's client assertion, a `$confirm` body
//! and the config file.
//!
//! They live here, not in `fuzz/`, so that the normal test suite replays the
//! kept corpus and every crash the fuzzer ever found
//! (`tests/fuzz_corpus.rs`) through exactly the code the fuzzer ran, on the
//! stable toolchain. Each function takes raw bytes, must never panic, and
//! checks one invariant besides: no error message copies a national-id-like
//! value from the input.
//!
//! Not an API: hidden from the docs, may change with the targets.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

use crate::api::{last_updated, pull, query_string, search_params};
use crate::auth::{Client, Scope, assertion};
use crate::domain::{Orgnr, ResourceType, VendorId};
use crate::proto::v1 as pb;

/// A target's body: raw input in, panic on a bug.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Target)] = &[
    ("ingest_event", ingest_event),
    ("search_params", search_params),
    ("last_updated", last_updated),
    ("token_assertion", token_assertion),
    ("confirm_body", confirm_body),
    ("config", config),
];

/// Runs of 11 digits in `input` (national-id shaped), for the echo check.
fn id_like(input: &str) -> Vec<&str> {
    let b = input.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i - start >= 11 {
            out.push(&input[start..start + 11]);
        }
        i = i.max(start + 1);
    }
    out
}

/// Panics when `message` repeats a national-id-like run of `input`.
fn assert_no_echo(input: &str, message: &str, what: &str) {
    for id in id_like(input) {
        assert!(
            !message.contains(id),
            "{what}: an error message copies an 11-digit value from the input"
        );
    }
}

/// Protobuf `Event` bytes → decode → domain event → FHIR resource.
pub fn ingest_event(data: &[u8]) {
    let Ok(ev) = pb::Event::decode(data) else {
        return;
    };
    let patient = ev
        .patient
        .as_ref()
        .map(|p| p.value.clone())
        .unwrap_or_default();
    let vendor = VendorId("fuzz-vendor".into());
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    match crate::ingest::convert::event(&vendor, ev, now, chrono::Duration::minutes(5)) {
        Ok(event) => match crate::normalize::normalize(&event) {
            Ok(_) => {}
            Err(e) => assert_no_echo(&patient, &e.reason, "normalize"),
        },
        Err(e) => assert_no_echo(&patient, &e.reason, "convert"),
    }
}

/// A raw query string → pairs → search parameters of both resource types;
/// accepted searches must survive their own `next` link.
pub fn search_params(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pairs) = query_string::decode(raw) else {
        return;
    };
    let decoded: String = pairs.iter().map(|(k, v)| format!("{k}={v}&")).collect();
    let Ok(org) = Orgnr::parse("958935420") else {
        return;
    };
    for rt in [ResourceType::Observation, ResourceType::Communication] {
        match search_params::parse_search(rt, &pairs) {
            Ok(p) => {
                let _ = p.params.to_query(org, rt);
                // The next link's query parses again, to the same search.
                let link = p.params.link_query(Some(42));
                let again = query_string::decode(&link)
                    .map(|pairs| search_params::parse_search(rt, &pairs));
                assert!(
                    matches!(again, Ok(Ok(_))),
                    "a search's own next link does not parse"
                );
            }
            Err(e) => assert_no_echo(&decoded, &e.message, "search"),
        }
    }
    // Encoding round-trips.
    let encoded = query_string::encode(&pairs);
    assert_eq!(
        query_string::decode(&encoded).ok().as_ref(),
        Some(&pairs),
        "query_string::encode does not round-trip"
    );
}

/// One `_lastUpdated` value → a sequence range, and ranges intersect.
pub fn last_updated(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = raw.split_once('\n').unwrap_or((raw, "ge2026-01-01"));
    if let (Ok(x), Ok(y)) = (last_updated::parse(a), last_updated::parse(b)) {
        let both = x.intersect(y);
        let _ = both.is_empty();
    } else if let Err(e) = last_updated::parse(a) {
        assert_no_echo(a, &e, "_lastUpdated");
    }
}

struct Signer {
    encoding: jsonwebtoken::EncodingKey,
    clients: HashMap<String, Client>,
}

/// A registered EC P-256 client `fuzz-client` and its signing key.
fn signer() -> Option<&'static Signer> {
    static SIGNER: OnceLock<Option<Signer>> = OnceLock::new();
    SIGNER
        .get_or_init(|| {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).ok()?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).ok()?;
            let client = Client {
                id: "fuzz-client".into(),
                municipality: Orgnr::parse("958935420").ok()?,
                scopes: vec![Scope::Pending],
                key: jsonwebtoken::DecodingKey::from_ec_der(pair.public_key().as_ref()),
                alg: jsonwebtoken::Algorithm::ES256,
                consumer: None,
            };
            Some(Signer {
                encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
                clients: HashMap::from([("fuzz-client".to_string(), client)]),
            })
        })
        .as_ref()
}

const TOKEN_URL: &str = "https://hub.example/oauth/token";
const NOW: u64 = 1_800_000_000;

/// A client assertion, three ways by the first byte: 0 the rest as the raw
/// JWT; 1 three parts split at 0xFF, each base64url-encoded (bogus
/// signature); otherwise the rest as the claims JSON, properly signed
/// ES256 by the registered client, so the claim checks are reached.
pub fn token_assertion(data: &[u8]) {
    let Some(s) = signer() else {
        return;
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let jwt = match mode {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => rest
            .splitn(3, |b| *b == 0xFF)
            .map(|p| URL_SAFE_NO_PAD.encode(p))
            .collect::<Vec<_>>()
            .join("."),
        _ => {
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
            let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(rest));
            match jsonwebtoken::crypto::sign(
                input.as_bytes(),
                &s.encoding,
                jsonwebtoken::Algorithm::ES256,
            ) {
                Ok(sig) => format!("{input}.{sig}"),
                Err(_) => return,
            }
        }
    };
    if let Ok(v) = assertion::verify(&jwt, &s.clients, TOKEN_URL, NOW) {
        assert_eq!(v.client_id, "fuzz-client");
        assert!(
            v.exp > NOW.saturating_sub(crate::auth::LEEWAY_SECS),
            "accepted an expired assertion"
        );
        assert!(!v.jti.is_empty() && v.jti.len() <= 256);
    }
}

/// A `$confirm` body.
pub fn confirm_body(data: &[u8]) {
    if let Err(e) = pull::parse_confirm(data) {
        assert_no_echo(&String::from_utf8_lossy(data), &e.message, "$confirm");
    }
}

/// A config file's text (defaults ← it, then validation).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::Config::from_toml(text);
}
