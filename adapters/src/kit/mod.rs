//! The conformance kit for vendor developers.
//!
//! Why it exists: before a municipality signs an agreement, a vendor has to
//! show that its integration handles everything the hub can answer. Two
//! programs help it do so without a real hub:
//!
//! - [`mock`] (binary `knutepunkt-mock`): a strict local hub. Every event is
//!   checked by the hub's own code (`knutepunkt::ingest::validate`, which
//!   runs `normalize`), the store's idempotency and closed-loop rules are
//!   kept in memory, and each answer is printed with how to fix it. It can
//!   misbehave on purpose (UNAVAILABLE, slow answers, dropped streams) so
//!   the vendor can test its retry logic.
//! - [`scenario`] (binary `conformance`): a scripted run against a test hub
//!   (real or mock) that exercises every payload kind, duplicates, resends,
//!   the closed loop, each rejection and a stream reconnect, and writes a
//!   pass/fail [`report`] as text and JUnit XML.

pub mod events;
pub mod mock;
pub mod report;
pub mod retry;
pub mod scenario;
pub mod target;
