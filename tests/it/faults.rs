//! Storage faults: a full disk (the store on a small tmpfs) and failing `fsync` calls (injected
//! with strace). Neither may ever turn into a 2xx for a notification that is not durably stored,
//! corrupt the store, or need a restart to recover from.
//!
//! Both need root (to mount a tmpfs, to trace); they run when `RECONCILED_FAULT_TESTS=1`, which
//! `scripts/test.sh` sets when it runs as root and `.ci/run` always sets. Without it they say
//! so and pass, as the database tests do without their URLs.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::harness::{self, config_text, event, integrity, Daemon, SECRET};
use crate::process::ChildGuard;

fn enabled(test: &str) -> bool {
    match std::env::var("RECONCILED_FAULT_TESTS").as_deref() {
        Ok("1") => true,
        _ => {
            eprintln!("{test}: skipped (set RECONCILED_FAULT_TESTS=1, as root, to run it)");
            false
        }
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes a file until the file system has no room left; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5a_u8; 16 * 1024];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    // Whatever is left is smaller than a chunk: take it byte by byte.
    while f.write_all(&[0x5a]).and_then(|()| f.sync_all()).is_ok() {}
    path
}

fn dedup_keys(db: &Path) -> Vec<String> {
    let conn = crate::harness::sql(db);
    let mut stmt = conn.prepare("SELECT dedup_key FROM inbox ORDER BY dedup_key").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

async fn wait_ready(d: &Daemon, want: StatusCode, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, text) = d.get("/readyz").await;
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status} ({text:?}), wanted {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store's file system fills up: what cannot be stored gets 503 (never a 2xx), `/readyz`
/// says not ready, `/healthz` stays up; once space returns the daemon is ready again by itself,
/// the retries are stored, and every acknowledged notification is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_503_and_not_ready_and_recovers_when_space_returns() {
    if !enabled("a_full_disk_gets_503_and_not_ready_and_recovers_when_space_returns") {
        return;
    }
    let fs = Tmpfs::mount("4m");
    let d = Daemon::start_in(fs.path(), "", "").await;
    let (status, _) = d.post_stripe(SECRET, &event("evt_before_full")).await;
    assert_eq!(status, StatusCode::OK);
    wait_ready(&d, StatusCode::OK, Duration::from_secs(5)).await;

    let filler = fill(fs.path());
    let mut acked = BTreeSet::from(["evt_before_full".to_owned()]);
    let mut refused = Vec::new();
    // Keep sending until a run of refusals shows the store is out of room (free WAL pages may
    // take a few more rows first); every answer is a 200 or a 503, nothing else.
    for n in 0..2000 {
        let id = format!("evt_full_{n:04}");
        let (status, text) = d.post_stripe(SECRET, &event(&id)).await;
        match status {
            StatusCode::OK => {
                acked.insert(id);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(text.contains("store unavailable"), "{text}");
                refused.push(id);
            }
            other => panic!("{id}: {other} {text:?} on a full disk"),
        }
        if refused.len() >= 20 {
            break;
        }
    }
    assert!(refused.len() >= 20, "a full disk never refused a notification");
    eprintln!("full disk: {} acknowledged, then {} refused with 503", acked.len(), refused.len());
    wait_ready(&d, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    assert_eq!(d.get("/healthz").await.0, StatusCode::OK, "the daemon itself is alive");

    // Space returns; no restart.
    std::fs::remove_file(&filler).unwrap();
    wait_ready(&d, StatusCode::OK, Duration::from_secs(10)).await;
    // The provider retries what got 503.
    for id in &refused {
        let (status, text) = d.post_stripe(SECRET, &event(id)).await;
        assert_eq!(status, StatusCode::OK, "{id}: {text}");
        acked.insert(id.clone());
    }
    d.stop().await;

    let db = fs.path().join("inbox.db");
    assert_eq!(integrity(&db), "ok");
    let keys = dedup_keys(&db);
    let stored: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(stored.len(), keys.len(), "no notification is stored twice");
    assert_eq!(stored, acked, "every acknowledged notification, and only those");
}

/// Every `fsync` fails (strace injects EIO into the very syscall SQLite commits with): no
/// notification gets a 2xx, the daemon says it is not ready, and after a restart on a healthy
/// disk every retry is stored once and the store is intact.
#[test]
fn a_failing_fsync_never_gets_a_2xx() {
    if !enabled("a_failing_fsync_never_gets_a_2xx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inbox.db");
    let cfg = dir.path().join("reconciled.toml");
    std::fs::write(&cfg, config_text(&db, "", "")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let post = |addr, id: &str| rt.block_on(harness::try_post_signed(addr, event(id)));
    let get = |addr, path: &str| {
        rt.block_on(harness::try_request(addr, "GET", path, &[], Default::default()))
    };

    // A healthy first run creates the store and takes one notification.
    let (mut child, addr, _) = spawn(None, &cfg);
    assert_eq!(post(addr, "evt_healthy"), Ok((StatusCode::OK, "stored\n".to_owned())));
    child.kill_now();

    // Second run: every fsync and fdatasync fails.
    let trace = dir.path().join("strace.txt");
    let (mut strace, addr, _) = spawn(Some(&trace), &cfg);
    let ids: Vec<String> = (0..10).map(|n| format!("evt_eio_{n}")).collect();
    for id in &ids {
        match post(addr, id) {
            Ok((status, text)) => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{id}: {text}");
            }
            Err(e) => panic!("{id}: the daemon should answer 503, not fail: {e}"),
        }
    }
    let ready = get(addr, "/readyz").unwrap();
    assert_eq!(ready.0, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert_eq!(get(addr, "/healthz").unwrap().0, StatusCode::OK);
    // Stop the traced daemon (strace's only child) and strace with it.
    assert_eq!(strace.children().len(), 1, "strace runs the daemon");
    strace.kill_now();
    let traced = std::fs::read_to_string(&trace).unwrap();
    let injected = traced.lines().filter(|l| l.contains("EIO") && l.contains("(INJECTED)")).count();
    assert!(injected >= ids.len(), "each commit's sync failed by injection:\n{traced}");
    eprintln!("fsync: {injected} injected EIO, {} notifications refused with 503", ids.len());

    // Third run, healthy again: the provider retries and every notification is stored once.
    assert_eq!(integrity(&db), "ok");
    let (mut child, addr, _) = spawn(None, &cfg);
    for id in &ids {
        let (status, text) = post(addr, id).unwrap();
        // A commit record whose sync failed may still have reached the disk: then the retry
        // is a duplicate. Either way the provider gets its 200 only now.
        assert_eq!(status, StatusCode::OK, "{id}: {text}");
    }
    child.kill_now();
    assert_eq!(integrity(&db), "ok");
    let mut want: Vec<String> = ids.clone();
    want.push("evt_healthy".into());
    want.sort();
    assert_eq!(dedup_keys(&db), want);
}

/// Spawns `reconciled serve`, under `strace` injecting EIO into every fsync and fdatasync and
/// writing its trace to `trace` if given.
fn spawn(
    trace: Option<&Path>,
    cfg: &Path,
) -> (ChildGuard, std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    let bin = env!("CARGO_BIN_EXE_reconciled");
    let mut cmd = match trace {
        None => Command::new(bin),
        Some(trace) => {
            let mut c = Command::new("strace");
            c.args(["-f", "-qq", "-e", "trace=fsync,fdatasync"])
                .args(["-e", "inject=fsync,fdatasync:error=EIO", "-o"])
                .arg(trace)
                .arg(bin);
            c
        }
    };
    let mut child = ChildGuard::spawn(
        cmd.args(["serve", "--config"])
            .arg(cfg)
            .env("RECONCILED_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .expect("spawn (is strace installed?)");
    let (addr, _, rest) = harness::listening(&mut child);
    (child, addr, rest)
}
