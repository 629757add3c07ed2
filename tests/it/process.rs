//! One guard for every process a test starts. [`ChildGuard`] owns the `std::process::Child`;
//! when it is dropped (at the end of a test, or while a failing test unwinds) it SIGKILLs the
//! process, and the processes that process started itself (as strace starts the daemon it
//! traces), and reaps it. So no daemon outlives the test that started it, however the test ends.
//!
//! Shared by the `it` test binary and `tests/crash.rs` (through `#[path]`).

use std::io;
use std::process::{Child, ChildStderr, ChildStdin, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// How long a process may take to exit once it should (after SIGTERM, after a failpoint aborted
/// it): far above the shutdown grace the tests configure. One still running then fails its
/// test, and the guard kills it.
pub const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// A spawned process, killed and reaped when dropped unless it was already waited for.
#[derive(Debug)]
pub struct ChildGuard {
    /// `None` only once [`ChildGuard::wait_with_output`] has taken it (and reaped it).
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd` under the guard.
    pub fn spawn(cmd: &mut Command) -> io::Result<ChildGuard> {
        Ok(ChildGuard { child: Some(cmd.spawn()?) })
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the guard owns its process")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("the guard owns its process").id()
    }

    /// Its stdin pipe, taken (the command must have had `Stdio::piped()` for it).
    pub fn stdin(&mut self) -> ChildStdin {
        self.child().stdin.take().expect("stdin is piped")
    }

    /// Its stdout pipe, taken.
    pub fn stdout(&mut self) -> std::process::ChildStdout {
        self.child().stdout.take().expect("stdout is piped")
    }

    /// Its stderr pipe, taken.
    pub fn stderr(&mut self) -> ChildStderr {
        self.child().stderr.take().expect("stderr is piped")
    }

    /// Whether it has exited (and is then reaped, so its pid is never signalled again).
    fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// The pids of the processes it started (strace's daemon), while it runs.
    pub fn children(&self) -> Vec<u32> {
        let pid = self.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Sends it the signal `name` (`"TERM"`, `"KILL"`) with kill(1); whether that succeeded.
    /// A process that has already exited is not signalled (its pid may belong to another).
    pub fn signal(&mut self, name: &str) -> bool {
        if self.exited() {
            return false;
        }
        let pid = self.id().to_string();
        Command::new("kill").args([&format!("-{name}"), &pid]).status().is_ok_and(|s| s.success())
    }

    /// Waits until it exits, for at most `limit`; panics if it still runs then (and, dropped
    /// while the test unwinds, the guard kills it).
    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait().expect("wait for the process") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} still runs {limit:?} after it should have exited",
                self.id()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A graceful stop: SIGTERM, then at most [`EXIT_WITHIN`] for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_within(EXIT_WITHIN)
    }

    /// SIGKILL: no drain, no cleanup. Its own children first, then it; it is reaped, and they
    /// have stopped, when this returns.
    pub fn kill_now(&mut self) -> ExitStatus {
        self.kill_and_reap().expect("SIGKILL and reap the process")
    }

    fn kill_and_reap(&mut self) -> io::Result<ExitStatus> {
        let children = if self.exited() { Vec::new() } else { self.children() };
        for pid in &children {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let child = self.child();
        child.kill()?;
        let status = child.wait();
        // Its children are not ours to reap (they go to init once it is gone), but a SIGKILL
        // takes effect only when the process next runs: wait, bounded, until they no longer do.
        let deadline = Instant::now() + Duration::from_secs(5);
        while children.iter().any(|&pid| running(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        status
    }

    /// Waits for it to exit and collects what is left of its stdout and stderr, as
    /// [`Child::wait_with_output`] does.
    pub fn wait_with_output(mut self) -> io::Result<Output> {
        self.child.take().expect("the guard owns its process").wait_with_output()
    }
}

/// Whether process `pid` runs: it exists and is not a zombie (exited, waiting to be reaped).
pub fn running(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// The state letter of process `pid` in `/proc/<pid>/stat` (`R`, `S`, `Z` for a zombie...), or
/// `None` once no process has that pid.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (name) S ...": the name may hold spaces and parentheses; the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Never panic here: this runs while a failing test unwinds.
        if self.child.is_some() {
            let _ = self.kill_and_reap();
        }
    }
}
