//! Running one command to completion: its input, its captured output, a
//! time limit, and turning a failure into an [`EmbeddedError::Command`].
//!
//! Everything the embedded cluster does goes through external binaries that
//! may hang (a server that never becomes ready) or fail with the reason only
//! in their output, so each run is bounded in time and its output is kept
//! for the error message.

use std::io::{self, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::log_tail::tail_lines;
use super::{EmbeddedError, LOG_TARGET};

#[derive(Debug)]
pub(super) enum RunError {
    Spawn(io::Error),
    Timeout(Duration),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Spawn(e) => write!(f, "could not run it: {e}"),
            RunError::Timeout(t) => write!(
                f,
                "it did not finish within {} s and was killed",
                t.as_secs()
            ),
        }
    }
}

pub(super) struct Output {
    pub(super) status: ExitStatus,
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: Vec<u8>,
}

/// Runs `cmd` to completion with `input` on stdin, capturing its output; kills
/// it after `timeout` so nothing here can hang forever.
pub(super) fn run(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, RunError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    tracing::debug!(target: LOG_TARGET, command = ?cmd, "running");
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;

    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let mut readers = 0;
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            let _ = tx.send((true, buf));
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let tx = tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let _ = tx.send((false, buf));
        });
    }
    drop(tx);
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        // A child that exits early closes the pipe; its status tells why.
        let _ = stdin.write_all(input);
    }

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Timeout(timeout));
            }
        }
    };

    // A daemonised grandchild could in theory keep a pipe open: never wait long.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..readers {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok((true, buf)) => stdout = buf,
            Ok((false, buf)) => stderr = buf,
            Err(_) => break,
        }
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

pub(super) fn describe_output(out: &Output) -> String {
    let mut text = format!("it exited with {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let combined = [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if !combined.is_empty() {
        text.push_str(". Its output:\n");
        text.push_str(&tail_lines(&combined, 40));
    }
    text
}

pub(super) fn check_success(
    step: &str,
    result: Result<Output, RunError>,
) -> Result<Output, EmbeddedError> {
    match result {
        Ok(out) if out.status.success() => Ok(out),
        Ok(out) => Err(EmbeddedError::Command {
            step: step.into(),
            detail: describe_output(&out),
        }),
        Err(e) => Err(EmbeddedError::Command {
            step: step.into(),
            detail: e.to_string(),
        }),
    }
}
