//! The storage conformance suite: free async functions every backend must pass.
//!
//! Each check takes the backend under test and a scratch folder; it makes its own subfolder
//! (`<root>/<check name>/downloads` and `.../state`) and its own info-hash, so checks never see
//! each other's data, even on a backend instance that keeps state between opens. Data is
//! pseudo-random from fixed seeds, so a failure reproduces. Failures panic with a message naming
//! the check.
//!
//! What the suite pins down beyond the [`Storage`] docs:
//! - reads of bytes never written give [`StorageError::Missing`] or bytes of the requested
//!   length (a sparse file reads zeros); the engine only relies on their hash failing;
//! - a clean `flush` followed by drop and reopen gives `Resume::Trusted` with exactly the
//!   flushed set;
//! - zero-length files are finalized from the moment the torrent is opened (unless skipped);
//! - skipping files and deleting data are capabilities: a backend answering
//!   [`StorageError::NotSupported`] passes those checks by saying so (and the engine warns),
//!   any other answer must keep the contract.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha1::{Digest, Sha1};

use crate::storage::{Layout, Resume, Storage, StorageBackend, StorageError, StorageSpec};
use crate::types::{Bitfield, InfoHash, PieceIndex, BLOCK_SIZE};

/// Run every check against `backend`, using scratch folders under `root`.
pub async fn run_all(backend: Arc<dyn StorageBackend>, root: &Path) {
    round_trip(backend.clone(), root).await;
    multi_file_layout(backend.clone(), root).await;
    finalize_only_when_complete(backend.clone(), root).await;
    write_piece_completes_in_one_step(backend.clone(), root).await;
    has_piece_never_lies_after_reopen(backend.clone(), root).await;
    reopen_keeps_flushed_pieces(backend.clone(), root).await;
    concurrent_writes(backend.clone(), root).await;
    out_of_range(backend.clone(), root).await;
    unwritten_reads(backend.clone(), root).await;
    skipped_files_are_never_finalized(backend.clone(), root).await;
    delete_data_forgets_the_torrent(backend, root).await;
}

/// A torrent under test: its spec and the bytes it should hold.
struct Fixture {
    name: &'static str,
    spec: StorageSpec,
    data: Arc<Vec<u8>>,
}

impl Fixture {
    fn new(root: &Path, name: &'static str, piece_length: u32, files: &[(&str, u64)]) -> Self {
        let dir = root.join(name);
        let layout = Layout::new(
            piece_length,
            files
                .iter()
                .map(|(p, len)| (PathBuf::from(name).join(p), *len)),
        );
        // Unique per (root, check), so reusing one backend instance for several runs is safe.
        let mut h = Sha1::new();
        h.update(root.as_os_str().as_encoded_bytes());
        h.update(name.as_bytes());
        let info_hash = InfoHash(h.finalize().into());
        let mut data = vec![0u8; layout.total_length as usize];
        let mut rng = StdRng::seed_from_u64(layout.total_length ^ name.len() as u64);
        rng.fill_bytes(&mut data);
        let spec = StorageSpec {
            info_hash,
            layout: Arc::new(layout),
            download_dir: dir.join("downloads"),
            state_dir: dir.join("state"),
            skipped_files: Vec::new(),
        };
        Fixture {
            name,
            spec,
            data: Arc::new(data),
        }
    }

    fn layout(&self) -> &Layout {
        &self.spec.layout
    }

    fn pieces(&self) -> u32 {
        self.layout().piece_count()
    }

    async fn open(&self, backend: &Arc<dyn StorageBackend>) -> Arc<dyn Storage> {
        match backend.open(self.spec.clone()).await {
            Ok(s) => s,
            Err(e) => panic!(
                "[{}] {} backend failed to open: {e}",
                self.name,
                backend.name()
            ),
        }
    }

    fn expected(&self, piece: PieceIndex, offset: u32, len: u32) -> &[u8] {
        let start = (self.layout().piece_range(piece).start + offset as u64) as usize;
        &self.data[start..start + len as usize]
    }

    /// Write `piece` whole, as one call made of 16 KiB chunks.
    async fn write_piece(&self, s: &dyn Storage, piece: PieceIndex) {
        let len = self.layout().piece_len(piece);
        let bytes = self.expected(piece, 0, len);
        let chunks: Vec<Bytes> = bytes
            .chunks(BLOCK_SIZE as usize)
            .map(Bytes::copy_from_slice)
            .collect();
        if let Err(e) = s.write(piece, 0, chunks).await {
            panic!("[{}] write of piece {piece} failed: {e}", self.name);
        }
    }

    async fn complete_piece(&self, s: &dyn Storage, piece: PieceIndex) {
        self.write_piece(s, piece).await;
        if let Err(e) = s.mark_complete(piece).await {
            panic!("[{}] mark_complete({piece}) failed: {e}", self.name);
        }
        assert!(
            s.has_piece(piece),
            "[{}] has_piece({piece}) false after mark_complete",
            self.name
        );
    }

    async fn assert_reads(&self, s: &dyn Storage, piece: PieceIndex, offset: u32, len: u32) {
        match s.read(piece, offset, len).await {
            Ok(got) => assert!(
                got[..] == *self.expected(piece, offset, len),
                "[{}] read of piece {piece} at {offset}+{len} returned wrong bytes",
                self.name
            ),
            Err(e) => panic!(
                "[{}] read of piece {piece} at {offset}+{len} failed: {e}",
                self.name
            ),
        }
    }

    fn assert_finalized_matches(&self, s: &dyn Storage, done: &Bitfield, when: &str) {
        for file in 0..self.layout().files.len() {
            let expected = self
                .layout()
                .pieces_for_file(file)
                .all(|p| done.get(p as usize));
            assert_eq!(
                s.is_finalized(file),
                expected,
                "[{}] {when}: is_finalized({file}) ({:?}) should be {expected}",
                self.name,
                self.layout().files[file].path
            );
        }
    }

    fn trusted(&self, s: &dyn Storage, when: &str) -> Bitfield {
        match s.resume() {
            Resume::Trusted(b) => {
                assert_eq!(
                    b.len(),
                    self.pieces() as usize,
                    "[{}] {when}: bitfield size",
                    self.name
                );
                b
            }
            other => {
                panic!("[{}] {when}: expected Trusted, got {other:?}", self.name)
            }
        }
    }
}

fn is_oor<T>(r: &Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::OutOfRange { .. }))
}

fn set_of(len: u32, pieces: &[PieceIndex]) -> Bitfield {
    let mut b = Bitfield::new(len as usize);
    for &p in pieces {
        b.set(p as usize);
    }
    b
}

/// Whole pieces written in random order and chunking read back, whole and in arbitrary ranges
/// (many of them crossing file boundaries).
pub async fn round_trip(backend: Arc<dyn StorageBackend>, root: &Path) {
    let fx = Fixture::new(
        root,
        "round_trip",
        16384,
        &[("a", 40_000), ("b", 1), ("c", 70_000)],
    );
    let s = fx.open(&backend).await;
    let mut rng = StdRng::seed_from_u64(1);
    let mut order: Vec<PieceIndex> = (0..fx.pieces()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    for &piece in &order {
        // Split the piece at random points: first part as one write, the rest as several chunks.
        let len = fx.layout().piece_len(piece);
        let cut = rng.gen_range(0..=len);
        let head = Bytes::copy_from_slice(fx.expected(piece, 0, cut));
        s.write(piece, 0, vec![head])
            .await
            .expect("write of a piece's head");
        let mut chunks = Vec::new();
        let mut at = cut;
        while at < len {
            let n = rng.gen_range(1..=len - at);
            chunks.push(Bytes::copy_from_slice(fx.expected(piece, at, n)));
            at += n;
        }
        s.write(piece, cut, chunks)
            .await
            .expect("chunked write of a piece's tail");
        s.mark_complete(piece).await.expect("mark_complete");
    }
    for piece in 0..fx.pieces() {
        fx.assert_reads(&*s, piece, 0, fx.layout().piece_len(piece))
            .await;
    }
    for _ in 0..300 {
        let piece = rng.gen_range(0..fx.pieces());
        let len = fx.layout().piece_len(piece);
        let offset = rng.gen_range(0..=len);
        let n = rng.gen_range(0..=len - offset);
        fx.assert_reads(&*s, piece, offset, n).await;
    }
}

/// Zero-length files, files smaller than a piece and nested folders: reads across every file
/// boundary, and which files are finalized.
pub async fn multi_file_layout(backend: Arc<dyn StorageBackend>, root: &Path) {
    let files = [
        ("empty0", 0),
        ("tiny", 10),
        ("dir/empty", 0),
        ("small", 1000),
        ("dir/sub/mid", 50_000),
        ("last", 7),
        ("trailing-empty", 0),
    ];
    let fx = Fixture::new(root, "multi_file_layout", 32768, &files);
    let s = fx.open(&backend).await;
    let none = Bitfield::new(fx.pieces() as usize);
    fx.assert_finalized_matches(&*s, &none, "at open");
    for (i, f) in fx.layout().files.iter().enumerate() {
        assert_eq!(
            s.is_finalized(i),
            f.length == 0,
            "[{}] zero-length files (only) are finalized at open",
            fx.name
        );
    }
    for piece in 0..fx.pieces() {
        fx.complete_piece(&*s, piece).await;
    }
    fx.assert_finalized_matches(&*s, &Bitfield::full(fx.pieces() as usize), "all complete");
    for piece in 0..fx.pieces() {
        fx.assert_reads(&*s, piece, 0, fx.layout().piece_len(piece))
            .await;
    }
    // A few bytes either side of every file boundary, clipped to one piece.
    let pl = fx.layout().piece_length as u64;
    for f in &fx.layout().files {
        for boundary in [f.offset, f.offset + f.length] {
            let start = boundary.saturating_sub(3);
            let piece = (start / pl) as PieceIndex;
            if piece >= fx.pieces() {
                continue;
            }
            let range = fx.layout().piece_range(piece);
            let end = (boundary + 3).min(range.end);
            fx.assert_reads(
                &*s,
                piece,
                (start - range.start) as u32,
                (end - start) as u32,
            )
            .await;
        }
    }
}

/// Written data is not enough: a file is finalized only once every piece touching it is marked
/// complete, and then at once.
pub async fn finalize_only_when_complete(backend: Arc<dyn StorageBackend>, root: &Path) {
    let files = [("a", 20_000), ("b", 30_000), ("c", 5_000), ("z", 0)];
    let fx = Fixture::new(root, "finalize_only_when_complete", 16384, &files);
    let s = fx.open(&backend).await;
    let mut done = Bitfield::new(fx.pieces() as usize);
    for piece in 0..fx.pieces() {
        fx.write_piece(&*s, piece).await;
    }
    fx.assert_finalized_matches(&*s, &done, "all written, none marked");
    for piece in [3, 0, 2, 1] {
        s.mark_complete(piece).await.expect("mark_complete");
        done.set(piece as usize);
        fx.assert_finalized_matches(&*s, &done, &format!("after marking {piece}"));
    }
    assert!(done.is_full());
    for piece in 0..fx.pieces() {
        fx.assert_reads(&*s, piece, 0, fx.layout().piece_len(piece))
            .await;
    }
}

/// [`Storage::write_piece`] (what the engine calls for every verified piece) is a write and a
/// mark in one: each piece is complete and readable when it returns, a file is finalized by the
/// call that completes it and not before, and all of it is trusted after flush and reopen.
pub async fn write_piece_completes_in_one_step(backend: Arc<dyn StorageBackend>, root: &Path) {
    let files = [("a", 20_000), ("e", 0), ("b", 30_000), ("c", 5_000)];
    let fx = Fixture::new(root, "write_piece_completes", 16384, &files);
    let n = fx.pieces();
    let s = fx.open(&backend).await;
    let mut done = Bitfield::new(n as usize);
    // Out of order, so files complete in the middle of the run, one through a shared piece.
    for piece in [3, 1, 0, 2] {
        let len = fx.layout().piece_len(piece);
        let chunks: Vec<Bytes> = fx
            .expected(piece, 0, len)
            .chunks(BLOCK_SIZE as usize)
            .map(Bytes::copy_from_slice)
            .collect();
        if let Err(e) = s.write_piece(piece, chunks).await {
            panic!("[{}] write_piece({piece}) failed: {e}", fx.name);
        }
        done.set(piece as usize);
        assert!(
            s.has_piece(piece),
            "[{}] has_piece({piece}) false after write_piece",
            fx.name
        );
        fx.assert_reads(&*s, piece, 0, len).await;
        fx.assert_finalized_matches(&*s, &done, &format!("after write_piece({piece})"));
    }
    s.flush().await.expect("flush");
    drop(s);
    let s = fx.open(&backend).await;
    let claimed = fx.trusted(&*s, "reopen after write_piece");
    assert!(claimed.is_full(), "[{}] all pieces trusted", fx.name);
    for p in 0..n {
        fx.assert_reads(&*s, p, 0, fx.layout().piece_len(p)).await;
    }
}

/// After a crash-like drop (some pieces marked after the last flush), whatever the reopened
/// storage claims is true: trusted pieces were complete at the last flush and read back
/// exactly; with
/// `NeedsRecheck` it claims nothing, and a recheck (read, compare, mark) restores the pieces.
pub async fn has_piece_never_lies_after_reopen(backend: Arc<dyn StorageBackend>, root: &Path) {
    let files = [("a", 30_000), ("b", 50_000), ("c", 40_000)];
    let fx = Fixture::new(root, "has_piece_never_lies", 16384, &files);
    let n = fx.pieces();
    let s = fx.open(&backend).await;
    for p in [0, 3, 5] {
        fx.complete_piece(&*s, p).await;
    }
    s.flush().await.expect("flush");
    for p in [1, 6, 7] {
        fx.complete_piece(&*s, p).await;
    }
    fx.write_piece(&*s, 2).await; // written, never marked
    drop(s);

    let flushed = set_of(n, &[0, 3, 5]);
    let s = fx.open(&backend).await;
    match s.resume() {
        Resume::Trusted(claimed) => {
            for p in claimed.iter_ones() {
                // Pieces marked after the last flush were never recorded, so durable resume
                // state cannot hold them (the data behind them was never made durable).
                assert!(
                    flushed.get(p),
                    "[{}] reopen claims piece {p}, which was not complete at the last flush",
                    fx.name
                );
                fx.assert_reads(&*s, p as PieceIndex, 0, fx.layout().piece_len(p as u32))
                    .await;
            }
            for p in 0..n {
                assert_eq!(
                    s.has_piece(p),
                    claimed.get(p as usize),
                    "[{}] has_piece({p})",
                    fx.name
                );
            }
            fx.assert_finalized_matches(&*s, &claimed, "after reopen");
        }
        resume => {
            // NeedsRecheck: nothing trusted, hash everything; Partial: some pieces trusted (they
            // must be true), hash the rest it names.
            let (mut good, check) = match resume {
                Resume::Partial { complete, check } => (complete, check),
                _ => (Bitfield::new(n as usize), Bitfield::full(n as usize)),
            };
            for p in 0..n {
                assert_eq!(
                    s.has_piece(p),
                    good.get(p as usize),
                    "[{}] has_piece({p}) before recheck",
                    fx.name
                );
                if good.get(p as usize) {
                    assert!(
                        flushed.get(p as usize),
                        "[{}] trusts unflushed piece {p}",
                        fx.name
                    );
                    fx.assert_reads(&*s, p, 0, fx.layout().piece_len(p)).await;
                }
            }
            // What the engine does: hash the pieces to check, mark the good ones, settle.
            for p in check.iter_ones().map(|p| p as PieceIndex) {
                let len = fx.layout().piece_len(p);
                match s.read(p, 0, len).await {
                    Ok(b) if b[..] == *fx.expected(p, 0, len) => {
                        s.mark_complete(p)
                            .await
                            .expect("mark_complete during recheck");
                        good.set(p as usize);
                    }
                    Ok(_) | Err(StorageError::Missing) => {}
                    Err(e) => panic!("[{}] read of piece {p} during recheck: {e}", fx.name),
                }
            }
            s.recheck_finished(&good)
                .await
                .expect("recheck_finished after a crash of our own");
            for p in [0, 3, 5] {
                assert!(good.get(p), "[{}] flushed piece {p} lost its data", fx.name);
            }
            fx.assert_finalized_matches(&*s, &good, "after recheck");
        }
    }
}

/// A clean flush then drop: reopening trusts exactly the flushed set, reads it back and keeps
/// finished files finalized; finishing and reopening again trusts everything.
pub async fn reopen_keeps_flushed_pieces(backend: Arc<dyn StorageBackend>, root: &Path) {
    let files = [("a", 20_000), ("e", 0), ("b", 30_000), ("c", 20_000)];
    let fx = Fixture::new(root, "reopen_keeps_flushed", 16384, &files);
    let n = fx.pieces();
    let s = fx.open(&backend).await;
    let first = [0, 1, 4];
    for p in first {
        fx.complete_piece(&*s, p).await;
    }
    s.flush().await.expect("flush");
    drop(s);

    let s = fx.open(&backend).await;
    let claimed = fx.trusted(&*s, "reopen after clean flush");
    assert_eq!(
        claimed,
        set_of(n, &first),
        "[{}] trusted set after reopen",
        fx.name
    );
    for p in 0..n {
        assert_eq!(
            s.has_piece(p),
            claimed.get(p as usize),
            "[{}] has_piece({p})",
            fx.name
        );
    }
    for p in first {
        fx.assert_reads(&*s, p, 0, fx.layout().piece_len(p)).await;
    }
    fx.assert_finalized_matches(&*s, &claimed, "after first reopen");

    for p in 0..n {
        if !s.has_piece(p) {
            fx.complete_piece(&*s, p).await;
        }
    }
    s.flush().await.expect("flush");
    drop(s);
    for round in ["second reopen", "third reopen"] {
        let s = fx.open(&backend).await;
        let claimed = fx.trusted(&*s, round);
        assert!(
            claimed.is_full(),
            "[{}] {round}: all pieces trusted",
            fx.name
        );
        fx.assert_finalized_matches(&*s, &claimed, round);
        for p in 0..n {
            fx.assert_reads(&*s, p, 0, fx.layout().piece_len(p)).await;
        }
        // Flushing with nothing new must keep the state trusted.
        s.flush().await.expect("flush");
    }
}

/// Many tasks writing blocks of different pieces at once, marking each piece when its blocks
/// are in.
pub async fn concurrent_writes(backend: Arc<dyn StorageBackend>, root: &Path) {
    let files: Vec<(String, u64)> = (0..12)
        .map(|i| (format!("f{i:02}"), 1_000 + i as u64 * 37_000))
        .collect();
    let files: Vec<(&str, u64)> = files.iter().map(|(p, l)| (p.as_str(), *l)).collect();
    let fx = Arc::new(Fixture::new(root, "concurrent_writes", 65536, &files));
    let s = fx.open(&backend).await;
    let mut tasks = Vec::new();
    for piece in 0..fx.pieces() {
        let (s, fx) = (s.clone(), fx.clone());
        tasks.push(tokio::spawn(async move {
            let len = fx.layout().piece_len(piece);
            let mut blocks = Vec::new();
            for offset in (0..len).step_by(BLOCK_SIZE as usize) {
                let n = BLOCK_SIZE.min(len - offset);
                let (s, fx) = (s.clone(), fx.clone());
                blocks.push(tokio::spawn(async move {
                    let chunk = Bytes::copy_from_slice(fx.expected(piece, offset, n));
                    s.write(piece, offset, vec![chunk]).await
                }));
            }
            for b in blocks {
                b.await
                    .expect("block task")
                    .expect("concurrent block write");
            }
            s.mark_complete(piece)
                .await
                .expect("concurrent mark_complete");
        }));
    }
    for t in tasks {
        t.await.expect("piece task panicked");
    }
    let all = Bitfield::full(fx.pieces() as usize);
    for p in 0..fx.pieces() {
        assert!(s.has_piece(p), "[{}] has_piece({p})", fx.name);
        fx.assert_reads(&*s, p, 0, fx.layout().piece_len(p)).await;
    }
    fx.assert_finalized_matches(&*s, &all, "after concurrent writes");
}

/// Piece indices, offsets and lengths outside the torrent are refused with `OutOfRange`.
pub async fn out_of_range(backend: Arc<dyn StorageBackend>, root: &Path) {
    let fx = Fixture::new(root, "out_of_range", 16384, &[("a", 20_000)]);
    let s = fx.open(&backend).await;
    let n = fx.pieces();
    let last = n - 1;
    let last_len = fx.layout().piece_len(last);
    let cases = [
        (n, 0, 1),
        (n + 100, 0, 1),
        (u32::MAX, 0, 1),
        (0, 16384, 1),
        (0, 16000, 385),
        (last, 0, last_len + 1),
        (last, last_len, 1),
        (0, u32::MAX, 1),
        (0, 1, u32::MAX),
    ];
    for (piece, offset, len) in cases {
        let r = s.read(piece, offset, len).await;
        assert!(
            is_oor(&r),
            "[{}] read({piece}, {offset}, {len}) gave {:?}",
            fx.name,
            r.err()
        );
    }
    for (piece, offset, len) in cases.into_iter().filter(|c| c.2 < 1 << 20) {
        let chunk = Bytes::from(vec![7u8; len as usize]);
        let r = s.write(piece, offset, vec![chunk]).await;
        assert!(
            is_oor(&r),
            "[{}] write({piece}, {offset}, {len}) gave {:?}",
            fx.name,
            r.err()
        );
    }
    // Two chunks that fit apart but not together.
    let r = s.write(
        last,
        0,
        vec![
            Bytes::from(vec![1; last_len as usize]),
            Bytes::from_static(b"x"),
        ],
    );
    assert!(
        is_oor(&r.await),
        "[{}] write past the end in two chunks accepted",
        fx.name
    );
    assert!(
        s.mark_complete(n).await.is_err(),
        "[{}] mark_complete({n}) accepted",
        fx.name
    );
    assert!(!s.has_piece(n), "[{}] has_piece past the end", fx.name);
    assert!(
        !s.is_finalized(1),
        "[{}] is_finalized past the last file",
        fx.name
    );
    // Nothing above may have marked or written anything.
    for p in 0..n {
        assert!(
            !s.has_piece(p),
            "[{}] has_piece({p}) after refused writes",
            fx.name
        );
    }
}

/// Bytes never written are reported `Missing`, or read as bytes of the requested length (a
/// sparse file); nothing else, and never as a complete piece.
pub async fn unwritten_reads(backend: Arc<dyn StorageBackend>, root: &Path) {
    let fx = Fixture::new(
        root,
        "unwritten_reads",
        16384,
        &[("a", 40_000), ("b", 10_000)],
    );
    let s = fx.open(&backend).await;
    let check = |r: Result<Bytes, StorageError>, what: &str, len: u32| match r {
        Ok(b) => assert_eq!(b.len(), len as usize, "[{}] {what}: wrong length", fx.name),
        Err(StorageError::Missing) => {}
        Err(e) => panic!("[{}] {what}: expected Missing or data, got {e}", fx.name),
    };
    check(
        s.read(0, 0, 16384).await,
        "read from an empty torrent",
        16384,
    );
    check(s.read(3, 0, 100).await, "read of the last piece", 100);
    fx.complete_piece(&*s, 1).await;
    check(
        s.read(0, 0, 16384).await,
        "read of an unwritten piece of a written file",
        16384,
    );
    check(
        s.read(2, 100, 16000).await,
        "read of an unwritten piece across files",
        16000,
    );
    fx.assert_reads(&*s, 1, 0, 16384).await;
    for p in [0, 2, 3] {
        assert!(
            !s.has_piece(p),
            "[{}] has_piece({p}) for unwritten piece",
            fx.name
        );
    }
}

/// A skipped file is never finalized, even when every piece touching it is complete (its bytes
/// arrive through pieces shared with wanted files); un-skipped, it is finalized at once. A
/// skipped empty file is not finalized either.
pub async fn skipped_files_are_never_finalized(backend: Arc<dyn StorageBackend>, root: &Path) {
    // a: 0..20000, s: 20000..25000 (inside piece 1, shared with a and b), e: empty,
    // b: 25000..55000.
    let files = [("a", 20_000), ("s", 5_000), ("e", 0), ("b", 30_000)];
    let mut fx = Fixture::new(root, "skipped_files_are_never_finalized", 16384, &files);
    fx.spec.skipped_files = vec![false, true, true, false];
    let s = fx.open(&backend).await;
    match s.set_skipped_files(fx.spec.skipped_files.clone()).await {
        Ok(()) => {}
        Err(StorageError::NotSupported(_)) => return,
        Err(e) => panic!("[{}] set_skipped_files failed: {e}", fx.name),
    }
    assert!(
        !s.is_finalized(2),
        "[{}] skipped empty file finalized",
        fx.name
    );
    for piece in 0..fx.pieces() {
        fx.complete_piece(&*s, piece).await;
    }
    assert!(
        s.is_finalized(0) && s.is_finalized(3),
        "[{}] wanted files",
        fx.name
    );
    assert!(
        !s.is_finalized(1) && !s.is_finalized(2),
        "[{}] a skipped file was finalized",
        fx.name
    );
    // Its bytes are kept (pieces shared with it are served from storage).
    fx.assert_reads(&*s, 1, 0, fx.layout().piece_len(1)).await;
    if let Err(e) = s.set_skipped_files(vec![false; 4]).await {
        panic!("[{}] un-skipping failed: {e}", fx.name);
    }
    for file in 0..4 {
        assert!(
            s.is_finalized(file),
            "[{}] file {file} not finalized once un-skipped",
            fx.name
        );
    }
}

/// After `delete_data`, the backend holds nothing of the torrent: a reopen trusts no piece and
/// reads find no data.
pub async fn delete_data_forgets_the_torrent(backend: Arc<dyn StorageBackend>, root: &Path) {
    let files = [("a", 20_000), ("b", 30_000)];
    let fx = Fixture::new(root, "delete_data_forgets_the_torrent", 16384, &files);
    let s = fx.open(&backend).await;
    for piece in 0..fx.pieces() {
        fx.complete_piece(&*s, piece).await;
    }
    if let Err(e) = s.flush().await {
        panic!("[{}] flush failed: {e}", fx.name);
    }
    drop(s);
    match backend.delete_data(fx.spec.clone()).await {
        Ok(_) => {}
        Err(StorageError::NotSupported(_)) => return,
        Err(e) => panic!("[{}] delete_data failed: {e}", fx.name),
    }
    let s = fx.open(&backend).await;
    match s.resume() {
        Resume::Trusted(b) => assert_eq!(b.count_ones(), 0, "[{}] pieces trusted", fx.name),
        Resume::NeedsRecheck => {}
        other => panic!("[{}] after delete: {other:?}", fx.name),
    }
    for piece in 0..fx.pieces() {
        assert!(!s.has_piece(piece), "[{}] has_piece({piece})", fx.name);
        match s.read(piece, 0, fx.layout().piece_len(piece)).await {
            Err(StorageError::Missing) => {}
            Ok(b) => assert!(
                b[..] != *fx.expected(piece, 0, fx.layout().piece_len(piece)),
                "[{}] piece {piece} still readable after delete",
                fx.name
            ),
            Err(e) => panic!("[{}] read after delete: {e}", fx.name),
        }
    }
}
