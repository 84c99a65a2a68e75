//! The menu drawn on ratatui's `TestBackend`: behaviour checks, and snapshots (with `insta`,
//! in `ui/snapshots/`) of the list and the detail view at 60×15, 80×24 and 160×45 with long
//! names, many files and many peers. Review a changed snapshot with `cargo insta review` (or
//! accept with `INSTA_UPDATE=always`).

use std::net::SocketAddr;
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use zigtorrent_engine::tracker::{TrackerResult, TrackerStatus};
use zigtorrent_engine::{
    FilePriority, FileStatus, InfoHash, PeerStatus, TorrentState, TorrentStatus,
};

use super::*;
use crate::app::{Action, App, Folders, SortKey, Tab};
use crate::watch::FolderEvent;

/// Draw at `w`×`h` and return the screen as lines of text.
fn render(app: &mut App, torrents: &mut Vec<TorrentStatus>, w: u16, h: u16) -> Vec<String> {
    app.arrange(torrents);
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| draw(f, app, torrents)).unwrap();
    let buf = term.backend().buffer().clone();
    (0..h)
        .map(|y| {
            let mut line = String::new();
            let mut x = 0;
            while x < w {
                let sym = buf[(x, y)].symbol();
                line.push_str(sym);
                // A wide character covers the next cell too.
                x += text::width(sym).max(1) as u16;
            }
            line
        })
        .collect()
}

fn screen(lines: &[String]) -> String {
    lines.join("\n")
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn app() -> App {
    let mut app = App::new(6881, "tcp".into());
    app.folders = Folders {
        watch: PathBuf::from("/home/user/torrents"),
        downloads: PathBuf::from("/home/user/downloads"),
    };
    app
}

fn peer(addr: &str, client: &str, rate: u64) -> PeerStatus {
    PeerStatus {
        addr: addr.parse::<SocketAddr>().unwrap(),
        transport: "tcp".into(),
        encryption: Default::default(),
        client: client.into(),
        outgoing: true,
        download_rate: rate,
        upload_rate: 0,
        am_choking: true,
        am_interested: true,
        peer_choking: false,
        peer_interested: false,
        snubbed: false,
        progress: 1.0,
        extensions: Default::default(),
    }
}

fn downloading() -> TorrentStatus {
    let mut t = TorrentStatus::new("ubuntu.iso".into(), InfoHash([7; 20]), 4 << 20, 16);
    t.state = TorrentState::Downloading;
    t.have_bytes = 1 << 20;
    t.wanted_bytes = 4 << 20;
    t.wanted_have_bytes = 1 << 20;
    t.pieces_have = 4;
    for i in 0..4 {
        t.pieces.set(i);
    }
    t.download_rate = 512 * 1024;
    t.upload_rate = 10 * 1024;
    t.downloaded = 1 << 20;
    t.uploaded = 256 * 1024;
    // All time: a quarter of its size uploaded.
    t.all_time_downloaded = 1 << 20;
    t.all_time_uploaded = 1 << 20;
    t.peers_connected = 2;
    t.peers_known = 5;
    t.peers = vec![
        peer("10.0.0.2:6881", "lt 2080", 400 * 1024),
        peer("10.0.0.3:51413", "TR 4000", 112 * 1024),
    ];
    t.files = vec![
        FileStatus {
            path: PathBuf::from("ubuntu/disk.img"),
            length: 3 << 20,
            have_bytes: 1 << 20,
            priority: FilePriority::High,
        },
        FileStatus {
            path: PathBuf::from("ubuntu/README"),
            length: 1 << 20,
            have_bytes: 0,
            priority: FilePriority::Normal,
        },
    ];
    t.trackers = vec![TrackerStatus {
        url: "http://tracker.example/announce".into(),
        tier: 0,
        last_result: TrackerResult::Ok { peers: 5 },
        last_announce: None,
    }];
    t
}

/// A big torrent with a long name, 101 files and 40 peers, and a few smaller ones.
fn busy() -> Vec<TorrentStatus> {
    let mut big = downloading();
    big.name = "The.Complete.Collection.of.Very.Long.Torrent.Names.That.Never.End.2024.1080p.BluRay.x264-GROUP".into();
    big.info_hash = InfoHash([1; 20]);
    big.total_bytes = 41 << 30;
    big.have_bytes = 17 << 30;
    // Files 3, 10, 17, … (15 of 101, 400 MiB each) are skipped.
    big.wanted_bytes = big.total_bytes - 15 * (400 << 20);
    big.wanted_have_bytes = 16 << 30;
    big.download_rate = 12 * 1024 * 1024 + 345_678;
    big.upload_rate = 1024 * 1024;
    big.peers_connected = 40;
    big.peers_known = 312;
    big.files = (0..101)
        .map(|i| FileStatus {
            path: PathBuf::from(format!(
                "The.Complete.Collection/Season {:02}/Episode.{i:03}.A.Rather.Long.Title.mkv",
                i / 10 + 1
            )),
            length: 400 << 20,
            have_bytes: if i < 40 { 400 << 20 } else { 0 },
            priority: if i % 7 == 3 {
                FilePriority::Skip
            } else {
                FilePriority::Normal
            },
        })
        .collect();
    big.peers = (0..40)
        .map(|i| {
            peer(
                &format!("10.0.{}.{}:{}", i / 10, i % 10 + 2, 6881 + i),
                &format!("client {i}"),
                (40 - i as u64) * 10_000,
            )
        })
        .collect();
    big.trackers = (0..5)
        .map(|i| TrackerStatus {
            url: format!("udp://tracker-{i}.example.org:1337/announce"),
            tier: i,
            last_result: if i == 1 {
                TrackerResult::Error("connection refused".into())
            } else {
                TrackerResult::Ok { peers: 50 }
            },
            last_announce: None,
        })
        .collect();
    let mut seed = downloading();
    seed.name = "debian-12.5.0-amd64-netinst.iso".into();
    seed.info_hash = InfoHash([2; 20]);
    seed.state = TorrentState::Seeding;
    seed.have_bytes = seed.total_bytes;
    seed.wanted_have_bytes = seed.total_bytes;
    seed.download_rate = 0;
    let mut paused = downloading();
    paused.name = "名前の長いトレント・ファイル".into();
    paused.info_hash = InfoHash([3; 20]);
    paused.state = TorrentState::Paused;
    paused.download_rate = 0;
    paused.upload_rate = 0;
    let mut magnet = TorrentStatus::new("Some Show".into(), InfoHash([4; 20]), 0, 0);
    magnet.state = TorrentState::FetchingMetadata;
    vec![big, seed, paused, magnet]
}

#[test]
fn snapshots_of_the_list_and_the_detail_view() {
    for (w, h) in [(60, 15), (80, 24), (160, 45)] {
        let mut app = app();
        let mut ts = busy();
        insta::assert_snapshot!(
            format!("list_{w}x{h}"),
            screen(&render(&mut app, &mut ts, w, h))
        );
        // The big one: 101 files, 40 peers.
        app.selected_hash = Some(InfoHash([1; 20]));
        app.arrange(&mut ts);
        app.on_key(key(KeyCode::Enter), &ts);
        insta::assert_snapshot!(
            format!("detail_files_{w}x{h}"),
            screen(&render(&mut app, &mut ts, w, h))
        );
        app.on_key(key(KeyCode::Tab), &ts);
        insta::assert_snapshot!(
            format!("detail_peers_{w}x{h}"),
            screen(&render(&mut app, &mut ts, w, h))
        );
    }
}

#[test]
fn the_name_never_disappears_and_is_cut_with_an_ellipsis() {
    for w in [60u16, 80, 100, 120, 160, 220] {
        let mut app = app();
        let mut ts = busy();
        let s = render(&mut app, &mut ts, w, 24);
        let row = s
            .iter()
            .find(|l| l.contains("The.Complete"))
            .unwrap_or_else(|| panic!("no name at width {w}:\n{}", s.join("\n")));
        if w < 220 {
            assert!(
                row.contains('…'),
                "long name cut with an ellipsis at {w}: {row}"
            );
        } else {
            assert!(
                row.contains("x264-GROUP"),
                "the whole name where it fits: {row}"
            );
        }
        assert!(
            s.iter().any(|l| l.contains("debian-12.5.0")),
            "{}",
            s.join("\n")
        );
        assert!(s.iter().any(|l| l.contains("名前")), "{}", s.join("\n"));
        // The footer keeps the port whole.
        assert!(s[22].ends_with("port 6881 (tcp)"), "{w}: {}", s[22]);
    }
}

#[test]
fn list_shows_a_downloading_torrent_with_peers() {
    let mut app = app();
    let mut ts = vec![downloading()];
    let s = screen(&render(&mut app, &mut ts, 120, 12));
    assert!(s.contains("ZigTorrent — 1 torrents"), "{s}");
    for want in [
        "Name",
        "ubuntu.iso",
        "4.0 MiB",
        "25.0%",
        "downloading",
        "512 KiB/s",
        "10.0 KiB/s",
        "2/5",
        "6s",
        "0.25",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    assert!(
        s.contains("↓ 512 KiB/s") && s.contains("│ 1 downloading "),
        "{s}"
    );
    assert!(s.contains("port 6881 (tcp)"), "{s}");
    assert!(s.contains("? help"), "key help\n{s}");
    assert!(
        s.contains("/home/user/torrents → /home/user/downloads"),
        "folders\n{s}"
    );
}

#[test]
fn detail_tabs_show_files_peers_trackers_and_pieces() {
    let mut app = app();
    let mut ts = vec![downloading()];
    app.arrange(&mut ts);
    for _ in 0..3 {
        app.sample(&ts);
    }
    app.on_key(key(KeyCode::Enter), &ts);
    let mut seen = String::new();
    for tab in Tab::ALL {
        app.tab = tab;
        seen += &screen(&render(&mut app, &mut ts, 80, 24));
    }
    for want in [
        "ubuntu/disk.img",
        "33.3%",
        "ubuntu/README",
        "10.0.0.2:6881",
        "lt 2080",
        "400 KiB/s",
        "10.0.0.3:51413",
        "TR 4000",
        "http://tracker.example/announce",
        "ok, 5 peers",
        "pieces: 4 of 16",
        "down, last minute, peak 512.0 KiB/s",
        "Esc back",
    ] {
        assert!(seen.contains(want), "missing {want:?} in\n{seen}");
    }
    // Peer flags: interested and unchoked by them.
    assert!(seen.contains(" D "), "{seen}");
    // A quarter of the pieces present, at the start of the map.
    assert!(seen.contains("████") && seen.contains("····"), "{seen}");
}

#[test]
fn every_detail_list_scrolls_with_a_position() {
    let mut app = app();
    let mut ts = busy();
    app.selected_hash = Some(InfoHash([1; 20]));
    app.arrange(&mut ts);
    app.on_key(key(KeyCode::Enter), &ts);
    let s = screen(&render(&mut app, &mut ts, 80, 24));
    assert!(s.contains("1–") && s.contains("of 101"), "{s}");
    assert!(s.contains("Episode.000"), "{s}");
    app.on_key(key(KeyCode::End), &ts);
    let s = screen(&render(&mut app, &mut ts, 80, 24));
    assert!(s.contains("Episode.100"), "{s}");
    assert!(s.contains("–101 of 101"), "{s}");
    assert!(!s.contains("Episode.000"), "{s}");
    // Peers: 40, sorted by rate; the last one reachable.
    app.on_key(key(KeyCode::Char('2')), &ts);
    app.on_key(key(KeyCode::End), &ts);
    let s = screen(&render(&mut app, &mut ts, 80, 24));
    assert!(s.contains("–40 of 40"), "{s}");
    assert!(s.contains("client 39"), "{s}");
}

#[test]
fn problems_are_counted_apart_and_all_reachable() {
    let mut app = app();
    for i in 0..5 {
        app.on_folder_event(&FolderEvent::Failed {
            path: PathBuf::from(format!("/w/bad{i}.torrent")),
            reason: "bencode error at byte 0: unexpected byte".into(),
        });
    }
    app.on_folder_event(&FolderEvent::Duplicate {
        path: PathBuf::from("/w/copy.torrent"),
        info_hash: InfoHash([7; 20]),
        of: PathBuf::from("/w/ubuntu.torrent"),
        name: "ubuntu.iso".into(),
    });
    let mut broken = downloading();
    broken.state = TorrentState::Error("storage error: disk full".into());
    broken.tracker_error = Some("connection refused".into());
    let mut ts = vec![broken];
    let s = screen(&render(&mut app, &mut ts, 80, 24));
    assert!(s.contains("Problems (8, 6 more: e shows all)"), "{s}");
    assert!(
        s.contains("1 in error, 5 bad files"),
        "states and files apart\n{s}"
    );
    app.on_key(key(KeyCode::Char('e')), &ts);
    app.on_key(key(KeyCode::End), &ts);
    let s = screen(&render(&mut app, &mut ts, 80, 24));
    for want in [
        "error: ubuntu.iso: storage error: disk full (press r to recheck once fixed)",
        "tracker: ubuntu.iso: connection refused",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    app.on_key(key(KeyCode::Home), &ts);
    let s = screen(&render(&mut app, &mut ts, 80, 24));
    assert!(
        s.contains("note: copy.torrent: duplicate of ubuntu.torrent (ubuntu.iso)"),
        "{s}"
    );
    app.on_key(key(KeyCode::Esc), &ts);
    // Fixed: the entry goes away.
    app.on_folder_event(&FolderEvent::Cleared {
        path: PathBuf::from("/w/bad0.torrent"),
    });
    let s = screen(&render(&mut app, &mut ts, 80, 24));
    assert!(s.contains("Problems (7"), "{s}");
}

#[test]
fn a_magnet_without_metadata_shows_by_name_with_unknown_size() {
    let mut app = app();
    let mut t = TorrentStatus::new("Some Show".into(), InfoHash([7; 20]), 0, 0);
    t.state = TorrentState::FetchingMetadata;
    t.peers_connected = 2;
    t.peers_known = 5;
    let mut ts = vec![t];
    let s = screen(&render(&mut app, &mut ts, 120, 12));
    for want in ["Some Show", "metadata", "2/5", "0.0%"] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    assert!(!s.contains("100.0%"), "{s}");
    let row = s.lines().find(|l| l.contains("Some Show")).unwrap();
    assert!(row.contains(" ? "), "size and ETA unknown: {row}");
}

#[test]
fn empty_folder_says_where_and_what_to_do() {
    let mut app = App::new(6882, "tcp".into());
    app.folders = Folders {
        watch: PathBuf::from("/srv/watch"),
        downloads: PathBuf::from("/srv/data"),
    };
    let s = screen(&render(&mut app, &mut vec![], 100, 10));
    assert!(s.contains("ZigTorrent — 0 torrents"), "{s}");
    assert!(
        s.contains("No torrents yet. Drop .torrent or .magnet files into /srv/watch"),
        "{s}"
    );
    assert!(s.contains("press a to add"), "{s}");
    assert!(s.contains("no torrents"), "{s}");
    assert!(s.contains("port 6882"), "{s}");
    // Enter on an empty list does not open an empty detail view.
    app.on_key(key(KeyCode::Enter), &[]);
    assert_eq!(app.view, View::List);
}

#[test]
fn help_lists_every_key_and_scrolls_on_a_small_screen() {
    let mut app = app();
    let mut ts = vec![downloading()];
    app.arrange(&mut ts);
    app.on_key(key(KeyCode::Char('?')), &ts);
    let mut seen = String::new();
    for _ in 0..60 {
        seen += &screen(&render(&mut app, &mut ts, 60, 15));
        app.on_key(key(KeyCode::Down), &ts);
    }
    for (_, keys) in HELP {
        for (k, _) in *keys {
            assert!(seen.contains(k), "help misses {k:?}\n{seen}");
        }
    }
    // From the end, one key up moves one line up (the end is where the drawing stopped).
    app.on_key(key(KeyCode::End), &ts);
    let end = screen(&render(&mut app, &mut ts, 60, 15));
    app.on_key(key(KeyCode::Up), &ts);
    let up = screen(&render(&mut app, &mut ts, 60, 15));
    assert_ne!(end, up, "scrolled up from the end");
    app.on_key(key(KeyCode::Esc), &ts);
    assert_eq!(app.view, View::List);
}

#[test]
fn sort_filter_and_add_prompts() {
    let mut app = app();
    let mut ts = busy();
    app.arrange(&mut ts);
    assert_eq!(ts[0].name, "debian-12.5.0-amd64-netinst.iso");
    // Sort by size: the 41 GiB one first, marked in the header.
    app.on_key(key(KeyCode::Char('s')), &ts);
    assert_eq!(app.sort, SortKey::Size);
    let s = screen(&render(&mut app, &mut ts, 120, 24));
    assert!(ts[0].name.starts_with("The.Complete"), "{s}");
    assert!(s.contains("Size▼"), "{s}");
    // Filter as you type.
    app.on_key(key(KeyCode::Char('/')), &ts);
    for c in "debian".chars() {
        app.on_key(key(KeyCode::Char(c)), &ts);
    }
    let s = screen(&render(&mut app, &mut ts, 120, 24));
    assert_eq!(ts.len(), 1, "{s}");
    assert!(
        s.contains("1 of 4 match “debian”") && s.contains("filter: debian"),
        "{s}"
    );
    app.on_key(key(KeyCode::Enter), &ts);
    let mut ts = busy();
    let s = screen(&render(&mut app, &mut ts, 120, 24));
    assert_eq!(ts.len(), 1, "Enter keeps the filter\n{s}");
    app.on_key(key(KeyCode::Esc), &ts);
    let mut ts = busy();
    let s = screen(&render(&mut app, &mut ts, 120, 24));
    assert_eq!(ts.len(), 4, "Esc clears the filter\n{s}");
    // Add: what is typed comes back as an action.
    app.on_key(key(KeyCode::Char('a')), &ts);
    app.on_paste("magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567\n");
    let s = screen(&render(&mut app, &mut ts, 80, 24));
    assert!(s.contains("add (path, URL or magnet):"), "{s}");
    assert_eq!(
        app.on_key(key(KeyCode::Enter), &ts),
        Some(Action::Add(
            "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567".into()
        ))
    );
    assert!(app.input.is_none());
}

#[test]
fn stopping_and_confirm_prompts_are_drawn() {
    let mut app = app();
    let mut ts = vec![downloading()];
    app.arrange(&mut ts);
    app.on_key(key(KeyCode::Char('d')), &ts);
    let s = screen(&render(&mut app, &mut ts, 100, 20));
    assert!(s.contains("Remove ubuntu.iso from the session?"), "{s}");
    assert!(
        s.contains("keep the data") && s.contains("D: remove and delete"),
        "{s}"
    );
    app.confirm_remove = None;
    app.stopping = true;
    let s = screen(&render(&mut app, &mut ts, 100, 20));
    assert!(s.contains("stopping…"), "{s}");
}

#[test]
fn many_torrents_scroll_and_tiny_terminals_do_not_panic() {
    let mut app = app();
    let mut ts: Vec<TorrentStatus> = (0..500u32)
        .map(|i| {
            let mut t = downloading();
            t.name = format!("torrent-{i:03}");
            let mut hash = [1u8; 20];
            hash[..4].copy_from_slice(&i.to_be_bytes());
            t.info_hash = InfoHash(hash);
            t
        })
        .collect();
    app.arrange(&mut ts);
    app.on_key(key(KeyCode::End), &ts);
    // The selected row is scrolled into view, with its position.
    let s = screen(&render(&mut app, &mut ts, 160, 50));
    assert!(s.contains("torrent-499"), "{s}");
    assert!(s.contains("–500 of 500"), "{s}");
    for (w, h) in [(1, 1), (10, 3), (40, 8), (60, 15)] {
        for view in [View::List, View::Detail, View::Help, View::Problems] {
            app.view = view;
            for tab in Tab::ALL {
                app.tab = tab;
                render(&mut app, &mut ts, w, h);
            }
        }
    }
}

#[test]
fn piece_map_and_bars() {
    let mut bf = zigtorrent_engine::Bitfield::new(10);
    for i in 0..4 {
        bf.set(i);
    }
    let lines = piece_map(&bf, 5, 1);
    assert_eq!(lines[0].to_string(), "██···");
    let lines = piece_map(&bf, 3, 1);
    assert_eq!(lines[0].to_string(), "█▒·");
    assert_eq!(progress_bar(0.999, 4), "███░  99.9%");
    assert_eq!(progress_bar(1.0, 4), "████ 100.0%");
    assert_eq!(percent(0.99999), " 99.9%");
}

#[test]
fn peer_flags_list_encryption_and_the_extensions_a_connection_speaks() {
    let mut p = peer("10.0.0.2:6881", "lt 2080", 0);
    assert_eq!(super::detail::peer_flags(&p), "D");
    p.extensions = zigtorrent_engine::PeerExtensionFlags {
        fast: true,
        extension_protocol: true,
        ut_metadata: false,
        ut_pex: true,
    };
    p.peer_interested = true;
    assert_eq!(super::detail::peer_flags(&p), "Dufxp");
    p.extensions.ut_metadata = true;
    p.snubbed = true;
    assert_eq!(super::detail::peer_flags(&p), "Dusfxmp");
    p.encryption = zigtorrent_engine::Encryption::Rc4;
    assert_eq!(super::detail::peer_flags(&p), "DusEfxmp");
}
