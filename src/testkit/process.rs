//! This process's resources, as `/proc` and `prlimit` see them.
//!
//! Tests and benches with hundreds or thousands of sockets hold both ends of
//! each in this one process, so they need more file descriptors than a
//! default soft limit allows; memory tests and the benchmark read this
//! process's resident memory. Linux only, like the server's deployment.

use std::process::Command;

/// This process's resident memory in KiB (`VmRSS`; 0 when unreadable).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Raises the soft open-files limit towards `wanted` (at most the hard
/// limit), using `prlimit` when the soft limit is lower; panics when it is low
/// and cannot be raised.
pub fn ensure_open_files(wanted: u64) {
    if let Err(e) = raise_open_files(wanted) {
        panic!("{e}");
    }
}

/// [`ensure_open_files`] that reports a failure instead of panicking, for a
/// run that can go on with fewer sockets.
pub fn raise_open_files(wanted: u64) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let numbers: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [soft, hard, ..] = numbers[..] else {
        return Ok(());
    };
    if soft >= wanted {
        return Ok(());
    }
    let target = wanted.min(hard);
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{hard}"))
        .status();
    if matches!(status, Ok(s) if s.success()) {
        Ok(())
    } else {
        Err(format!(
            "open-files limit is {soft} and prlimit could not raise it to {target}"
        ))
    }
}
