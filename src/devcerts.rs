//! `knutepunkt dev-certs`: a complete, throw-away PKI for development, the
//! demo and the tests, so they run over real TLS with real client
//! certificates. Never use these files in production: the CA key sits next
//! to the certificates.
//!
//! Writes into one directory:
//! - `ca.pem`, `ca.key` — the dev CA; it signs everything below (configure
//!   it as `tls.vendor_ca_file`, and trust it in clients);
//! - `server.pem`, `server.key` — the hub's certificate for localhost,
//!   127.0.0.1 and ::1 (plus `--host`s);
//! - `vendor-<id>.pem`, `vendor-<id>.key` — a client certificate per vendor,
//!   naming it by SAN URI `urn:knutepunkt:vendor:<id>` and CN `<id>`;
//! - `vendor-<id>-expired.pem/.key` — the same, already expired (`--expired`);
//! - `epj-<id>.key` (PKCS#8, P-256) and `epj-<id>.jwk.json` (its public key
//!   as a JWK for the config) — an EPJ client's key pair for signed
//!   `private_key_jwt` assertions.

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::tls::VENDOR_URI_PREFIX;

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("dev-certs: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dev-certs: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("dev-certs: {0:?} is not a valid id (use a-z, 0-9 and '-')")]
    BadId(String),
}

/// What to make.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub out: PathBuf,
    pub vendors: Vec<String>,
    pub expired_vendors: Vec<String>,
    pub epj_clients: Vec<String>,
    pub hosts: Vec<String>,
}

fn write(path: &Path, contents: &str) -> Result<(), DevCertError> {
    std::fs::write(path, contents).map_err(|source| DevCertError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn check_id(id: &str) -> Result<(), DevCertError> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(DevCertError::BadId(id.to_string()));
    }
    Ok(())
}

/// Makes the files and returns the paths written.
pub fn generate(req: &DevCerts) -> Result<Vec<PathBuf>, DevCertError> {
    std::fs::create_dir_all(&req.out).map_err(|source| DevCertError::Write {
        path: req.out.clone(),
        source,
    })?;
    let mut written = Vec::new();
    let mut put = |name: &str, contents: String| -> Result<(), DevCertError> {
        let p = req.out.join(name);
        write(&p, &contents)?;
        written.push(p);
        Ok(())
    };

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Knutepunkt dev CA (not for production)");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    put("ca.pem", ca_cert.pem())?;
    put("ca.key", ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(req.hosts.iter().cloned());
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "knutepunkt");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    put("server.pem", server.signed_by(&server_key, &issuer)?.pem())?;
    put("server.key", server_key.serialize_pem())?;

    let vendor = |id: &str, expired: bool| -> Result<(String, String), DevCertError> {
        check_id(id)?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = vec![SanType::URI(format!("{VENDOR_URI_PREFIX}{id}").try_into()?)];
        p.distinguished_name.push(DnType::CommonName, id);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Ok((p.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    };
    for id in &req.vendors {
        let (c, k) = vendor(id, false)?;
        put(&format!("vendor-{id}.pem"), c)?;
        put(&format!("vendor-{id}.key"), k)?;
    }
    for id in &req.expired_vendors {
        let (c, k) = vendor(id, true)?;
        put(&format!("vendor-{id}-expired.pem"), c)?;
        put(&format!("vendor-{id}-expired.key"), k)?;
    }
    for id in &req.epj_clients {
        check_id(id)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        put(&format!("epj-{id}.key"), key.serialize_pem())?;
        put(&format!("epj-{id}.jwk.json"), public_jwk(&key, id))?;
    }
    Ok(written)
}

/// The public half of a P-256 key as a JWK (RFC 7517/7518).
fn public_jwk(key: &KeyPair, kid: &str) -> String {
    let raw = key.public_key_raw(); // 0x04 || X (32) || Y (32)
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (x, y) = if raw.len() == 65 {
        (&raw[1..33], &raw[33..])
    } else {
        (&raw[..0], &raw[..0])
    };
    serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "use": "sig",
        "kid": kid,
        "x": b64.encode(x),
        "y": b64.encode(y),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_usable_pki() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let req = DevCerts {
            out: dir.path().to_path_buf(),
            vendors: vec!["acme".into()],
            expired_vendors: vec!["acme".into()],
            epj_clients: vec!["epj".into()],
            hosts: vec![],
        };
        let files = generate(&req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files.len(), 2 + 2 + 2 + 2 + 2);
        let tls = crate::config::TlsConfig::files(
            dir.path().join("server.pem"),
            dir.path().join("server.key"),
            dir.path().join("ca.pem"),
        );
        assert!(crate::tls::server_config(&tls, true).is_ok());
        let pem = std::fs::read(dir.path().join("vendor-acme.pem")).unwrap_or_default();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem)
            .unwrap_or_else(|e| panic!("{e}"));
        use rustls_pki_types::pem::PemObject;
        assert_eq!(
            crate::tls::vendor_id_of(&der, crate::config::VendorIdentity::SanUri).as_deref(),
            Some("acme")
        );
        assert_eq!(
            crate::tls::vendor_id_of(&der, crate::config::VendorIdentity::Cn).as_deref(),
            Some("acme")
        );
        let jwk: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("epj-epj.jwk.json")).unwrap_or_default(),
        )
        .unwrap_or_default();
        assert_eq!(jwk["x"].as_str().map(str::len), Some(43));
        assert!(
            generate(&DevCerts {
                vendors: vec!["Bad Id".into()],
                ..req
            })
            .is_err()
        );
    }
}
