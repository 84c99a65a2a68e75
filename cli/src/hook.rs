//! `--on-complete PROGRAM`: when a torrent finishes downloading in this session, run PROGRAM
//! with the torrent's name and the path of its data as its two arguments. Never through a shell
//! (a name is hostile text: it is one argument, whatever it holds); the same values are in the
//! environment as `ZIGTORRENT_NAME`, `ZIGTORRENT_PATH` and `ZIGTORRENT_INFO_HASH`. Its output
//! goes nowhere (the menu owns the terminal); its exit status is logged. At most
//! [`MAX_RUNNING`] run at once, the others wait their turn; none is killed, and quitting the
//! client does not wait for them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::bail;
use tokio::sync::Semaphore;
use zigtorrent_engine::{InfoHash, Session, TorrentStatus};

/// Programs running at once.
const MAX_RUNNING: usize = 4;

/// How often the session is looked at: `completed_at` stays set, so nothing is missed.
const POLL: Duration = Duration::from_secs(1);

/// Refuse a program that cannot run, at start rather than at the first completion. A bare name
/// is looked up in `PATH` when it runs.
pub fn check_program(program: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if program.as_os_str().is_empty() {
        bail!("the program is empty");
    }
    if program.components().count() == 1 && !program.is_absolute() {
        return Ok(());
    }
    let md =
        std::fs::metadata(program).map_err(|e| anyhow::anyhow!("{}: {e}", program.display()))?;
    if !md.is_file() || md.permissions().mode() & 0o111 == 0 {
        bail!("{} is not an executable file", program.display());
    }
    Ok(())
}

/// Torrents whose completion was already handled.
#[derive(Default)]
pub struct Completions {
    done: HashSet<(InfoHash, std::time::SystemTime)>,
}

impl Completions {
    /// The torrents that completed since the last look, from a snapshot of every torrent.
    pub fn new_ones<'a>(&mut self, snapshot: &'a [TorrentStatus]) -> Vec<&'a TorrentStatus> {
        let out = self.changed(snapshot);
        // Forget torrents that left the session.
        let present: HashSet<_> = snapshot.iter().map(|t| t.info_hash).collect();
        self.done.retain(|(h, _)| present.contains(h));
        out
    }

    /// The torrents of `changed` (some torrents whose status changed) that completed since
    /// the last look.
    pub fn changed<'a>(&mut self, changed: &'a [TorrentStatus]) -> Vec<&'a TorrentStatus> {
        let mut out = Vec::new();
        for t in changed {
            if let Some(at) = t.completed_at {
                if self.done.insert((t.info_hash, at)) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// A torrent left the session (one added again is handled again).
    pub fn forget(&mut self, gone: &InfoHash) {
        self.done.retain(|(h, _)| h != gone);
    }
}

/// Where a torrent's data is: its file, or its top folder, under `downloads` (its folder).
pub fn data_path(downloads: &Path, t: &TorrentStatus) -> PathBuf {
    let top = t
        .files
        .first()
        .and_then(|f| f.path.components().next())
        .map(|c| PathBuf::from(c.as_os_str()))
        .unwrap_or_else(|| PathBuf::from(&t.name));
    downloads.join(top)
}

/// Watch the session until `stop` fires, running `program` for each completion.
pub async fn run(
    program: PathBuf,
    downloads: PathBuf,
    session: Weak<Session>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let downloads = std::path::absolute(&downloads).unwrap_or(downloads);
    let slots = Arc::new(Semaphore::new(MAX_RUNNING));
    let mut completions = Completions::default();
    let mut tick = tokio::time::interval(POLL);
    // Only torrents whose status changed are looked at (the session's change log): 10,000
    // torrents copied every second cost more than they do themselves at rest.
    let mut next = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let Some(s) = session.upgrade() else { return };
        let changes = s.status_changes(next);
        next = Some(changes.next);
        let (snapshot, full): (Vec<TorrentStatus>, bool) = match changes.changed {
            None => (s.torrents().iter().map(|t| t.status()).collect(), true),
            Some(hashes) => {
                let mut present = Vec::new();
                for h in hashes {
                    match s.torrent(&h) {
                        Some(t) => present.push(t.status()),
                        None => completions.forget(&h),
                    }
                }
                (present, false)
            }
        };
        drop(s);
        let new = if full {
            completions.new_ones(&snapshot)
        } else {
            completions.changed(&snapshot)
        };
        for t in new {
            // The torrent's own folder: the completed folder once its files moved there.
            let base = if t.download_dir.as_os_str().is_empty() {
                downloads.clone()
            } else {
                std::path::absolute(&t.download_dir).unwrap_or_else(|_| t.download_dir.clone())
            };
            let path = data_path(&base, t);
            let (name, hash) = (t.name.clone(), t.info_hash);
            let program = program.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                if slots.available_permits() == 0 {
                    tracing::warn!(program = %program.display(), %name, "waiting: {MAX_RUNNING} on-complete programs are still running");
                }
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let child = tokio::process::Command::new(&program)
                    .arg(&name)
                    .arg(&path)
                    .env("ZIGTORRENT_NAME", &name)
                    .env("ZIGTORRENT_PATH", &path)
                    .env("ZIGTORRENT_INFO_HASH", hash.to_hex())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                match child {
                    Ok(mut child) => match child.wait().await {
                        Ok(status) => {
                            tracing::info!(program = %program.display(), %name, %status, "on-complete program ended")
                        }
                        Err(e) => {
                            tracing::warn!(program = %program.display(), %name, error = %e, "on-complete program lost")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(program = %program.display(), %name, error = %e, "cannot run the on-complete program")
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_completion_counts_once() {
        let mut t = TorrentStatus::new("a".into(), InfoHash([1; 20]), 10, 1);
        let mut c = Completions::default();
        assert!(c.new_ones(std::slice::from_ref(&t)).is_empty());
        t.completed_at = Some(std::time::SystemTime::now());
        assert_eq!(c.new_ones(std::slice::from_ref(&t)).len(), 1);
        assert!(c.new_ones(std::slice::from_ref(&t)).is_empty());
        // Seen again among changed torrents only: still once; forgotten, it counts again.
        assert!(c.changed(std::slice::from_ref(&t)).is_empty());
        c.forget(&t.info_hash);
        assert_eq!(c.changed(std::slice::from_ref(&t)).len(), 1);
    }

    #[test]
    fn programs_that_cannot_run_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("script");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert!(check_program(&f).is_err(), "not executable");
        assert!(check_program(&dir.path().join("missing")).is_err());
        assert!(check_program(Path::new("")).is_err());
        assert!(
            check_program(Path::new("notify-send")).is_ok(),
            "looked up in PATH"
        );
    }
}
