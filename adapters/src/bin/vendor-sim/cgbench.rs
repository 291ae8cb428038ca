//! `vendor-sim bench-callgrind`: CPU instructions per accepted event, per
//! stage of ingest and delivery, counted by valgrind's callgrind.
//!
//! Why it exists: on a machine whose cores are shared, CPU seconds and
//! events/s move with the neighbours' load; the number of instructions the
//! hub executes per event does not. Two runs of the real hub under
//! `valgrind --tool=callgrind` (all threads summed): one that starts, idles
//! and stops (the baseline), one that takes a fixed SubmitStream load and
//! pushes every event to the real `epj-adapter`. The difference, divided by
//! the events accepted, is split into stages (TLS, protobuf/gRPC,
//! validation, FHIR JSON, hashing, store, delivery, allocator, other).
//!
//! How instructions are charged to stages: every function gets a stage
//! from its name ([`classify`]: the crate or module it belongs to, e.g.
//! `rustls::*` → TLS, `knutepunkt::normalize::*` → FHIR JSON), or none
//! (std, core, alloc, futures, memcpy, ...). A function's own instructions
//! go to its stage; a function without a stage runs on behalf of its
//! callers, so its own instructions are split over its callers' stages in
//! proportion to the instructions spent in the calls from each. That is the
//! innermost named stage on the call stack, exact for leaf functions
//! (memcpy) and a proportional estimate for shared callers deeper down.
//! Each instruction is counted once, so the stages add up to the total.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::process::Command;

use crate::Mode;
use crate::hubenv::{self, EpjProcess, HubProcess, PushDest};
use crate::load::{self, LoadArgs};

#[derive(Args, Debug)]
pub struct CallgrindArgs {
    /// The hub binary; default: `knutepunkt` next to this executable.
    #[arg(long)]
    pub hub_bin: Option<PathBuf>,
    /// The EPJ adapter binary; default: `epj-adapter` next to this executable.
    #[arg(long)]
    pub epj_bin: Option<PathBuf>,
    /// The valgrind binary.
    #[arg(long, default_value = "valgrind")]
    pub valgrind: PathBuf,
    /// Where the temporary directory goes; default: the system temp directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Events submitted in the load run (all for Oslo, the municipality with
    /// the push destination). With --analyze: the events the profile's run
    /// accepted.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    pub events: u64,
    /// SubmitStream clients (one TLS connection each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,
    /// Events in flight per stream.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,
    /// Baseline run: seconds the hub idles between ready and SIGTERM.
    #[arg(long, default_value = "5", value_parser = crate::parse_secs)]
    pub idle_secs: Duration,
    /// No baseline run: the load run's whole count (start-up included) is
    /// divided by the events.
    #[arg(long)]
    pub no_baseline: bool,
    /// No push destination and no EPJ adapter: ingest only.
    #[arg(long)]
    pub no_delivery: bool,
    /// Rows in the table of the largest functions.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(0..=500))]
    pub top: u32,
    /// Do not run anything: split an existing callgrind output file (of a
    /// run that accepted --events events) into stages.
    #[arg(long)]
    pub analyze: Option<PathBuf>,
    /// With --analyze: the baseline run's callgrind output file.
    #[arg(long, requires = "analyze")]
    pub analyze_baseline: Option<PathBuf>,
    /// Give up the load or the delivery after this many seconds.
    #[arg(long, default_value = "3600", value_parser = crate::parse_secs)]
    pub phase_timeout: Duration,
    /// Keep the temporary directory (callgrind output files, hub logs).
    #[arg(long)]
    pub keep: bool,
}

/// The stages, in the order of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Tls,
    Grpc,
    Validation,
    Fhir,
    Hashing,
    Store,
    Delivery,
    Allocator,
    Other,
}

const STAGES: [Stage; 9] = [
    Stage::Tls,
    Stage::Grpc,
    Stage::Validation,
    Stage::Fhir,
    Stage::Hashing,
    Stage::Store,
    Stage::Delivery,
    Stage::Allocator,
    Stage::Other,
];
const N: usize = STAGES.len();
/// A call from a function's own code (see [`Profile::calls`]).
const PLAIN: usize = usize::MAX;

impl Stage {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Stage::Tls => "TLS",
            Stage::Grpc => "protobuf + gRPC",
            Stage::Validation => "validation",
            Stage::Fhir => "FHIR JSON",
            Stage::Hashing => "hashing",
            Stage::Store => "store",
            Stage::Delivery => "delivery",
            Stage::Allocator => "allocator",
            Stage::Other => "other (runtime, glue)",
        }
    }

    /// What [`classify`] puts in the stage, for the table.
    fn counted(self) -> &'static str {
        match self {
            Stage::Tls => {
                "`rustls`, `tokio_rustls`, `webpki`, `aws_lc_rs`, aws-lc (`aws_lc_*`), `x509_parser`"
            }
            Stage::Grpc => {
                "`prost`, `knutepunkt::proto`, `tonic`, `h2` (not `h2::client`), `hyper` HTTP/2 and server, `tower`"
            }
            Stage::Validation => {
                "`knutepunkt::ingest::{validate, convert, VendorPolicy, limit}`, `knutepunkt::domain` (not `resource_id`), `governor`"
            }
            Stage::Fhir => "`knutepunkt::normalize`, `knutepunkt_fhir`, `fhir_sdk`, `serde_json`",
            Stage::Hashing => {
                "`sha1_smol`, `sha2`, `digest`, `uuid`, `hmac`, `knutepunkt::domain::resource_id`, `knutepunkt::store::patient_key`, `knutepunkt::ingest::content_hash`"
            }
            Stage::Store => {
                "`knutepunkt::store` (writer thread included), `fjall`, `lsm_tree`, `crossbeam_skiplist`, `postcard`, `lz4_flex`, `xxhash_rust`, `byteview`, `flume`, …"
            }
            Stage::Delivery => {
                "`knutepunkt::deliver`, `reqwest`, `hyper_util::client`, `hyper::client`, `hyper` HTTP/1 (only the push client speaks it in the run), `httparse`"
            }
            Stage::Allocator => {
                "`malloc`, `free`, `realloc`, glibc's `_int_*`, `__rust_alloc`/`__rdl_*`"
            }
            Stage::Other => {
                "`tokio::runtime`, `knutepunkt::ingest` glue (receipts, spans, metrics), thread roots, start-up; everything called only from these"
            }
        }
    }
}

const ALLOCATOR: [&str; 24] = [
    "malloc",
    "free",
    "realloc",
    "calloc",
    "cfree",
    "memalign",
    "aligned_alloc",
    "posix_memalign",
    "__posix_memalign",
    "_int_malloc",
    "_int_free",
    "_int_realloc",
    "_int_memalign",
    "malloc_consolidate",
    "sysmalloc",
    "systrim",
    "unlink_chunk",
    "tcache_init",
    "arena_get2",
    "__libc_malloc",
    "__libc_free",
    "__libc_realloc",
    "__libc_calloc",
    "__libc_memalign",
];

/// `(crate or module prefix, stage)`, the first match wins; a prefix ends
/// at `::` (or is the whole path).
const RULES: &[(&str, Stage)] = &[
    // jemalloc, should the hub link it.
    ("tikv_jemallocator", Stage::Allocator),
    ("tikv_jemalloc_sys", Stage::Allocator),
    // Hashing inside other stages' modules first.
    ("knutepunkt::domain::resource_id", Stage::Hashing),
    ("knutepunkt::store::patient_key", Stage::Hashing),
    ("knutepunkt::ingest::content_hash", Stage::Hashing),
    ("sha1_smol", Stage::Hashing),
    ("sha1", Stage::Hashing),
    ("sha2", Stage::Hashing),
    ("digest", Stage::Hashing),
    ("block_buffer", Stage::Hashing),
    ("uuid", Stage::Hashing),
    ("hmac", Stage::Hashing),
    // Validation.
    ("knutepunkt::ingest::validate", Stage::Validation),
    ("knutepunkt::ingest::convert", Stage::Validation),
    ("knutepunkt::ingest::VendorPolicy", Stage::Validation),
    ("knutepunkt::ingest::limit", Stage::Validation),
    ("knutepunkt::domain", Stage::Validation),
    ("governor", Stage::Validation),
    // The rest of ingest is the glue between the stages.
    ("knutepunkt::ingest", Stage::Other),
    // FHIR JSON.
    ("knutepunkt::normalize", Stage::Fhir),
    ("knutepunkt_fhir", Stage::Fhir),
    ("fhir_sdk", Stage::Fhir),
    ("serde_json", Stage::Fhir),
    // Store.
    ("knutepunkt::store", Stage::Store),
    ("fjall", Stage::Store),
    ("lsm_tree", Stage::Store),
    ("crossbeam_skiplist", Stage::Store),
    ("crossbeam_epoch", Stage::Store),
    ("postcard", Stage::Store),
    ("lz4_flex", Stage::Store),
    ("xxhash_rust", Stage::Store),
    ("byteview", Stage::Store),
    ("byteorder_lite", Stage::Store),
    ("flume", Stage::Store),
    ("dashmap", Stage::Store),
    ("quick_cache", Stage::Store),
    ("interval_heap", Stage::Store),
    ("varint_rs", Stage::Store),
    ("sfa", Stage::Store),
    // Delivery (HTTP/1 client to the EPJ).
    ("knutepunkt::deliver", Stage::Delivery),
    ("reqwest", Stage::Delivery),
    ("hyper_util::client", Stage::Delivery),
    ("hyper::client", Stage::Delivery),
    ("hyper::proto::h1", Stage::Delivery),
    ("httparse", Stage::Delivery),
    ("h2::client", Stage::Delivery),
    // TLS.
    ("rustls", Stage::Tls),
    ("tokio_rustls", Stage::Tls),
    ("hyper_rustls", Stage::Tls),
    ("webpki", Stage::Tls),
    ("rustls_webpki", Stage::Tls),
    ("rustls_pki_types", Stage::Tls),
    ("aws_lc_rs", Stage::Tls),
    ("aws_lc_sys", Stage::Tls),
    ("x509_parser", Stage::Tls),
    ("der_parser", Stage::Tls),
    ("asn1_rs", Stage::Tls),
    ("untrusted", Stage::Tls),
    // Protobuf and gRPC over HTTP/2.
    ("knutepunkt::proto", Stage::Grpc),
    ("prost", Stage::Grpc),
    ("prost_types", Stage::Grpc),
    ("tonic", Stage::Grpc),
    ("tonic_prost", Stage::Grpc),
    ("tonic_health", Stage::Grpc),
    ("h2", Stage::Grpc),
    ("hyper", Stage::Grpc),
    ("hyper_util", Stage::Grpc),
    ("tower", Stage::Grpc),
    ("tower_http", Stage::Grpc),
    // The runtime's scheduler.
    ("tokio::runtime", Stage::Other),
];

/// The paths a symbol may belong to: for `<A as B>::f` first A, then B
/// (an impl of a crate's trait on a std type belongs to the crate), else
/// the name itself. Leading `&`, `mut`, `dyn` are dropped.
fn owners(name: &str) -> Vec<&str> {
    fn clean(s: &str) -> &str {
        let mut s = s.trim();
        loop {
            let before = s;
            for p in ["&", "mut ", "dyn ", "*const ", "*mut ", "("] {
                s = s.strip_prefix(p).unwrap_or(s).trim_start();
            }
            if s == before {
                return s;
            }
        }
    }
    let Some(rest) = name.strip_prefix('<') else {
        return vec![clean(name)];
    };
    // Find " as " and the closing '>' at depth 0 of `rest`.
    let (mut depth, mut as_at, mut end) = (0i32, None, None);
    let b = rest.as_bytes();
    for (i, c) in b.iter().enumerate() {
        match c {
            b'<' => depth += 1,
            b'>' if depth == 0 => {
                end = Some(i);
                break;
            }
            b'>' => depth -= 1,
            b' ' if depth == 0 && as_at.is_none() && rest[i..].starts_with(" as ") => {
                as_at = Some(i)
            }
            _ => {}
        }
    }
    let end = end.unwrap_or(rest.len());
    match as_at {
        Some(a) if a < end => vec![clean(&rest[..a]), clean(&rest[a + 4..end])],
        _ => vec![clean(&rest[..end])],
    }
}

fn prefix_matches(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|r| r.is_empty() || r.starts_with("::") || r.starts_with('<'))
}

/// The stage a function (a demangled callgrind name) belongs to, or None
/// when it works for whoever calls it.
pub fn classify(name: &str) -> Option<Stage> {
    // Rust's allocator shims: `__rustc::__rdl_alloc` and the like.
    let name = name.strip_prefix("__rustc::").unwrap_or(name);
    if ALLOCATOR.contains(&name)
        || [
            "__rust_alloc",
            "__rust_dealloc",
            "__rust_realloc",
            "__rdl_",
            "__rg_",
            "tcache_",
            // jemalloc (tikv-jemalloc-sys prefixes its symbols with _rjem_).
            "_rjem_",
            "je_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return Some(Stage::Allocator);
    }
    if name.starts_with("aws_lc_") {
        return Some(Stage::Tls);
    }
    for path in owners(name) {
        for (prefix, stage) in RULES {
            if prefix_matches(path, prefix) {
                return Some(*stage);
            }
        }
    }
    None
}

/// The module a source file holds, from its path: a crate in Cargo's
/// registry (`.../fjall-3.1.13/src/tree/mod.rs` → `fjall::tree`), the hub's
/// own sources (`.../src/store/embedded/writer.rs` →
/// `knutepunkt::store::embedded::writer`), aws-lc's C sources; None for
/// the standard library, libc and the unknown.
fn module_of_file(path: &str) -> Option<String> {
    if path.contains("/aws-lc/") || path.contains("aws-lc-sys") {
        return Some("aws_lc_sys".into());
    }
    if path.starts_with("/rustc/") || !path.starts_with('/') {
        return None;
    }
    let rel_to_src = |base: &str, krate: &str| {
        let rel = base.split_once("/src/").map_or("", |(_, r)| r);
        let mut parts: Vec<&str> = vec![krate];
        for seg in rel.trim_end_matches(".rs").split('/') {
            if !["mod", "lib", "main", ""].contains(&seg) {
                parts.push(seg);
            }
        }
        parts.join("::")
    };
    if let Some((_, rest)) = path.split_once("/registry/src/") {
        // index.crates.io-HASH/NAME-VERSION/src/...
        let mut it = rest.splitn(3, '/');
        let (_, dir, tail) = (it.next()?, it.next()?, it.next().unwrap_or(""));
        let name = match dir.rsplit_once('-') {
            Some((n, v)) if v.starts_with(|c: char| c.is_ascii_digit()) => n,
            _ => dir,
        };
        return Some(rel_to_src(&format!("/{tail}"), &name.replace('-', "_")));
    }
    if path.contains("/build/knutepunkt-") && path.contains("/out/") {
        return Some("knutepunkt::proto".into());
    }
    if let Some((_, rest)) = path.split_once("/crates/knutepunkt-fhir/") {
        return Some(rel_to_src(&format!("/{rest}"), "knutepunkt_fhir"));
    }
    // The hub's own crate: the last `/src/` that is not an adapter's.
    if path.contains("/adapters/") {
        return None;
    }
    let (_, rel) = path.rsplit_once("/src/")?;
    Some(rel_to_src(&format!("/src/{rel}"), "knutepunkt"))
}

/// The stage of code from a source file (see [`module_of_file`]).
fn classify_file(path: &str) -> Option<Stage> {
    let m = module_of_file(path)?;
    RULES
        .iter()
        .find(|(prefix, _)| prefix_matches(&m, prefix))
        .map(|(_, st)| *st)
}

/// One callgrind output file: own instructions per function and the
/// instructions of the calls between functions.
#[derive(Default)]
pub struct Profile {
    pub names: Vec<String>,
    ids: HashMap<String, usize>,
    pub own: Vec<u64>,
    /// The part of `own` that is code inlined from another source file
    /// with a stage of its own (e.g. the store writer's loop inlined into
    /// the thread's start function), per stage.
    pub inlined: Vec<[u64; N]>,
    /// The stage of the file each function is defined in.
    pub file_stage: Vec<Option<Stage>>,
    /// (caller, callee, stage of the calling code if it is inlined from a
    /// file with a stage, else [`PLAIN`]) → instructions in those calls
    /// (inclusive).
    pub calls: HashMap<(usize, usize, usize), u64>,
    /// Calls into each function (callgrind's `calls=` counts).
    pub ncalls: HashMap<usize, u64>,
    /// The file's `totals:` (or `summary:`) line.
    pub total: u64,
}

impl Profile {
    fn intern(&mut self, name: &str) -> usize {
        if let Some(&i) = self.ids.get(name) {
            return i;
        }
        let i = self.names.len();
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), i);
        self.own.push(0);
        self.inlined.push([0; N]);
        self.file_stage.push(None);
        i
    }

    /// Own instructions of every function by name.
    fn own_by_name(&self) -> HashMap<&str, u64> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.own.iter().copied())
            .collect()
    }

    /// Own + called instructions of the function named `name`.
    fn inclusive(&self, name: &str) -> Option<u64> {
        let &i = self.ids.get(name)?;
        let called: u64 = self
            .calls
            .iter()
            .filter(|((c, f, _), _)| *c == i && *f != i)
            .map(|(_, w)| *w)
            .sum();
        Some(self.own[i] + called)
    }
}

/// Reads a callgrind output file (the first event, Ir, only). Handles
/// compressed (`(id) name`) and plain names and relative positions.
pub fn parse(path: &Path) -> Result<Profile> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse_from(std::io::BufReader::new(f)).with_context(|| format!("reading {}", path.display()))
}

fn parse_from(r: impl BufRead) -> Result<Profile> {
    let mut p = Profile::default();
    // Compressed names (`(id) name`, later `(id)`): functions and files
    // have separate id spaces.
    let mut fn_ids: HashMap<String, String> = HashMap::new();
    let mut file_ids: HashMap<String, String> = HashMap::new();
    let name_of = |ids: &mut HashMap<String, String>, s: &str| -> String {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix('(')
            && let Some((id, name)) = rest.split_once(')')
        {
            let name = name.trim();
            if name.is_empty() {
                return ids.get(id).cloned().unwrap_or_else(|| s.to_string());
            }
            ids.insert(id.to_string(), name.to_string());
            return name.to_string();
        }
        s.to_string()
    };
    let mut file_stages: HashMap<String, Option<Stage>> = HashMap::new();
    let mut stage_of_file = |f: &str| -> Option<Stage> {
        *file_stages
            .entry(f.to_string())
            .or_insert_with(|| classify_file(f))
    };
    let mut positions = 1usize;
    let (mut cur, mut callee, mut call_cost_next, mut skip_next) = (None, None, false, false);
    let (mut totals, mut summary) = (None, None);
    // The file of the current function (fl=) and of the current cost lines
    // (fl=, fi=, fe=): they differ in code inlined from elsewhere.
    let (mut fl_file, mut fn_file, mut line_file) = (String::new(), String::new(), String::new());
    let mut line_stage: Option<Stage> = None;
    for line in r.lines() {
        let line = line?;
        let first = line.as_bytes().first().copied().unwrap_or(b'#');
        if first.is_ascii_digit() || first == b'+' || first == b'-' || first == b'*' {
            if skip_next {
                skip_next = false;
                continue;
            }
            let cost: u64 = line
                .split_whitespace()
                .nth(positions)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let Some(f) = cur else { continue };
            if call_cost_next {
                call_cost_next = false;
                if let Some(c) = callee {
                    let from = match line_stage {
                        Some(st) if line_file != fn_file => st.index(),
                        _ => PLAIN,
                    };
                    *p.calls.entry((f, c, from)).or_insert(0) += cost;
                }
            } else {
                p.own[f] += cost;
                if line_file != fn_file
                    && let Some(st) = line_stage
                {
                    p.inlined[f][st.index()] += cost;
                }
            }
        } else if let Some(n) = line.strip_prefix("fn=") {
            let n = name_of(&mut fn_ids, n);
            let f = p.intern(&n);
            if p.file_stage[f].is_none() {
                p.file_stage[f] = stage_of_file(&fl_file);
            }
            cur = Some(f);
            callee = None;
            fn_file = fl_file.clone();
            line_file = fl_file.clone();
            line_stage = stage_of_file(&line_file);
        } else if let Some(n) = line.strip_prefix("fl=") {
            fl_file = name_of(&mut file_ids, n);
            line_file = fl_file.clone();
            line_stage = stage_of_file(&line_file);
        } else if let Some(n) = line
            .strip_prefix("fi=")
            .or_else(|| line.strip_prefix("fe="))
        {
            line_file = name_of(&mut file_ids, n);
            line_stage = stage_of_file(&line_file);
        } else if let Some(n) = line
            .strip_prefix("cfi=")
            .or_else(|| line.strip_prefix("cfl="))
        {
            // The callee's file: only registers a compressed name.
            name_of(&mut file_ids, n);
        } else if let Some(n) = line.strip_prefix("cfn=") {
            let n = name_of(&mut fn_ids, n);
            callee = Some(p.intern(&n));
        } else if let Some(v) = line.strip_prefix("calls=") {
            call_cost_next = true;
            if let (Some(c), Some(n)) = (
                callee,
                v.split_whitespace()
                    .next()
                    .and_then(|t| t.parse::<u64>().ok()),
            ) {
                *p.ncalls.entry(c).or_insert(0) += n;
            }
        } else if line.starts_with("jump=") || line.starts_with("jcnd=") {
            skip_next = true;
        } else if let Some(v) = line.strip_prefix("positions:") {
            positions = v.split_whitespace().count().max(1);
        } else if let Some(v) = line.strip_prefix("events:") {
            if v.split_whitespace().next() != Some("Ir") {
                bail!("the first event is not Ir: events:{v}");
            }
        } else if let Some(v) = line.strip_prefix("totals:") {
            totals = v.split_whitespace().next().and_then(|t| t.parse().ok());
        } else if let Some(v) = line.strip_prefix("summary:") {
            summary = v.split_whitespace().next().and_then(|t| t.parse().ok());
        }
    }
    let own: u64 = p.own.iter().sum();
    p.total = totals.or(summary).unwrap_or(own);
    Ok(p)
}

/// Instructions per stage: each function's own instructions to its stage,
/// or (no stage) to its callers' stages in proportion to the calls; code
/// inlined from a file with a stage goes to that stage. Also, per function,
/// the instructions charged to each stage.
pub fn stages(p: &Profile) -> ([u64; N], Vec<[f64; N]>) {
    let n = p.names.len();
    let label: Vec<Option<Stage>> = p
        .names
        .iter()
        .zip(&p.file_stage)
        .map(|(s, fs)| classify(s).or(*fs))
        .collect();
    let onehot = |s: Stage| {
        let mut v = [0.0; N];
        v[s.index()] = 1.0;
        v
    };
    // Incoming calls: from a function (its stage or context), or from code
    // inlined into it from a file with a stage (that stage).
    let mut incoming: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    let mut fixed: Vec<Vec<([f64; N], f64)>> = vec![Vec::new(); n];
    for (&(caller, callee, from), &w) in &p.calls {
        if caller == callee || w == 0 {
            continue;
        }
        match STAGES.get(from) {
            Some(st) => fixed[callee].push((onehot(*st), w as f64)),
            None => incoming[callee].push((caller, w as f64)),
        }
    }
    let other = onehot(Stage::Other);
    // Where each function's instructions go; labelled functions are fixed.
    let mut out: Vec<[f64; N]> = label.iter().map(|l| l.map_or(other, onehot)).collect();
    // Gauss-Seidel until the shares settle (recursion through unlabelled
    // functions converges geometrically).
    for _ in 0..1000 {
        let mut change = 0.0f64;
        for f in 0..n {
            if label[f].is_some() || (incoming[f].is_empty() && fixed[f].is_empty()) {
                continue;
            }
            let sum: f64 = incoming[f].iter().map(|x| x.1).sum::<f64>()
                + fixed[f].iter().map(|x| x.1).sum::<f64>();
            let mut v = [0.0; N];
            for &(c, w) in &incoming[f] {
                for (k, x) in v.iter_mut().enumerate() {
                    *x += w / sum * out[c][k];
                }
            }
            for (st, w) in &fixed[f] {
                for (k, x) in v.iter_mut().enumerate() {
                    *x += w / sum * st[k];
                }
            }
            for k in 0..N {
                change = change.max((v[k] - out[f][k]).abs());
            }
            out[f] = v;
        }
        if change < 1e-9 {
            break;
        }
    }
    // Per function, where its own instructions went.
    let mut charged = vec![[0f64; N]; n];
    let mut by_stage = [0f64; N];
    for f in 0..n {
        let direct: u64 = p.inlined[f].iter().sum();
        let rest = p.own[f].saturating_sub(direct) as f64;
        for k in 0..N {
            charged[f][k] = p.inlined[f][k] as f64 + rest * out[f][k];
            by_stage[k] += charged[f][k];
        }
    }
    (by_stage.map(|x| x.round() as u64), charged)
}

struct RunResult {
    profile: Profile,
    accepted: u64,
    delivered: u64,
    load_secs: f64,
    wall_secs: f64,
}

fn valgrind_wrapper(valgrind: &Path, out: &Path) -> Vec<OsString> {
    let mut file = OsString::from("--callgrind-out-file=");
    file.push(out);
    vec![
        valgrind.as_os_str().to_owned(),
        "--tool=callgrind".into(),
        file,
        "--separate-threads=no".into(),
        "--compress-strings=no".into(),
        "--compress-pos=no".into(),
    ]
}

struct Env<'a> {
    a: &'a CallgrindArgs,
    hub_bin: &'a Path,
    work: &'a Path,
    certs: &'a Path,
    epj: Option<&'a EpjProcess>,
}

/// One hub under callgrind: `events` events (and their delivery), or with
/// 0 an idle hub; then SIGTERM and the profile.
async fn run_hub(e: &Env<'_>, kind: &str, events: u64) -> Result<RunResult> {
    let dir = e.work.join(kind);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("callgrind.out");
    let dest = e.epj.map(|epj| PushDest {
        url: epj.fhir_url(),
        ca_file: epj.cert.clone(),
        max_batch: 1000,
        max_rate: 1_000_000,
        pull: false,
    });
    let t0 = Instant::now();
    eprintln!("bench-callgrind: {kind} run: starting the hub under callgrind");
    let wrapper = valgrind_wrapper(&e.a.valgrind, &out);
    let hub = HubProcess::start_wrapped(e.hub_bin, &dir, e.certs, dest.as_ref(), &wrapper).await?;
    eprintln!(
        "bench-callgrind: {kind} run: hub ready after {:.0} s (pid {})",
        t0.elapsed().as_secs_f64(),
        hub.pid
    );
    let result = drive(e, &hub, kind, events).await;
    eprintln!("bench-callgrind: {kind} run: stopping the hub (callgrind writes its profile)");
    let stopped = hub.stop_within(Duration::from_secs(900)).await;
    let (accepted, delivered, load_secs) = result?;
    eprintln!("bench-callgrind: {}", stopped?);
    let wall_secs = t0.elapsed().as_secs_f64();
    let path = out.clone();
    let profile = tokio::task::spawn_blocking(move || parse(&path))
        .await
        .context("parsing task failed")??;
    eprintln!(
        "bench-callgrind: {kind} run: {} instructions in {:.0} s",
        group(profile.total),
        wall_secs
    );
    Ok(RunResult {
        profile,
        accepted,
        delivered,
        load_secs,
        wall_secs,
    })
}

/// The load and the wait for its delivery, or the idle wait.
async fn drive(e: &Env<'_>, hub: &HubProcess, kind: &str, events: u64) -> Result<(u64, u64, f64)> {
    if events == 0 {
        tokio::time::sleep(e.a.idle_secs).await;
        return Ok((0, 0, 0.0));
    }
    let created0 = match e.epj {
        Some(epj) => epj.stats().await?.created,
        None => 0,
    };
    let mut l = LoadArgs::new(hub.grpc, hub.conn(), Mode::Stream, e.a.clients, events);
    l.window = e.a.window;
    l.prefix = Some(format!("cg-{kind}"));
    l.seed = 21;
    l.oslo_only = true;
    l.max_time = e.a.phase_timeout;
    eprintln!(
        "bench-callgrind: {kind} run: {events} events, {} SubmitStream clients × window {}",
        e.a.clients, e.a.window
    );
    let t = Instant::now();
    let r = load::run(&l, true).await?;
    let load_secs = t.elapsed().as_secs_f64();
    if r.accepted == 0 {
        bail!(
            "no event accepted ({} rejected, {} errors; first: {})",
            r.rejected,
            r.errors,
            r.first_error.unwrap_or_default()
        );
    }
    let delivered = match e.epj {
        Some(epj) => {
            crate::delivery::wait_created(
                epj,
                "delivery",
                created0,
                created0 + r.accepted,
                e.a.phase_timeout,
            )
            .await?;
            epj.stats().await?.created - created0
        }
        None => 0,
    };
    Ok((r.accepted, delivered, load_secs))
}

async fn valgrind_version(valgrind: &Path) -> Result<String> {
    let out = Command::new(valgrind)
        .arg("--version")
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} --version (install valgrind: apt-get install valgrind)",
                valgrind.display()
            )
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub async fn run(a: CallgrindArgs) -> Result<()> {
    if let Some(file) = &a.analyze {
        let loaded = parse(file)?;
        let base = match &a.analyze_baseline {
            Some(b) => Some(parse(b)?),
            None => None,
        };
        let head = vec![format!(
            "- profile {}{}; {} events accepted (--events)",
            file.display(),
            a.analyze_baseline
                .as_ref()
                .map(|b| format!(", baseline {}", b.display()))
                .unwrap_or_default(),
            a.events
        )];
        println!(
            "{}",
            report(&loaded, base.as_ref(), a.events, a.top as usize, &head)
        );
        return Ok(());
    }
    let version = valgrind_version(&a.valgrind).await?;
    let hub_bin = hubenv::sibling_bin(a.hub_bin.clone(), "knutepunkt")?;
    let parent = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("knutepunkt-bench-callgrind-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let load_start = hubenv::loadavg_line("load average at the start");
    eprintln!(
        "bench-callgrind: work directory {}; {version}; {load_start}",
        work.path().display()
    );
    let certs = work.path().join("certs");
    hubenv::make_certs(&hub_bin, &certs).await?;
    let epj = if a.no_delivery {
        None
    } else {
        let epj_bin = hubenv::sibling_bin(a.epj_bin.clone(), "epj-adapter")?;
        Some(EpjProcess::start(&epj_bin, &work.path().join("epj"), "ok").await?)
    };
    let env = Env {
        a: &a,
        hub_bin: &hub_bin,
        work: work.path(),
        certs: &certs,
        epj: epj.as_ref(),
    };
    let runs = async {
        let base = if a.no_baseline {
            None
        } else {
            Some(run_hub(&env, "idle", 0).await?)
        };
        let loaded = run_hub(&env, "load", a.events).await?;
        Ok::<_, anyhow::Error>((base, loaded))
    }
    .await;
    if let Some(epj) = epj {
        eprintln!("bench-callgrind: {}", epj.stop().await?);
    }
    let (base, loaded) = runs?;
    let load_end = hubenv::loadavg_line("at the end");
    let mut head = vec![
        format!(
            "- hub: `{}` under `{version} --tool=callgrind --separate-threads=no` (every thread of the hub counted; instructions in the kernel, i.e. system calls and fsync, are not)",
            hub_bin.display()
        ),
        format!(
            "- load run: {} events for Oslo over SubmitStream ({} clients × window {}, mutual TLS), {} accepted in {:.0} s; {}; {:.0} s under callgrind in all",
            a.events,
            a.clients,
            a.window,
            loaded.accepted,
            loaded.load_secs,
            if a.no_delivery {
                "no push destination".to_string()
            } else {
                format!(
                    "push destination to the epj-adapter (HTTPS, max_batch 1000): {} delivered",
                    loaded.delivered
                )
            },
            loaded.wall_secs
        ),
    ];
    match &base {
        Some(b) => head.push(format!(
            "- baseline run: the same hub started, ready, idle {:.0} s, stopped ({:.0} s under callgrind): {} instructions, subtracted stage by stage",
            a.idle_secs.as_secs_f64(),
            b.wall_secs,
            group(b.profile.total)
        )),
        None => head.push("- no baseline run: start-up and shutdown are in the figures".into()),
    }
    head.push(format!("- {load_start}; {load_end}"));
    println!(
        "{}",
        report(
            &loaded.profile,
            base.as_ref().map(|b| &b.profile),
            loaded.accepted,
            a.top as usize,
            &head
        )
    );
    if a.keep {
        let kept = work.keep();
        eprintln!("bench-callgrind: kept {}", kept.display());
    }
    Ok(())
}

/// 1234567 → "1,234,567" (negative numbers too).
fn group(v: impl Into<i128>) -> String {
    let v: i128 = v.into();
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// The functions whose inclusive cost the report shows for reference.
const REFERENCE: &[&str] = &[
    "knutepunkt::ingest::validate",
    "knutepunkt::normalize::normalize",
    "knutepunkt::ingest::content_hash::content_hash",
    "knutepunkt::domain::resource_id",
    "knutepunkt::store::patient_key",
    "knutepunkt::deliver::push::transaction_bundle",
    "knutepunkt::audit::Auditor::patient_of",
    "knutepunkt::audit::Auditor::pseudonym",
    "knutepunkt::telemetry::join_event",
    "knutepunkt::ingest::Inner::handle::{{closure}}",
    "knutepunkt::deliver::push::run::{{closure}}",
];

fn report(
    loaded: &Profile,
    base: Option<&Profile>,
    events: u64,
    top: usize,
    head: &[String],
) -> String {
    let ev = events.max(1) as f64;
    let (l, l_out) = stages(loaded);
    let b = base.map(|p| stages(p).0).unwrap_or([0; N]);
    let base_total = base.map_or(0, |p| p.total);
    let net_total = loaded.total as i128 - base_total as i128;
    let per = |x: i128| x as f64 / ev;
    let mut s = String::from("### `vendor-sim bench-callgrind`, as printed\n\n");
    for h in head {
        s.push_str(h);
        s.push('\n');
    }
    s.push_str(&format!(
        "- instructions: load run {}, baseline {}, difference {} = **{} per accepted event**\n\n",
        group(loaded.total),
        group(base_total),
        group(net_total),
        group(per(net_total).round() as i128)
    ));
    s.push_str("| stage | functions (the innermost on the call stack wins; others' instructions go to their callers' stages) | instructions/event | share |\n|---|---|---:|---:|\n");
    for st in STAGES {
        let k = st.index();
        let net = l[k] as i128 - b[k] as i128;
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} % |\n",
            st.name(),
            st.counted(),
            group(per(net).round() as i128),
            100.0 * net as f64 / net_total.max(1) as f64
        ));
    }
    s.push_str(&format!(
        "| **total** | | **{}** | 100 % |\n",
        group(per(net_total).round() as i128)
    ));

    // The largest functions by own instructions, net of the baseline.
    let base_own = base.map(|p| p.own_by_name()).unwrap_or_default();
    let mut rows: Vec<(i128, usize)> = loaded
        .own
        .iter()
        .enumerate()
        .map(|(i, &o)| {
            let b = base_own.get(loaded.names[i].as_str()).copied().unwrap_or(0);
            (o as i128 - b as i128, i)
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    if top > 0 {
        s.push_str(&format!(
            "\nThe {top} functions with the most own instructions (load run minus baseline), and where they were charged:\n\n| function | own instructions/event | charged to |\n|---|---:|---|\n"
        ));
        for &(net, i) in rows.iter().take(top) {
            let own = loaded.own[i].max(1) as f64;
            let shares: Vec<String> = STAGES
                .iter()
                .filter(|st| l_out[i][st.index()] / own >= 0.005)
                .map(|st| format!("{} {:.0} %", st.name(), 100.0 * l_out[i][st.index()] / own))
                .collect();
            s.push_str(&format!(
                "| `{}` | {} | {} |\n",
                short(&loaded.names[i]),
                group(per(net).round() as i128),
                shares.join(", ")
            ));
        }
    }
    let refs: Vec<String> = REFERENCE
        .iter()
        .filter_map(|f| {
            let l = loaded.inclusive(f)?;
            let b = base.and_then(|p| p.inclusive(f)).unwrap_or(0);
            Some(format!(
                "`{f}` {}",
                group(per(l as i128 - b as i128).round() as i128)
            ))
        })
        .collect();
    // Valgrind's CPU has no SHA extensions: the sha2 crate falls back to
    // its portable code, many times the instructions of SHA-NI.
    if let Some(&i) = loaded.ids.get("sha2::sha256::compress256") {
        let calls = loaded.ncalls.get(&i).copied().unwrap_or(0) as f64 / ev;
        let own = loaded.own[i] as f64 / ev;
        let shani = loaded
            .names
            .iter()
            .any(|n| n.starts_with("sha2::sha256::x86::digest_blocks"));
        if !shani && calls > 0.0 {
            s.push_str(&format!(
                "\nNote: under valgrind (no SHA-NI) the sha2 crate ran its portable SHA-256: {calls:.1} calls of `sha2::sha256::compress256` per event (one or more 64-byte blocks each), {} own instructions per event ({} per call); on a CPU with SHA-NI the hub uses that instead, which this count does not show.\n",
                group(own.round() as i128),
                group((own / calls).round() as i128)
            ));
        }
    }
    if !refs.is_empty() {
        s.push_str(&format!(
            "\nInclusive instructions/event of some functions (callgrind's own figure, for checking the split): {}\n",
            refs.join(", ")
        ));
    }
    s
}

/// A long symbol cut to 110 characters for the table; `|` escaped.
fn short(name: &str) -> String {
    let n: String = if name.chars().count() > 110 {
        let mut t: String = name.chars().take(107).collect();
        t.push('…');
        t
    } else {
        name.to_string()
    };
    n.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_to_their_stages() {
        let cases = [
            (
                "rustls::conn::ConnectionCommon<T>::read_tls",
                Some(Stage::Tls),
            ),
            (
                "aws_lc_0_32_0_sha256_block_data_order_avx",
                Some(Stage::Tls),
            ),
            (
                "<knutepunkt::proto::v1::Event as prost::message::Message>::merge_field",
                Some(Stage::Grpc),
            ),
            (
                "<alloc::string::String as prost::message::Message>::merge",
                Some(Stage::Grpc),
            ),
            ("knutepunkt::ingest::validate", Some(Stage::Validation)),
            ("knutepunkt::normalize::measurement", Some(Stage::Fhir)),
            (
                "<&mut serde_json::ser::Serializer<W,F> as serde::ser::Serializer>::serialize_str",
                Some(Stage::Fhir),
            ),
            ("knutepunkt::domain::resource_id", Some(Stage::Hashing)),
            ("sha1_smol::Sha1::update", Some(Stage::Hashing)),
            ("knutepunkt::store::patient_key", Some(Stage::Hashing)),
            (
                "knutepunkt::store::embedded::writer::Writer::commit_group",
                Some(Stage::Store),
            ),
            ("lsm_tree::memtable::Memtable::insert", Some(Stage::Store)),
            (
                "knutepunkt::deliver::push::run::{{closure}}",
                Some(Stage::Delivery),
            ),
            ("malloc", Some(Stage::Allocator)),
            ("__rust_dealloc", Some(Stage::Allocator)),
            ("__rustc::__rdl_alloc", Some(Stage::Allocator)),
            ("_rjem_malloc", Some(Stage::Allocator)),
            (
                "<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::alloc",
                Some(Stage::Allocator),
            ),
            (
                "knutepunkt::ingest::Inner::process::{{closure}}",
                Some(Stage::Other),
            ),
            (
                "tokio::runtime::scheduler::multi_thread::worker::run",
                Some(Stage::Other),
            ),
            ("__memcpy_avx_unaligned_erms", None),
            ("alloc::raw_vec::RawVec<T,A>::grow_one", None),
            (
                "<core::pin::Pin<P> as core::future::future::Future>::poll",
                None,
            ),
            (
                "hyper::proto::h2::server::H2Stream<F,B>::poll2",
                Some(Stage::Grpc),
            ),
            ("hyperx::foo", None),
        ];
        for (name, want) in cases {
            assert_eq!(classify(name), want, "{name}");
        }
    }

    #[test]
    fn unlabelled_functions_split_over_their_callers() {
        // root → validate (100 own) → memcpy (40 own, from validate)
        // root → rustls (50 own) → memcpy (60 own, from rustls)
        let text = "\
events: Ir
fn=(1) root
1 10
cfn=(2) knutepunkt::ingest::validate
calls=1 1
1 140
cfn=(3) rustls::x
calls=1 1
1 110
fn=(2)
1 100
cfn=(4) memcpy_like
calls=1 1
1 40
fn=(3)
1 50
cfn=(4)
calls=1 1
1 60
fn=(4)
1 100
totals: 260
";
        let p = parse_from(std::io::Cursor::new(text)).expect("parses");
        assert_eq!(p.total, 260);
        assert_eq!(p.own.iter().sum::<u64>(), 260);
        let (by, _) = stages(&p);
        assert_eq!(by[Stage::Validation.index()], 140);
        assert_eq!(by[Stage::Tls.index()], 110);
        assert_eq!(by[Stage::Other.index()], 10);
        assert_eq!(by.iter().sum::<u64>(), 260);
        assert_eq!(p.inclusive("root"), Some(260));
    }

    #[test]
    fn files_go_to_their_modules() {
        let cases = [
            (
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/fjall-3.1.13/src/tree/mod.rs",
                Some("fjall::tree"),
                Some(Stage::Store),
            ),
            (
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/hyper-1.7.0/src/proto/h1/conn.rs",
                Some("hyper::proto::h1::conn"),
                Some(Stage::Delivery),
            ),
            (
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.48.0/src/runtime/task/harness.rs",
                Some("tokio::runtime::task::harness"),
                Some(Stage::Other),
            ),
            (
                "/work/wt-cg/src/store/embedded/writer.rs",
                Some("knutepunkt::store::embedded::writer"),
                Some(Stage::Store),
            ),
            (
                "/work/wt-cg/src/ingest/content_hash.rs",
                Some("knutepunkt::ingest::content_hash"),
                Some(Stage::Hashing),
            ),
            (
                "/aws-lc/crypto/fipsmodule/ml_kem/mlkem/poly.c",
                Some("aws_lc_sys"),
                Some(Stage::Tls),
            ),
            (
                "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/vec/mod.rs",
                None,
                None,
            ),
            ("./string/../sysdeps/x86_64/multiarch/memmove.S", None, None),
        ];
        for (path, module, stage) in cases {
            assert_eq!(module_of_file(path).as_deref(), module, "{path}");
            assert_eq!(classify_file(path), stage, "{path}");
        }
    }

    #[test]
    fn inlined_code_goes_to_its_file() {
        let text = "\
events: Ir
fl=/rustc/x/library/std/src/sys/backtrace.rs
fn=(1) std::sys::backtrace::__rust_begin_short_backtrace
1 10
fi=/work/kp/src/store/embedded/writer.rs
2 30
fe=/rustc/x/library/std/src/sys/backtrace.rs
3 5
totals: 45
";
        let p = parse_from(std::io::Cursor::new(text)).expect("parses");
        let (by, _) = stages(&p);
        assert_eq!(by[Stage::Store.index()], 30);
        assert_eq!(by[Stage::Other.index()], 15);
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0u64), "0");
        assert_eq!(group(1234567u64), "1,234,567");
        assert_eq!(group(-1000i64), "-1,000");
    }
}
