//! One daemon per SQLite store: an exclusive lock on a file beside the database.
//!
//! Claims are held in the daemon's memory (see [`super::queue`]), so a second daemon on the
//! same file would decide rows the first one is deciding. The daemon takes an exclusive
//! `flock` on `{store}.lock` when it opens the store and writes its process id into it. The
//! kernel releases the lock when the holder exits, however it exits (SIGKILL, a crash, a lost
//! power supply empties it with everything else), so a stale file never blocks a start. The
//! command line's read-only commands and tools do not take it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use crate::store::StoreError;

/// The lock on a store, held while this value lives.
#[derive(Debug)]
pub(super) struct Owner {
    file: File,
}

/// The lock file of a store.
pub fn lock_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl Owner {
    /// Takes the store's lock, or says which process holds it.
    pub(super) fn take(store: &Path) -> Result<Owner, StoreError> {
        let path = lock_path(store);
        let open_error = |e: std::io::Error| StoreError::Open {
            path: store.to_owned(),
            message: format!("lock file {}: {e}", path.display()),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_error)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::InUse {
                    path: store.to_owned(),
                    holder: if holder.is_empty() {
                        "a process that has not written its id yet".to_owned()
                    } else {
                        holder.to_owned()
                    },
                    lock: path,
                });
            }
            Err(e) => return Err(open_error(e.into())),
        }
        let who =
            format!("pid {} (reconciled {})\n", std::process::id(), env!("CARGO_PKG_VERSION"));
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(who.as_bytes()))
            .map_err(open_error)?;
        Ok(Owner { file })
    }

    /// Lets the lock go (it goes anyway when the value is dropped or the process ends).
    pub(super) fn release(self) {
        let _ = self.file.set_len(0);
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_and_told_who_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("inbox.db");
        let first = Owner::take(&store).unwrap();
        let err = Owner::take(&store).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::InUse { .. }), "{text}");
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        assert!(text.contains("inbox.db.lock"), "{text}");
        first.release();
        // Released: the next one takes it, even though the file is still there.
        assert!(lock_path(&store).exists());
        let again = Owner::take(&store).unwrap();
        drop(again);
        Owner::take(&store).unwrap();
    }
}
