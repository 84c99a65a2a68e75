//! Drawing the menu: a pure function of the [`App`] state and the torrents' snapshots, so it is
//! tested with ratatui's `TestBackend`. Ratatui diffs each frame against the last, so redrawing
//! several times a second writes only the cells that changed (no flicker).

use std::time::Instant;

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;
use zigtorrent_engine::tracker::TrackerResult;
use zigtorrent_engine::{Bitfield, TorrentState, TorrentStatus};

use crate::app::{file_name, App, View};
use crate::format::{self, printable};

/// Keys shown in the help line.
const HELP_LIST: &str = "↑↓/jk move  Enter details  p pause/resume  r recheck  d remove  q quit";
const HELP_DETAIL: &str =
    "Esc back  ↑↓/jk other torrent  p pause/resume  r recheck  d remove  q quit";

/// Draw one frame.
pub fn draw(f: &mut Frame, app: &App, torrents: &[TorrentStatus]) {
    let area = f.area();
    let [main, footer] = Layout::vertical([Constraint::Min(3), Constraint::Length(2)]).areas(area);
    match (app.view, torrents.get(app.selected)) {
        (View::Detail, Some(t)) => draw_detail(f, main, app, t),
        _ => draw_list(f, main, app, torrents),
    }
    draw_footer(f, footer, app, torrents);
    if let Some((_, name)) = &app.confirm_remove {
        popup(
            f,
            area,
            "Remove torrent",
            &[
                format!("Remove {name} from the session?"),
                "Downloaded data and the .torrent file are kept.".into(),
                "y: remove   any other key: cancel".into(),
            ],
        );
    }
    if app.stopping {
        popup(
            f,
            area,
            "ZigTorrent",
            &[
                "stopping…".into(),
                "saving resume state, telling trackers".into(),
                "Ctrl-C again: exit at once".into(),
            ],
        );
    }
}

fn popup(f: &mut Frame, area: Rect, title: &str, lines: &[String]) {
    let width = lines
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max(title.len()) as u16
        + 4;
    let height = lines.len() as u16 + 2;
    let r = Rect {
        x: area.x + area.width.saturating_sub(width) / 2,
        y: area.y + area.height.saturating_sub(height) / 2,
        width: width.min(area.width),
        height: height.min(area.height),
    };
    f.render_widget(Clear, r);
    let text: Vec<Line> = lines.iter().map(|l| Line::from(l.as_str())).collect();
    f.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .block(Block::bordered().title(title.to_string()).bold()),
        r,
    );
}

fn state_text(s: &TorrentStatus) -> String {
    match &s.state {
        TorrentState::Checking { progress } => format!("checking {:.0}%", progress * 100.0),
        other => other.label().to_string(),
    }
}

fn state_color(s: &TorrentState) -> Color {
    match s {
        TorrentState::FetchingMetadata | TorrentState::Checking { .. } => Color::Yellow,
        TorrentState::Downloading => Color::Cyan,
        TorrentState::Seeding => Color::Green,
        TorrentState::Paused | TorrentState::Queued => Color::DarkGray,
        TorrentState::Finished(_) => Color::Green,
        TorrentState::Error(_) => Color::Red,
    }
}

/// `████░░░░  52.3%`, `width` cells of bar.
pub fn progress_bar(fraction: f64, width: usize) -> String {
    let fraction = fraction.clamp(0.0, 1.0);
    let full = (fraction * width as f64).floor() as usize;
    let full = if fraction < 1.0 {
        full.min(width.saturating_sub(1))
    } else {
        width
    };
    format!(
        "{}{} {:>5.1}%",
        "█".repeat(full),
        "░".repeat(width - full),
        fraction * 100.0
    )
}

/// The torrent's size, `?` while a magnet's metadata is still being fetched.
fn size_text(t: &TorrentStatus) -> String {
    if t.state == TorrentState::FetchingMetadata {
        "?".into()
    } else {
        format::bytes(t.total_bytes)
    }
}

/// Time left at the current rate: `1h02m`, `3m05s`, `12s`, `∞`, `-` when done.
pub fn eta(s: &TorrentStatus) -> String {
    if s.state == TorrentState::FetchingMetadata {
        return "?".into();
    }
    let left = s.total_bytes.saturating_sub(s.have_bytes);
    if left == 0 {
        return "-".into();
    }
    if s.download_rate == 0 || !matches!(s.state, TorrentState::Downloading) {
        return "∞".into();
    }
    let secs = left.div_ceil(s.download_rate);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=359_999 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Uploaded ÷ downloaded this session (÷ size when nothing was downloaded, as for a seed).
pub fn ratio(s: &TorrentStatus) -> String {
    let base = if s.downloaded > 0 {
        s.downloaded
    } else {
        s.total_bytes
    };
    if base == 0 {
        return "0.00".into();
    }
    format!("{:.2}", s.uploaded as f64 / base as f64)
}

fn draw_list(f: &mut Frame, area: Rect, app: &App, torrents: &[TorrentStatus]) {
    let problems = problem_lines(app, torrents);
    let problem_height = if problems.is_empty() {
        0
    } else {
        (problems.len() as u16).min(6) + 2
    };
    let [table_area, problem_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(problem_height)]).areas(area);
    let header = Row::new(
        [
            "Name", "Size", "Progress", "State", "Down", "Up", "Peers", "ETA", "Ratio",
        ]
        .map(|h| Cell::from(h).bold()),
    );
    let rows = torrents.iter().map(|t| {
        Row::new(vec![
            Cell::from(printable(&t.name).into_owned()),
            Cell::from(size_text(t)),
            Cell::from(progress_bar(t.progress(), 10)),
            Cell::from(state_text(t)).fg(state_color(&t.state)),
            Cell::from(format::rate(t.download_rate)),
            Cell::from(format::rate(t.upload_rate)),
            Cell::from(format!("{}/{}", t.peers_connected, t.peers_known)),
            Cell::from(eta(t)),
            Cell::from(ratio(t)),
        ])
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(10),
        Constraint::Length(17),
        Constraint::Length(13),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
    ];
    let title = format!(" ZigTorrent — {} torrents ", torrents.len());
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .column_spacing(1);
    let mut state =
        TableState::default().with_selected((!torrents.is_empty()).then_some(app.selected));
    f.render_stateful_widget(table, table_area, &mut state);
    if torrents.is_empty() && table_area.height > 3 {
        let hint = Rect {
            x: table_area.x + 2,
            y: table_area.y + 3,
            width: table_area.width.saturating_sub(4),
            height: 1,
        };
        f.render_widget(
            Paragraph::new("No torrents yet: drop .torrent files into the watch folder.").italic(),
            hint,
        );
    }
    if !problems.is_empty() {
        let shown: Vec<Line> = problems.into_iter().take(6).collect();
        f.render_widget(
            Paragraph::new(shown).block(Block::bordered().title(" Problems ").fg(Color::Red)),
            problem_area,
        );
    }
}

/// Watch-folder notes, torrents in error, and tracker failures, one line each.
fn problem_lines(app: &App, torrents: &[TorrentStatus]) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for n in &app.notes {
        let tag = if n.error { "error" } else { "note" };
        lines.push(Line::from(vec![
            Span::raw(format!("{tag}: ")).bold(),
            Span::raw(printable(&format!("{}: {}", file_name(&n.path), n.text)).into_owned()),
        ]));
    }
    for t in torrents {
        if let TorrentState::Error(e) = &t.state {
            lines.push(Line::from(
                printable(&format!("error: {}: {e}", t.name)).into_owned(),
            ));
        }
        if let Some(e) = &t.tracker_error {
            lines.push(Line::from(
                printable(&format!("tracker: {}: {e}", t.name)).into_owned(),
            ));
        }
    }
    lines
}

fn draw_footer(f: &mut Frame, area: Rect, app: &App, torrents: &[TorrentStatus]) {
    let (down, up) = torrents
        .iter()
        .fold((0, 0), |(d, u), t| (d + t.download_rate, u + t.upload_rate));
    let mut counts = [0usize; 5];
    for t in torrents {
        let i = match t.state {
            TorrentState::FetchingMetadata | TorrentState::Checking { .. } => 0,
            TorrentState::Downloading => 1,
            // Placeholders until the menu counts queued and done torrents on their own.
            TorrentState::Seeding | TorrentState::Finished(_) => 2,
            TorrentState::Paused | TorrentState::Queued => 3,
            TorrentState::Error(_) => 4,
        };
        counts[i] += 1;
    }
    let limit = |l: u64| {
        if l == 0 {
            String::new()
        } else {
            format!(" (max {})", format::rate(l))
        }
    };
    let totals = format!(
        "↓ {}{}  ↑ {}{} │ {} downloading {} seeding {} checking {} paused {} error │ port {} ({})",
        format::rate(down),
        limit(app.limits.0),
        format::rate(up),
        limit(app.limits.1),
        counts[1],
        counts[2],
        counts[0],
        counts[3],
        counts[4] + app.notes.iter().filter(|n| n.error).count(),
        app.listen_port,
        app.transport,
    );
    let help = match app.view {
        View::List => HELP_LIST,
        View::Detail => HELP_DETAIL,
    };
    let mut second = vec![Span::raw(help).dim()];
    if let Some(m) = &app.message {
        second.push(Span::raw(format!("  │ {m}")));
    }
    f.render_widget(
        Paragraph::new(vec![Line::from(totals), Line::from(second)]),
        area,
    );
}

fn draw_detail(f: &mut Frame, area: Rect, app: &App, t: &TorrentStatus) {
    let [head, graph, map, files, peers, trackers] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Fill(2),
        Constraint::Fill(3),
        Constraint::Fill(2),
    ])
    .areas(area);
    let state_line = match &t.state {
        TorrentState::Error(e) => format!("error: {e}"),
        _ => state_text(t),
    };
    let head_text = vec![
        Line::from(vec![
            Span::raw("state ").dim(),
            Span::raw(state_line).fg(state_color(&t.state)).bold(),
            Span::raw("   progress ").dim(),
            Span::raw(progress_bar(t.progress(), 20)),
            Span::raw(format!(
                "   {} / {}   pieces {}/{}",
                format::bytes(t.have_bytes),
                size_text(t),
                t.pieces_have,
                t.pieces_total
            )),
        ]),
        Line::from(format!(
            "down {}  up {}  downloaded {}  uploaded {}  wasted {}  ratio {}  ETA {}",
            format::rate(t.download_rate),
            format::rate(t.upload_rate),
            format::bytes(t.downloaded),
            format::bytes(t.uploaded),
            format::bytes(t.wasted),
            ratio(t),
            eta(t)
        )),
        Line::from(format!(
            "info-hash {}   peers {}/{}",
            t.info_hash, t.peers_connected, t.peers_known
        ))
        .dim(),
    ];
    f.render_widget(
        Paragraph::new(head_text).block(
            Block::bordered()
                .title(format!(" {} ", printable(&t.name)))
                .bold(),
        ),
        head,
    );

    let [down_area, up_area] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(graph);
    let hist = app.history.get(&t.info_hash);
    for (area, data, label, color) in [
        (
            down_area,
            hist.map(|h| h.down.clone()),
            "download",
            Color::Cyan,
        ),
        (up_area, hist.map(|h| h.up.clone()), "upload", Color::Green),
    ] {
        let samples: Vec<u64> = data.map(|d| d.into_iter().collect()).unwrap_or_default();
        let peak = samples.iter().copied().max().unwrap_or(0);
        // A fixed one-minute window: seconds not yet sampled are zero, newest on the right.
        let mut data = vec![0; crate::app::HISTORY_LEN.saturating_sub(samples.len())];
        data.extend(samples);
        let width = area.width.saturating_sub(2) as usize;
        let shown = &data[data.len().saturating_sub(width)..];
        f.render_widget(
            Sparkline::default()
                .data(shown)
                .style(Style::default().fg(color))
                .block(Block::bordered().title(format!(
                    " {label}, last minute (peak {}) ",
                    format::rate(peak)
                ))),
            area,
        );
    }

    let map_inner = Rect {
        width: map.width.saturating_sub(2),
        height: map.height.saturating_sub(2),
        ..map
    };
    f.render_widget(
        Paragraph::new(piece_map(
            &t.pieces,
            map_inner.width as usize,
            map_inner.height as usize,
        ))
        .block(Block::bordered().title(format!(
            " pieces: {} of {} (█ have, ▒ some, · none) ",
            t.pieces_have, t.pieces_total
        ))),
        map,
    );

    let file_rows = t.files.iter().map(|file| {
        let frac = if file.length == 0 {
            1.0
        } else {
            file.have_bytes as f64 / file.length as f64
        };
        Row::new(vec![
            Cell::from(printable(&file.path.display().to_string()).into_owned()),
            Cell::from(format::bytes(file.length)),
            Cell::from(progress_bar(frac, 10)),
        ])
    });
    f.render_widget(
        Table::new(
            file_rows,
            [
                Constraint::Fill(1),
                Constraint::Length(10),
                Constraint::Length(17),
            ],
        )
        .header(Row::new(
            ["File", "Size", "Progress"].map(|h| Cell::from(h).bold()),
        ))
        .block(Block::bordered().title(format!(" files ({}) ", t.files.len()))),
        files,
    );

    let mut peer_list: Vec<_> = t.peers.iter().collect();
    peer_list.sort_by_key(|p| std::cmp::Reverse(p.download_rate + p.upload_rate));
    let peer_rows = peer_list.iter().map(|p| {
        Row::new(vec![
            Cell::from(p.addr.to_string()),
            Cell::from(format!(
                "{} {}",
                p.transport,
                if p.outgoing { "out" } else { "in" }
            )),
            Cell::from(printable(&p.client).into_owned()),
            Cell::from(format::rate(p.download_rate)),
            Cell::from(format::rate(p.upload_rate)),
            Cell::from(format!("{:.0}%", p.progress * 100.0)),
            Cell::from(peer_flags(p)),
        ])
    });
    f.render_widget(
        Table::new(
            peer_rows,
            [
                Constraint::Length(22),
                Constraint::Length(8),
                Constraint::Fill(1),
                Constraint::Length(12),
                Constraint::Length(12),
                Constraint::Length(5),
                Constraint::Length(6),
            ],
        )
        .header(Row::new(
            ["Address", "Via", "Client", "Down", "Up", "Has", "Flags"].map(|h| Cell::from(h).bold()),
        ))
        .block(Block::bordered().title(format!(
            " peers ({} connected, {} known)  flags: d/D we want/want+unchoked, u/U they want/want+unchoked, s snubbed ",
            t.peers_connected, t.peers_known
        ))),
        peers,
    );

    let now = Instant::now();
    let next = t
        .next_announce
        .map(|n| format!("in {}s", n.saturating_duration_since(now).as_secs()))
        .unwrap_or_else(|| "-".into());
    let tracker_rows = t.trackers.iter().map(|tr| {
        let (text, color) = match &tr.last_result {
            TrackerResult::Never => ("not yet".to_string(), Color::DarkGray),
            TrackerResult::Ok { peers } => (format!("ok, {peers} peers"), Color::Green),
            TrackerResult::Error(e) => (format!("error: {}", printable(e)), Color::Red),
        };
        let ago = tr
            .last_announce
            .map(|a| format!("{}s ago", now.saturating_duration_since(a).as_secs()))
            .unwrap_or_else(|| "-".into());
        Row::new(vec![
            Cell::from(tr.url.clone()),
            Cell::from(format!("{}", tr.tier + 1)),
            Cell::from(text).fg(color),
            Cell::from(ago),
            Cell::from(next.clone()),
        ])
    });
    let tracker_title = if t.trackers.is_empty() {
        " trackers: none (peers from --peer only) ".to_string()
    } else {
        format!(" trackers ({}) ", t.trackers.len())
    };
    f.render_widget(
        Table::new(
            tracker_rows,
            [
                Constraint::Fill(1),
                Constraint::Length(4),
                Constraint::Fill(1),
                Constraint::Length(9),
                Constraint::Length(9),
            ],
        )
        .header(Row::new(
            ["Tracker", "Tier", "Last result", "Last", "Next"].map(|h| Cell::from(h).bold()),
        ))
        .block(Block::bordered().title(tracker_title)),
        trackers,
    );
}

/// Flags in the libtorrent/Transmission spirit: `d` we are interested (`D` and unchoked by
/// them), `u` they are interested (`U` and unchoked by us), `s` snubbed.
fn peer_flags(p: &zigtorrent_engine::PeerStatus) -> String {
    let mut s = String::new();
    if p.am_interested {
        s.push(if p.peer_choking { 'd' } else { 'D' });
    }
    if p.peer_interested {
        s.push(if p.am_choking { 'u' } else { 'U' });
    }
    if p.snubbed {
        s.push('s');
    }
    s
}

/// The piece map in `width`×`height` cells; each cell stands for a run of pieces.
pub fn piece_map(pieces: &Bitfield, width: usize, height: usize) -> Vec<Line<'static>> {
    let total = pieces.len();
    let cells = (width * height).min(total.max(1));
    if width == 0 || height == 0 || total == 0 {
        return Vec::new();
    }
    let mut out = String::with_capacity(cells * 3);
    for c in 0..cells {
        let start = c * total / cells;
        let end = ((c + 1) * total / cells).max(start + 1);
        let have = (start..end).filter(|&i| pieces.get(i)).count();
        out.push(if have == end - start {
            '█'
        } else if have > 0 {
            '▒'
        } else {
            '·'
        });
    }
    let chars: Vec<char> = out.chars().collect();
    chars
        .chunks(width)
        .map(|row| Line::from(row.iter().collect::<String>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use zigtorrent_engine::tracker::{TrackerResult, TrackerStatus};
    use zigtorrent_engine::{FileStatus, InfoHash, PeerStatus, TorrentState, TorrentStatus};

    use super::*;
    use crate::app::App;
    use crate::watch::FolderEvent;

    /// Draw at `w`×`h` and return the screen as lines of text.
    fn render(app: &mut App, torrents: &mut [TorrentStatus], w: u16, h: u16) -> Vec<String> {
        app.arrange(torrents);
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, app, torrents)).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    fn screen(lines: &[String]) -> String {
        lines.join("\n")
    }

    fn downloading() -> TorrentStatus {
        let mut t = TorrentStatus::new("ubuntu.iso".into(), InfoHash([7; 20]), 4 << 20, 16);
        t.state = TorrentState::Downloading;
        t.have_bytes = 1 << 20;
        t.pieces_have = 4;
        for i in 0..4 {
            t.pieces.set(i);
        }
        t.download_rate = 512 * 1024;
        t.upload_rate = 10 * 1024;
        t.downloaded = 1 << 20;
        t.uploaded = 256 * 1024;
        t.peers_connected = 2;
        t.peers_known = 5;
        let peer = |addr: &str, client: &str, rate| PeerStatus {
            addr: addr.parse::<SocketAddr>().unwrap(),
            transport: "tcp".into(),
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
        };
        t.peers = vec![
            peer("10.0.0.2:6881", "lt 2080", 400 * 1024),
            peer("10.0.0.3:51413", "TR 4000", 112 * 1024),
        ];
        t.files = vec![
            FileStatus {
                path: PathBuf::from("ubuntu/disk.img"),
                length: 3 << 20,
                have_bytes: 1 << 20,
            },
            FileStatus {
                path: PathBuf::from("ubuntu/README"),
                length: 1 << 20,
                have_bytes: 0,
            },
        ];
        t.trackers = vec![TrackerStatus {
            url: "http://tracker.example/announce".into(),
            tier: 0,
            last_result: TrackerResult::Ok { peers: 5 },
            last_announce: Some(std::time::Instant::now()),
        }];
        t
    }

    #[test]
    fn list_shows_a_downloading_torrent_with_peers() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = vec![downloading()];
        let s = screen(&render(&mut app, &mut ts, 120, 12));
        assert!(s.contains("ZigTorrent — 1 torrents"), "{s}");
        for want in [
            "Name",
            "Progress",
            "ubuntu.iso",
            "4.0 MiB",
            "25.0%",
            "downloading",
            "512.0 KiB/s",
            "10.0 KiB/s",
            "2/5",
            "6s",
            "0.25",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(s.contains("██░░░░░░░░"), "progress bar\n{s}");
        assert!(
            s.contains("↓ 512.0 KiB/s") && s.contains("1 downloading 0 seeding"),
            "{s}"
        );
        assert!(s.contains("port 6881 (tcp)"), "{s}");
        assert!(s.contains("q quit"), "key help\n{s}");
    }

    #[test]
    fn detail_shows_files_peers_trackers_and_piece_map() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = vec![downloading()];
        app.arrange(&mut ts);
        for _ in 0..3 {
            app.sample(&ts);
        }
        app.view = View::Detail;
        let s = screen(&render(&mut app, &mut ts, 130, 44));
        for want in [
            "ubuntu/disk.img",
            "33.3%",
            "ubuntu/README",
            "10.0.0.2:6881",
            "lt 2080",
            "400.0 KiB/s",
            "10.0.0.3:51413",
            "TR 4000",
            "http://tracker.example/announce",
            "ok, 5 peers",
            "pieces: 4 of 16",
            "download, last minute (peak 512.0 KiB/s)",
            "Esc back",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // Peer flags: interested and unchoked by them.
        assert!(s.contains(" D "), "{s}");
        // A quarter of the pieces present, at the start of the map.
        assert!(s.contains("████"), "{s}");
        assert!(s.contains("····"), "{s}");
    }

    #[test]
    fn error_entries_are_visible() {
        let mut app = App::new(6881, "tcp".into());
        app.on_folder_event(&FolderEvent::Failed {
            path: PathBuf::from("/w/bad.torrent"),
            reason: "bencode error at byte 0: unexpected byte".into(),
        });
        app.on_folder_event(&FolderEvent::Duplicate {
            path: PathBuf::from("/w/copy.torrent"),
            of: PathBuf::from("/w/ubuntu.torrent"),
            name: "ubuntu.iso".into(),
        });
        let mut broken = downloading();
        broken.state = TorrentState::Error("storage error: disk full".into());
        broken.tracker_error = Some("connection refused".into());
        let mut ts = vec![broken];
        let s = screen(&render(&mut app, &mut ts, 120, 16));
        for want in [
            "Problems",
            "error: bad.torrent: bencode error at byte 0: unexpected byte",
            "note: copy.torrent: duplicate of ubuntu.torrent (ubuntu.iso)",
            "error: ubuntu.iso: storage error: disk full",
            "tracker: ubuntu.iso: connection refused",
            "2 error",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // Fixed: the entry goes away.
        app.on_folder_event(&FolderEvent::Cleared {
            path: PathBuf::from("/w/bad.torrent"),
        });
        let s = screen(&render(&mut app, &mut ts, 120, 16));
        assert!(!s.contains("bad.torrent"), "{s}");
    }

    #[test]
    fn a_magnet_without_metadata_shows_by_name_with_unknown_size() {
        let mut app = App::new(6881, "tcp".into());
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
    fn empty_folder_says_what_to_do() {
        let mut app = App::new(6882, "tcp".into());
        let s = screen(&render(&mut app, &mut [], 100, 10));
        assert!(s.contains("ZigTorrent — 0 torrents"), "{s}");
        assert!(
            s.contains("No torrents yet: drop .torrent files into the watch folder."),
            "{s}"
        );
        assert!(s.contains("0 downloading 0 seeding"), "{s}");
        assert!(s.contains("port 6882"), "{s}");
        // Enter on an empty list does not open an empty detail view.
        app.on_key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Enter),
            &[],
        );
        assert_eq!(app.view, View::List);
    }

    #[test]
    fn stopping_and_confirm_prompts_are_drawn() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = vec![downloading()];
        app.arrange(&mut ts);
        app.on_key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Char('d')),
            &ts,
        );
        let s = screen(&render(&mut app, &mut ts, 100, 20));
        assert!(s.contains("Remove ubuntu.iso from the session?"), "{s}");
        assert!(s.contains("are kept"), "{s}");
        app.confirm_remove = None;
        app.stopping = true;
        let s = screen(&render(&mut app, &mut ts, 100, 20));
        assert!(s.contains("stopping…"), "{s}");
    }

    #[test]
    fn five_hundred_torrents_draw_quickly_and_tiny_terminals_do_not_panic() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts: Vec<TorrentStatus> = (0..500u32)
            .map(|i| {
                let mut t = downloading();
                t.name = format!("torrent-{i:03}");
                t.info_hash = InfoHash([
                    (i % 256) as u8,
                    (i / 256) as u8,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                ]);
                t
            })
            .collect();
        app.arrange(&mut ts);
        app.on_key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::End),
            &ts,
        );
        let start = std::time::Instant::now();
        for _ in 0..10 {
            render(&mut app, &mut ts, 160, 50);
        }
        let per_frame = start.elapsed() / 10;
        assert!(
            per_frame < std::time::Duration::from_millis(100),
            "{per_frame:?}"
        );
        // The selected row is scrolled into view.
        let s = screen(&render(&mut app, &mut ts, 160, 50));
        assert!(s.contains("torrent-499"), "{s}");
        for (w, h) in [(1, 1), (10, 3), (40, 8)] {
            render(&mut app, &mut ts, w, h);
            app.view = View::Detail;
            render(&mut app, &mut ts, w, h);
            app.view = View::List;
        }
    }

    #[test]
    fn piece_map_and_bars() {
        let mut bf = Bitfield::new(10);
        for i in 0..4 {
            bf.set(i);
        }
        let lines = piece_map(&bf, 5, 1);
        assert_eq!(lines[0].to_string(), "██···");
        let lines = piece_map(&bf, 3, 1);
        assert_eq!(lines[0].to_string(), "█▒·");
        assert_eq!(progress_bar(0.999, 4), "███░  99.9%");
        assert_eq!(progress_bar(1.0, 4), "████ 100.0%");
    }
}
