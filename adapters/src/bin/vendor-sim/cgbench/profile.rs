//! Reading a callgrind output file into a [`Profile`].

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::stages::{N, Stage, classify_file};

/// A call from a function's own code (see [`Profile::calls`]).
pub const PLAIN: usize = usize::MAX;

/// One callgrind output file: own instructions per function and the
/// instructions of the calls between functions.
#[derive(Default)]
pub struct Profile {
    pub names: Vec<String>,
    pub ids: HashMap<String, usize>,
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
    pub fn own_by_name(&self) -> HashMap<&str, u64> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.own.iter().copied())
            .collect()
    }

    /// Own + called instructions of the function named `name`.
    pub fn inclusive(&self, name: &str) -> Option<u64> {
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

pub fn parse_from(r: impl BufRead) -> Result<Profile> {
    let mut st = Parser::default();
    for line in r.lines() {
        let line = line?;
        let first = line.as_bytes().first().copied().unwrap_or(b'#');
        if first.is_ascii_digit() || first == b'+' || first == b'-' || first == b'*' {
            st.cost_line(&line);
        } else {
            st.spec_line(&line)?;
        }
    }
    let own: u64 = st.p.own.iter().sum();
    st.p.total = st.totals.or(st.summary).unwrap_or(own);
    Ok(st.p)
}

/// A name as callgrind writes it, compressed (`(id) name`, later `(id)`)
/// or plain; `ids` holds the compressed names seen so far.
fn name_of(ids: &mut HashMap<String, String>, s: &str) -> String {
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
}

/// The stage of a source file, [`classify_file`] once per file.
fn stage_of_file(cache: &mut HashMap<String, Option<Stage>>, f: &str) -> Option<Stage> {
    *cache
        .entry(f.to_string())
        .or_insert_with(|| classify_file(f))
}

/// The state of [`parse_from`] between lines.
struct Parser {
    p: Profile,
    /// Compressed names: functions and files have separate id spaces.
    fn_ids: HashMap<String, String>,
    file_ids: HashMap<String, String>,
    file_stages: HashMap<String, Option<Stage>>,
    positions: usize,
    cur: Option<usize>,
    callee: Option<usize>,
    call_cost_next: bool,
    skip_next: bool,
    totals: Option<u64>,
    summary: Option<u64>,
    /// The file of the current function (fl=) and of the current cost
    /// lines (fl=, fi=, fe=): they differ in code inlined from elsewhere.
    fl_file: String,
    fn_file: String,
    line_file: String,
    line_stage: Option<Stage>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            p: Profile::default(),
            fn_ids: HashMap::new(),
            file_ids: HashMap::new(),
            file_stages: HashMap::new(),
            positions: 1,
            cur: None,
            callee: None,
            call_cost_next: false,
            skip_next: false,
            totals: None,
            summary: None,
            fl_file: String::new(),
            fn_file: String::new(),
            line_file: String::new(),
            line_stage: None,
        }
    }
}

impl Parser {
    /// A cost line: the current function's own instructions, or (after
    /// `calls=`) the instructions of a call.
    fn cost_line(&mut self, line: &str) {
        if self.skip_next {
            self.skip_next = false;
            return;
        }
        let cost: u64 = line
            .split_whitespace()
            .nth(self.positions)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let Some(f) = self.cur else { return };
        let p = &mut self.p;
        if self.call_cost_next {
            self.call_cost_next = false;
            if let Some(c) = self.callee {
                let from = match self.line_stage {
                    Some(st) if self.line_file != self.fn_file => st.index(),
                    _ => PLAIN,
                };
                *p.calls.entry((f, c, from)).or_insert(0) += cost;
            }
        } else {
            p.own[f] += cost;
            if self.line_file != self.fn_file
                && let Some(st) = self.line_stage
            {
                p.inlined[f][st.index()] += cost;
            }
        }
    }

    /// The code of cost lines to come now comes from the file `f`.
    fn set_line_file(&mut self, f: String) {
        self.line_file = f;
        self.line_stage = stage_of_file(&mut self.file_stages, &self.line_file);
    }

    /// Any other line: names, positions, events, totals.
    fn spec_line(&mut self, line: &str) -> Result<()> {
        if let Some(n) = line.strip_prefix("fn=") {
            let n = name_of(&mut self.fn_ids, n);
            let f = self.p.intern(&n);
            if self.p.file_stage[f].is_none() {
                self.p.file_stage[f] = stage_of_file(&mut self.file_stages, &self.fl_file);
            }
            self.cur = Some(f);
            self.callee = None;
            self.fn_file = self.fl_file.clone();
            self.set_line_file(self.fl_file.clone());
        } else if let Some(n) = line.strip_prefix("fl=") {
            self.fl_file = name_of(&mut self.file_ids, n);
            self.set_line_file(self.fl_file.clone());
        } else if let Some(n) = line
            .strip_prefix("fi=")
            .or_else(|| line.strip_prefix("fe="))
        {
            let f = name_of(&mut self.file_ids, n);
            self.set_line_file(f);
        } else if let Some(n) = line
            .strip_prefix("cfi=")
            .or_else(|| line.strip_prefix("cfl="))
        {
            // The callee's file: only registers a compressed name.
            name_of(&mut self.file_ids, n);
        } else if let Some(n) = line.strip_prefix("cfn=") {
            let n = name_of(&mut self.fn_ids, n);
            self.callee = Some(self.p.intern(&n));
        } else if let Some(v) = line.strip_prefix("calls=") {
            self.call_cost_next = true;
            if let (Some(c), Some(n)) = (
                self.callee,
                v.split_whitespace()
                    .next()
                    .and_then(|t| t.parse::<u64>().ok()),
            ) {
                *self.p.ncalls.entry(c).or_insert(0) += n;
            }
        } else if line.starts_with("jump=") || line.starts_with("jcnd=") {
            self.skip_next = true;
        } else if let Some(v) = line.strip_prefix("positions:") {
            self.positions = v.split_whitespace().count().max(1);
        } else if let Some(v) = line.strip_prefix("events:") {
            if v.split_whitespace().next() != Some("Ir") {
                bail!("the first event is not Ir: events:{v}");
            }
        } else if let Some(v) = line.strip_prefix("totals:") {
            self.totals = v.split_whitespace().next().and_then(|t| t.parse().ok());
        } else if let Some(v) = line.strip_prefix("summary:") {
            self.summary = v.split_whitespace().next().and_then(|t| t.parse().ok());
        }
        Ok(())
    }
}
