//! Parsing and creation tests: hand-built torrents (so key order and oddities are under the
//! test's control), hostile inputs, and create → parse round trips.

use std::path::{Path, PathBuf};

use super::*;
use crate::bencode::{BencodeError, MAX_DEPTH};

/// A bencode value written in exactly the order given (dictionary keys are not sorted).
#[derive(Clone)]
enum B {
    I(i64),
    S(Vec<u8>),
    L(Vec<B>),
    D(Vec<(Vec<u8>, B)>),
}

fn s(v: impl AsRef<[u8]>) -> B {
    B::S(v.as_ref().to_vec())
}

fn d(entries: Vec<(&str, B)>) -> B {
    B::D(
        entries
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

impl B {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            B::I(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            B::S(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            B::L(items) => {
                out.push(b'l');
                items.iter().for_each(|v| v.encode_into(out));
                out.push(b'e');
            }
            B::D(entries) => {
                out.push(b'd');
                for (k, v) in entries {
                    B::S(k.clone()).encode_into(out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Replace (or append) `key` in a dictionary.
    fn set(mut self, key: &str, value: B) -> B {
        if let B::D(entries) = &mut self {
            match entries.iter_mut().find(|(k, _)| k == key.as_bytes()) {
                Some(e) => e.1 = value,
                None => entries.push((key.as_bytes().to_vec(), value)),
            }
        }
        self
    }

    fn remove(mut self, key: &str) -> B {
        if let B::D(entries) = &mut self {
            entries.retain(|(k, _)| k != key.as_bytes());
        }
        self
    }
}

fn hashes(n: usize) -> B {
    B::S((0..n * 20).map(|i| i as u8).collect())
}

fn file(len: i64, path: &[&str]) -> B {
    d(vec![
        ("length", B::I(len)),
        ("path", B::L(path.iter().map(s).collect())),
    ])
}

/// 100 bytes in pieces of 32: four pieces.
fn single_info() -> B {
    d(vec![
        ("length", B::I(100)),
        ("name", s("a.bin")),
        ("piece length", B::I(32)),
        ("pieces", hashes(4)),
    ])
}

/// 10 + 0 + 30 bytes in pieces of 16: three pieces.
fn multi_info() -> B {
    d(vec![
        (
            "files",
            B::L(vec![
                file(10, &["a.txt"]),
                file(0, &["empty"]),
                file(30, &["sub", "b.bin"]),
            ]),
        ),
        ("name", s("dir")),
        ("piece length", B::I(16)),
        ("pieces", hashes(3)),
    ])
}

fn torrent(info: B) -> B {
    d(vec![
        ("announce", s("http://t.example/announce")),
        ("info", info),
    ])
}

fn parse(t: &B) -> Result<Metainfo, MetainfoError> {
    Metainfo::from_bytes(&t.encode())
}

fn invalid_msg(t: &B) -> String {
    match parse(t) {
        Err(MetainfoError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn invalid_msg_bytes(bytes: &[u8]) -> String {
    match Metainfo::from_bytes(bytes) {
        Err(MetainfoError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn with_info(f: impl FnOnce(B) -> B) -> B {
    torrent(f(multi_info()))
}

#[test]
fn single_file_torrent() {
    let info = single_info();
    let m = parse(&torrent(info.clone())).unwrap();
    assert_eq!(m.info_hash.0, crate::hash::sha1(&info.encode()));
    assert_eq!(m.info.name, "a.bin");
    assert_eq!(m.info.piece_count(), 4);
    assert_eq!(m.info.piece_length(), 32);
    assert_eq!(m.info.total_length(), 100);
    assert_eq!(m.info.pieces.len(), 4);
    assert_eq!(m.info.piece_hash(1).unwrap()[0], 20);
    assert_eq!(m.info.files().len(), 1);
    assert_eq!(m.info.files()[0].path, PathBuf::from("a.bin"));
    assert_eq!(m.info.layout.piece_len(3), 4);
    assert!(!m.info.private);
    assert_eq!(
        m.announce_tiers,
        vec![vec!["http://t.example/announce".to_string()]]
    );
    assert_eq!(
        (m.comment, m.created_by, m.creation_date),
        (None, None, None)
    );
}

#[test]
fn multi_file_torrent_with_empty_file() {
    let m = parse(&torrent(multi_info())).unwrap();
    let files: Vec<(PathBuf, u64, u64)> = m
        .info
        .files()
        .iter()
        .map(|f| (f.path.clone(), f.length, f.offset))
        .collect();
    assert_eq!(
        files,
        vec![
            (PathBuf::from("dir/a.txt"), 10, 0),
            (PathBuf::from("dir/empty"), 0, 10),
            (PathBuf::from("dir/sub/b.bin"), 30, 10),
        ]
    );
    assert_eq!(m.info.total_length(), 40);
    assert_eq!(m.info.piece_count(), 3);
}

#[test]
fn info_hash_is_over_raw_bytes_in_file_order() {
    // Keys out of order, extra keys (md5sum, a nested dictionary, a non-UTF-8 key) inside info.
    let info = d(vec![
        ("pieces", hashes(4)),
        ("name", s("a.bin")),
        (
            "x-extra",
            d(vec![("z", B::I(1)), ("a", B::L(vec![B::I(-5), s("q")]))]),
        ),
        ("piece length", B::I(32)),
        ("md5sum", s("0123456789abcdef0123456789abcdef")),
        ("length", B::I(100)),
    ]);
    let info = match info {
        B::D(mut e) => {
            e.push((vec![0xff, 0xfe], B::I(3)));
            B::D(e)
        }
        _ => unreachable!(),
    };
    let raw_info = info.encode();
    let top = d(vec![
        ("info", info),
        ("comment", s("unsorted")),
        ("announce", s("udp://t:1")),
    ]);
    let bytes = top.encode();
    let scanned = bencode::scan(&bytes, Limits::with_max_size(MAX_TORRENT_SIZE)).unwrap();
    assert!(!scanned.keys_sorted);
    let m = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(m.info_hash.0, crate::hash::sha1(&raw_info));
    // A canonical re-encoding would give another hash: we must not re-encode.
    assert_ne!(
        m.info_hash.0,
        crate::hash::sha1(&torrent(single_info()).encode())
    );
    assert_eq!(m.info.total_length(), 100);
    assert_eq!(m.comment.as_deref(), Some("unsorted"));
}

#[test]
fn announce_list_tiers() {
    let list = |tiers: Vec<Vec<B>>| B::L(tiers.into_iter().map(B::L).collect());
    let t = torrent(single_info()).set(
        "announce-list",
        list(vec![
            vec![s("http://a/1"), s("udp://b:2")],
            vec![],
            vec![s(""), s(b"\xff\xfe"), B::I(4), s("  ")],
            vec![s(" http://c/3 "), s("http://a/1")],
        ]),
    );
    let m = parse(&t).unwrap();
    assert_eq!(
        m.announce_tiers,
        vec![
            vec!["http://a/1".to_string(), "udp://b:2".to_string()],
            vec!["http://c/3".to_string()]
        ]
    );
    assert_eq!(
        m.trackers().collect::<Vec<_>>(),
        ["http://a/1", "udp://b:2", "http://c/3"]
    );

    // An announce-list with nothing usable falls back to announce.
    let t = torrent(single_info()).set("announce-list", list(vec![vec![], vec![s("")]]));
    assert_eq!(
        parse(&t).unwrap().announce_tiers,
        vec![vec!["http://t.example/announce".to_string()]]
    );
    // No trackers at all is fine (trackerless torrent).
    let t = torrent(single_info())
        .remove("announce")
        .set("announce-list", s("not a list"));
    assert!(parse(&t).unwrap().announce_tiers.is_empty());
    // Caps the count.
    let many: Vec<Vec<B>> = (0..MAX_TRACKERS + 50)
        .map(|i| vec![s(format!("http://t{i}/a"))])
        .collect();
    let t = torrent(single_info()).set("announce-list", list(many));
    assert_eq!(parse(&t).unwrap().trackers().count(), MAX_TRACKERS);
}

#[test]
fn optional_fields() {
    let t = torrent(single_info().set("private", B::I(1)))
        .set("comment", s(b"caf\xe9"))
        .set("comment.utf-8", s("café"))
        .set("created by", s(b"tool \xff"))
        .set("creation date", B::I(1_700_000_000));
    let m = parse(&t).unwrap();
    assert!(m.info.private);
    assert_eq!(m.comment.as_deref(), Some("café"));
    assert_eq!(m.created_by.as_deref(), Some("tool \u{fffd}"));
    assert_eq!(m.creation_date, Some(1_700_000_000));
    // Malformed optional fields are ignored, not fatal.
    let t = torrent(single_info().set("private", s("yes")))
        .set("comment", B::I(3))
        .set("creation date", s("yesterday"));
    let m = parse(&t).unwrap();
    assert!(!m.info.private);
    assert_eq!((m.comment, m.creation_date), (None, None));
    assert!(
        !parse(&torrent(single_info().set("private", B::I(0))))
            .unwrap()
            .info
            .private
    );
}

#[test]
fn non_utf8_names_and_paths() {
    let m = parse(&torrent(single_info().set("name", s(b"caf\xe9.bin")))).unwrap();
    assert_eq!(m.info.name, "caf\u{fffd}.bin");
    let m = parse(&torrent(
        single_info()
            .set("name", s(b"caf\xe9.bin"))
            .set("name.utf-8", s("café.bin")),
    ))
    .unwrap();
    assert_eq!(m.info.name, "café.bin");
    assert_eq!(m.info.files()[0].path, PathBuf::from("café.bin"));

    let f = file(40, &["x"])
        .set("path", B::L(vec![s(b"\xe9t\xe9")]))
        .set("path.utf-8", B::L(vec![s("été")]));
    let m = parse(&with_info(|i| {
        i.set("files", B::L(vec![f])).set("pieces", hashes(3))
    }))
    .unwrap();
    assert_eq!(m.info.files()[0].path, PathBuf::from("dir/été"));

    // Empty name falls back to the info-hash.
    let m = parse(&torrent(single_info().set("name", s("")))).unwrap();
    assert_eq!(m.info.name, m.info_hash.to_hex());
}

#[test]
fn unsafe_paths_are_rejected() {
    let bad_paths: &[&[&str]] = &[
        &[".."],
        &["a", "..", "b"],
        &["..", "..", "etc", "passwd"],
        &["", "etc", "passwd"],
        &["/etc", "passwd"],
        &["a", ""],
        &["."],
        &["a\0b"],
        &["a\\..\\b"],
        &["a/b"],
        &["C:", "x"],
        &["C:\\Windows"],
        &[],
    ];
    for p in bad_paths {
        let t = with_info(|i| i.set("files", B::L(vec![file(40, p)])));
        invalid_msg(&t);
    }
    for name in ["..", ".", "/", "/abs", "a/b", "a\\b", "a\0", "D:x"] {
        let t = torrent(single_info().set("name", s(name)));
        assert!(invalid_msg(&t).contains("name"), "{name:?}");
    }
    // Path not a list of strings.
    invalid_msg(&with_info(|i| {
        i.set(
            "files",
            B::L(vec![file(40, &["a"]).set("path", B::L(vec![B::I(1)]))]),
        )
    }));
    invalid_msg(&with_info(|i| {
        i.set("files", B::L(vec![file(40, &["a"]).set("path", s("a"))]))
    }));
}

#[test]
fn conflicting_paths_are_rejected() {
    let files = |fs: Vec<B>| with_info(|i| i.set("files", B::L(fs)));
    let dup = files(vec![file(20, &["x"]), file(10, &["a"]), file(10, &["a"])]);
    match parse(&dup) {
        Err(MetainfoError::DuplicatePath {
            first: 1,
            second: 2,
            path,
        }) => assert_eq!(path, "dir/a"),
        other => panic!("{other:?}"),
    }
    let file_then_dir = files(vec![file(20, &["a"]), file(20, &["a", "b"])]);
    match parse(&file_then_dir) {
        Err(
            e @ MetainfoError::FileIsFolder {
                file: 0,
                in_folder: 1,
                ..
            },
        ) => assert!(e
            .to_string()
            .contains("\"dir/a\" is file 0 and a folder of file 1")),
        other => panic!("{other:?}"),
    }
    let dir_then_file = files(vec![
        file(10, &["z"]),
        file(10, &["a", "b", "c"]),
        file(20, &["a", "b"]),
    ]);
    match parse(&dir_then_file) {
        Err(MetainfoError::FileIsFolder {
            file: 2,
            in_folder: 1,
            path,
        }) => assert_eq!(path, "dir/a/b"),
        other => panic!("{other:?}"),
    }
    // Two byte strings that become one name once converted lossily would share a disk file.
    let lossy = files(vec![
        file(20, &["a"]).set("path", B::L(vec![s(b"\xff")])),
        file(20, &["b"]).set("path", B::L(vec![s(b"\xfe")])),
    ]);
    assert!(matches!(
        parse(&lossy),
        Err(MetainfoError::DuplicatePath { .. })
    ));
    // Byte-exact here: names differing only in case are distinct (storage handles folding).
    let cased = files(vec![file(20, &["a"]), file(20, &["A"])]);
    assert!(parse(&cased).is_ok());
    // A file beside a folder of a similar name is fine.
    let siblings = files(vec![
        file(20, &["a", "b"]),
        file(20, &["a.b"]),
        file(0, &["ab"]),
    ]);
    assert!(parse(&siblings).is_ok());
}

/// A multi-file torrent whose files are at `paths`, one byte each.
fn torrent_of(paths: &[Vec<String>]) -> B {
    let files = paths
        .iter()
        .map(|p| {
            d(vec![
                ("length", B::I(1)),
                ("path", B::L(p.iter().map(s).collect())),
            ])
        })
        .collect();
    torrent(d(vec![
        ("files", B::L(files)),
        ("name", s("n")),
        ("piece length", B::I(1 << 20)),
        ("pieces", hashes(paths.len().div_ceil(1 << 20))),
    ]))
}

#[test]
fn an_80000_deep_path_is_refused_by_its_count() {
    let deep: Vec<String> = vec!["a".to_string(); 80_000];
    match parse(&torrent_of(&[deep])) {
        Err(e @ MetainfoError::PathTooDeep { .. }) => {
            assert!(matches!(
                e,
                MetainfoError::PathTooDeep {
                    file: 0,
                    depth: 80_001,
                    max: MAX_PATH_DEPTH
                }
            ));
            assert!(
                e.to_string().contains("80001 components (limit 256)"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    // `path.utf-8` is held to the same cap, even beside a short `path`.
    let f = file(1, &["a"]).set("path.utf-8", B::L(vec![s("a"); MAX_PATH_DEPTH]));
    let t = torrent(d(vec![
        ("files", B::L(vec![f])),
        ("name", s("n")),
        ("piece length", B::I(16)),
        ("pieces", hashes(1)),
    ]));
    assert!(matches!(
        parse(&t),
        Err(MetainfoError::PathTooDeep { depth, .. }) if depth == MAX_PATH_DEPTH + 1
    ));
}

#[test]
fn path_caps_are_exact() {
    // Name `n` plus 255 components: exactly MAX_PATH_DEPTH.
    let at_depth: Vec<String> = (0..MAX_PATH_DEPTH - 1).map(|i| format!("{i}")).collect();
    let m = parse(&torrent_of(std::slice::from_ref(&at_depth))).unwrap();
    assert_eq!(m.info.files()[0].path.components().count(), MAX_PATH_DEPTH);
    let mut over = at_depth.clone();
    over.push("x".into());
    assert!(matches!(
        parse(&torrent_of(&[over])),
        Err(MetainfoError::PathTooDeep { depth: 257, .. })
    ));

    // `n/` + 16 components of 255 bytes, the last trimmed so the path is exactly 4096 bytes.
    let mut long: Vec<String> = vec!["b".repeat(255); 16];
    let len = |c: &[String]| 1 + c.iter().map(|c| 1 + c.len()).sum::<usize>();
    let excess = len(&long) - MAX_PATH_BYTES;
    long[15] = "b".repeat(255 - excess);
    assert_eq!(len(&long), MAX_PATH_BYTES);
    let m = parse(&torrent_of(std::slice::from_ref(&long))).unwrap();
    assert_eq!(m.info.files()[0].path.as_os_str().len(), MAX_PATH_BYTES);
    long[15].push('b');
    assert!(matches!(
        parse(&torrent_of(&[long])),
        Err(MetainfoError::PathTooLong {
            file: 0,
            bytes: 4097,
            max: MAX_PATH_BYTES
        })
    ));
    // Lossy conversion counts: 0xff becomes U+FFFD, three bytes on disk.
    let f = file(1, &["a"]).set("path", B::L(vec![s(vec![0xffu8; 1400])]));
    let t = torrent(d(vec![
        ("files", B::L(vec![f])),
        ("name", s("n")),
        ("piece length", B::I(16)),
        ("pieces", hashes(1)),
    ]));
    assert!(matches!(
        parse(&t),
        Err(MetainfoError::PathTooLong { bytes: 4202, .. })
    ));
    // A single-file torrent's path is its name.
    let t = torrent(single_info().set("name", s("c".repeat(MAX_PATH_BYTES + 1))));
    assert!(matches!(
        parse(&t),
        Err(MetainfoError::PathTooLong { file: 0, .. })
    ));
}

#[test]
fn conflict_check_work_is_one_step_per_component() {
    // The worst case for the old ancestor hashing: many files, each at the depth cap, sharing a
    // long common prefix. The check now costs one lookup per component.
    let files: Vec<Vec<String>> = (0..200)
        .map(|i| {
            let mut p: Vec<String> = vec!["p".to_string(); MAX_PATH_DEPTH - 2];
            p.push(format!("f{i}"));
            p
        })
        .collect();
    let m = parse(&torrent_of(&files)).unwrap();
    assert_eq!(m.info.files().len(), 200);
    let mut tree = PathTree::default();
    for (i, f) in m.info.files().iter().enumerate() {
        tree.insert(i, f.path.iter().skip(1)).unwrap();
    }
    assert_eq!(tree.steps(), 200 * (MAX_PATH_DEPTH - 1));
}

#[test]
fn bad_geometry_is_rejected() {
    let cases: Vec<(B, &str)> = vec![
        (
            with_info(|i| i.set("pieces", s(vec![0u8; 59]))),
            "multiple of 20",
        ),
        (with_info(|i| i.set("pieces", hashes(2))), "expected 3"),
        (with_info(|i| i.set("pieces", hashes(4))), "expected 3"),
        (
            with_info(|i| i.set("piece length", B::I(0))),
            "piece length",
        ),
        (
            with_info(|i| i.set("piece length", B::I(-16))),
            "piece length",
        ),
        (
            with_info(|i| i.set("piece length", B::I(i64::from(MAX_PIECE_LENGTH) + 1))),
            "piece length",
        ),
        (
            with_info(|i| i.set("piece length", s("16"))),
            "piece length",
        ),
        (with_info(|i| i.remove("piece length")), "piece length"),
        (with_info(|i| i.remove("pieces")), "pieces"),
        (
            with_info(|i| i.set("files", B::L(vec![file(-1, &["a"])]))),
            "negative",
        ),
        (
            with_info(|i| i.set("files", B::L(vec![file(0, &["a"])]))),
            "zero",
        ),
        (with_info(|i| i.set("files", B::L(vec![]))), "empty"),
        (with_info(|i| i.set("files", s("x"))), "not a list"),
        (
            with_info(|i| i.set("files", B::L(vec![s("x")]))),
            "not a dictionary",
        ),
        (
            with_info(|i| i.set("files", B::L(vec![d(vec![("path", B::L(vec![s("a")]))])]))),
            "no length",
        ),
        (with_info(|i| i.set("length", B::I(40))), "both"),
        (with_info(|i| i.remove("files")), "neither"),
        (
            with_info(|i| {
                i.set(
                    "files",
                    B::L(vec![
                        file(i64::MAX, &["a"]),
                        file(i64::MAX, &["b"]),
                        file(2, &["c"]),
                    ]),
                )
            }),
            "overflows",
        ),
        (torrent(single_info().set("length", B::I(-100))), "negative"),
        (torrent(single_info().set("length", B::I(0))), "zero"),
        (
            torrent(single_info().set("length", s("100"))),
            "not an integer",
        ),
        (d(vec![("announce", s("x"))]), "no `info`"),
        (d(vec![("info", s("x"))]), "not a dictionary"),
    ];
    for (t, needle) in cases {
        let msg = invalid_msg(&t);
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    // A top level that is not a dictionary has no info span.
    assert!(matches!(
        Metainfo::from_bytes(b"le"),
        Err(MetainfoError::Invalid(_))
    ));
}

#[test]
fn overflowing_total_with_matching_piece_count_is_rejected() {
    // Two lengths that sum past u64::MAX are impossible from i64s, but many can: 3 × i64::MAX.
    let files = B::L(vec![
        file(i64::MAX, &["a"]),
        file(i64::MAX, &["b"]),
        file(i64::MAX, &["c"]),
    ]);
    let msg = invalid_msg(&with_info(|i| {
        i.set("files", files)
            .set("piece length", B::I(i64::from(MAX_PIECE_LENGTH)))
    }));
    assert!(msg.contains("overflows"));
}

#[test]
fn too_many_files_are_rejected() {
    let files = B::L(
        (0..=MAX_FILES)
            .map(|i| file(1, &[&i.to_string()]))
            .collect(),
    );
    match parse(&with_info(|i| i.set("files", files))) {
        Err(e @ MetainfoError::TooManyFiles { .. }) => {
            assert!(matches!(
                e,
                MetainfoError::TooManyFiles {
                    count,
                    max: MAX_FILES
                } if count == MAX_FILES + 1
            ));
            assert!(e.to_string().contains("100001 files (limit 100000)"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_bencode_is_rejected() {
    let mut deep = b"d4:info".to_vec();
    deep.extend(vec![b'l'; 10_000]);
    deep.extend(vec![b'e'; 10_001]);
    assert!(matches!(
        Metainfo::from_bytes(&deep),
        Err(MetainfoError::Bencode(BencodeError::TooDeep {
            max: MAX_DEPTH,
            ..
        }))
    ));
    assert!(matches!(
        Metainfo::from_bytes(b"d4:info9999999999:e"),
        Err(MetainfoError::Bencode(BencodeError::BadLength {
            offset: 7
        }))
    ));
    let good = torrent(multi_info()).encode();
    for cut in [0, 1, good.len() / 2, good.len() - 1] {
        assert!(
            matches!(
                Metainfo::from_bytes(&good[..cut]),
                Err(MetainfoError::Bencode(_))
            ),
            "cut {cut}"
        );
    }
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    assert!(matches!(
        Metainfo::from_bytes(&trailing),
        Err(MetainfoError::Bencode(BencodeError::TrailingBytes { .. }))
    ));
    let mut many = b"d4:infod6:lengthi1ee1:xl".to_vec();
    many.extend(b"le".repeat(MAX_ITEMS));
    many.extend_from_slice(b"ee");
    assert!(invalid_msg_bytes(&many).contains("bencode values"));
    let big = with_info(|i| i.set("x-pad", s(vec![b'x'; MAX_TORRENT_SIZE]))).encode();
    assert!(matches!(
        Metainfo::from_bytes(&big),
        Err(MetainfoError::Bencode(BencodeError::TooLarge { .. }))
    ));
    assert!(matches!(
        parse(&with_info(|i| i.set("piece length", B::I(i64::MAX)))),
        Err(MetainfoError::Invalid(_))
    ));
    let overflow_int = b"d4:infod6:lengthi99999999999999999999eee";
    assert!(matches!(
        Metainfo::from_bytes(overflow_int),
        Err(MetainfoError::Bencode(BencodeError::BadInteger { .. }))
    ));
    let leading_zero = b"d4:infod6:lengthi0100eee";
    assert!(matches!(
        Metainfo::from_bytes(leading_zero),
        Err(MetainfoError::Bencode(BencodeError::BadInteger { .. }))
    ));
    let dup_key = b"d4:infod4:name1:a4:name1:bee";
    assert!(matches!(
        Metainfo::from_bytes(dup_key),
        Err(MetainfoError::Bencode(BencodeError::DuplicateKey { .. }))
    ));
}

#[test]
fn random_mutations_never_panic() {
    use rand::{Rng, SeedableRng};
    let base = torrent(multi_info().set("private", B::I(1)))
        .set(
            "announce-list",
            B::L(vec![
                B::L(vec![s("http://a/1")]),
                B::L(vec![s("udp://b:2")]),
            ]),
        )
        .set("comment", s("c"))
        .encode();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x2157);
    let mut accepted = 0;
    for _ in 0..5000 {
        let mut v = base.clone();
        for _ in 0..rng.gen_range(1..=4) {
            let at = rng.gen_range(0..v.len());
            match rng.gen_range(0..4) {
                0 => v[at] = rng.gen(),
                1 => v[at] = b"0123456789ilde:-"[rng.gen_range(0..16)],
                2 => {
                    v.remove(at);
                }
                _ => v.insert(at, rng.gen()),
            }
            if v.is_empty() {
                break;
            }
        }
        if let Ok(m) = Metainfo::from_bytes(&v) {
            accepted += 1;
            assert_eq!(m.info.pieces.len() as u32, m.info.piece_count());
            assert!(m.info.total_length() > 0);
            for f in m.info.files() {
                assert!(f.path.is_relative());
                assert!(f
                    .path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))));
            }
        }
    }
    // Some mutations (inside hashes or strings) keep the torrent valid: the test reaches the
    // success path too.
    assert!(accepted > 0);
}

// ---- creation ----

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every piece hash matches the concatenated `data`.
fn assert_pieces_verify(m: &Metainfo, data: &[u8]) {
    assert_eq!(m.info.total_length(), data.len() as u64);
    for (i, chunk) in data.chunks(m.info.piece_length() as usize).enumerate() {
        assert_eq!(
            &crate::hash::sha1(chunk),
            m.info.piece_hash(i as u32).unwrap(),
            "piece {i}"
        );
    }
    assert_eq!(
        m.info.pieces.len(),
        data.len().div_ceil(m.info.piece_length() as usize)
    );
}

fn canonical(bytes: &[u8]) -> bool {
    bencode::scan(bytes, Limits::with_max_size(MAX_TORRENT_SIZE))
        .unwrap()
        .keys_sorted
}

#[test]
fn create_folder_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("share");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("b.bin", pattern(30_000, 1)),
        ("a/z.txt", pattern(10_000, 2)),
        ("a.txt", pattern(16_384, 3)),
        ("a/empty", Vec::new()),
        (".hidden", pattern(7, 4)),
        ("a/deep/er/x", pattern(40_000, 5)),
    ];
    for (rel, data) in &files {
        write(&root, rel, data);
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(root.join("b.bin"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap();
    }

    let opts = CreateOptions {
        trackers: vec!["http://t1/announce".into(), "udp://t2:80".into()],
        piece_length: Some(16 * 1024),
        private: true,
        comment: Some("hello".into()),
    };
    let bytes = create_torrent(&root, &opts).unwrap();
    assert!(canonical(&bytes));
    let m = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(m.info.name, "share");
    assert!(m.info.private);
    assert_eq!(m.comment.as_deref(), Some("hello"));
    assert_eq!(
        m.created_by.as_deref(),
        Some(concat!("ZigTorrent/", env!("CARGO_PKG_VERSION")))
    );
    assert!(m.creation_date.unwrap() > 1_600_000_000);
    assert_eq!(
        m.announce_tiers,
        vec![
            vec!["http://t1/announce".to_string()],
            vec!["udp://t2:80".to_string()]
        ]
    );

    // Sorted by components as byte strings; symlinks skipped; zero-length file kept.
    let order = [
        ".hidden",
        "a/deep/er/x",
        "a/empty",
        "a/z.txt",
        "a.txt",
        "b.bin",
    ];
    let got: Vec<(PathBuf, u64)> = m
        .info
        .files()
        .iter()
        .map(|f| (f.path.clone(), f.length))
        .collect();
    let want: Vec<(PathBuf, u64)> = order
        .iter()
        .map(|rel| {
            let data = &files.iter().find(|(r, _)| r == rel).unwrap().1;
            (Path::new("share").join(rel), data.len() as u64)
        })
        .collect();
    assert_eq!(got, want);

    let all: Vec<u8> = order
        .iter()
        .flat_map(|rel| files.iter().find(|(r, _)| r == rel).unwrap().1.clone())
        .collect();
    assert_pieces_verify(&m, &all);

    // Same input, same info-hash (creation date is outside info).
    let again = Metainfo::from_bytes(&create_torrent(&root, &opts).unwrap()).unwrap();
    assert_eq!(again.info_hash, m.info_hash);
}

#[test]
fn create_single_file_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("movie.mkv");
    let data = pattern(100_000, 9);
    std::fs::write(&path, &data).unwrap();
    let bytes = create_torrent(&path, &CreateOptions::default()).unwrap();
    assert!(canonical(&bytes));
    let m = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(m.info.name, "movie.mkv");
    assert_eq!(m.info.files().len(), 1);
    assert_eq!(m.info.files()[0].path, PathBuf::from("movie.mkv"));
    assert_eq!(m.info.piece_length(), 16 * 1024);
    assert!(m.announce_tiers.is_empty());
    assert!(!m.info.private);
    assert_eq!(m.comment, None);
    assert_pieces_verify(&m, &data);
    // Single-file torrents carry `length`, not `files`.
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("6:lengthi100000e") && !text.contains("5:files"));
    assert!(text.starts_with("d10:created by"));
}

#[test]
fn create_rejects_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    std::fs::write(&f, b"data").unwrap();
    for bad in [0, 1000, 8192, 16 * 1024 + 1, 3 << 20, MAX_PIECE_LENGTH * 2] {
        let opts = CreateOptions {
            piece_length: Some(bad),
            ..Default::default()
        };
        assert!(
            matches!(create_torrent(&f, &opts), Err(CreateError::Invalid(_))),
            "{bad}"
        );
    }
    for bad in ["", "  ", "not a url", "http://x/\ny"] {
        let opts = CreateOptions {
            trackers: vec![bad.into()],
            ..Default::default()
        };
        assert!(
            matches!(create_torrent(&f, &opts), Err(CreateError::Invalid(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        create_torrent(&tmp.path().join("missing"), &Default::default()),
        Err(CreateError::Io { .. })
    ));
    // A folder deeper than our own parser accepts is refused, not turned into a torrent.
    let deep_root = tmp.path().join("deep");
    let deep: PathBuf = std::iter::once(deep_root.clone())
        .chain((0..MAX_PATH_DEPTH).map(|_| PathBuf::from("d")))
        .collect();
    write(&deep, "f", b"x");
    match create_torrent(&deep_root, &Default::default()) {
        Err(CreateError::Invalid(m)) => assert!(m.contains("components"), "{m}"),
        other => panic!("{other:?}"),
    }
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    assert!(matches!(
        create_torrent(&empty_dir, &Default::default()),
        Err(CreateError::Invalid(_))
    ));
    write(&empty_dir, "zero", b"");
    assert!(matches!(
        create_torrent(&empty_dir, &Default::default()),
        Err(CreateError::Invalid(_))
    ));
    #[cfg(unix)]
    {
        let odd = tmp.path().join("odd");
        write(&odd, "a\\b", b"x");
        assert!(matches!(
            create_torrent(&odd, &Default::default()),
            Err(CreateError::Invalid(_))
        ));
    }
}

#[test]
fn create_dedupes_trackers_and_accepts_root_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    std::fs::write(&f, pattern(5, 0)).unwrap();
    let opts = CreateOptions {
        trackers: vec![
            "http://a/x".into(),
            " http://a/x ".into(),
            "http://b/y".into(),
        ],
        ..Default::default()
    };
    let m = Metainfo::from_bytes(&create_torrent(&f, &opts).unwrap()).unwrap();
    assert_eq!(
        m.announce_tiers,
        vec![
            vec!["http://a/x".to_string()],
            vec!["http://b/y".to_string()]
        ]
    );
    #[cfg(unix)]
    {
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let m2 =
            Metainfo::from_bytes(&create_torrent(&link, &Default::default()).unwrap()).unwrap();
        assert_eq!(m2.info.name, "link");
        assert_eq!(m2.info.pieces, m.info.pieces);
    }
}

#[test]
fn auto_piece_length_aims_at_1000_to_2000_pieces() {
    const KIB: u64 = 1024;
    assert_eq!(auto_piece_length(1), MIN_PIECE_LENGTH);
    assert_eq!(auto_piece_length(2000 * 16 * KIB), MIN_PIECE_LENGTH);
    assert_eq!(auto_piece_length(2000 * 16 * KIB + 1), 32 * 1024);
    assert_eq!(auto_piece_length(u64::MAX), MAX_AUTO_PIECE_LENGTH);
    for total in [
        40 * KIB * KIB,
        700 * KIB * KIB,
        4 * KIB * KIB * KIB,
        20 * KIB * KIB * KIB,
    ] {
        let len = auto_piece_length(total);
        assert!(len.is_power_of_two());
        let count = total.div_ceil(u64::from(len));
        assert!(
            (1000..=2000).contains(&count),
            "{total}: {count} pieces of {len}"
        );
    }
}
