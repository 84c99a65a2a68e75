//! One `zigtorrent run` per state folder: an advisory lock on `<state>/zigtorrent.lock`.
//!
//! The lock is `flock(LOCK_EX | LOCK_NB)` on the open file, held for the life of the process
//! and released by the kernel when it ends, however it ends: a crashed or killed owner never
//! leaves a stale lock behind, so there is nothing to clean up and no PID to trust. The owner's
//! PID is written into the file only so a second start can name it. The file is never deleted:
//! removing it while a third process waits could let two processes lock two different files.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rustix::fs::{flock, FlockOperation};

/// Name of the lock file in the state folder.
pub const LOCK_FILE: &str = "zigtorrent.lock";

/// How much of the lock file is read for the holder's PID (a PID is at most 10 digits).
const MAX_PID_BYTES: u64 = 64;
/// The holder writes its PID just after locking: if we read an empty file, look again this
/// many times, this far apart, before saying the PID is unknown.
const PID_RETRIES: u32 = 20;
const PID_RETRY_DELAY: Duration = Duration::from_millis(5);

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    // Holding the descriptor open is what holds the lock.
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Take the lock of `state_dir` (which must exist), or fail with one line naming the holder.
pub fn acquire(state_dir: &Path) -> anyhow::Result<InstanceLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(LOCK_FILE);
    // No O_TRUNC: the holder's PID must survive our open. O_NOFOLLOW: a link planted in the
    // state folder must not make us write our PID into some other file.
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let holder = match read_pid(&mut file) {
                Some(pid) => format!("PID {pid}"),
                None => "a process whose PID is not written yet".to_string(),
            };
            bail!(
                "another zigtorrent ({holder}) is already running on state folder {}: lock {} is held",
                state_dir.display(),
                path.display()
            );
        }
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write lock file {}", path.display()))?;
    Ok(InstanceLock { _file: file, path })
}

/// The PID of a `zigtorrent` running on `state_dir`, if one is: the PID in the lock file, if
/// that process is alive and runs a `zigtorrent` binary. Only reads (taking even a shared lock
/// could make a client starting at that moment fail), so it is a good guess, not a guarantee.
pub fn running_pid(state_dir: &Path) -> Option<u32> {
    let text = std::fs::read(state_dir.join(LOCK_FILE)).ok()?;
    let text = text.get(..text.len().min(MAX_PID_BYTES as usize))?;
    let pid: u32 = std::str::from_utf8(text).ok()?.trim().parse().ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    // This very binary (whatever it is called), or one named `zigtorrent` (a binary replaced
    // while running reads `zigtorrent (deleted)`).
    let ours = std::env::current_exe().ok().is_some_and(|me| me == exe);
    let name = exe.file_name()?.to_string_lossy().into_owned();
    (ours || name == "zigtorrent" || name == "zigtorrent (deleted)").then_some(pid)
}

/// The PID the holder wrote, if it is there yet.
fn read_pid(file: &mut File) -> Option<u32> {
    for attempt in 0..PID_RETRIES {
        if attempt > 0 {
            std::thread::sleep(PID_RETRY_DELAY);
        }
        let mut text = String::new();
        let read = file.rewind().and_then(|()| {
            Read::by_ref(file)
                .take(MAX_PID_BYTES)
                .read_to_string(&mut text)
        });
        if read.is_ok() {
            if let Ok(pid) = text.trim().parse::<u32>() {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder_and_the_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).unwrap();
        assert_eq!(first.path(), dir.path().join(LOCK_FILE));
        let written = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        // flock locks belong to the open file, so a second open in the same process conflicts
        // just as another process would.
        let err = format!("{:#}", acquire(dir.path()).unwrap_err());
        assert!(
            err.contains(&format!("PID {}", std::process::id()))
                && err.contains(&*first.path().to_string_lossy()),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        drop(first);
        let again = acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn the_running_holder_is_found_by_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running_pid(dir.path()), None);
        // A live PID of another program (init) does not count.
        std::fs::write(dir.path().join(LOCK_FILE), "1\n").unwrap();
        assert_eq!(running_pid(dir.path()), None);
        // This binary does, whatever its name.
        let me = std::process::id();
        std::fs::write(dir.path().join(LOCK_FILE), format!("{me}\n")).unwrap();
        assert_eq!(running_pid(dir.path()), Some(me));
    }

    #[test]
    fn a_stale_pid_without_a_lock_is_no_obstacle() {
        let dir = tempfile::tempdir().unwrap();
        // A crashed owner leaves its PID behind but no lock.
        std::fs::write(dir.path().join(LOCK_FILE), "999999999\n").unwrap();
        let lock = acquire(dir.path()).unwrap();
        let written = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_FILE)).unwrap();
        assert!(acquire(dir.path()).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }
}
