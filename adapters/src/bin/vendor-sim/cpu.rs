//! CPU time of processes from /proc, so a bench can say whether the
//! machine's cores, not the design, set a rate.

/// Ticks per second in /proc/<pid>/stat: USER_HZ, which Linux fixes at 100
/// for user space on every architecture the hub is built for.
const USER_HZ: f64 = 100.0;

/// (comm, user + system CPU seconds) of `pid`.
fn stat(pid: &str) -> Option<(String, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may hold spaces: split at the last ')'.
    let (head, rest) = s.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are 11 and 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / USER_HZ))
}

/// CPU seconds `pid` has used so far (0 if it is gone).
pub fn of_pid(pid: u32) -> f64 {
    stat(&pid.to_string()).map_or(0.0, |(_, s)| s)
}

/// CPU seconds this process has used so far.
pub fn of_self() -> f64 {
    stat("self").map_or(0.0, |(_, s)| s)
}

/// CPU seconds used so far by every live process named `comm` (e.g. all of
/// a PostgreSQL server's processes); processes that ended are not counted.
pub fn of_name(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            stat(&name).filter(|(c, _)| c == comm).map(|(_, s)| s)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_uses_cpu() {
        let before = super::of_self();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(super::of_self() >= before);
        assert!(super::of_pid(std::process::id()) > 0.0);
    }
}
