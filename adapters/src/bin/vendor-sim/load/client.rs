//! The load's client tasks: one SubmitStream with a window of events in
//! flight, or unary Submit calls one after another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1::Event;
use knutepunkt::sim::Generator;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{Shared, histogram};

fn record(h: &mut Histogram<u64>, since: Instant) {
    let us = since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
    h.saturating_record(us.max(1));
}

/// One SubmitStream: a sender task keeps at most `window` events in flight;
/// this task reads receipts, matches them by event id and frees window slots.
pub(super) async fn stream_client(
    channel: Channel,
    generator: Generator,
    n: u64,
    pace: Option<Duration>,
    window: usize,
    start: Instant,
    shared: Arc<Shared>,
) -> Histogram<u64> {
    let mut hist = histogram();
    let mut client = EventClient::new(channel);
    let (tx, rx) = mpsc::channel::<Event>(window.max(1));
    let flight = InFlight {
        slots: Arc::new(Semaphore::new(window.max(1))),
        due_at: Arc::new(Mutex::new(HashMap::with_capacity(window * 2))),
    };
    let sender = tokio::spawn(send_events(generator, n, pace, start, tx, flight.clone()));
    let received = read_receipts(&mut client, rx, &flight, &mut hist, &shared).await;
    // Stop the sender if the stream ended early, then settle the books.
    flight.slots.close();
    let sent: u64 = sender.await.unwrap_or_default();
    shared.errors(sent.saturating_sub(received), || {
        "stream ended before every receipt came back".into()
    });
    shared.errors(n.saturating_sub(sent), || {
        "stream ended before every event was sent".into()
    });
    hist
}

/// One stream's events in flight: the free window slots and the time each
/// event was due, by event id.
#[derive(Clone)]
struct InFlight {
    slots: Arc<Semaphore>,
    due_at: Arc<Mutex<HashMap<String, Instant>>>,
}

/// The stream's sender: `n` events (paced, if `pace`), each once a window
/// slot is free; returns how many were sent.
async fn send_events(
    mut generator: Generator,
    n: u64,
    pace: Option<Duration>,
    start: Instant,
    tx: mpsc::Sender<Event>,
    flight: InFlight,
) -> u64 {
    let mut sent = 0u64;
    tokio::time::sleep_until(start).await;
    for k in 0..n {
        let due = pace.map(|p| start + p.mul_f64(k as f64));
        if let Some(d) = due {
            tokio::time::sleep_until(d).await;
        }
        match flight.slots.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        let ev = generator.next_event();
        let t = due.unwrap_or_else(Instant::now);
        if let Ok(mut m) = flight.due_at.lock() {
            m.insert(ev.event_id.clone(), t);
        }
        if tx.send(ev).await.is_err() {
            break;
        }
        sent += 1;
    }
    // Dropping `tx` half-closes the stream; the hub then ends it
    // after the last receipt.
    sent
}

/// Opens the stream over `rx` and reads its receipts until it ends: each
/// one's latency and status recorded, its window slot freed. Returns how
/// many receipts came back.
async fn read_receipts(
    client: &mut EventClient,
    rx: mpsc::Receiver<Event>,
    flight: &InFlight,
    hist: &mut Histogram<u64>,
    shared: &Shared,
) -> u64 {
    let mut received = 0u64;
    match client.submit_stream(ReceiverStream::new(rx)).await {
        Ok(resp) => {
            let mut receipts = resp.into_inner();
            loop {
                match receipts.next().await {
                    Some(Ok(r)) => {
                        received += 1;
                        let t = flight
                            .due_at
                            .lock()
                            .ok()
                            .and_then(|mut m| m.remove(&r.event_id));
                        if let Some(t) = t {
                            record(hist, t);
                        }
                        shared.receipt(&r);
                        flight.slots.add_permits(1);
                    }
                    None => break,
                    Some(Err(s)) => {
                        shared.note_error(|| {
                            format!("stream broke: {:?}: {}", s.code(), s.message())
                        });
                        break;
                    }
                }
            }
        }
        Err(s) => {
            shared.note_error(|| format!("SubmitStream refused: {:?}: {}", s.code(), s.message()))
        }
    }
    received
}

/// One client making unary Submit calls back to back (or paced).
pub(super) async fn unary_client(
    channel: Channel,
    mut generator: Generator,
    n: u64,
    pace: Option<Duration>,
    start: Instant,
    shared: Arc<Shared>,
) -> Histogram<u64> {
    let mut hist = histogram();
    let mut client = EventClient::new(channel);
    tokio::time::sleep_until(start).await;
    for k in 0..n {
        let due = pace.map(|p| start + p.mul_f64(k as f64));
        if let Some(d) = due {
            tokio::time::sleep_until(d).await;
        }
        let t = due.unwrap_or_else(Instant::now);
        let mut req = tonic::Request::new(generator.next_event());
        req.set_timeout(Duration::from_secs(30));
        match client.submit(req).await {
            Ok(r) => {
                record(&mut hist, t);
                shared.receipt(&r.into_inner());
            }
            Err(s) => shared.status(&s),
        }
    }
    hist
}
