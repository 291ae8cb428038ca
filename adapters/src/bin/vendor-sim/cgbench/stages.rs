//! The stages of ingest and delivery, and the rules that give a function
//! (by its name, or by the source file its code comes from) a stage.

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

pub const STAGES: [Stage; 9] = [
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
pub const N: usize = STAGES.len();

impl Stage {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
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
    pub fn counted(self) -> &'static str {
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
pub fn classify_file(path: &str) -> Option<Stage> {
    let m = module_of_file(path)?;
    RULES
        .iter()
        .find(|(prefix, _)| prefix_matches(&m, prefix))
        .map(|(_, st)| *st)
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
}
