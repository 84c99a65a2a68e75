//! Replays every committed fuzz input on stable: each file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same body the cargo-fuzz target runs
//! (`zigtorrent_engine::testing::fuzz_bodies`), so CI keeps checking what fuzzing found without
//! nightly. A body panics when its decoder panics or an invariant breaks.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use zigtorrent_engine::bencode::{self, BencodeError, Limits};
use zigtorrent_engine::extension::ExtendedHandshake;
use zigtorrent_engine::metainfo::{Metainfo, MetainfoError, MAX_PATH_DEPTH};
use zigtorrent_engine::testing::fuzz_bodies::{Body, TARGETS};
use zigtorrent_engine::wire;

/// The engine's targets plus the storage crate's (the resume file), as the fuzz crate has them.
fn all_targets() -> Vec<(&'static str, Body)> {
    let mut all = TARGETS.to_vec();
    all.push(("resume_file", zigtorrent_storage_fs::fuzz_resume_file));
    all
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files directly in `dir` (none if it does not exist), sorted by name.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read fuzz folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    let targets = all_targets();
    for (name, body) in &targets {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        // A handful at least, so a moved or emptied folder fails rather than passes silently.
        assert!(corpus.len() >= 5, "{name}: {} corpus files", corpus.len());
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = read(path);
            replayed += 1;
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that fail their target: {failures:#?}"
    );
    assert!(replayed >= targets.len() * 5);
}

#[test]
fn every_fuzz_target_has_a_body_and_a_corpus() {
    let names = |dir: &str, strip: &str| -> BTreeSet<String> {
        std::fs::read_dir(fuzz_dir().join(dir))
            .unwrap_or_else(|e| panic!("fuzz/{dir}: {e}"))
            .map(|e| {
                let name = e.expect("read fuzz folder").file_name();
                let name = name.to_str().expect("UTF-8 file names").to_string();
                name.strip_suffix(strip).unwrap_or(&name).to_string()
            })
            .collect()
    };
    let bodies: BTreeSet<String> = all_targets().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names("fuzz_targets", ".rs"), bodies);
    assert_eq!(names("corpus", ""), bodies);
    assert!(names("regressions", "").is_subset(&bodies));
}

/// The inputs behind issue 9's findings give the outcome the fix promises (the bodies check
/// generic invariants; these check the specific answers).
#[test]
fn known_findings_have_their_fixed_outcomes() {
    let regression =
        |target: &str, name: &str| read(&fuzz_dir().join("regressions").join(target).join(name));

    // One file 80,000 components deep: refused by its component count, before any other work.
    let deep = regression("metainfo", "path-80000-deep.torrent");
    assert!(matches!(
        Metainfo::from_bytes(&deep),
        Err(MetainfoError::PathTooDeep { file: 0, depth: 80_001, max }) if max == MAX_PATH_DEPTH
    ));

    // 15,000 nested lists: refused by the scanner's depth limit.
    let nested = regression("bencode_scan", "nested-lists-15000");
    assert!(matches!(
        bencode::scan(&nested, Limits::with_max_size(1 << 20)),
        Err(BencodeError::TooDeep { .. })
    ));

    // A `have` with a 3-byte payload: an error, and the buffer is left as it was.
    let bad = regression("wire_frames", "bad-length-consumed");
    let mut buf = BytesMut::from(&bad[2..]);
    assert_eq!(
        wire::decode(&mut buf, 1 << 16),
        Err(wire::WireError::BadPayloadLength { id: 4, len: 3 })
    );
    assert_eq!(&buf[..], &bad[2..]);

    // A non-UTF-8 key no longer costs the peer's reqq; a list is no handshake.
    let key = regression("bep10_handshake", "non-utf8-key");
    assert_eq!(
        ExtendedHandshake::parse_payload(&key).map(|h| h.and_then(|h| h.reqq)),
        Ok(Some(250))
    );
    let list = regression("bep10_handshake", "list-as-handshake");
    assert!(ExtendedHandshake::parse_payload(&list).is_err());
}
