//! PostgreSQL goes away under a hub and comes back: no acknowledgement
//! without a commit, `/readyz` 503 meanwhile, and the hub reconnects by
//! itself. The outage is a TCP proxy between hub and database that the test
//! cuts (every connection dropped, new ones refused) and restores, so the
//! shared database on this machine is never restarted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{Hub, HubOptions, ReceiptStatus, ok};
use conformance_tests::pg;
use tokio::net::{TcpListener, TcpStream};

/// A cuttable TCP proxy to `upstream`.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = ok(TcpListener::bind("127.0.0.1:0").await);
        let addr = ok(listener.local_addr());
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut db) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut db).await;
                    }
                });
                if let Ok(mut c) = conns2.lock() {
                    c.push(task.abort_handle());
                }
            }
        });
        Proxy { addr, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for t in c.drain(..) {
                t.abort();
            }
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_writes_turns_readyz_503_and_heals_itself() {
    let Some(schema) = ok(pg::schema("postgres_outage").await) else {
        return;
    };
    let cfg: tokio_postgres::Config = ok(pg::url().parse());
    let (Some(tokio_postgres::config::Host::Tcp(host)), Some(port)) =
        (cfg.get_hosts().first(), cfg.get_ports().first())
    else {
        eprintln!("SKIPPED postgres_outage: the test database is not reached over TCP");
        return;
    };
    let upstream = format!("{host}:{port}");
    let proxy = Proxy::start(upstream.clone()).await;
    let url = schema
        .store_url()
        .replacen(&upstream, &proxy.addr.to_string(), 1);
    let dir = ok(tempfile::tempdir());
    let opts = HubOptions {
        pg: Some(schema.clone()),
        env: vec![("KNUTEPUNKT_STORE__URL".into(), url)],
        ..HubOptions::default()
    };
    let hub = ok(Hub::start(dir.path(), opts).await);
    let mut c = ok(hub.client().await);
    let mut acked = Vec::new();
    for i in 0..5 {
        let r = ok(c
            .submit(events::heart_rate(&format!("pre-{i}"), OSLO, 1))
            .await);
        assert_eq!(r.get_ref().status, ReceiptStatus::Accepted as i32);
        acked.push(r.into_inner().resource);
    }

    proxy.cut();
    hub.wait_readyz(503, Duration::from_secs(10)).await;
    for i in 0..3 {
        match c
            .submit(events::heart_rate(&format!("during-{i}"), OSLO, 1))
            .await
        {
            Ok(r) => assert_ne!(
                r.get_ref().status,
                ReceiptStatus::Accepted as i32,
                "acknowledged while the database was unreachable"
            ),
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
        }
    }

    proxy.restore();
    hub.wait_readyz(200, Duration::from_secs(20)).await;
    let mut healed = false;
    for _ in 0..50 {
        if let Ok(r) = c.submit(events::heart_rate("after", OSLO, 1)).await
            && r.get_ref().status == ReceiptStatus::Accepted as i32
        {
            acked.push(r.into_inner().resource);
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        healed,
        "the hub did not take writes again; log:\n{}",
        hub.logs()
    );
    for r in &acked {
        let id = r.trim_start_matches("Observation/");
        let (status, _) = ok(conformance_tests::harness::get_json(&format!(
            "{}/Observation/{id}",
            hub.fhir_base(OSLO)
        ))
        .await);
        assert_eq!(status, 200, "acknowledged {r} is gone");
    }
}
