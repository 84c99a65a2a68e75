//! File-system specifics of `FsStorage`, checked on disk: part files and moves into place, folder
//! structure, when resume state is trusted, data placed by the user (never destroyed unless it
//! verifies), path claims, path safety, OS errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use zigtorrent_engine::storage::Resume;
use zigtorrent_engine::{
    Bitfield, InfoHash, Layout, MoveOutcome, PathConflict, Storage, StorageBackend, StorageError,
    StorageSpec,
};
use zigtorrent_storage_fs::FsBackend;

const PL: u32 = 16384;

struct Case {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    spec: StorageSpec,
    data: Vec<u8>,
}

impl Case {
    fn new(files: &[(&str, u64)]) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let layout = Layout::new(PL, files.iter().map(|(p, l)| (PathBuf::from(p), *l)));
        // Deterministic, non-repeating bytes (a simple LCG is enough here).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data = (0..layout.total_length)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let spec = StorageSpec {
            info_hash: InfoHash([0xab; 20]),
            layout: Arc::new(layout),
            download_dir: root.join("dl"),
            state_dir: root.join("state"),
            skipped_files: Vec::new(),
        };
        Case {
            _tmp: tmp,
            root,
            spec,
            data,
        }
    }

    async fn open(&self) -> Arc<dyn Storage> {
        FsBackend::new()
            .open(self.spec.clone())
            .await
            .expect("open")
    }

    fn dl(&self, rel: &str) -> PathBuf {
        self.spec.download_dir.join(rel)
    }

    /// Where file `i` lives while incomplete.
    fn part(&self, i: usize) -> PathBuf {
        self.spec
            .state_dir
            .join("parts")
            .join(self.spec.info_hash.to_hex())
            .join(format!("{i}.part"))
    }

    fn piece_bytes(&self, piece: u32) -> &[u8] {
        let r = self.spec.layout.piece_range(piece);
        &self.data[r.start as usize..r.end as usize]
    }

    async fn write(&self, s: &dyn Storage, piece: u32) {
        s.write(
            piece,
            0,
            vec![Bytes::copy_from_slice(self.piece_bytes(piece))],
        )
        .await
        .unwrap();
    }

    async fn complete(&self, s: &dyn Storage, piece: u32) {
        self.write(s, piece).await;
        s.mark_complete(piece).await.unwrap();
    }

    /// What the engine does on NeedsRecheck: read, compare ("hash"), mark the good pieces,
    /// then let storage settle; panics if settling fails (see `try_recheck`).
    async fn recheck(&self, s: &dyn Storage) -> Vec<u32> {
        let (good, settled) = self.try_recheck(s).await;
        settled.expect("recheck_finished");
        good
    }

    async fn try_recheck(&self, s: &dyn Storage) -> (Vec<u32>, Result<(), StorageError>) {
        let n = self.spec.layout.piece_count() as usize;
        self.try_recheck_of(s, Bitfield::new(n), &Bitfield::full(n))
            .await
    }

    /// Hash the pieces in `check` on top of the trusted `verified` (what the engine does for
    /// `Resume::Partial`), then settle. Returns the pieces that hashed good.
    async fn try_recheck_of(
        &self,
        s: &dyn Storage,
        mut verified: Bitfield,
        check: &Bitfield,
    ) -> (Vec<u32>, Result<(), StorageError>) {
        let mut good = Vec::new();
        for p in check.iter_ones().map(|p| p as u32) {
            match s.read(p, 0, self.spec.layout.piece_len(p)).await {
                Ok(b) if b[..] == *self.piece_bytes(p) => {
                    s.mark_complete(p).await.unwrap();
                    good.push(p);
                    verified.set(p as usize);
                }
                Ok(_) | Err(StorageError::Missing) => {}
                Err(e) => panic!("recheck read of {p}: {e}"),
            }
        }
        (good, s.recheck_finished(&verified).await)
    }

    /// The finished bytes of file `i`.
    fn file_bytes(&self, i: usize) -> &[u8] {
        let f = &self.spec.layout.files[i];
        &self.data[f.offset as usize..(f.offset + f.length) as usize]
    }

    fn resume_file(&self) -> PathBuf {
        self.spec
            .state_dir
            .join(format!("{}.resume", self.spec.info_hash.to_hex()))
    }
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn nothing_at_final_path_before_the_last_piece() {
    // a: pieces 0-1, b: pieces 1-3; e is empty in a nested folder.
    let c = Case::new(&[("t/a", 20_000), ("t/sub/deeper/e", 0), ("t/sub/b", 40_000)]);
    let s = c.open().await;
    assert!(
        exists(&c.dl("t/sub/deeper/e")),
        "zero-length file is created at its final path at open"
    );
    assert_eq!(fs::metadata(c.dl("t/sub/deeper/e")).unwrap().len(), 0);
    assert!(s.is_finalized(1));
    for name in ["t/a", "t/sub/b"] {
        assert!(!exists(&c.dl(name)), "{name} exists before any write");
    }
    assert!(!exists(&c.part(0)) && !exists(&c.part(2)));

    c.write(&*s, 0).await;
    assert!(exists(&c.part(0)) && !exists(&c.dl("t/a")));
    assert!(
        !exists(&c.dl("t/a.part")),
        "nothing incomplete under downloads"
    );
    s.mark_complete(0).await.unwrap();
    assert!(
        exists(&c.part(0)) && !exists(&c.dl("t/a")),
        "a still misses piece 1"
    );

    c.write(&*s, 1).await;
    assert!(!exists(&c.dl("t/a")), "written but not marked: not final");
    assert!(exists(&c.part(2)));
    s.mark_complete(1).await.unwrap();
    assert!(
        exists(&c.dl("t/a")) && !exists(&c.part(0)),
        "a finalized by its last piece"
    );
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), c.file_bytes(0));
    assert!(s.is_finalized(0) && !s.is_finalized(2));
    // Reads keep working across the rename (the cached descriptor follows the file).
    assert_eq!(&s.read(1, 0, PL).await.unwrap()[..], c.piece_bytes(1));

    for p in [3, 2] {
        assert!(!exists(&c.dl("t/sub/b")));
        c.complete(&*s, p).await;
    }
    assert!(exists(&c.dl("t/sub/b")) && !exists(&c.part(2)));
    assert_eq!(fs::read(c.dl("t/sub/b")).unwrap(), c.file_bytes(2));
    s.flush().await.unwrap();

    // Nothing outside the download and state folders; only the resume file in state.
    let mut top: Vec<String> = fs::read_dir(&c.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["dl", "state"]);
    assert_eq!(
        tree(&c.spec.download_dir),
        [
            "t",
            "t/a",
            "t/sub",
            "t/sub/b",
            "t/sub/deeper",
            "t/sub/deeper/e"
        ]
    );
    let hex = c.spec.info_hash.to_hex();
    let state = tree(&c.spec.state_dir);
    let (markers, rest): (Vec<_>, Vec<_>) = state.iter().partition(|p| p.starts_with("roots/"));
    assert_eq!(
        rest,
        [
            &format!("{hex}.resume"),
            "parts",
            &format!("parts/{hex}"),
            "roots"
        ]
    );
    assert_eq!(markers.len(), 1, "one claim marker: {markers:?}");
}

#[tokio::test]
async fn resume_trusted_after_flush_and_reopen() {
    let c = Case::new(&[("a", 20_000), ("b", 30_000)]);
    let s = c.open().await;
    assert_eq!(
        s.resume(),
        Resume::Trusted(zigtorrent_engine::Bitfield::new(4)),
        "nothing on disk"
    );
    for p in [0, 1, 3] {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    assert!(c.resume_file().exists());
    let s = c.open().await;
    let Resume::Trusted(set) = s.resume() else {
        panic!("clean flush must be trusted")
    };
    assert_eq!(set.iter_ones().collect::<Vec<_>>(), [0, 1, 3]);
    assert!(s.is_finalized(0) && !s.is_finalized(1));
    c.complete(&*s, 2).await;
    assert!(s.is_finalized(1));
    assert_eq!(fs::read(c.dl("b")).unwrap(), c.file_bytes(1));
}

/// Stopping a seed that changed nothing does not rewrite (and fsync) its resume file: a
/// session of 10,000 seeds took seconds to stop doing that. A real change still writes.
#[tokio::test]
async fn a_flush_with_nothing_new_leaves_the_resume_file_alone() {
    use std::os::unix::fs::MetadataExt;
    let c = Case::new(&[("a", 20_000), ("b", 30_000)]);
    let s = c.open().await;
    for p in [0, 1, 3] {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    let ino = fs::metadata(c.resume_file()).unwrap().ino();
    let s = c.open().await;
    s.flush().await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(
        fs::metadata(c.resume_file()).unwrap().ino(),
        ino,
        "rewritten (a new file renamed over it) though nothing changed"
    );
    c.complete(&*s, 2).await;
    s.flush().await.unwrap();
    assert_ne!(fs::metadata(c.resume_file()).unwrap().ino(), ino);
    drop(s);
    let s = c.open().await;
    let Resume::Trusted(set) = s.resume() else {
        panic!("clean flush must be trusted")
    };
    assert_eq!(set.count_ones(), 4);
}

#[tokio::test]
async fn modified_part_file_is_not_trusted() {
    for how in ["append", "same-size-new-mtime"] {
        let c = Case::new(&[("a", 40_000)]);
        let s = c.open().await;
        c.complete(&*s, 0).await;
        s.flush().await.unwrap();
        drop(s);
        let part = c.part(0);
        let f = fs::OpenOptions::new().write(true).open(&part).unwrap();
        if how == "append" {
            f.set_len(40_001).unwrap();
        } else {
            use std::os::unix::fs::FileExt;
            f.write_all_at(b"tampered", 0).unwrap();
            f.set_modified(SystemTime::now() + Duration::from_secs(5))
                .unwrap();
        }
        drop(f);
        let s = c.open().await;
        assert_eq!(
            s.resume(),
            Resume::NeedsRecheck,
            "{how}: modified data must be rechecked"
        );
        assert!(!s.has_piece(0), "{how}");
        assert!(
            !c.resume_file().exists(),
            "{how}: stale resume state removed"
        );
        let good = c.recheck(&*s).await;
        assert!(
            !good.contains(&0) || how == "append",
            "{how}: tampered piece must fail"
        );
        assert!(
            !exists(&c.dl("a")),
            "{how}: incomplete file never at its final path"
        );
    }
}

#[tokio::test]
async fn modified_final_file_is_rechecked_in_place_then_repaired() {
    let c = Case::new(&[("a", 20_000), ("b", 20_000)]);
    let s = c.open().await;
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    // Corrupt a's first byte behind our back (and make sure the mtime moves).
    let f = fs::OpenOptions::new().write(true).open(c.dl("a")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[c.data[0] ^ 0xff], 0).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);

    let s = c.open().await;
    // b still matches its record, but piece 1 spans a and b, so only piece 2 is trusted.
    let Resume::Partial { complete, check } = s.resume() else {
        panic!("one changed file: partial trust, got {:?}", s.resume())
    };
    assert_eq!(complete.iter_ones().collect::<Vec<_>>(), [2]);
    assert_eq!(check.iter_ones().collect::<Vec<_>>(), [0, 1]);
    assert!(
        exists(&c.dl("a")) && !exists(&c.part(0)),
        "a changed file is not moved before its data is checked"
    );
    let (good, settled) = c.try_recheck(&*s).await;
    settled.unwrap();
    assert!(!good.contains(&0), "corrupted piece passes recheck");
    assert_eq!(good, [1, 2]);
    assert!(
        !exists(&c.dl("a")) && exists(&c.part(0)),
        "partly verified: taken in to be repaired"
    );
    assert!(s.is_finalized(1) && exists(&c.dl("b")));
    // Download the bad piece again: a goes back into place.
    c.complete(&*s, 0).await;
    assert!(exists(&c.dl("a")) && !exists(&c.part(0)));
    assert_eq!(fs::read(c.dl("a")).unwrap(), c.file_bytes(0));
}

#[tokio::test]
async fn complete_files_placed_by_the_user_are_rechecked_and_kept() {
    let c = Case::new(&[("t/a", 20_000), ("t/empty", 0), ("t/b", 30_000)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::write(c.dl("t/a"), c.file_bytes(0)).unwrap();
    fs::write(c.dl("t/b"), c.file_bytes(2)).unwrap();
    let s = c.open().await;
    assert_eq!(
        s.resume(),
        Resume::NeedsRecheck,
        "data without resume state must be rechecked"
    );
    assert!((0..4).all(|p| !s.has_piece(p)));
    // Readable while unverified.
    assert_eq!(
        &s.read(1, 100, 5000).await.unwrap()[..],
        &c.piece_bytes(1)[100..5100]
    );
    let good = c.recheck(&*s).await;
    assert_eq!(good, [0, 1, 2, 3]);
    assert!(s.is_finalized(0) && s.is_finalized(1) && s.is_finalized(2));
    assert_eq!(tree(&c.spec.download_dir), ["t", "t/a", "t/b", "t/empty"]);
    assert_eq!(fs::read(c.dl("t/b")).unwrap(), c.file_bytes(2));
    s.flush().await.unwrap();
    drop(s);
    let s = c.open().await;
    let Resume::Trusted(set) = s.resume() else {
        panic!("after recheck and flush: trusted")
    };
    assert!(set.is_full());
}

#[tokio::test]
async fn short_user_file_reads_as_missing() {
    let c = Case::new(&[("a", 40_000)]);
    fs::create_dir_all(&c.spec.download_dir).unwrap();
    fs::write(c.dl("a"), &c.file_bytes(0)[..20_000]).unwrap();
    let s = c.open().await;
    assert_eq!(s.resume(), Resume::NeedsRecheck);
    assert_eq!(&s.read(0, 0, PL).await.unwrap()[..], c.piece_bytes(0));
    assert!(matches!(s.read(1, 0, PL).await, Err(StorageError::Missing)));
    assert_eq!(c.recheck(&*s).await, [0]);
    assert!(
        !exists(&c.dl("a")),
        "partly verified: taken in to be completed"
    );
    c.complete(&*s, 1).await;
    c.complete(&*s, 2).await;
    assert_eq!(fs::read(c.dl("a")).unwrap(), c.file_bytes(0));
}

#[tokio::test]
async fn corrupt_resume_file_means_recheck() {
    let c = Case::new(&[("a", 20_000)]);
    let s = c.open().await;
    c.complete(&*s, 0).await;
    s.flush().await.unwrap();
    drop(s);
    let mut bytes = fs::read(c.resume_file()).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    fs::write(c.resume_file(), bytes).unwrap();
    let s = c.open().await;
    assert_eq!(s.resume(), Resume::NeedsRecheck);
    assert_eq!(c.recheck(&*s).await, [0]);
}

#[tokio::test]
async fn refuses_paths_that_escape() {
    for bad in ["../evil", "t/../../evil", "/tmp/evil-abs"] {
        let c = Case::new(&[("ok", 10), (bad, 10)]);
        let r = FsBackend::new().open(c.spec.clone()).await;
        assert!(
            matches!(r, Err(StorageError::PermissionDenied { .. })),
            "{bad:?} accepted: {:?}",
            r.err()
        );
        assert!(!exists(&c.root.join("evil")) && !exists(Path::new("/tmp/evil-abs")));
        assert!(
            !exists(&c.dl("ok")) && !exists(&c.dl("ok.part")),
            "nothing written for {bad:?}"
        );
    }
}

#[tokio::test]
async fn read_only_folder_is_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let c = Case::new(&[("t/a", 20_000)]);
    fs::create_dir_all(&c.spec.download_dir).unwrap();
    fs::set_permissions(&c.spec.download_dir, fs::Permissions::from_mode(0o555)).unwrap();
    if fs::write(c.spec.download_dir.join("probe"), b"x").is_ok() {
        // Running as root: permission bits are not enforced, so there is nothing to observe.
        return;
    }
    let s = c.open().await;
    let r = s
        .write(0, 0, vec![Bytes::copy_from_slice(c.piece_bytes(0))])
        .await;
    assert!(
        matches!(r, Err(StorageError::PermissionDenied { .. })),
        "{:?}",
        r.err()
    );
    fs::set_permissions(&c.spec.download_dir, fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn many_files_few_descriptors() {
    // 300 files of 1000 bytes each across 19 pieces, with at most 3 open descriptors.
    let names: Vec<String> = (0..300).map(|i| format!("many/d{}/f{i}", i % 7)).collect();
    let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1000)).collect();
    let c = Case::new(&files);
    let s = FsBackend::with_max_open_files(3)
        .open(c.spec.clone())
        .await
        .unwrap();
    for p in (0..c.spec.layout.piece_count()).rev() {
        c.complete(&*s, p).await;
    }
    assert!((0..300).all(|i| s.is_finalized(i)));
    for (i, n) in names.iter().enumerate() {
        assert_eq!(fs::read(c.dl(n)).unwrap(), c.file_bytes(i), "{n}");
    }
    s.flush().await.unwrap();
}

#[tokio::test]
async fn final_file_wins_over_a_stale_part_without_resume_state() {
    let c = Case::new(&[("a", 20_000)]);
    fs::create_dir_all(&c.spec.download_dir).unwrap();
    fs::write(c.dl("a"), c.file_bytes(0)).unwrap();
    fs::create_dir_all(c.part(0).parent().unwrap()).unwrap();
    fs::write(c.part(0), vec![0u8; 20_000]).unwrap();
    // A user's own file that happens to end in .part is never ours.
    fs::write(c.dl("a.part"), b"the user's").unwrap();
    let s = c.open().await;
    assert_eq!(s.resume(), Resume::NeedsRecheck);
    assert_eq!(c.recheck(&*s).await, [0, 1]);
    assert_eq!(fs::read(c.dl("a")).unwrap(), c.file_bytes(0));
    assert!(!exists(&c.part(0)), "stale part file removed");
    assert_eq!(fs::read(c.dl("a.part")).unwrap(), b"the user's");
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).unwrap().ino()
}

#[tokio::test]
async fn a_user_file_that_does_not_verify_is_left_exactly_as_it_is() {
    let c = Case::new(&[("t/report.pdf", 40_000), ("t/b", 10_000)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    let mine = vec![7u8; 1_000_000];
    fs::write(c.dl("t/report.pdf"), &mine).unwrap();
    let ino = inode(&c.dl("t/report.pdf"));
    let s = c.open().await;
    assert_eq!(s.resume(), Resume::NeedsRecheck);
    let (good, settled) = c.try_recheck(&*s).await;
    assert!(good.is_empty());
    match settled {
        Err(StorageError::PathInUse {
            path,
            why: PathConflict::ForeignData,
        }) => assert_eq!(path, c.dl("t/report.pdf")),
        other => panic!("expected ForeignData, got {other:?}"),
    }
    let msg = s
        .recheck_finished(&Bitfield::new(4))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("t/report.pdf") && msg.contains("move it away"),
        "{msg}"
    );
    // A write touching it is refused rather than done.
    assert!(s
        .write(0, 0, vec![Bytes::copy_from_slice(c.piece_bytes(0))])
        .await
        .is_err());
    drop(s);
    assert_eq!(fs::read(c.dl("t/report.pdf")).unwrap(), mine);
    assert_eq!(inode(&c.dl("t/report.pdf")), ino, "same inode");
    assert!(!exists(&c.part(0)));

    // The user moves it away and rechecks: the torrent proceeds.
    fs::rename(c.dl("t/report.pdf"), c.root.join("mine.pdf")).unwrap();
    let s = c.open().await;
    c.recheck(&*s).await;
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    assert_eq!(fs::read(c.dl("t/report.pdf")).unwrap(), c.file_bytes(0));
    assert_eq!(fs::read(c.root.join("mine.pdf")).unwrap(), mine);
}

#[tokio::test]
async fn a_non_empty_file_where_an_empty_one_belongs_is_refused_untouched() {
    let c = Case::new(&[("t/a", 20_000), ("t/empty", 0)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::write(c.dl("t/empty"), vec![1u8; 1 << 20]).unwrap();
    let ino = inode(&c.dl("t/empty"));
    let r = FsBackend::new().open(c.spec.clone()).await;
    match r {
        Err(StorageError::PathInUse {
            path,
            why: PathConflict::NotEmpty,
        }) => assert_eq!(path, c.dl("t/empty")),
        other => panic!("expected NotEmpty, got {:?}", other.err()),
    }
    assert_eq!(fs::metadata(c.dl("t/empty")).unwrap().len(), 1 << 20);
    assert_eq!(inode(&c.dl("t/empty")), ino);
}

#[tokio::test]
async fn a_file_that_appears_at_the_final_path_is_never_replaced() {
    let c = Case::new(&[("a", 20_000)]);
    let s = c.open().await;
    c.complete(&*s, 0).await;
    fs::write(c.dl("a"), b"appeared meanwhile").unwrap();
    c.write(&*s, 1).await;
    let r = s.mark_complete(1).await;
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::Occupied,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(fs::read(c.dl("a")).unwrap(), b"appeared meanwhile");
    assert!(exists(&c.part(0)), "our data is kept");
}

#[tokio::test]
async fn two_torrents_never_share_a_path() {
    let c = Case::new(&[("x/a", 20_000)]);
    let backend = FsBackend::new();
    let first = backend.open(c.spec.clone()).await.unwrap();
    c.complete(&*first, 0).await;
    let mut other = c.spec.clone();
    other.info_hash = InfoHash([0xcd; 20]);
    other.layout = Arc::new(Layout::new(PL, [(PathBuf::from("x/b"), 5)]));
    let r = backend.open(other.clone()).await;
    assert!(
        matches!(&r, Err(StorageError::PathInUse { why: PathConflict::OtherTorrent(h), path }) if *h == c.spec.info_hash && *path == c.dl("x")),
        "{:?}",
        r.err()
    );
    // x.part beside x: its own name, and no clash with x's incomplete data.
    other.layout = Arc::new(Layout::new(PL, [(PathBuf::from("x.part"), 5)]));
    backend.open(other).await.unwrap();
    c.complete(&*first, 1).await;
    assert_eq!(fs::read(c.dl("x/a")).unwrap(), c.file_bytes(0));
    // A torrent reaching into the state folder (inside downloads here) is refused.
    let mut spec = c.spec.clone();
    spec.state_dir = c.dl(".zigtorrent");
    spec.info_hash = InfoHash([0xef; 20]);
    spec.layout = Arc::new(Layout::new(PL, [(PathBuf::from(".zigtorrent/evil"), 5)]));
    let r = backend.open(spec).await;
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::StateFolder,
                ..
            })
        ),
        "{:?}",
        r.err()
    );
}

#[tokio::test]
async fn a_250_byte_file_name_downloads() {
    let name = "n".repeat(250);
    let c = Case::new(&[(name.as_str(), 20_000)]);
    let s = c.open().await;
    for p in 0..2 {
        c.complete(&*s, p).await;
    }
    assert_eq!(fs::read(c.dl(&name)).unwrap(), c.file_bytes(0));
}

#[tokio::test]
async fn trust_is_per_file() {
    let c = Case::new(&[("a", 2 * PL as u64), ("b", 2 * PL as u64)]);
    let s = c.open().await;
    for p in 0..4 {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    let f = fs::OpenOptions::new().write(true).open(c.dl("b")).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let s = c.open().await;
    let Resume::Partial { complete, check } = s.resume() else {
        panic!("expected partial trust, got {:?}", s.resume())
    };
    assert_eq!(complete.iter_ones().collect::<Vec<_>>(), [0, 1]);
    assert_eq!(check.iter_ones().collect::<Vec<_>>(), [2, 3]);
}

/// The state folder on another file system (`/dev/shm`, tmpfs): finishing copies into an
/// exclusively created temporary name and moves that into place, never replacing.
#[tokio::test]
async fn state_folder_on_another_file_system() {
    use std::os::unix::fs::MetadataExt;
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) is needed for this test");
    let mut c = Case::new(&[("t/a", 20_000), ("t/b", 20_000)]);
    c.spec.state_dir = shm.path().join("state");
    fs::create_dir_all(&c.spec.download_dir).unwrap();
    assert_ne!(
        fs::metadata(shm.path()).unwrap().dev(),
        fs::metadata(&c.spec.download_dir).unwrap().dev(),
        "the test needs two file systems"
    );
    let s = c.open().await;
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), c.file_bytes(0));
    assert_eq!(fs::read(c.dl("t/b")).unwrap(), c.file_bytes(1));
    assert_eq!(&s.read(0, 0, PL).await.unwrap()[..], c.piece_bytes(0));
    assert_eq!(
        tree(&c.spec.download_dir),
        ["t", "t/a", "t/b"],
        "no temporary left"
    );
    s.flush().await.unwrap();
    drop(s);
    let s = c.open().await;
    assert!(matches!(s.resume(), Resume::Trusted(b) if b.is_full()));
}

/// A download in progress under wave 1 (resume format 1, `<name>.part` beside the final path)
/// carries on: the part file moves into the state folder and its pieces stay trusted.
#[tokio::test]
async fn wave_one_part_files_move_over() {
    let c = Case::new(&[("t/a", 40_000)]);
    let s = c.open().await;
    c.complete(&*s, 0).await;
    s.flush().await.unwrap();
    drop(s);
    // Make it look like wave 1 left it: part file beside the final path, format version 1
    // (the version is outside the body's checksum). A rename keeps size and mtime.
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::rename(c.part(0), c.dl("t/a.part")).unwrap();
    let mut bytes = fs::read(c.resume_file()).unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    fs::write(c.resume_file(), bytes).unwrap();

    let s = c.open().await;
    let Resume::Trusted(set) = s.resume() else {
        panic!("a matching wave 1 record is trusted, got {:?}", s.resume())
    };
    assert_eq!(set.iter_ones().collect::<Vec<_>>(), [0]);
    assert!(exists(&c.part(0)) && !exists(&c.dl("t/a.part")));
    c.complete(&*s, 1).await;
    c.complete(&*s, 2).await;
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), c.file_bytes(0));
}

/// Without a matching wave 1 record, a `.part` file beside the final path is the user's.
#[tokio::test]
async fn unvouched_dot_part_files_are_left_alone() {
    let c = Case::new(&[("t/a", 40_000)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::write(c.dl("t/a.part"), c.file_bytes(0)).unwrap();
    let s = c.open().await;
    assert_eq!(
        s.resume(),
        Resume::Trusted(Bitfield::new(3)),
        "nothing of ours on disk"
    );
    for p in 0..3 {
        c.complete(&*s, p).await;
    }
    assert_eq!(fs::read(c.dl("t/a.part")).unwrap(), c.file_bytes(0));
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), c.file_bytes(0));
}

#[tokio::test]
async fn a_file_where_a_folder_belongs_is_named_and_kept() {
    let c = Case::new(&[("t/sub/a", 20_000), ("t/b", 10)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::write(c.dl("t/sub"), b"the user's").unwrap();
    let r = FsBackend::new().open(c.spec.clone()).await;
    match r {
        Err(StorageError::PathInUse {
            path,
            why: PathConflict::NotAFile,
        }) => assert_eq!(path, c.dl("t/sub")),
        other => panic!("expected NotAFile, got {:?}", other.err()),
    }
    assert_eq!(fs::read(c.dl("t/sub")).unwrap(), b"the user's");
}
// ------------------------------------------------------------------------------------------
// Found by a hostile review of the first version of these rules (issue 9): each scenario once
// destroyed or trusted what it must not; each now asserts the safe outcome.

/// E1: a user's file that is the torrent's file plus an appended tail: every piece verifies, so
/// it is "adopted" and cut to the torrent's length; the tail never verified.
#[tokio::test]
async fn rev_e1_longer_user_file_is_not_cut() {
    let c = Case::new(&[("t/a", 20_000)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    let mut mine = c.file_bytes(0).to_vec();
    mine.extend_from_slice(b"rows the user appended later");
    fs::write(c.dl("t/a"), &mine).unwrap();
    let s = c.open().await;
    let (good, r) = c.try_recheck(&*s).await;
    assert_eq!(good, [0, 1], "the torrent's part of it verifies");
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::Longer,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        fs::read(c.dl("t/a")).unwrap().len(),
        mine.len(),
        "user's appended tail was cut off"
    );
}

/// E2: another client's download with one file skipped (a): b's bytes are right but lie wholly in
/// a piece shared with the absent a, so nothing of b can verify -> "none of its data matches";
/// c is right too but loses its shared piece -> moved out of the downloads folder.
#[tokio::test]
async fn rev_e2_selective_download_from_another_client() {
    let c = Case::new(&[("t/a", 20_000), ("t/b", 1_000), ("t/c", 30_000)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::write(c.dl("t/b"), c.file_bytes(1)).unwrap();
    fs::write(c.dl("t/c"), c.file_bytes(2)).unwrap();
    let s = c.open().await;
    let (good, r) = c.try_recheck(&*s).await;
    assert_eq!(
        good,
        [2, 3],
        "c's own pieces verify; the piece it shares with a cannot"
    );
    assert!(r.is_ok(), "correct data reported as foreign: {r:?}");
    assert!(
        exists(&c.dl("t/c")),
        "t/c (correct) was moved out of the downloads folder"
    );
}

/// E3: a trusted final file beside a deleted neighbour: the shared piece is written *at the
/// final path*, through whatever is there now (here a symlink to a file outside downloads).
#[tokio::test]
async fn rev_e3_write_at_final_path_follows_what_is_there() {
    let c = Case::new(&[("t/a", 20_000), ("t/b", 20_000)]);
    let s = c.open().await;
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    fs::remove_file(c.dl("t/b")).unwrap(); // user deletes one file of a seeded torrent
    let s = c.open().await;
    // After open, the user puts their own thing at t/a (here: a link to a file outside).
    let outside = c.root.join("outside.txt");
    let theirs = vec![b'U'; 20_000];
    fs::write(&outside, &theirs).unwrap();
    fs::remove_file(c.dl("t/a")).unwrap();
    std::os::unix::fs::symlink(&outside, c.dl("t/a")).unwrap();
    // The engine downloads the shared piece 1: the part in t/a is never written, and the link
    // swapped in is not followed.
    let r = s
        .write(1, 0, vec![Bytes::copy_from_slice(c.piece_bytes(1))])
        .await;
    assert!(r.is_err(), "a swapped-in link must not be accepted: {r:?}");
    assert!(
        fs::read(&outside).unwrap() == theirs,
        "wrote into a file outside downloads"
    );
    assert!(
        s.read(0, 0, PL).await.is_err(),
        "nor read from (it would be seeded)"
    );
}

/// E4: --state equal to --downloads (the claim check skips rel == ""): a torrent named `parts`
/// finishes a file at another torrent's part path; that torrent then writes into it.
#[tokio::test]
async fn rev_e4_state_equal_to_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let backend = FsBackend::new();
    let v_hash = InfoHash([1; 20]);
    let a_layout = Layout::new(
        PL,
        [(
            PathBuf::from(format!("parts/{}/0.part", v_hash.to_hex())),
            20_000u64,
        )],
    );
    let a_data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let _ = &a_data;
    let r = backend
        .open(StorageSpec {
            info_hash: InfoHash([2; 20]),
            layout: Arc::new(a_layout.clone()),
            download_dir: d.clone(),
            state_dir: d.clone(),
            skipped_files: Vec::new(),
        })
        .await;
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::StateFolder,
                ..
            })
        ),
        "a torrent named like the state folder's own names is refused: {:?}",
        r.err()
    );
    let v_layout = Layout::new(PL, [(PathBuf::from("v"), 20_000u64)]);
    let v = backend
        .open(StorageSpec {
            info_hash: v_hash,
            layout: Arc::new(v_layout),
            download_dir: d.clone(),
            state_dir: d.clone(),
            skipped_files: Vec::new(),
        })
        .await
        .unwrap();
    v.write(0, 0, vec![Bytes::from(vec![0xEE; PL as usize])])
        .await
        .unwrap();
}

/// E5: a user's file hard-linked into downloads (backup snapshots, *arr tools) that partly
/// verifies: taken in by rename (same inode) and completed in place, so the link outside
/// downloads is rewritten.
#[tokio::test]
async fn rev_e5_hardlinked_user_file_written_through() {
    let c = Case::new(&[("t/a", 40_000)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    let backup = c.root.join("backup-of-a");
    let mut mine = c.file_bytes(0).to_vec();
    for b in &mut mine[PL as usize..] {
        *b = b'U';
    }
    fs::write(&backup, &mine).unwrap();
    fs::hard_link(&backup, c.dl("t/a")).unwrap();
    let s = c.open().await;
    let (good, r) = c.try_recheck(&*s).await;
    assert_eq!(good, [0]);
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::HardLinked,
                ..
            })
        ),
        "{r:?}"
    );
    for p in 1..c.spec.layout.piece_count() {
        let r = s
            .write(p, 0, vec![Bytes::copy_from_slice(c.piece_bytes(p))])
            .await;
        assert!(r.is_err(), "piece {p} written into a file we did not write");
    }
    assert!(
        fs::read(&backup).unwrap() == mine,
        "the user's file outside downloads was rewritten"
    );
}

/// E6: the stamp is size + mtime only: a different file with the same size and mtime at a final
/// path is trusted complete without hashing (has_piece lies; we seed it).
#[tokio::test]
async fn rev_e6_replaced_file_with_same_size_and_mtime_is_trusted() {
    let c = Case::new(&[("a", 20_000)]);
    let s = c.open().await;
    for p in 0..2 {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    let mtime = fs::metadata(c.dl("a")).unwrap().modified().unwrap();
    let tmp = c.root.join("new");
    fs::write(&tmp, vec![b'X'; 20_000]).unwrap();
    fs::rename(&tmp, c.dl("a")).unwrap(); // new inode
    fs::OpenOptions::new()
        .write(true)
        .open(c.dl("a"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let s = c.open().await;
    assert!(
        !s.has_piece(0),
        "a different file (new inode, new ctime) is trusted as complete"
    );
}

/// a file swapped in between (an editor's save-by-rename) is adopted unverified.
#[tokio::test]
async fn rev_e8_file_swapped_after_hashing_is_adopted() {
    let c = Case::new(&[("t/a", 20_000)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::write(c.dl("t/a"), c.file_bytes(0)).unwrap();
    let s = c.open().await;
    let mut verified = Bitfield::new(2);
    for p in 0..2 {
        assert_eq!(
            &s.read(p, 0, c.spec.layout.piece_len(p)).await.unwrap()[..],
            c.piece_bytes(p)
        );
        verified.set(p as usize);
    }
    let tmp = c.root.join("saved");
    fs::write(&tmp, vec![b'N'; 20_000]).unwrap();
    fs::rename(&tmp, c.dl("t/a")).unwrap(); // the user saves a new version
    s.mark_complete(0).await.unwrap();
    let r = s.mark_complete(1).await;
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::Changed,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(s.recheck_finished(&verified).await.is_err());
    assert_eq!(
        fs::read(c.dl("t/a")).unwrap(),
        vec![b'N'; 20_000],
        "the new version is kept"
    );
    assert!(!s.is_finalized(0), "and not adopted");
}

/// E9: a finished file replaced at its final path before the next flush (a post-processing
/// script) is stamped as ours; a later recheck finds none of it verifies and, since it is
/// "Final", takes it in (moves it away and overwrites it) instead of leaving it.
#[tokio::test]
async fn rev_e9_file_replaced_before_flush_is_stamped_ours_then_taken() {
    let c = Case::new(&[("t/a", 20_000), ("t/b", 20_000)]);
    let s = c.open().await;
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    let tmp = c.root.join("processed");
    fs::write(&tmp, vec![b'P'; 30_000]).unwrap();
    fs::rename(&tmp, c.dl("t/a")).unwrap(); // the user's post-processing replaces t/a
    s.flush().await.unwrap();
    drop(s);
    let s = c.open().await;
    let (good, r) = c.try_recheck(&*s).await; // the user presses r
    assert_eq!(good, [2], "only the piece lying wholly in t/b");
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::ForeignData,
                ..
            })
        ),
        "a replaced file is not ours: {r:?}"
    );
    assert!(
        fs::read(c.dl("t/a"))
            .map(|b| b == vec![b'P'; 30_000])
            .unwrap_or(false),
        "the user's file at t/a was moved away / changed"
    );
}

/// `t/a`: its first piece right, then `U`s; `t/b`: `V`s. Returns the case and a's bytes.
fn partly_matching_a_and_foreign_b() -> (Case, Vec<u8>) {
    let c = Case::new(&[("t/a", 40_000), ("t/b", 20_000)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    let mut a = c.file_bytes(0).to_vec();
    for x in &mut a[PL as usize..] {
        *x = b'U';
    }
    fs::write(c.dl("t/a"), &a).unwrap();
    fs::write(c.dl("t/b"), vec![b'V'; 20_000]).unwrap();
    (c, a)
}

/// E10: settling is not all-or-nothing: a later conflict (t/b) errors the torrent, but t/a
/// (partly matching) was already moved out of the downloads folder into the hidden state area.
#[tokio::test]
async fn rev_e10_conflict_after_take_in() {
    let (c, a) = partly_matching_a_and_foreign_b();
    let s = c.open().await;
    let (good, r) = c.try_recheck(&*s).await;
    assert_eq!(good, [0]);
    assert!(r.is_err());
    assert_eq!(
        fs::read(c.dl("t/a")).unwrap(),
        a,
        "t/a moved or changed although the torrent stopped in error"
    );
}

/// E11: the user edits a small file (t/b, a .nfo) of a finished torrent. At the next start the
/// shared piece fails, so the big complete neighbour t/a is moved out of downloads into the
/// state folder, and then the torrent errors on t/b.
#[tokio::test]
async fn rev_e11_editing_a_small_file_hides_its_neighbour() {
    let c = Case::new(&[("t/a", 20_000), ("t/b", 1_000)]);
    let s = c.open().await;
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(20));
    let mut nfo = c.file_bytes(1).to_vec();
    nfo[0] ^= 1;
    fs::write(c.dl("t/b"), &nfo).unwrap(); // the user edits the .nfo
    let s = c.open().await;
    let resume = s.resume();
    let Resume::Partial { complete, check } = resume.clone() else {
        panic!("{resume:?}")
    };
    let (good, r) = c.try_recheck_of(&*s, complete, &check).await;
    assert!(good.is_empty(), "the edited piece must fail: {good:?}");
    // The edited .nfo shares its only piece with t/a; nothing of it can be shown to match.
    assert!(r.is_err(), "{r:?}");
    assert!(
        exists(&c.dl("t/a")),
        "complete, trusted t/a was moved out of the downloads folder"
    );
}

/// E12 (expected to pass): after a ForeignData error, the user moves the file away and
/// rechecks: the torrent carries on with what verified.
#[tokio::test]
async fn rev_e12_fix_and_recheck_recovers() {
    let (c, _) = partly_matching_a_and_foreign_b();
    let s = c.open().await;
    let (_, r) = c.try_recheck(&*s).await;
    assert!(r.is_err());
    drop(s);
    fs::rename(c.dl("t/b"), c.root.join("moved-away")).unwrap();
    let s = c.open().await;
    let (good, r) = c.try_recheck(&*s).await;
    r.unwrap();
    assert_eq!(good, [0]);
    for p in 1..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    assert!(
        fs::read(c.dl("t/a")).unwrap() == c.file_bytes(0)
            && fs::read(c.dl("t/b")).unwrap() == c.file_bytes(1)
    );
    assert_eq!(
        fs::read(c.root.join("moved-away")).unwrap(),
        vec![b'V'; 20_000]
    );
}

/// A complete file deleted while seeding stays readable through the cached descriptor; reads
/// must still report it missing so the engine notices the loss (issue 9, point 10).
#[tokio::test]
async fn a_deleted_file_reads_as_missing_even_through_an_open_descriptor() {
    let c = Case::new(&[("t/a", 20_000)]);
    let s = c.open().await;
    for p in 0..2 {
        c.complete(&*s, p).await;
    }
    assert_eq!(
        &s.read(0, 0, PL).await.unwrap()[..],
        c.piece_bytes(0),
        "cached now"
    );
    fs::remove_file(c.dl("t/a")).unwrap();
    assert!(matches!(s.read(0, 0, PL).await, Err(StorageError::Missing)));
    assert!(matches!(
        s.read(1, 0, 100).await,
        Err(StorageError::Missing)
    ));
}

/// Found from outside: a hostile torrent whose first piece is 16 KiB of zeros "matched" a
/// user's disk image that starts with zeros, and the image was taken in and overwritten. A run
/// of one value is no evidence; nor is a match when other pieces hold different data.
#[tokio::test]
async fn a_partial_match_is_not_enough_to_take_a_users_file() {
    // The torrent: a zero piece, then its own data.
    let mut c = Case::new(&[("disk.img", 3 * PL as u64)]);
    c.data[..PL as usize].fill(0);
    fs::create_dir_all(&c.spec.download_dir).unwrap();
    // The user's image: the same zero piece, then their own data.
    let mut mine = vec![0u8; PL as usize];
    mine.extend((0..2 * PL).map(|i| (i % 7) as u8 + 1));
    fs::write(c.dl("disk.img"), &mine).unwrap();
    let ino = inode(&c.dl("disk.img"));
    let s = c.open().await;
    let (good, r) = c.try_recheck(&*s).await;
    assert_eq!(good, [0], "the zero piece does match");
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::ForeignData,
                ..
            })
        ),
        "{r:?}"
    );
    for p in 1..3 {
        let r = s
            .write(p, 0, vec![Bytes::copy_from_slice(c.piece_bytes(p))])
            .await;
        assert!(r.is_err(), "piece {p} written into the user's image");
    }
    drop(s);
    assert_eq!(fs::read(c.dl("disk.img")).unwrap(), mine);
    assert_eq!(inode(&c.dl("disk.img")), ino);
}

/// Another client's partial download (verified pieces, the rest unwritten zeros) is still
/// taken in and completed.
#[tokio::test]
async fn another_clients_partial_download_is_completed() {
    let c = Case::new(&[("t/a", 3 * PL as u64)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    let mut theirs = c.file_bytes(0).to_vec();
    theirs[PL as usize..].fill(0);
    fs::write(c.dl("t/a"), &theirs).unwrap();
    let s = c.open().await;
    assert_eq!(c.recheck(&*s).await, [0]);
    for p in 1..3 {
        c.complete(&*s, p).await;
    }
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), c.file_bytes(0));
}

/// Found from outside: after a restart, a later torrent with the same name could be added
/// first, claim the path, and take the earlier torrent's finished file. The first owner's claim
/// outlives the process.
#[tokio::test]
async fn the_first_owner_of_a_path_keeps_it_across_restarts() {
    let c = Case::new(&[("proj.bin", 2 * PL as u64)]);
    let s = c.open().await;
    for p in 0..2 {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    // "Restart": a fresh backend; the hostile twin (same name, same first piece) comes first.
    let backend = FsBackend::new();
    let mut twin = c.spec.clone();
    twin.info_hash = InfoHash([0x66; 20]);
    let r = backend.open(twin).await;
    assert!(
        matches!(&r, Err(StorageError::PathInUse { why: PathConflict::OtherTorrent(h), .. }) if *h == c.spec.info_hash),
        "{:?}",
        r.err()
    );
    let s = backend.open(c.spec.clone()).await.unwrap();
    assert!(matches!(s.resume(), Resume::Trusted(b) if b.is_full()));
    assert_eq!(fs::read(c.dl("proj.bin")).unwrap(), c.file_bytes(0));
}

/// Found from outside: an interrupted download (verified pieces, then one piece half written,
/// then zeros) was refused because the half-written piece "contradicted" it. A few differing
/// pieces among more matching ones are what an interrupted download looks like.
#[tokio::test]
async fn an_interrupted_download_with_a_half_written_piece_is_completed() {
    let c = Case::new(&[("t/a", 6 * PL as u64)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    let mut theirs = c.file_bytes(0).to_vec();
    // Pieces 0-2 done, piece 3 half written, the rest never written.
    theirs[3 * PL as usize + PL as usize / 2..].fill(0);
    fs::write(c.dl("t/a"), &theirs).unwrap();
    let s = c.open().await;
    assert_eq!(c.recheck(&*s).await, [0, 1, 2]);
    for p in 3..6 {
        c.complete(&*s, p).await;
    }
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), c.file_bytes(0));
}

/// A user's file that matches in one place and differs in more is not taken.
#[tokio::test]
async fn a_file_that_differs_more_than_it_matches_is_left_alone() {
    let c = Case::new(&[("t/a", 4 * PL as u64)]);
    fs::create_dir_all(c.dl("t")).unwrap();
    let mut mine = c.file_bytes(0).to_vec();
    for (i, b) in mine[PL as usize..].iter_mut().enumerate() {
        *b = (i % 13) as u8; // their own data after the first piece
    }
    fs::write(c.dl("t/a"), &mine).unwrap();
    let s = c.open().await;
    let (good, r) = c.try_recheck(&*s).await;
    assert_eq!(good, [0]);
    assert!(
        matches!(
            r,
            Err(StorageError::PathInUse {
                why: PathConflict::Differs,
                ..
            })
        ),
        "{r:?}"
    );
    drop(s);
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), mine);
}

/// a: pieces 0-1; s: 5,000 bytes inside piece 1 (shared with a and b); e: empty; b: 1-3.
fn with_skipped() -> Case {
    let mut c = Case::new(&[("t/a", 20_000), ("t/s", 5_000), ("t/e", 0), ("t/b", 30_000)]);
    c.spec.skipped_files = vec![false, true, true, false];
    c
}

#[tokio::test]
async fn a_skipped_file_never_appears_even_when_all_its_bytes_arrive() {
    let c = with_skipped();
    let s = c.open().await;
    assert!(!exists(&c.dl("t/e")), "a skipped empty file is not created");
    for p in 0..4 {
        c.complete(&*s, p).await;
    }
    assert!(exists(&c.dl("t/a")) && exists(&c.dl("t/b")));
    assert!(!exists(&c.dl("t/s")), "skipped file moved into place");
    assert_eq!(
        fs::read(c.part(1)).unwrap(),
        c.file_bytes(1),
        "its bytes stay under state"
    );
    s.flush().await.unwrap();
    drop(s);
    // Reopened (all its pieces complete, trusted): still not moved into place.
    let s = c.open().await;
    assert!(matches!(s.resume(), Resume::Trusted(b) if b.is_full()));
    assert!(!exists(&c.dl("t/s")) && !exists(&c.dl("t/e")));
    assert_eq!(tree(&c.spec.download_dir), ["t", "t/a", "t/b"]);
    // Un-skipped: finished normally, at once.
    s.set_skipped_files(vec![false; 4]).await.unwrap();
    assert_eq!(fs::read(c.dl("t/s")).unwrap(), c.file_bytes(1));
    assert!(!exists(&c.part(1)));
    assert!(exists(&c.dl("t/e")) && s.is_finalized(1) && s.is_finalized(2));
    s.flush().await.unwrap();
    drop(s);
    let s = c.open().await;
    assert!(matches!(s.resume(), Resume::Trusted(b) if b.is_full()));
    assert!((0..4).all(|f| s.is_finalized(f)));
}

#[tokio::test]
async fn skipping_after_start_keeps_the_file_out_of_place() {
    let mut c = with_skipped();
    c.spec.skipped_files = Vec::new();
    let s = c.open().await;
    assert!(exists(&c.dl("t/e")), "not skipped at open: created");
    s.set_skipped_files(vec![false, true, false, false])
        .await
        .unwrap();
    for p in [3, 2, 1, 0] {
        c.complete(&*s, p).await;
    }
    assert!(!exists(&c.dl("t/s")) && exists(&c.part(1)));
    assert!(exists(&c.dl("t/a")) && exists(&c.dl("t/b")));
}

#[tokio::test]
async fn deleting_data_removes_only_what_this_torrent_wrote() {
    // a and b written by us; k placed by the user and adopted once it verified; e empty.
    let c = Case::new(&[
        ("t/a", 20_000),
        ("t/k", 20_000),
        ("t/sub/b", 30_000),
        ("t/e", 0),
    ]);
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::write(c.dl("t/k"), c.file_bytes(1)).unwrap();
    fs::write(c.dl("t/notes.txt"), b"the user's").unwrap();
    fs::write(c.dl("x.torrent"), b"d4:infod").unwrap();
    let watch = c.root.join("torrents");
    fs::create_dir_all(&watch).unwrap();
    fs::write(watch.join("x.torrent"), b"d4:infod").unwrap();
    let k_inode = inode(&c.dl("t/k"));

    // Another torrent in the same folders, complete.
    let mut other = c.spec.clone();
    other.info_hash = InfoHash([0xcd; 20]);
    other.layout = Arc::new(Layout::new(PL, [(PathBuf::from("u/z"), 100)]));
    let backend = FsBackend::new();
    let o = backend.open(other.clone()).await.unwrap();
    o.write(0, 0, vec![Bytes::from_static(&[7; 100])])
        .await
        .unwrap();
    o.mark_complete(0).await.unwrap();
    o.flush().await.unwrap();
    drop(o);

    let s = backend.open(c.spec.clone()).await.unwrap();
    assert_eq!(
        c.recheck(&*s).await,
        Vec::<u32>::new(),
        "k alone checks no piece"
    );
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    assert_eq!(inode(&c.dl("t/k")), k_inode, "adopted in place");
    s.flush().await.unwrap();
    // Never while the torrent is open.
    assert!(backend.delete_data(c.spec.clone()).await.is_err());
    assert!(exists(&c.dl("t/a")));
    drop(s);

    let deleted = backend.delete_data(c.spec.clone()).await.unwrap();
    for gone in ["t/a", "t/sub/b", "t/e", "t/sub"] {
        assert!(!exists(&c.dl(gone)), "{gone} left behind");
        assert!(deleted.removed.contains(&c.dl(gone)), "{gone} not reported");
    }
    let kept: Vec<&PathBuf> = deleted.kept.iter().map(|(p, _)| p).collect();
    assert_eq!(kept, [&c.dl("t/k")], "{:?}", deleted.kept);
    assert_eq!(fs::read(c.dl("t/k")).unwrap(), c.file_bytes(1));
    assert_eq!(fs::read(c.dl("t/notes.txt")).unwrap(), b"the user's");
    assert!(exists(&c.dl("x.torrent")) && exists(&watch.join("x.torrent")));
    assert!(!exists(&c.resume_file()) && !exists(c.part(0).parent().unwrap()));
    // The other torrent is untouched, data and state.
    assert_eq!(fs::read(c.dl("u/z")).unwrap(), [7; 100]);
    let o = backend.open(other).await.unwrap();
    assert!(matches!(o.resume(), Resume::Trusted(b) if b.is_full()));
    drop(o);
    // Once the user's files are gone, a second delete empties the torrent's folder and
    // never removes the download folder itself.
    fs::remove_file(c.dl("t/k")).unwrap();
    fs::remove_file(c.dl("t/notes.txt")).unwrap();
    let again = backend.delete_data(c.spec.clone()).await.unwrap();
    assert_eq!(again.removed, [c.dl("t")]);
    assert!(c.spec.download_dir.is_dir());
}

#[tokio::test]
async fn deleting_data_never_follows_a_symbolic_link() {
    let c = Case::new(&[("t/a", 20_000), ("t/sub/b", 30_000)]);
    let backend = FsBackend::new();
    let s = backend.open(c.spec.clone()).await.unwrap();
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    // The folder holding b moves elsewhere and a link takes its place: b is the very file we
    // wrote (same inode, same times), but reached through a link it is not ours to delete.
    let outside = c.root.join("elsewhere");
    fs::rename(c.dl("t/sub"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, c.dl("t/sub")).unwrap();
    let deleted = backend.delete_data(c.spec.clone()).await.unwrap();
    assert!(!exists(&c.dl("t/a")));
    assert_eq!(fs::read(outside.join("b")).unwrap(), c.file_bytes(1));
    assert!(c.dl("t/sub").symlink_metadata().unwrap().is_symlink());
    assert_eq!(deleted.kept.len(), 1, "{:?}", deleted.kept);
}

#[tokio::test]
async fn a_users_file_at_a_skipped_files_path_is_neither_adopted_nor_moved() {
    let c = with_skipped();
    fs::create_dir_all(c.dl("t")).unwrap();
    // The user's own copy of s, the torrent's bytes exactly: it would verify.
    fs::write(c.dl("t/s"), c.file_bytes(1)).unwrap();
    let ino = inode(&c.dl("t/s"));
    let s = c.open().await;
    c.recheck(&*s).await;
    for p in 0..4 {
        c.complete(&*s, p).await;
    }
    assert!(!s.is_finalized(1), "a skipped file is not taken as ours");
    assert_eq!(inode(&c.dl("t/s")), ino);
    assert_eq!(
        fs::read(c.dl("t/s")).unwrap(),
        c.file_bytes(1),
        "nor changed"
    );
    // Its bytes from pieces shared with wanted files go to its own part file, as for any
    // skipped file: the user's file is not moved there.
    assert!(
        !exists(&c.part(1)) || inode(&c.part(1)) != ino,
        "nor moved into the incomplete area"
    );
    s.flush().await.unwrap();
    drop(s);
    let deleted = FsBackend::new().delete_data(c.spec.clone()).await.unwrap();
    assert_eq!(fs::read(c.dl("t/s")).unwrap(), c.file_bytes(1));
    assert!(!exists(&c.dl("t/a")) && !exists(&c.dl("t/b")));
    assert_eq!(deleted.kept.len(), 1, "{:?}", deleted.kept);
}

/// Review finding: skipping a file because you already have your own (different) copy of it
/// must not stop the torrent; your file stays as it is.
#[tokio::test]
async fn a_different_file_of_yours_at_a_skipped_path_does_not_stop_the_download() {
    let c = with_skipped();
    fs::create_dir_all(c.dl("t")).unwrap();
    fs::write(
        c.dl("t/s"),
        b"my own notes, nothing like the torrent's bytes",
    )
    .unwrap();
    let ino = inode(&c.dl("t/s"));
    let s = c.open().await;
    c.recheck(&*s).await;
    for p in 0..4 {
        c.complete(&*s, p).await;
    }
    assert!(
        s.is_finalized(0) && s.is_finalized(3),
        "the wanted files are done"
    );
    assert!(!s.is_finalized(1));
    assert_eq!(inode(&c.dl("t/s")), ino);
    assert_eq!(
        fs::read(c.dl("t/s")).unwrap(),
        b"my own notes, nothing like the torrent's bytes"
    );
    s.flush().await.unwrap();
}

// ---- Moving a finished torrent to another folder (`StorageBackend::move_data`) ----

/// A finished torrent of three files (one empty) in `t/`, flushed and closed.
async fn finished(backend: &FsBackend) -> Case {
    let c = Case::new(&[("t/a", 20_000), ("t/sub/b", 30_000), ("t/empty", 0)]);
    let s = backend.open(c.spec.clone()).await.unwrap();
    for p in 0..c.spec.layout.piece_count() {
        c.complete(&*s, p).await;
    }
    s.flush().await.unwrap();
    drop(s);
    c
}

fn moved_to(c: &Case, dir: &Path) -> StorageSpec {
    StorageSpec {
        download_dir: dir.to_path_buf(),
        ..c.spec.clone()
    }
}

fn journal(c: &Case) -> PathBuf {
    c.spec
        .state_dir
        .join(format!("{}.move", c.spec.info_hash.to_hex()))
}

/// Open at `spec` and insist every piece is trusted without hashing.
async fn trusted_at(backend: &FsBackend, spec: &StorageSpec) {
    let s = backend.open(spec.clone()).await.unwrap();
    match s.resume() {
        Resume::Trusted(set) => assert!(set.is_full(), "only {:?}", set.count_ones()),
        other => panic!("after the move the data must be trusted, got {other:?}"),
    }
    assert!((0..3).all(|f| s.is_finalized(f)));
}

#[tokio::test]
async fn a_finished_torrent_moves_by_rename_and_reopens_trusted() {
    let backend = FsBackend::new();
    let c = finished(&backend).await;
    let done = c.root.join("done");
    let inodes = [inode(&c.dl("t/a")), inode(&c.dl("t/sub/b"))];
    // Never while the torrent is open.
    let open = backend.open(c.spec.clone()).await.unwrap();
    assert!(backend
        .move_data(c.spec.clone(), done.clone())
        .await
        .is_err());
    drop(open);

    let out = backend
        .move_data(c.spec.clone(), done.clone())
        .await
        .unwrap();
    let MoveOutcome::Moved { files } = out else {
        panic!("{out:?}")
    };
    assert_eq!(files.len(), 3);
    assert_eq!(tree(&done), ["t", "t/a", "t/empty", "t/sub", "t/sub/b"]);
    assert_eq!(fs::read(done.join("t/a")).unwrap(), c.file_bytes(0));
    assert_eq!(fs::read(done.join("t/sub/b")).unwrap(), c.file_bytes(1));
    assert_eq!(
        [inode(&done.join("t/a")), inode(&done.join("t/sub/b"))],
        inodes,
        "one file system: renamed, not copied"
    );
    assert!(!exists(&c.dl("t/a")) && !exists(&c.dl("t/sub/b")));
    assert!(
        exists(&journal(&c)),
        "kept until the torrent opens at the new place"
    );

    trusted_at(&backend, &moved_to(&c, &done)).await;
    assert!(!exists(&journal(&c)), "settled by the open");
    assert!(!exists(&c.dl("t")), "the emptied folders go");
    assert!(
        c.spec.download_dir.is_dir(),
        "never the download folder itself"
    );
}

#[tokio::test]
async fn a_move_by_copy_verifies_and_reopens_trusted() {
    let backend = FsBackend::new().with_copy_moves();
    let c = finished(&backend).await;
    let done = c.root.join("done");
    let old = inode(&c.dl("t/a"));
    let out = backend
        .move_data(c.spec.clone(), done.clone())
        .await
        .unwrap();
    assert!(matches!(out, MoveOutcome::Moved { .. }), "{out:?}");
    assert_ne!(inode(&done.join("t/a")), old, "copied");
    assert_eq!(fs::read(done.join("t/a")).unwrap(), c.file_bytes(0));
    assert_eq!(fs::read(done.join("t/sub/b")).unwrap(), c.file_bytes(1));
    assert_eq!(
        tree(&done),
        ["t", "t/a", "t/empty", "t/sub", "t/sub/b"],
        "no temporary copy left behind"
    );
    assert!(!exists(&c.dl("t/a")) && !exists(&c.dl("t/sub/b")));
    trusted_at(&backend, &moved_to(&c, &done)).await;
}

#[tokio::test]
async fn a_taken_name_at_the_destination_moves_nothing_and_overwrites_nothing() {
    for backend in [FsBackend::new(), FsBackend::new().with_copy_moves()] {
        let c = finished(&backend).await;
        let done = c.root.join("done");
        fs::create_dir_all(done.join("t/sub")).unwrap();
        fs::write(done.join("t/sub/b"), b"the user's").unwrap();
        let ino = inode(&c.dl("t/a"));
        let err = backend
            .move_data(c.spec.clone(), done.clone())
            .await
            .unwrap_err();
        match &err {
            StorageError::PathInUse { path, why } => {
                assert_eq!(path, &done.join("t/sub/b"));
                assert_eq!(*why, PathConflict::DestinationTaken);
            }
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains("t/sub/b"), "{err}");
        assert_eq!(fs::read(done.join("t/sub/b")).unwrap(), b"the user's");
        assert!(!exists(&done.join("t/a")));
        assert_eq!(
            inode(&c.dl("t/a")),
            ino,
            "the source stays exactly as it was"
        );
        assert!(!exists(&journal(&c)));
        trusted_at(&backend, &c.spec).await;
    }
}

#[tokio::test]
async fn files_found_in_place_do_not_move() {
    let c = Case::new(&[("t/a", 20_000), ("t/sub/b", 30_000), ("t/empty", 0)]);
    fs::create_dir_all(c.dl("t/sub")).unwrap();
    fs::write(c.dl("t/a"), c.file_bytes(0)).unwrap();
    let backend = FsBackend::new();
    let s = backend.open(c.spec.clone()).await.unwrap();
    c.recheck(&*s).await;
    for p in 0..c.spec.layout.piece_count() {
        if !s.has_piece(p) {
            c.complete(&*s, p).await;
        }
    }
    s.flush().await.unwrap();
    drop(s);
    let done = c.root.join("done");
    let out = backend
        .move_data(c.spec.clone(), done.clone())
        .await
        .unwrap();
    let MoveOutcome::NotMoved { reasons } = out else {
        panic!("{out:?}")
    };
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0].0, c.dl("t/a"));
    assert!(
        !exists(&done.join("t")),
        "nothing moved, not even the files we wrote"
    );
    assert_eq!(fs::read(c.dl("t/sub/b")).unwrap(), c.file_bytes(1));
    trusted_at(&backend, &c.spec).await;
}

#[tokio::test]
async fn a_move_not_yet_recorded_rolls_back_at_the_next_open() {
    // The engine records the new folder only after `move_data`: a crash before that opens the
    // torrent at the old folder, and the files go back there.
    for backend in [FsBackend::new(), FsBackend::new().with_copy_moves()] {
        let c = finished(&backend).await;
        let done = c.root.join("done");
        backend
            .move_data(c.spec.clone(), done.clone())
            .await
            .unwrap();
        trusted_at(&backend, &c.spec).await;
        assert_eq!(fs::read(c.dl("t/sub/b")).unwrap(), c.file_bytes(1));
        assert!(!exists(&done.join("t/a")) && !exists(&done.join("t/sub/b")));
        assert!(!exists(&journal(&c)));
    }
}

#[tokio::test]
async fn a_move_cut_short_is_finished_at_the_next_open() {
    let backend = FsBackend::new();
    let c = finished(&backend).await;
    let done = c.root.join("done");
    backend
        .move_data(c.spec.clone(), done.clone())
        .await
        .unwrap();
    // As if the crash came before `b` moved, and while `a`'s copy was in place but its source
    // not yet removed.
    fs::rename(done.join("t/sub/b"), c.dl("t/sub/b")).unwrap();
    fs::copy(done.join("t/a"), c.dl("t/a")).unwrap();
    trusted_at(&backend, &moved_to(&c, &done)).await;
    assert_eq!(fs::read(done.join("t/sub/b")).unwrap(), c.file_bytes(1));
    assert_eq!(fs::read(done.join("t/a")).unwrap(), c.file_bytes(0));
    assert!(!exists(&c.dl("t/a")) && !exists(&c.dl("t/sub/b")));
    assert!(!exists(&journal(&c)));
}

#[tokio::test]
async fn a_different_file_at_both_places_is_never_removed() {
    let backend = FsBackend::new();
    let c = finished(&backend).await;
    let done = c.root.join("done");
    backend
        .move_data(c.spec.clone(), done.clone())
        .await
        .unwrap();
    // Someone put other bytes at the old place meanwhile: neither copy is removed.
    fs::write(c.dl("t/a"), b"someone's").unwrap();
    let err = backend
        .open(moved_to(&c, &done))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, StorageError::PathInUse { path, why: PathConflict::DestinationTaken } if path == &done.join("t/a")),
        "{err}"
    );
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), b"someone's");
    assert_eq!(fs::read(done.join("t/a")).unwrap(), c.file_bytes(0));
}

#[tokio::test]
async fn a_move_into_another_torrents_folder_is_refused_before_anything_moves() {
    let backend = FsBackend::new();
    let c = finished(&backend).await;
    let done = c.root.join("done");
    // Another torrent with the same top folder already lives in the completed folder.
    let other = StorageSpec {
        info_hash: InfoHash([0xcd; 20]),
        layout: Arc::new(Layout::new(PL, [(PathBuf::from("t/other"), 100)])),
        download_dir: done.clone(),
        state_dir: c.spec.state_dir.clone(),
        skipped_files: Vec::new(),
    };
    let open = backend.open(other).await.unwrap();
    let err = backend
        .move_data(c.spec.clone(), done.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::PathInUse { why: PathConflict::OtherTorrent(h), .. } if *h == InfoHash([0xcd; 20])),
        "{err}"
    );
    assert!(!exists(&done.join("t/a")));
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), c.file_bytes(0));
    drop(open);
    trusted_at(&backend, &c.spec).await;
}

#[tokio::test]
async fn a_pending_move_is_settled_whatever_name_the_folder_is_opened_by() {
    let backend = FsBackend::new();
    let c = finished(&backend).await;
    let done = c.root.join("done");
    backend
        .move_data(c.spec.clone(), done.clone())
        .await
        .unwrap();
    // The same folder, reached through a link of the user's.
    let link = c.root.join("link-to-done");
    std::os::unix::fs::symlink(&done, &link).unwrap();
    trusted_at(&backend, &moved_to(&c, &link)).await;
    assert!(!exists(&journal(&c)), "settled");
    assert_eq!(fs::read(done.join("t/a")).unwrap(), c.file_bytes(0));
    assert!(!exists(&c.dl("t/a")));
}

/// Reads give the torrent's bytes whichever way they are served: from the page cache on the
/// caller's thread (one file, descriptor open), or by the blocking pool (a range across two
/// files, the first read of a file, a range larger than a cached read may be). Ranges of every
/// size at offsets that cross the file boundary included.
#[tokio::test]
async fn reads_agree_whichever_path_serves_them() {
    let c = Case::new(&[("t/a", 20_000), ("t/b", 30_000)]);
    let s = c.open().await;
    let pieces = 50_000u32.div_ceil(PL);
    for p in 0..pieces {
        c.complete(&*s, p).await;
    }
    for _ in 0..2 {
        // The second pass finds every descriptor open and every page cached.
        for p in 0..pieces {
            let bytes = c.piece_bytes(p);
            for (off, len) in [(0, bytes.len()), (1, 100), (3000, 1), (0, 1)] {
                if off + len > bytes.len() {
                    continue;
                }
                let got = s.read(p, off as u32, len as u32).await.unwrap();
                assert_eq!(&got[..], &bytes[off..off + len], "piece {p} at {off}+{len}");
            }
        }
    }
}

/// `write_piece` (the engine's one call per verified piece) on disk: a file appears at its
/// final path with the call that completes it, whole, and its part file is gone.
#[tokio::test]
async fn write_piece_finalizes_the_file_it_completes() {
    let c = Case::new(&[("t/a", 20_000), ("t/b", 30_000)]);
    let s = c.open().await;
    let piece = |p: u32| vec![Bytes::copy_from_slice(c.piece_bytes(p))];
    s.write_piece(0, piece(0)).await.unwrap();
    assert!(s.has_piece(0));
    assert!(
        exists(&c.part(0)) && !exists(&c.dl("t/a")),
        "a still misses piece 1"
    );
    s.write_piece(1, piece(1)).await.unwrap();
    assert!(s.is_finalized(0) && !s.is_finalized(1));
    assert!(!exists(&c.part(0)));
    assert_eq!(fs::read(c.dl("t/a")).unwrap(), c.file_bytes(0));
    assert!(!exists(&c.dl("t/b")) && exists(&c.part(1)));
    for p in [3, 2] {
        s.write_piece(p, piece(p)).await.unwrap();
    }
    assert_eq!(fs::read(c.dl("t/b")).unwrap(), c.file_bytes(1));
    s.flush().await.unwrap();
    drop(s);
    let s = c.open().await;
    assert_eq!(s.resume(), Resume::Trusted(Bitfield::full(4)));
}

/// A piece whose write fails half-way (its first file written, its second one cannot be
/// created) is reported and claimed nowhere: not by `has_piece`, not by the resume state a
/// flush writes, and the file it would have completed stays unfinished.
#[tokio::test]
async fn a_failed_write_piece_claims_nothing() {
    let c = Case::new(&[("a", 10_000), ("b", 30_000)]);
    let s = c.open().await;
    // A folder where b's part file goes: creating it fails (EISDIR) even for root.
    fs::create_dir_all(c.part(1)).unwrap();
    let err = s
        .write_piece(0, vec![Bytes::copy_from_slice(c.piece_bytes(0))])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::Io { path, .. } if *path == c.part(1)),
        "the error names the file that could not be written: {err:?}"
    );
    assert!(!s.has_piece(0));
    assert!(!s.is_finalized(0) && !exists(&c.dl("a")));
    // (A flush with the folder still there fails: it is in the way of a file of ours.)
    fs::remove_dir(c.part(1)).unwrap();
    s.flush().await.unwrap();
    drop(s);
    let s = c.open().await;
    let claimed = match s.resume() {
        Resume::Trusted(b) | Resume::Partial { complete: b, .. } => b.count_ones(),
        Resume::NeedsRecheck => 0,
    };
    assert_eq!(claimed, 0, "nothing claimed after reopen: {:?}", s.resume());
    assert!(!s.has_piece(0) && !exists(&c.dl("a")));
}

/// Chunks that do not cover the whole piece are refused: marking the piece complete would
/// claim bytes nobody wrote.
#[tokio::test]
async fn write_piece_of_part_of_a_piece_is_refused() {
    let c = Case::new(&[("a", 40_000)]);
    let s = c.open().await;
    let half = &c.piece_bytes(0)[..8192];
    let err = s
        .write_piece(0, vec![Bytes::copy_from_slice(half)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::OutOfRange { piece: 0, .. }),
        "{err:?}"
    );
    assert!(!s.has_piece(0));
}
