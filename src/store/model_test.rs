//! Model-based test: random operations against a backend and the reference
//! model ([`super::memory::MemoryStore`]), compared after every step.
//!
//! Each case opens a backend in a fresh temporary directory and runs up to
//! 60 random operations (puts of alarms, measurements and notes from two
//! vendors in two municipalities, resends, oversize records, takes with and
//! without lease, settles, lease expiry by moving `now`, escalation, dead
//! letter replay and discard, retention, restart, searches, audit and
//! assertion ids) on it and on the model. After each step the answer and
//! the whole visible state (every consumer's stats, every event's delivery
//! state with every consumer, every get, the dead letters) must agree.
//!
//! A real backend takes `seq` from the wall clock: after each accepted put
//! the test reads the seq back and sets the model's clock to it, so both
//! number events alike. Every `now` the test passes (take, escalation,
//! retention) is derived from those seqs. Leases always end after the wall
//! clock, so `Leased` in `delivery_state` does not depend on timing.
//!
//! Each backend runs two mixes of operations: the broad one above, and one
//! of mostly alarms with small takes and many settles ([`ops::Mix`]), which
//! drives a class's unsettled alarms past the embedded store's in-memory
//! window (3 in tests) and the ack floor across alarms that wait on disk.
//!
//! `PROPTEST_CASES=1000 cargo test -p knutepunkt --lib store::model_test`
//! runs more cases (default 32). A new backend plugs in with one
//! [`Backend`] impl and one `#[test]`.

mod backends;
mod cases;
mod late;
mod norm;
mod ops;

use backends::{Backend, Embedded, Postgres, WallClockModel, wall_micros};
pub(crate) use backends::{pg_admin, postgres_available, test_pg_url};

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::audit::{AuditAction, AuditAgent, AuditOutcome, AuditPatient, AuditQuery, AuditRecord};
use super::memory::MemoryStore;
use super::{
    DeadLetterFilter, PutOutcome, ResourceRef, SearchQuery, Settle, Store, Token, seq_to_time,
};
use crate::domain::{Orgnr, ResourceType};
use ops::{Mix, NAMES, Op, SEC};

/// Idempotency window of every store in the test: longer than any run, so
/// a resend is a duplicate or conflict unless retention removed the event.
const WINDOW_US: u64 = 24 * 3600 * SEC;
const MAX_OPS: usize = 60;

#[test]
fn postgres_store_matches_the_model() {
    if postgres_available("postgres_store_matches_the_model") {
        check::<Postgres>(Mix::Broad);
    }
}

#[test]
fn postgres_store_matches_the_model_with_many_alarms() {
    if postgres_available("postgres_store_matches_the_model_with_many_alarms") {
        check::<Postgres>(Mix::Alarms);
    }
}

#[test]
fn model_matches_itself_on_the_wall_clock() {
    check::<WallClockModel>(Mix::Broad);
}

#[test]
fn embedded_store_matches_the_model() {
    check::<Embedded>(Mix::Broad);
}

#[test]
fn embedded_store_matches_the_model_with_many_alarms() {
    check::<Embedded>(Mix::Alarms);
}

fn check<B: Backend>(mix: Mix) {
    let mut config = Config {
        failure_persistence: None,
        max_shrink_iters: 2000,
        max_shrink_time: 120_000,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 32;
    }
    let rt = runtime();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&ops::ops(MAX_OPS, mix), |ops| {
        rt.block_on(run::<B>(&ops)).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("the backend and the model disagree: {e}");
    }
}

/// The runtime the model tests drive their stores on: one worker.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One case: the backend, the model and what the test remembers.
struct Case<B> {
    backend: Option<B>,
    model: MemoryStore,
    /// The model's clock: the backend's last seq.
    clock: Arc<AtomicU64>,
    /// The `now` the test passes to take, escalation and retention.
    now: u64,
    /// Every seq a put was accepted under, and its resource.
    seqs: Vec<u64>,
    refs: Vec<(Orgnr, ResourceRef)>,
    /// Consumer and seqs of the last take.
    last_taken: Option<(usize, Vec<u64>)>,
    audit_seqs: Vec<u64>,
    /// `a-sen` is configured (an [`Op::Join`] ran).
    joined: bool,
}

/// Compares two answers; the error says where and how they differ.
fn same<T: PartialEq + Debug>(what: &str, backend: T, model: T) -> Result<(), String> {
    if backend == model {
        Ok(())
    } else {
        Err(format!(
            "{what}:\n    backend: {backend:?}\n    model:   {model:?}"
        ))
    }
}

async fn run<B: Backend>(ops: &[Op]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let clock = Arc::new(AtomicU64::new(wall_micros()));
    let model_clock = clock.clone();
    let model = MemoryStore::new(
        ops::consumers(),
        WINDOW_US,
        Arc::new(move || model_clock.load(Ordering::SeqCst)),
    );
    let mut case = Case {
        backend: Some(B::open(dir.path(), ops::consumers(), WINDOW_US).await),
        model,
        clock,
        now: 0,
        seqs: Vec::new(),
        refs: Vec::new(),
        last_taken: None,
        audit_seqs: Vec::new(),
        joined: false,
    };
    let mut result = Ok(());
    for (i, op) in ops.iter().enumerate() {
        let step = async {
            case.step(op, dir.path()).await?;
            case.compare_state().await
        };
        if let Err(e) = step.await {
            result = Err(format!("step {i} ({op:?}) of {}: {e}", ops.len()));
            break;
        }
    }
    // Closed on a failed case too: shrinking runs hundreds of them, and
    // PostgreSQL stores left open used up its connections, so the error
    // reported was a refused connection instead of the disagreement.
    if let Some(b) = case.backend.take() {
        b.close().await;
    }
    result
}

/// Makes the same call on the backend and on the model and compares the
/// two results as they are: `both!(case, "what", s => s.method(args))`.
macro_rules! both {
    ($case:expr, $what:expr, $s:ident => $call:expr) => {{
        let b = {
            let $s = $case.b();
            $call.await
        };
        let m = {
            let $s = $case.m();
            $call.await
        };
        same($what, norm::result(b, |r| r), norm::result(m, |r| r))
    }};
}

impl<B: Backend> Case<B> {
    fn b(&self) -> &dyn Store {
        match &self.backend {
            Some(b) => b.store(),
            None => unreachable!("the backend is only taken out during a restart"),
        }
    }

    fn m(&self) -> &dyn Store {
        &self.model
    }

    fn set_clock(&mut self, seq: u64) {
        self.clock.store(seq, Ordering::SeqCst);
        self.now = self.now.max(seq);
    }

    async fn step(&mut self, op: &Op, dir: &Path) -> Result<(), String> {
        let now = self.now;
        match op {
            Op::Put(p) => self.put(p).await,
            Op::Take {
                consumer,
                max,
                lease,
            } => self.take(*consumer, *max, *lease).await,
            Op::Settle {
                picks,
                stray,
                consumer,
            } => self.settle(picks, *stray, *consumer).await,
            Op::Advance { secs } => {
                self.now += secs * SEC;
                Ok(())
            }
            Op::Escalate => both!(self, "escalate_overdue", s => s.escalate_overdue(now)),
            Op::Replay { pick } => {
                let (c, seq) = self.pick_dead_letter(*pick).await;
                both!(self, &format!("replay {c} {seq}"), s => s.dead_letter_replay(c, seq))
            }
            Op::Discard { pick, reason } => {
                let (c, seq) = self.pick_dead_letter(*pick).await;
                let why = format!("operator: reason {reason}");
                both!(self, &format!("discard {c} {seq}"), s => s.dead_letter_discard(c, seq, why.clone()))
            }
            Op::Retention { policy } => {
                let p = ops::policy(*policy);
                both!(self, "apply_retention", s => s.apply_retention(p.clone(), now))
            }
            Op::Restart | Op::Join => {
                self.restart(dir, matches!(op, Op::Join)).await;
                Ok(())
            }
            Op::Search(s) => self.search(s).await,
            Op::DeadLetters {
                consumer,
                code,
                range,
                limit,
            } => self.dead_letters(*consumer, *code, *range, *limit).await,
            Op::AuditAppend { records } => self.audit_append(records).await,
            Op::AuditSearch {
                org,
                patient,
                count,
            } => self.audit_search(*org, *patient, *count).await,
            Op::AuditPrune { pick } => {
                let before = match self.audit_seqs.len() {
                    0 => 0,
                    n => self.audit_seqs[pick % n] + u64::from(pick % 2 == 0),
                };
                both!(self, "audit_prune", s => s.audit_prune(before))
            }
            Op::JtiClaim {
                client,
                jti,
                exp,
                now,
            } => {
                let (c, j) = (format!("client-{client}"), format!("jti-{jti}"));
                both!(self, "jti_claim", s => s.jti_claim(&c, &j, *exp, *now))
            }
            Op::JtiPrune { now } => both!(self, "jti_prune", s => s.jti_prune(*now)),
        }
    }

    async fn take(
        &mut self,
        consumer: usize,
        max: usize,
        lease: Option<u64>,
    ) -> Result<(), String> {
        let name = NAMES[consumer];
        let until = lease.map(|s| self.now + s * SEC);
        let b = self.b().take(name, max, self.now, until).await;
        let m = self.m().take(name, max, self.now, until).await;
        let taken = m
            .as_ref()
            .map(|v| v.iter().map(|i| i.resource.seq).collect())
            .unwrap_or_default();
        self.last_taken = Some((consumer, taken));
        same(
            "take",
            norm::result(b, norm::items),
            norm::result(m, norm::items),
        )
    }

    /// Settles picks from what the last take gave (or, `stray`, from every
    /// stored seq: items this consumer may never have taken).
    async fn settle(
        &mut self,
        picks: &[(usize, ops::Outcome)],
        stray: bool,
        consumer: usize,
    ) -> Result<(), String> {
        let (c, from) = match &self.last_taken {
            Some((c, seqs)) if !stray && !seqs.is_empty() => (*c, seqs.clone()),
            _ => (consumer, self.seqs.clone()),
        };
        if from.is_empty() {
            return Ok(());
        }
        let outcomes: Vec<(u64, Settle)> = picks
            .iter()
            .map(|(i, o)| (from[i % from.len()], settle(o)))
            .collect();
        both!(self, "settle", s => s.settle(NAMES[c], outcomes.clone()))
    }

    /// A restart of the backend (and the model); `join`: a destination is
    /// added to the configuration, and stays from then on.
    async fn restart(&mut self, dir: &Path, join: bool) {
        self.joined |= join;
        let specs = if self.joined {
            ops::consumers_after_join()
        } else {
            ops::consumers()
        };
        if let Some(b) = self.backend.take() {
            self.backend = Some(b.restart(dir, specs.clone(), WINDOW_US).await);
        }
        self.model.restart_with(specs);
    }

    async fn dead_letters(
        &self,
        consumer: Option<usize>,
        code: Option<usize>,
        range: Option<(usize, usize)>,
        limit: usize,
    ) -> Result<(), String> {
        let filter = DeadLetterFilter {
            destination: consumer.map(|c| NAMES[c].to_string()),
            from: range.and_then(|(a, _)| self.seq_at(a)).map(seq_to_time),
            to: range.and_then(|(_, b)| self.seq_at(b)).map(seq_to_time),
            code: code.map(|c| code_of(c).1.to_string()),
        };
        let b = self.b().dead_letters(filter.clone(), limit).await;
        let m = self.m().dead_letters(filter.clone(), limit).await;
        same(
            &format!("dead_letters {filter:?}"),
            norm::result(b, norm::dead_letters),
            norm::result(m, norm::dead_letters),
        )
    }

    async fn put(&mut self, p: &ops::PutOp) -> Result<(), String> {
        let rec = ops::record(p);
        let (org, rt) = (rec.municipality, rec.resource.resource_type);
        let b = self.b().put(rec.clone()).await;
        if let Ok(PutOutcome::Accepted(r)) = &b {
            let got = self.b().get(org, rt, r.id).await;
            match got {
                Ok(Some(s)) => self.set_clock(s.seq),
                other => return Err(format!("put accepted {r}, then get answered {other:?}")),
            }
        }
        let m = self.m().put(rec).await;
        same("put", norm::put(b.clone()), norm::put(m))?;
        if let Ok(PutOutcome::Accepted(r)) = b {
            self.seqs.push(self.clock.load(Ordering::SeqCst));
            self.refs.push((org, r));
        }
        Ok(())
    }

    fn seq_at(&self, i: usize) -> Option<u64> {
        match self.seqs.len() {
            0 => None,
            n => Some(self.seqs[i % n] + u64::from(i >= n)),
        }
    }

    /// The (consumer, seq) of a dead letter the model has, or one that
    /// surely has none.
    async fn pick_dead_letter(&self, pick: usize) -> (&'static str, u64) {
        let dls = self
            .m()
            .dead_letters(DeadLetterFilter::default(), usize::MAX)
            .await
            .unwrap_or_default();
        match dls.get(pick % dls.len().max(1)) {
            Some(d) => {
                let c = NAMES.iter().find(|n| **n == d.destination).copied();
                (c.unwrap_or(NAMES[0]), d.seq)
            }
            None => (NAMES[pick % NAMES.len()], self.seq_at(pick).unwrap_or(1)),
        }
    }

    async fn search(&self, s: &ops::SearchOp) -> Result<(), String> {
        let (min_seq, max_seq) = match s.range {
            Some((a, b)) => (
                self.seq_at(a).unwrap_or(0),
                self.seq_at(b).unwrap_or(u64::MAX),
            ),
            None => (0, u64::MAX),
        };
        let mut q = SearchQuery {
            municipality: ops::org(s.org),
            resource_type: if s.observation {
                ResourceType::Observation
            } else {
                ResourceType::Communication
            },
            patient: s.patient.map(ops::patient),
            codes: s
                .codes
                .iter()
                .map(|&(c, with_system)| {
                    let (system, code) = code_of(c);
                    Token {
                        system: with_system.then(|| system.to_string()),
                        code: code.to_string(),
                    }
                })
                .collect(),
            category: s.category.map(|c| ops::CATEGORIES[c].to_string()),
            min_seq,
            max_seq,
            after: None,
            count: s.count,
            descending: s.descending,
        };
        for page in 0..20 {
            let b = self.b().search(q.clone()).await;
            let m = self.m().search(q.clone()).await;
            let next = m.as_ref().ok().and_then(|p| p.next);
            same(
                &format!("search page {page} of {q:?}"),
                norm::result(b, norm::page),
                norm::result(m, norm::page),
            )?;
            match next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        Ok(())
    }

    async fn audit_append(&mut self, records: &[(usize, Option<usize>)]) -> Result<(), String> {
        let recs: Vec<AuditRecord> = records
            .iter()
            .map(|&(o, p)| AuditRecord {
                municipality: ops::org(o),
                agent: AuditAgent::Client("epj-client".into()),
                action: AuditAction::Read,
                query: None,
                resources: vec![],
                patients: p
                    .map(|i| AuditPatient {
                        system: ops::PATIENT_OID.into(),
                        pseudonym: format!("pseudonym-{i}"),
                        key: ops::patient(i),
                    })
                    .into_iter()
                    .collect(),
                outcome: AuditOutcome::Success,
            })
            .collect();
        let b = self
            .b()
            .audit_append(recs.clone())
            .await
            .map_err(|e| format!("audit_append: {e}"))?;
        same("audit_append count", b.len(), recs.len())?;
        // One at a time on the model, at the backend's seqs.
        for (seq, rec) in b.iter().zip(recs) {
            self.clock.store(*seq, Ordering::SeqCst);
            let m = self.m().audit_append(vec![rec]).await;
            same("audit_append seq", Ok(vec![*seq]), norm::result(m, |r| r))?;
            self.audit_seqs.push(*seq);
        }
        Ok(())
    }

    async fn audit_search(&self, org: usize, p: Option<usize>, count: usize) -> Result<(), String> {
        let mut q = AuditQuery {
            municipality: ops::org(org),
            patient: p.map(ops::patient),
            min_seq: 0,
            max_seq: u64::MAX,
            after: None,
            count,
        };
        for page in 0..20 {
            let b = self.b().audit_search(q.clone()).await;
            let m = self.m().audit_search(q.clone()).await;
            let next = m.as_ref().ok().and_then(|p| p.next);
            same(
                &format!("audit_search page {page} of {q:?}"),
                norm::result(b, norm::audit_page),
                norm::result(m, norm::audit_page),
            )?;
            match next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        Ok(())
    }

    /// Everything observable at rest: stats, delivery states, reads, dead letters.
    async fn compare_state(&self) -> Result<(), String> {
        for name in NAMES {
            let b = self.b().stats(name).await;
            let m = self.m().stats(name).await;
            same(
                &format!("stats {name}"),
                norm::result(b, norm::stats),
                norm::result(m, norm::stats),
            )?;
            for &seq in &self.seqs {
                let b = self.b().delivery_state(name, seq).await;
                let m = self.m().delivery_state(name, seq).await;
                same(
                    &format!("delivery_state {name} {seq}"),
                    norm::result(b, norm::state),
                    norm::result(m, norm::state),
                )?;
            }
        }
        for (org, r) in &self.refs {
            let b = self.b().get(*org, r.resource_type, r.id).await;
            let m = self.m().get(*org, r.resource_type, r.id).await;
            let res = |x: Option<super::StoredResource>| x.as_ref().map(norm::res);
            same(
                &format!("get {r}"),
                norm::result(b, res),
                norm::result(m, res),
            )?;
        }
        let all = DeadLetterFilter::default();
        let b = self.b().dead_letters(all.clone(), 1000).await;
        let m = self.m().dead_letters(all, 1000).await;
        same(
            "dead_letters",
            norm::result(b, norm::dead_letters),
            norm::result(m, norm::dead_letters),
        )
    }
}

fn settle(o: &ops::Outcome) -> Settle {
    match o {
        ops::Outcome::Delivered => Settle::Delivered,
        ops::Outcome::Release => Settle::Release,
        ops::Outcome::DeadLetter { attempts, error } => Settle::DeadLetter {
            attempts: *attempts,
            error: ops::ERRORS[error % ops::ERRORS.len()].to_string(),
            response: (*error == 0).then(|| "{\"resourceType\":\"OperationOutcome\"}".into()),
        },
    }
}

/// (system, code) by index: the measurement codes, then the alarm code.
fn code_of(i: usize) -> (&'static str, &'static str) {
    ops::CODES.get(i).copied().unwrap_or(ops::ALARM_CODE)
}
