//! The Markdown report: per-stage table, largest functions, notes.

use super::profile::Profile;
use super::share::stages;
use super::stages::{N, STAGES};

/// 1234567 → "1,234,567" (negative numbers too).
pub fn group(v: impl Into<i128>) -> String {
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
    "knutepunkt::deliver::bundle::transaction_bundle",
    "knutepunkt::audit::Auditor::patient_of",
    "knutepunkt::audit::Auditor::pseudonym",
    "knutepunkt::telemetry::join_event",
    "knutepunkt::ingest::Inner::handle::{{closure}}",
    "knutepunkt::deliver::push::run::{{closure}}",
];

/// The whole report: `head` (lines about the run), the per-stage table,
/// the `top` largest functions, notes.
pub fn report(
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
    stage_table(&mut s, &l, &b, net_total, ev);
    if top > 0 {
        top_functions(&mut s, loaded, base, &l_out, top, ev);
    }
    let refs = references(loaded, base, ev);
    sha_note(&mut s, loaded, ev);
    if !refs.is_empty() {
        s.push_str(&format!(
            "\nInclusive instructions/event of some functions (callgrind's own figure, for checking the split): {}\n",
            refs.join(", ")
        ));
    }
    s
}

/// The table of stages: load run minus baseline (`l` - `b`), per event.
fn stage_table(s: &mut String, l: &[u64; N], b: &[u64; N], net_total: i128, ev: f64) {
    let per = |x: i128| x as f64 / ev;
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
}

/// The largest functions by own instructions, net of the baseline, and
/// the stages they were charged to (`l_out`, from [`stages`]).
fn top_functions(
    s: &mut String,
    loaded: &Profile,
    base: Option<&Profile>,
    l_out: &[[f64; N]],
    top: usize,
    ev: f64,
) {
    let per = |x: i128| x as f64 / ev;
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

/// Inclusive instructions per event of the [`REFERENCE`] functions found.
fn references(loaded: &Profile, base: Option<&Profile>, ev: f64) -> Vec<String> {
    let per = |x: i128| x as f64 / ev;
    REFERENCE
        .iter()
        .filter_map(|f| {
            let l = loaded.inclusive(f)?;
            let b = base.and_then(|p| p.inclusive(f)).unwrap_or(0);
            Some(format!(
                "`{f}` {}",
                group(per(l as i128 - b as i128).round() as i128)
            ))
        })
        .collect()
}

/// Valgrind's CPU has no SHA extensions: the sha2 crate falls back to
/// its portable code, many times the instructions of SHA-NI.
fn sha_note(s: &mut String, loaded: &Profile, ev: f64) {
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
    fn grouping() {
        assert_eq!(group(0u64), "0");
        assert_eq!(group(1234567u64), "1,234,567");
        assert_eq!(group(-1000i64), "-1,000");
    }
}
