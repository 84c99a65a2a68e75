//! One torrent: a head with its numbers, then one list at a time under tabs (files, peers,
//! trackers, pieces), each scrolling with a position indicator. A tall terminal also shows the
//! rate graphs and the piece map above the tabs.

use std::time::Instant;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, TableState, Tabs};
use ratatui::Frame;
use zigtorrent_engine::tracker::TrackerResult;
use zigtorrent_engine::{
    Bitfield, Encryption, FilePriority, PeerStatus, TorrentState, TorrentStatus,
};

use super::text::{ellipsize, ellipsize_start, fit_columns, wrap, Column};
use super::{
    bar, eta, percent, position, progress_bar, ratio, scroll_offset, size_text, state_color,
    state_text,
};
use crate::app::{tab_len, App, Tab};
use crate::format::{self, printable};

/// Below this many rows, the head keeps only its first two lines.
const COMPACT: u16 = 18;

/// From this many rows, graphs and the piece map are shown above the tabs as well.
const TALL: u16 = 40;

pub(super) fn draw(f: &mut Frame, area: Rect, app: &App, t: &TorrentStatus) {
    let mut head_lines = head(t, area.width.saturating_sub(2) as usize);
    if area.height < COMPACT {
        // Room for the list: the totals and the info-hash wait for a taller terminal.
        head_lines.drain(2..4);
    }
    let head_height = head_lines.len() as u16 + 2;
    let tall = area.height >= TALL;
    let extra = if tall { 10 } else { 0 };
    let [head_area, extra_area, tabs_area, body] = Layout::vertical([
        Constraint::Length(head_height),
        Constraint::Length(extra),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(head_lines).block(
            Block::bordered()
                .title(ellipsize(
                    &format!(" {} ", printable(&t.name)),
                    area.width.saturating_sub(4) as usize,
                ))
                .bold(),
        ),
        head_area,
    );
    if tall {
        let [graphs, map] =
            Layout::vertical([Constraint::Length(5), Constraint::Length(5)]).areas(extra_area);
        draw_graphs(f, graphs, app, t);
        draw_map(f, map, t);
    }
    let titles = Tab::ALL.iter().enumerate().map(|(i, tab)| {
        let name = match tab {
            Tab::Files => format!("{} Files ({})", i + 1, t.files.len()),
            Tab::Peers => format!("{} Peers ({})", i + 1, t.peers.len()),
            Tab::Trackers => format!("{} Trackers ({})", i + 1, t.trackers.len()),
            Tab::Pieces => format!("{} Pieces", i + 1),
        };
        Line::from(name)
    });
    let selected = Tab::ALL.iter().position(|x| *x == app.tab).unwrap_or(0);
    f.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD))
            .divider("│"),
        tabs_area,
    );
    let cursor = app.tab_rows[selected].min(tab_len(t, app.tab).saturating_sub(1));
    match app.tab {
        Tab::Files => draw_files(f, body, t, cursor),
        Tab::Peers => draw_peers(f, body, t, cursor),
        Tab::Trackers => draw_trackers(f, body, t, cursor),
        Tab::Pieces => {
            let [graphs, map] =
                Layout::vertical([Constraint::Length(5), Constraint::Min(3)]).areas(body);
            draw_graphs(f, graphs, app, t);
            draw_map(f, map, t);
        }
    }
}

/// The head's lines, cut to `width` cells.
fn head(t: &TorrentStatus, width: usize) -> Vec<Line<'static>> {
    let mut lines = vec![
        Line::from(vec![
            Span::raw(state_text(t)).fg(state_color(&t.state)).bold(),
            Span::raw(ellipsize(
                &format!(
                    "  {}  {}  pieces {}/{}{}",
                    progress_bar(t.wanted_progress(), 10),
                    amounts(t),
                    t.pieces_have,
                    t.pieces_total,
                    if t.sequential { "  in order" } else { "" }
                ),
                width.saturating_sub(state_text(t).len()),
            )),
        ]),
        Line::from(ellipsize(
            &format!(
                "↓ {}  ↑ {}  ratio {}  ETA {}  peers {}/{}",
                format::rate(t.download_rate),
                format::rate(t.upload_rate),
                ratio(t),
                eta(t),
                t.peers_connected,
                t.peers_known
            ),
            width,
        )),
        Line::from(ellipsize(
            &format!(
                "all time: down {}  up {}  seeding {}  goals {}  queue #{}  wasted {}",
                format::bytes(t.all_time_downloaded),
                format::bytes(t.all_time_uploaded),
                duration(t.seeding_time),
                goals(t),
                t.queue_position + 1,
                format::bytes(t.wasted),
            ),
            width,
        )),
        Line::from(ellipsize(&format!("info-hash {}", t.info_hash), width)).dim(),
    ];
    if let Some(to) = &t.moving_to {
        lines.push(Line::from(ellipsize_start(
            &printable(&format!("moving its files to {}", to.display())),
            width,
        )));
    } else if !t.download_dir.as_os_str().is_empty() {
        lines.push(
            Line::from(ellipsize_start(
                &printable(&format!("in {}", t.download_dir.display())),
                width,
            ))
            .dim(),
        );
    }
    if let TorrentState::Error(e) = &t.state {
        for l in wrap(
            &printable(&format!("error: {e} (fix it, then press r to recheck)")),
            width,
        )
        .into_iter()
        .take(3)
        {
            lines.push(Line::from(l).fg(Color::Red));
        }
    }
    lines
}

/// `3d04h`, `2h05m`, `12m`.
fn duration(d: std::time::Duration) -> String {
    let m = d.as_secs() / 60;
    match m {
        0..=59 => format!("{m}m"),
        60..=1439 => format!("{}h{:02}m", m / 60, m % 60),
        _ => format!("{}d{:02}h", m / 1440, m % 1440 / 60),
    }
}

/// The torrent's own seeding goals: `ratio 2, 90 min`, `default`.
fn goals(t: &TorrentStatus) -> String {
    use zigtorrent_engine::Goal;
    let ratio = match t.seed_goals.ratio {
        Goal::Global => "default".to_string(),
        Goal::Off => "none".to_string(),
        Goal::Value(r) => format!("{r}"),
    };
    let time = match t.seed_goals.time {
        Goal::Global => "default".to_string(),
        Goal::Off => "none".to_string(),
        Goal::Value(d) => duration(d),
    };
    format!("ratio {ratio}, time {time}")
}

/// `2.0 GiB of 4.0 GiB`, or with files skipped `1.0 GiB of 2.0 GiB wanted (4.0 GiB in all)`.
fn amounts(t: &TorrentStatus) -> String {
    if t.state == TorrentState::FetchingMetadata || t.wanted_bytes >= t.total_bytes {
        format!("{} of {}", format::bytes(t.have_bytes), size_text(t))
    } else {
        format!(
            "{} of {} wanted ({} in all)",
            format::bytes(t.wanted_have_bytes),
            format::bytes(t.wanted_bytes),
            format::bytes(t.total_bytes)
        )
    }
}

/// A scrolling table in `area` with a position indicator; `rows` already cut to their widths.
fn scrolling_table<'a>(
    f: &mut Frame,
    area: Rect,
    title: String,
    header: Vec<&'static str>,
    widths: Vec<Constraint>,
    rows: Vec<Row<'a>>,
    cursor: usize,
) {
    let total = rows.len();
    let height = area.height.saturating_sub(3) as usize;
    let offset = scroll_offset(cursor, height, total);
    let mut state = TableState::default()
        .with_offset(offset)
        .with_selected((total > 0).then_some(cursor));
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(Row::new(header.into_iter().map(|h| Cell::from(h).bold())))
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
            .column_spacing(1)
            .block(
                Block::bordered()
                    .title(ellipsize(&title, area.width.saturating_sub(14) as usize))
                    .title_top(Line::from(position(offset, height, total)).right_aligned()),
            ),
        area,
        &mut state,
    );
}

/// Fit `columns` into `area`'s inside; the widths and the flexible column's width.
fn fit(columns: &[Column], area: Rect) -> (Vec<(usize, u16)>, usize) {
    let fitted = fit_columns(columns, area.width.saturating_sub(2), 1);
    let flex = fitted
        .iter()
        .find(|(i, _)| columns[*i].flexible)
        .map_or(0, |&(_, w)| w as usize);
    (fitted, flex)
}

const FILE_COLUMNS: [Column; 5] = [
    Column {
        title: "File",
        width: 16,
        priority: 0,
        flexible: true,
    },
    Column {
        title: "Prio",
        width: 6,
        priority: 2,
        flexible: false,
    },
    Column {
        title: "Size",
        width: 10,
        priority: 3,
        flexible: false,
    },
    Column {
        title: "Done",
        width: 6,
        priority: 1,
        flexible: false,
    },
    Column {
        title: "",
        width: 10,
        priority: 4,
        flexible: false,
    },
];

fn draw_files(f: &mut Frame, area: Rect, t: &TorrentStatus, cursor: usize) {
    let (fitted, name_w) = fit(&FILE_COLUMNS, area);
    let rows = t
        .files
        .iter()
        .map(|file| {
            let frac = if file.length == 0 {
                1.0
            } else {
                file.have_bytes as f64 / file.length as f64
            };
            let row = Row::new(fitted.iter().map(|&(i, _)| match i {
                0 => Cell::from(ellipsize_start(
                    &printable(&file.path.display().to_string()),
                    name_w,
                )),
                1 => Cell::from(file.priority.label()),
                2 => Cell::from(format::bytes(file.length)),
                3 => Cell::from(percent(frac)),
                _ => Cell::from(bar(frac, 10)),
            }));
            if file.priority == FilePriority::Skip {
                row.style(Style::default().add_modifier(Modifier::DIM))
            } else {
                row
            }
        })
        .collect();
    let title = if t.state == TorrentState::FetchingMetadata {
        " files: not known until the metadata arrives ".to_string()
    } else {
        format!(
            " files ({}; x skip, +/- priority, o in order) ",
            t.files.len()
        )
    };
    scrolling_table(
        f,
        area,
        title,
        fitted.iter().map(|&(i, _)| FILE_COLUMNS[i].title).collect(),
        fitted.iter().map(|&(_, w)| Constraint::Length(w)).collect(),
        rows,
        cursor,
    );
}

const PEER_COLUMNS: [Column; 7] = [
    Column {
        title: "Address",
        width: 21,
        priority: 0,
        flexible: false,
    },
    Column {
        title: "Via",
        width: 7,
        priority: 5,
        flexible: false,
    },
    Column {
        title: "Client",
        width: 10,
        priority: 1,
        flexible: true,
    },
    Column {
        title: "Down",
        width: 10,
        priority: 2,
        flexible: false,
    },
    Column {
        title: "Up",
        width: 10,
        priority: 3,
        flexible: false,
    },
    Column {
        title: "Has",
        width: 6,
        priority: 4,
        flexible: false,
    },
    Column {
        title: "Flags",
        width: 8,
        priority: 6,
        flexible: false,
    },
];

fn draw_peers(f: &mut Frame, area: Rect, t: &TorrentStatus, cursor: usize) {
    let (fitted, client_w) = fit(&PEER_COLUMNS, area);
    let mut peers: Vec<&PeerStatus> = t.peers.iter().collect();
    peers.sort_by_key(|p| std::cmp::Reverse(p.download_rate + p.upload_rate));
    let rows = peers
        .iter()
        .map(|p| {
            Row::new(fitted.iter().map(|&(i, w)| match i {
                0 => Cell::from(ellipsize(&p.addr.to_string(), w as usize)),
                1 => Cell::from(format!(
                    "{} {}",
                    p.transport,
                    if p.outgoing { "out" } else { "in" }
                )),
                2 => Cell::from(ellipsize(&printable(&p.client), client_w)),
                3 => Cell::from(format::rate_short(p.download_rate)),
                4 => Cell::from(format::rate_short(p.upload_rate)),
                5 => Cell::from(percent(p.progress as f64)),
                _ => Cell::from(peer_flags(p)),
            }))
        })
        .collect();
    let title = if t.peers.is_empty() {
        format!(" peers: none connected, {} known ", t.peers_known)
    } else {
        format!(
            " peers ({} connected, {} known; flags: ? help) ",
            t.peers_connected, t.peers_known
        )
    };
    scrolling_table(
        f,
        area,
        title,
        fitted.iter().map(|&(i, _)| PEER_COLUMNS[i].title).collect(),
        fitted.iter().map(|&(_, w)| Constraint::Length(w)).collect(),
        rows,
        cursor,
    );
}

const TRACKER_COLUMNS: [Column; 5] = [
    Column {
        title: "Tracker",
        width: 20,
        priority: 0,
        flexible: true,
    },
    Column {
        title: "Tier",
        width: 4,
        priority: 3,
        flexible: false,
    },
    Column {
        title: "Last result",
        width: 18,
        priority: 1,
        flexible: false,
    },
    Column {
        title: "Last",
        width: 8,
        priority: 2,
        flexible: false,
    },
    Column {
        title: "Next",
        width: 8,
        priority: 4,
        flexible: false,
    },
];

fn draw_trackers(f: &mut Frame, area: Rect, t: &TorrentStatus, cursor: usize) {
    let (fitted, url_w) = fit(&TRACKER_COLUMNS, area);
    let now = Instant::now();
    let next = t
        .next_announce
        .map(|n| format!("in {}s", n.saturating_duration_since(now).as_secs()))
        .unwrap_or_else(|| "-".into());
    let rows = t
        .trackers
        .iter()
        .map(|tr| {
            let (text, color) = match &tr.last_result {
                TrackerResult::Never => ("not yet".to_string(), Color::DarkGray),
                TrackerResult::Ok { peers } => (format!("ok, {peers} peers"), Color::Green),
                TrackerResult::Error(e) => (format!("error: {}", printable(e)), Color::Red),
            };
            let ago = tr
                .last_announce
                .map(|a| format!("{}s ago", now.saturating_duration_since(a).as_secs()))
                .unwrap_or_else(|| "-".into());
            Row::new(fitted.iter().map(|&(i, w)| match i {
                0 => Cell::from(ellipsize(&printable(&tr.url), url_w)),
                1 => Cell::from(format!("{}", tr.tier + 1)),
                2 => Cell::from(ellipsize(&text, w as usize)).fg(color),
                3 => Cell::from(ago.clone()),
                _ => Cell::from(next.clone()),
            }))
        })
        .collect();
    let title = if t.trackers.is_empty() {
        " trackers: none (peers come from the DHT, PEX, LSD or --peer) ".to_string()
    } else {
        format!(" trackers ({}) ", t.trackers.len())
    };
    scrolling_table(
        f,
        area,
        title,
        fitted
            .iter()
            .map(|&(i, _)| TRACKER_COLUMNS[i].title)
            .collect(),
        fitted.iter().map(|&(_, w)| Constraint::Length(w)).collect(),
        rows,
        cursor,
    );
}

fn draw_graphs(f: &mut Frame, area: Rect, app: &App, t: &TorrentStatus) {
    let [down_area, up_area] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(area);
    let hist = app.history.get(&t.info_hash);
    for (area, data, label, color) in [
        (down_area, hist.map(|h| h.down.clone()), "down", Color::Cyan),
        (up_area, hist.map(|h| h.up.clone()), "up", Color::Green),
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
                .block(Block::bordered().title(ellipsize(
                    &format!(" {label}, last minute, peak {} ", format::rate(peak)),
                    width,
                ))),
            area,
        );
    }
}

fn draw_map(f: &mut Frame, area: Rect, t: &TorrentStatus) {
    let inner = Rect {
        width: area.width.saturating_sub(2),
        height: area.height.saturating_sub(2),
        ..area
    };
    f.render_widget(
        Paragraph::new(piece_map(
            &t.pieces,
            inner.width as usize,
            inner.height as usize,
        ))
        .block(Block::bordered().title(ellipsize(
            &format!(
                " pieces: {} of {} (█ have, ▒ some, · none) ",
                t.pieces_have, t.pieces_total
            ),
            inner.width as usize,
        ))),
        area,
    );
}

/// Flags in the libtorrent/Transmission spirit: `d` we are interested (`D` and unchoked by
/// them), `u` they are interested (`U` and unchoked by us), `s` snubbed; `E` the connection is
/// RC4-encrypted (MSE/PE, as Transmission marks it); then the extensions it speaks: `f` fast
/// (BEP 6), `x` extension protocol (BEP 10), `m` metadata exchange (BEP 9), `p` peer exchange
/// (BEP 11).
pub(super) fn peer_flags(p: &PeerStatus) -> String {
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
    if p.encryption == Encryption::Rc4 {
        s.push('E');
    }
    let ext = &p.extensions;
    for (on, c) in [
        (ext.fast, 'f'),
        (ext.extension_protocol, 'x'),
        (ext.ut_metadata, 'm'),
        (ext.ut_pex, 'p'),
    ] {
        if on {
            s.push(c);
        }
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
