//! Sharing a profile's instructions out over the stages.

use super::profile::Profile;
use super::stages::{N, STAGES, Stage, classify};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgbench::profile::parse_from;

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
}
