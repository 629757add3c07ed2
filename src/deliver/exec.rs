//! Exec sinks: a command (no shell) run with the delivery on stdin.
//!
//! Its environment has `RECONCILED_ACTION_ID`, `RECONCILED_ACTION_KIND`,
//! `RECONCILED_IDEMPOTENCY_KEY` and `WEBHOOK_ID`. Exit 0 is a delivery. A non-zero exit, a
//! signal, a command that cannot start, and a run past the sink's timeout are retried: a broken
//! script must never drop a refund quietly. The command runs in a process group of its own,
//! and a run past the timeout is ended by killing the whole group, so that nothing it started
//! outlives it.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Outcome;
use crate::store::OutboxRow;

/// Longest stderr kept for the attempt's detail.
const MAX_STDERR: usize = 512;

/// Runs `command` for one delivery.
pub async fn run(
    command: &[String],
    body: &[u8],
    action: &OutboxRow,
    webhook_id: &str,
    timeout: Duration,
) -> Outcome {
    let failed = |why: String| Outcome { result: Err(why), retry_after: None };
    let Some((program, args)) = command.split_first() else {
        return failed("no command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("RECONCILED_ACTION_ID", action.id.to_string())
        .env("RECONCILED_ACTION_KIND", action.kind.as_str())
        .env("RECONCILED_IDEMPOTENCY_KEY", &action.idempotency_key)
        .env("WEBHOOK_ID", webhook_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run {program}: {e}")),
    };
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let finished = tokio::time::timeout(timeout, async {
        if let Some(mut input) = stdin.take() {
            // A command that does not read its input is its own business: its exit decides.
            let _ = input.write_all(body).await;
            drop(input);
        }
        let mut said = Vec::new();
        if let Some(err) = stderr.as_mut() {
            let _ = err.take(MAX_STDERR as u64 * 4).read_to_end(&mut said).await;
        }
        (child.wait().await, said)
    })
    .await;
    match finished {
        Err(_) => {
            if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            failed(format!("{program} ran past {} s and was killed", timeout.as_secs()))
        }
        Ok((Err(e), _)) => failed(format!("{program}: {e}")),
        Ok((Ok(status), _)) if status.success() => Outcome { result: Ok(()), retry_after: None },
        Ok((Ok(status), said)) => {
            let said =
                String::from_utf8_lossy(&said[..said.len().min(MAX_STDERR)]).trim().to_owned();
            let how = match status.code() {
                Some(code) => format!("exited with {code}"),
                None => "was killed by a signal".to_owned(),
            };
            if said.is_empty() {
                failed(format!("{program} {how}"))
            } else {
                failed(format!("{program} {how}: {said}"))
            }
        }
    }
}
