//! Where the hub is: `--grpc` parsing, loopback-only by design.
//!
//! Why it exists: this tool is a lab instrument that generates synthetic
//! load; pointing it at a shared or production hub by mistake would pollute
//! real journals. So it accepts loopback addresses only, in one place.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Result, bail};

/// Accepts `127.0.0.1:50051`, `[::1]:50051`, `http://127.0.0.1:50051` or
/// `https://127.0.0.1:50051` (the scheme follows from the TLS flags).
pub fn parse_grpc(s: &str) -> Result<SocketAddr, String> {
    let bare = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s)
        .trim_end_matches('/');
    let addr: SocketAddr = bare
        .parse()
        .map_err(|_| format!("expected IP:PORT such as 127.0.0.1:50051, got {s}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; vendor-sim only talks to a hub on this machine"
        ));
    }
    if addr.port() == 0 {
        return Err("port 0 is not a hub's port".into());
    }
    Ok(addr)
}

/// A loopback port nobody listens on right now (there is a small race
/// until the hub binds it; the bench fails loudly if it loses it).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    if port == 0 {
        bail!("the OS gave port 0");
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(parse_grpc("127.0.0.1:50051").is_ok());
        assert!(parse_grpc("http://127.0.0.1:50051/").is_ok());
        assert!(parse_grpc("[::1]:50051").is_ok());
        assert!(parse_grpc("10.0.0.1:50051").is_err());
        assert!(parse_grpc("example.org:50051").is_err());
        assert!(parse_grpc("127.0.0.1:0").is_err());
    }
}
