//! What the user added and removed through the client rather than the watch folder, kept in
//! the state folder so that it holds across restarts:
//!
//! - `<state>/added/`: torrents added with `a` in the menu or `zigtorrent add`, one
//!   `<info-hash>.torrent` or `<info-hash>.magnet` file each. A running client watches this
//!   folder with the watch-folder rules (so it picks a new one up within a second) and the next
//!   start loads it. Removing such a torrent in the menu deletes its file here.
//! - `<state>/removed`: torrents removed in the menu while their file is still in the watch
//!   folder, by info-hash and that file's identity (size, times, inode). Such a file is skipped
//!   at later starts; a changed or newly copied file is a new add and ends the removal.
//!
//! Sources are checked before anything is written: a path must hold a valid `.torrent` (read
//! with the watch folder's caps), a magnet link must parse, and a URL must be `http(s)` and
//! answer within [`FETCH_TIMEOUT`] with a valid `.torrent` of at most `MAX_TORRENT_SIZE` bytes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use zigtorrent_engine::metainfo::MAX_TORRENT_SIZE;
use zigtorrent_engine::{AddTorrent, InfoHash, Magnet, Metainfo};

use crate::format::printable;

/// Longest a `.torrent` download from a URL may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Entries kept in the removal list; the oldest go first beyond this.
const MAX_REMOVALS: usize = 10_000;

/// Largest removal list read (`MAX_REMOVALS` lines of a 40-character hash and an identity).
const MAX_REMOVALS_FILE: u64 = 4 << 20;

/// First line of the removal list, so a file of another format is not misread.
const REMOVALS_HEADER: &str = "zigtorrent-removed 1";

/// Where added torrents are kept.
pub fn added_dir(state: &Path) -> PathBuf {
    state.join("added")
}

/// A checked source, ready to be stored.
pub struct Resolved {
    /// What the session gets.
    pub torrent: AddTorrent,
    /// The file's bytes (the `.torrent`, or the magnet link).
    bytes: Vec<u8>,
}

impl Resolved {
    /// Its name for messages.
    pub fn name(&self) -> String {
        printable(&self.torrent.display_name()).into_owned()
    }

    fn file_name(&self) -> String {
        let ext = match self.torrent {
            AddTorrent::Metainfo(_) => "torrent",
            AddTorrent::Magnet(_) => "magnet",
        };
        format!("{}.{ext}", self.torrent.info_hash().to_hex())
    }
}

/// Check `source`: a magnet link, an `http(s)://` URL of a `.torrent`, or a path to one.
pub async fn resolve(source: &str) -> anyhow::Result<Resolved> {
    let source = source.trim();
    let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
    if lower.starts_with("magnet:") {
        let magnet = Magnet::parse(source)
            .map_err(|e| anyhow::anyhow!("bad magnet link {}: {e}", printable(source)))?;
        return Ok(Resolved {
            torrent: AddTorrent::Magnet(magnet),
            bytes: format!("{source}\n").into_bytes(),
        });
    }
    let bytes = if lower.starts_with("http://") || lower.starts_with("https://") {
        fetch(source).await?
    } else {
        let path = PathBuf::from(source);
        tokio::task::spawn_blocking(move || crate::read_file(&path, MAX_TORRENT_SIZE as u64))
            .await
            .context("reading the file")??
    };
    let metainfo =
        Metainfo::from_bytes(&bytes).with_context(|| format!("{}", printable(source)))?;
    Ok(Resolved {
        torrent: AddTorrent::Metainfo(metainfo),
        bytes,
    })
}

/// Download a `.torrent`, capped in size and time.
async fn fetch(url: &str) -> anyhow::Result<Vec<u8>> {
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .context("cannot start an HTTP client")?;
    let what = printable(url).into_owned();
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch {what}: {}", error_chain(&e)))?;
    if !response.status().is_success() {
        bail!(
            "cannot fetch {what}: the server answered {}",
            response.status()
        );
    }
    let too_big =
        || anyhow::anyhow!("{what} is larger than {MAX_TORRENT_SIZE} bytes: not a .torrent");
    if response.content_length().unwrap_or(0) > MAX_TORRENT_SIZE as u64 {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch {what}: {}", error_chain(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_TORRENT_SIZE {
            return Err(too_big());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Keep `resolved` in `<state>/added/` (atomically: a running client never reads half a
/// file). Returns the file, or `None` if the same torrent is already kept there.
pub fn store(state: &Path, resolved: &Resolved) -> anyhow::Result<Option<PathBuf>> {
    let dir = added_dir(state);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(resolved.file_name());
    let other = match resolved.torrent {
        AddTorrent::Metainfo(_) => path.with_extension("magnet"),
        AddTorrent::Magnet(_) => path.with_extension("torrent"),
    };
    if path.exists() || other.exists() {
        return Ok(None);
    }
    // Not named `.torrent` until complete: the watcher ignores other names.
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        resolved.file_name(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&resolved.bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(Some(path))
}

/// Torrents removed in the menu whose watch-folder files should stay ignored.
#[derive(Debug, Default)]
pub struct Removals {
    file: PathBuf,
    /// (info-hash, identity of a watch-folder file holding it), oldest first. One torrent may
    /// have several files (copies under other names).
    entries: Vec<(InfoHash, String)>,
}

impl Removals {
    /// Load `<state>/removed`; a missing file is an empty list, a damaged one is ignored with
    /// a warning (the torrents come back: nothing is lost).
    pub fn load(state: &Path) -> Removals {
        let file = state.join("removed");
        let mut r = Removals {
            file,
            entries: Vec::new(),
        };
        let text = match crate::read_state_file(&r.file, MAX_REMOVALS_FILE) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) if !r.file.exists() => return r,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "removal list ignored");
                return r;
            }
        };
        let mut lines = text.lines();
        if lines.next() != Some(REMOVALS_HEADER) {
            tracing::warn!(file = %r.file.display(), "removal list of another format ignored");
            return r;
        }
        for line in lines.take(MAX_REMOVALS) {
            let Some((hash, identity)) = line.split_once(' ') else {
                continue;
            };
            let mut h = [0u8; 20];
            if hex::decode_to_slice(hash, &mut h).is_ok() {
                r.entries.push((InfoHash(h), identity.to_string()));
            }
        }
        r
    }

    /// Whether the torrent was removed along with this version of this file.
    pub fn is_removed(&self, hash: &InfoHash, identity: &str) -> bool {
        self.entries.iter().any(|(h, i)| h == hash && i == identity)
    }

    /// Whether the torrent is on the list at all.
    pub fn contains(&self, hash: &InfoHash) -> bool {
        self.entries.iter().any(|(h, _)| h == hash)
    }

    /// Remember a removal with the identities of every file that holds the torrent, and save
    /// the list. Beyond [`MAX_REMOVALS`] entries the oldest go.
    pub fn remember(&mut self, hash: InfoHash, identities: Vec<String>) -> anyhow::Result<()> {
        self.entries.retain(|(h, _)| *h != hash);
        self.entries
            .extend(identities.into_iter().map(|i| (hash, i)));
        let over = self.entries.len().saturating_sub(MAX_REMOVALS);
        self.entries.drain(..over);
        self.save()
    }

    /// Forget a removal (a file changed: it is a new add) and save the list.
    pub fn forget(&mut self, hash: &InfoHash) -> anyhow::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|(h, _)| h != hash);
        if self.entries.len() != before {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> anyhow::Result<()> {
        let mut text = format!("{REMOVALS_HEADER}\n");
        for (h, identity) in &self.entries {
            text.push_str(&format!("{} {identity}\n", h.to_hex()));
        }
        let dir = self.file.parent().context("state folder")?;
        let tmp = self
            .file
            .with_extension(format!("tmp-{}", std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", self.file.display()));
        }
        Ok(())
    }
}

/// After a torrent was removed in the menu: its files in `<state>/added/` are deleted; its
/// files in the watch folder (every copy that holds it) are remembered, so later starts skip
/// them while they stay unchanged.
pub fn on_removed(
    state: &Path,
    removals: &std::sync::Mutex<Removals>,
    hash: InfoHash,
    origins: &[PathBuf],
) -> anyhow::Result<()> {
    let added = added_dir(state);
    let mut identities = Vec::new();
    for origin in origins {
        if origin.parent() == Some(added.as_path()) {
            match std::fs::remove_file(origin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot delete {}", origin.display()))
                }
            }
        } else if let Some(identity) = crate::watch::identity(origin) {
            // A file gone already brings nothing back.
            identities.push(identity);
        }
    }
    if identities.is_empty() {
        return Ok(());
    }
    removals
        .lock()
        .map_err(|_| anyhow::anyhow!("removal list poisoned"))?
        .remember(hash, identities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_survive_a_reload_and_damage_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Removals::load(dir.path());
        let h = InfoHash([5; 20]);
        r.remember(h, vec!["1 2 3".into(), "5 6 7".into()]).unwrap();
        let r = Removals::load(dir.path());
        assert!(r.is_removed(&h, "1 2 3"));
        assert!(r.is_removed(&h, "5 6 7"), "every copy is remembered");
        assert!(!r.is_removed(&h, "1 2 4"), "a changed file is a new add");
        std::fs::write(dir.path().join("removed"), b"garbage\n").unwrap();
        let r = Removals::load(dir.path());
        assert!(!r.contains(&h));
    }

    #[test]
    fn a_removal_covers_every_copy_and_deletes_added_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(added_dir(&state)).unwrap();
        let (a, b) = (dir.path().join("a.torrent"), dir.path().join("b.torrent"));
        let kept = added_dir(&state).join("x.torrent");
        for f in [&a, &b, &kept] {
            std::fs::write(f, b"d1:xi1ee").unwrap();
        }
        let removals = std::sync::Mutex::new(Removals::load(&state));
        let h = InfoHash([3; 20]);
        on_removed(&state, &removals, h, &[a.clone(), b.clone(), kept.clone()]).unwrap();
        assert!(!kept.exists(), "the added copy is deleted");
        let r = Removals::load(&state);
        for f in [&a, &b] {
            assert!(
                r.is_removed(&h, &crate::watch::identity(f).unwrap()),
                "{f:?}"
            );
        }
    }

    #[test]
    fn the_oldest_removals_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Removals::load(dir.path());
        for i in 0..MAX_REMOVALS as u32 + 1 {
            let mut h = [0xffu8; 20];
            h[..4].copy_from_slice(&i.to_be_bytes());
            r.entries.push((InfoHash(h), "x".into()));
        }
        // The newest, with the smallest hash of all, stays.
        r.remember(InfoHash([0; 20]), vec!["y".into()]).unwrap();
        assert!(r.is_removed(&InfoHash([0; 20]), "y"));
        assert_eq!(r.entries.len(), MAX_REMOVALS);
        let mut first = [0xffu8; 20];
        first[..4].copy_from_slice(&0u32.to_be_bytes());
        assert!(!r.contains(&InfoHash(first)), "the oldest went");
    }

    #[tokio::test]
    async fn sources_are_checked_before_anything_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.torrent");
        std::fs::write(&bad, b"d4:infoi1ee").unwrap();
        let e = resolve(bad.to_str().unwrap()).await.err().unwrap();
        assert!(format!("{e:#}").contains("bad.torrent"), "{e:#}");
        let e = resolve("magnet:?xt=urn:btih:xyz").await.err().unwrap();
        assert!(format!("{e:#}").contains("bad magnet link"), "{e:#}");
        let e = resolve("http://127.0.0.1:9/x.torrent").await.err().unwrap();
        assert!(format!("{e:#}").contains("cannot fetch"), "{e:#}");
        assert!(!added_dir(dir.path()).exists());
        let m = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=x";
        let r = resolve(m).await.unwrap();
        let path = store(dir.path(), &r).unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), m);
        assert!(store(dir.path(), &r).unwrap().is_none(), "kept once");
    }
}
