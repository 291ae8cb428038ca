//! The adapter's TLS identity: PEM files given by the operator, or a
//! self-signed certificate for 127.0.0.1/localhost that tests and local
//! runs make once and hand to the hub as its trust anchor.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why no TLS configuration could be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {what} from {path}: {detail}; give a PEM file")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The self-signed certificate could not be made or written.
    #[error(
        "cannot make a self-signed certificate in {dir}: {detail}; check that the directory is writable"
    )]
    SelfSigned {
        /// The directory given to `--self-signed`.
        dir: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the certificate and key.
    #[error(
        "the certificate and key do not form a TLS identity: {0}; check that the key belongs to the certificate"
    )]
    Config(#[from] rustls::Error),
}

/// File name of the self-signed certificate inside `--self-signed DIR`.
pub const CERT_FILE: &str = "cert.pem";
/// File name of its private key.
pub const KEY_FILE: &str = "key.pem";

/// Makes `DIR/cert.pem` and `DIR/key.pem` (a self-signed certificate for
/// `127.0.0.1`, `::1` and `localhost`) unless both already exist, so a
/// restarted adapter keeps the identity the hub was told to trust.
/// Returns the two paths and whether they were made now.
pub fn ensure_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let fail = |detail: String| TlsError::SelfSigned {
        dir: dir.to_path_buf(),
        detail,
    };
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path, false));
    }
    fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let names = vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    fs::write(&cert_path, ck.cert.pem()).map_err(|e| fail(e.to_string()))?;
    Ok((cert_path, key_path, true))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1 by ALPN) from
/// PEM files: a certificate chain and a private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            path: cert.to_path_buf(),
            detail: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            path: cert.to_path_buf(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate",
            path: cert.to_path_buf(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        what: "private key",
        path: key.to_path_buf(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_loads() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (c, k, made) = ensure_self_signed(dir.path())?;
        assert!(made);
        let first = fs::read(&c)?;
        let (_, _, made) = ensure_self_signed(dir.path())?;
        assert!(!made);
        assert_eq!(first, fs::read(&c)?);
        server_config(&c, &k)?;
        Ok(())
    }

    #[test]
    fn bad_pem_names_the_file() {
        let dir = tempfile::tempdir().ok();
        let p = dir
            .as_ref()
            .map(|d| d.path().join("nope.pem"))
            .unwrap_or_default();
        let err = server_config(&p, &p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("nope.pem"), "{err}");
    }
}
