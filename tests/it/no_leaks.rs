//! No spawned process outlives its test: a test that panics while it holds a [`ChildGuard`]
//! (a daemon, or strace and the daemon it traces) leaves nothing running, not even a zombie.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{spawn_serve_with, write_config};
use crate::harness::config_text;
use crate::process::{running, state, ChildGuard};

/// Runs `f`, which must panic; returns what it recorded before panicking. It records only once
/// its own checks passed, so a failed check (also a panic) is not taken for the deliberate one.
fn panicking<T>(f: impl FnOnce(&mut Option<T>)) -> T {
    let mut seen = None;
    let result = catch_unwind(AssertUnwindSafe(|| f(&mut seen)));
    assert!(result.is_err(), "the closure was meant to panic");
    seen.expect("the closure recorded what it started before panicking")
}

/// If the guard failed, the test still must not leak what it proved leaked.
fn kill_by_pid(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

#[test]
fn a_test_that_panics_while_its_daemon_runs_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_text(&dir.path().join("inbox.db"), "", ""));
    let pid = panicking(|seen| {
        let (daemon, addr, _log) =
            spawn_serve_with(&["serve", "--config", cfg.to_str().unwrap()], dir.path(), &[]);
        assert!(running(daemon.id()), "the daemon runs, listening on {addr}");
        *seen = Some(daemon.id());
        panic!("deliberate: a test fails while daemon {} runs", daemon.id());
    });
    // The guard's Drop ran during the unwind: the daemon was killed and reaped, so no process
    // (not even a zombie) has its pid any more.
    let left = state(pid);
    if left.is_some() {
        kill_by_pid(pid);
    }
    assert_eq!(left, None, "daemon {pid} outlived the test that panicked");
}

/// As strace runs the daemon it traces (tests/it/faults.rs): the guard also kills the processes
/// its own process started.
#[test]
fn a_test_that_panics_leaves_no_grandchild_running() {
    let (parent, grandchild) = panicking(|seen| {
        // Not `exec`: the shell forks `sleep` and waits for it, as strace does its tracee.
        let sh = ChildGuard::spawn(
            Command::new("sh")
                .args(["-c", "sleep 300; exit 0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let sleep = loop {
            if let [pid] = sh.children()[..] {
                break pid;
            }
            assert!(Instant::now() < deadline, "sh never started sleep");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(running(sh.id()) && running(sleep));
        *seen = Some((sh.id(), sleep));
        panic!("deliberate: a test fails while {} runs {sleep}", sh.id());
    });
    let leaked: Vec<u32> = [parent, grandchild].into_iter().filter(|&p| running(p)).collect();
    leaked.iter().for_each(|&p| kill_by_pid(p));
    assert!(leaked.is_empty(), "processes {leaked:?} outlived the test that panicked");
    // The direct child is reaped too; the grandchild is its orphan, reaped by init (or not, in
    // a container whose init does not), so it may linger as a zombie, but never runs.
    assert_eq!(state(parent), None, "sh {parent} was not reaped");
}
