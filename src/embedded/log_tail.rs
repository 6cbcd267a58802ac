//! The tail of the server's log (`<data_dir>/postgres.log`) in error messages.
//!
//! When the server fails to start or stop, the reason is usually only in its
//! log, so those errors quote its last lines: the operator sees the cause in
//! chatpool's own error without having to find the file first.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How many lines of `postgres.log` an error quotes.
const LOG_TAIL_LINES: usize = 20;

pub(super) fn with_log_tail(mut detail: String, data_dir: &Path) -> String {
    let log = data_dir.join("postgres.log");
    match read_tail(&log, 64 * 1024) {
        Some(text) if !text.trim().is_empty() => {
            detail.push_str(&format!("\nLast lines of {}:\n", log.display()));
            detail.push_str(&tail_lines(&text, LOG_TAIL_LINES));
        }
        _ => detail.push_str(&format!("\n({} is empty or missing.)", log.display())),
    }
    detail
}

/// The last `max_bytes` of a file, lossily decoded.
fn read_tail(path: &Path, max_bytes: u64) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))
        .ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

pub(super) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = tail_lines(&text, LOG_TAIL_LINES);
        assert!(
            tail.starts_with("line 11\n") && tail.ends_with("line 30"),
            "{tail}"
        );
    }
}
