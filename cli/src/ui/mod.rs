//! Drawing the menu: a pure function of the [`App`] state and the torrents' snapshots, so it is
//! tested with ratatui's `TestBackend` (snapshots in `ui/snapshots/`). Ratatui diffs each frame
//! against the last, so redrawing several times a second writes only the cells that changed.
//!
//! Everything fits from 60×15 up: table columns drop by priority (the name stays and is cut
//! with `…`), the detail view shows one list at a time under tabs, every list scrolls with a
//! position indicator, and the footer keeps the port whole. `list.rs` draws the table,
//! `detail.rs` one torrent, `text.rs` fits text into cells.

mod detail;
mod list;
pub mod text;

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;
use zigtorrent_engine::{TorrentState, TorrentStatus};

use crate::app::{problems, App, InputKind, Problem, View};
use crate::format;
use text::{ellipsize, ellipsize_start, width, wrap};

#[cfg(test)]
use detail::piece_map;

/// Every key, by where it works (the help screen).
const HELP: &[(&str, &[(&str, &str)])] = &[
    (
        "Everywhere",
        &[
            ("?", "this help (Esc closes)"),
            (
                "a",
                "add a torrent: a path, an http(s) URL or a magnet link",
            ),
            ("p / Space", "pause or resume the selected torrent"),
            ("r", "recheck: hash its data again"),
            (
                "d / Del",
                "remove it from the session, keeping or deleting its data (asks first)",
            ),
            (
                "o",
                "sequential order on or off (for playing while downloading)",
            ),
            ("e", "every problem in full"),
            ("q / Ctrl-C", "quit (Ctrl-C twice: at once)"),
        ],
    ),
    (
        "Torrent list",
        &[
            ("↑ ↓ / j k", "select"),
            ("PgUp PgDn Home End", "select by pages, first, last"),
            ("Enter", "details of the selected torrent"),
            ("s / S", "sort by the next key (name, size, progress, state, down, up, ratio, added, queue) / reverse"),
            ("/", "filter by name or state (Esc clears)"),
        ],
    ),
    (
        "Details",
        &[
            (
                "Tab → / Shift-Tab",
                "next / previous list (files, peers, trackers, pieces)",
            ),
            ("1 2 3 4", "files, peers, trackers, pieces"),
            ("↑ ↓ PgUp PgDn Home End", "scroll the list"),
            ("[ ]", "previous / next torrent"),
            (
                "x",
                "files: skip the file under the cursor, or want it again",
            ),
            (
                "+ / -",
                "files: raise / lower its priority (skip, normal, high)",
            ),
            ("Esc ←", "back to the list"),
        ],
    ),
    (
        "Peer flags",
        &[
            ("d / D", "we want its pieces / and it lets us download"),
            ("u / U", "it wants ours / and we let it download"),
            ("s", "snubbed: it sent nothing we asked for in 30 s"),
            ("E", "the connection is encrypted (MSE/PE, RC4)"),
            ("f", "it speaks the fast extension (BEP 6)"),
            ("x", "it speaks the extension protocol (BEP 10)"),
            ("m / p", "it exchanges metadata (BEP 9) / peers (BEP 11)"),
        ],
    ),
    (
        "Prompts",
        &[
            ("Enter", "accept"),
            ("Esc", "cancel"),
            ("Ctrl-U", "clear the line"),
        ],
    ),
];

/// Draw one frame.
pub fn draw(f: &mut Frame, app: &App, torrents: &[TorrentStatus]) {
    let area = f.area();
    let [main, footer] = Layout::vertical([Constraint::Min(1), Constraint::Length(2)]).areas(area);
    match (app.view, torrents.get(app.selected)) {
        (View::Detail, Some(t)) => detail::draw(f, main, app, t),
        (View::Problems, _) => draw_problems(f, main, app, &problems(app, torrents)),
        (View::Help, _) => draw_help(f, main, app),
        _ => list::draw(f, main, app, torrents),
    }
    draw_footer(f, footer, app, torrents);
    if let Some((_, name)) = &app.confirm_remove {
        popup(
            f,
            area,
            "Remove torrent",
            &[
                format!("Remove {} from the session?", format::printable(name)),
                "y: remove, keep the data (and the .torrent file)".into(),
                "D: remove and delete the data this torrent wrote".into(),
                "any other key: cancel".into(),
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

/// A centred box over everything; lines longer than the screen are cut with `…`.
fn popup(f: &mut Frame, area: Rect, title: &str, lines: &[String]) {
    let inner_max = area.width.saturating_sub(4) as usize;
    let lines: Vec<String> = lines.iter().map(|l| ellipsize(l, inner_max)).collect();
    let width = lines
        .iter()
        .map(|l| width(l))
        .max()
        .unwrap_or(0)
        .max(width(title)) as u16
        + 4;
    let height = lines.len() as u16 + 2;
    let r = Rect {
        x: area.x + area.width.saturating_sub(width) / 2,
        y: area.y + area.height.saturating_sub(height) / 2,
        width: width.min(area.width),
        height: height.min(area.height),
    };
    f.render_widget(Clear, r);
    let text: Vec<Line> = lines.into_iter().map(Line::from).collect();
    f.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .block(Block::bordered().title(title.to_string()).bold()),
        r,
    );
}

/// `3–12 of 40` for a list showing rows `first..first+shown` of `total` (empty when all show).
pub fn position(first: usize, shown: usize, total: usize) -> String {
    if total == 0 || shown >= total {
        String::new()
    } else {
        format!(" {}–{} of {total} ", first + 1, (first + shown).min(total))
    }
}

/// The first of `height` rows to show so that row `cursor` of `total` is visible: the top
/// until the cursor passes the last row, then the cursor on the last row. Stateless, so the
/// position text and the rows drawn always agree.
pub fn scroll_offset(cursor: usize, height: usize, total: usize) -> usize {
    if height == 0 || total <= height {
        return 0;
    }
    (cursor.saturating_sub(height - 1)).min(total - height)
}

fn state_text(s: &TorrentStatus) -> String {
    if s.moving_to.is_some() {
        return "moving".into();
    }
    match &s.state {
        TorrentState::Checking { progress } => format!("check {:.0}%", progress * 100.0),
        TorrentState::Finished(goal) => format!("done ({})", goal.label()),
        other => other.label().to_string(),
    }
}

fn state_color(s: &TorrentState) -> Color {
    match s {
        TorrentState::FetchingMetadata | TorrentState::Checking { .. } => Color::Yellow,
        TorrentState::Downloading => Color::Cyan,
        TorrentState::Seeding => Color::Green,
        TorrentState::Paused | TorrentState::Queued => Color::DarkGray,
        TorrentState::Finished(_) => Color::Blue,
        TorrentState::Error(_) => Color::Red,
    }
}

/// `████░░░░  52.3%`: `width` cells of bar and the percentage.
pub fn progress_bar(fraction: f64, width: usize) -> String {
    format!("{} {}", bar(fraction, width), percent(fraction))
}

/// `████░░░░`, `width` cells; full only when complete.
pub fn bar(fraction: f64, width: usize) -> String {
    let fraction = fraction.clamp(0.0, 1.0);
    let full = (fraction * width as f64).floor() as usize;
    let full = if fraction < 1.0 {
        full.min(width.saturating_sub(1))
    } else {
        width
    };
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

/// ` 52.3%`, six cells; never `100.0%` before the last byte.
pub fn percent(fraction: f64) -> String {
    let fraction = fraction.clamp(0.0, 1.0);
    let tenths = (fraction * 1000.0).floor() / 10.0;
    format!("{tenths:>5.1}%")
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
    let left = s.wanted_bytes.saturating_sub(s.wanted_have_bytes);
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

/// The all-time ratio (uploaded ÷ the larger of downloaded and size, over every run) in at
/// most six cells: `0.25`, `12.5`, `1234`, `>9999`.
pub fn ratio(s: &TorrentStatus) -> String {
    let r = s.ratio();
    if r < 10.0 {
        format!("{r:.2}")
    } else if r < 1000.0 {
        format!("{r:.1}")
    } else if r < 10_000.0 {
        format!("{r:.0}")
    } else {
        ">9999".into()
    }
}

/// Every problem, wrapped to the screen, scrolled by whole problems.
fn draw_problems(f: &mut Frame, area: Rect, app: &App, problems: &[Problem]) {
    let inner = area.width.saturating_sub(2) as usize;
    let height = area.height.saturating_sub(2) as usize;
    let wrapped: Vec<Vec<String>> = problems
        .iter()
        .map(|p| wrap(&format!("{}: {}", p.tag, p.text), inner.saturating_sub(2)))
        .collect();
    // From the chosen problem on; near the end, earlier ones fill the screen.
    let rows_from = |i: usize| wrapped[i..].iter().map(Vec::len).sum::<usize>();
    // The last screenful starts here: scrolling further shows nothing new.
    let mut last_first = problems.len().saturating_sub(1);
    while last_first > 0 && rows_from(last_first - 1) <= height {
        last_first -= 1;
    }
    let (help_end, _) = app.scroll_ends.get();
    app.scroll_ends.set((help_end, last_first));
    let first = app.problem_row.min(last_first);
    let mut lines: Vec<Line> = Vec::new();
    let mut shown = 0;
    for (p, body) in problems.iter().zip(&wrapped).skip(first) {
        if !lines.is_empty() && lines.len() + body.len() > height {
            break;
        }
        let color = if p.tag == "note" {
            Color::Yellow
        } else {
            Color::Red
        };
        for (j, l) in body.iter().enumerate() {
            if j == 0 {
                lines.push(Line::from(l.clone()).fg(color));
            } else {
                lines.push(Line::from(format!("  {l}")));
            }
        }
        shown += 1;
    }
    if problems.is_empty() {
        lines.push(Line::from("No problems.").italic());
    }
    f.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(format!(" Problems ({}) ", problems.len()))
                .title_top(Line::from(position(first, shown, problems.len())).right_aligned())
                .title_bottom(" ↑↓ scroll  Esc back "),
        ),
        area,
    );
}

/// Key column of the help screen, in cells.
const HELP_KEYS: usize = 24;

/// The help text for `width` cells: descriptions wrap under themselves.
fn help_lines(width: usize) -> Vec<Line<'static>> {
    let room = width.saturating_sub(HELP_KEYS + 2).max(10);
    let mut lines = Vec::new();
    for (section, keys) in HELP {
        if !lines.is_empty() {
            lines.push(Line::from(""));
        }
        lines.push(Line::from(*section).bold());
        for (k, what) in *keys {
            for (i, part) in wrap(what, room).into_iter().enumerate() {
                let key = if i == 0 { *k } else { "" };
                lines.push(Line::from(vec![
                    Span::raw(format!("  {key:<w$}", w = HELP_KEYS - 2)).fg(Color::Cyan),
                    Span::raw(part),
                ]));
            }
        }
    }
    lines
}

fn draw_help(f: &mut Frame, area: Rect, app: &App) {
    let lines = help_lines(area.width.saturating_sub(2) as usize);
    let height = area.height.saturating_sub(2) as usize;
    let last_first = lines.len().saturating_sub(height.max(1));
    let (_, problems_end) = app.scroll_ends.get();
    app.scroll_ends.set((last_first, problems_end));
    let first = app.help_row.min(last_first);
    let shown = lines.len().saturating_sub(first).min(height);
    f.render_widget(
        Paragraph::new(lines.clone())
            .scroll((first as u16, 0))
            .block(
                Block::bordered()
                    .title(" Keys ")
                    .title_top(Line::from(position(first, shown, lines.len())).right_aligned())
                    .title_bottom(" ↑↓ scroll  Esc back "),
            ),
        area,
    );
}

/// Line one: totals, counts and the port (always whole). Line two: the prompt, or the last
/// message and the key hints.
fn draw_footer(f: &mut Frame, area: Rect, app: &App, torrents: &[TorrentStatus]) {
    let [top, bottom] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let (down, up) = torrents
        .iter()
        .fold((0, 0), |(d, u), t| (d + t.download_rate, u + t.upload_rate));
    let limit = |l: u64| {
        if l == 0 {
            String::new()
        } else {
            format!(" (max {})", format::rate(l))
        }
    };
    let rates = format!(
        "↓ {}{}  ↑ {}{}",
        format::rate_short(down),
        limit(app.limits.0),
        format::rate_short(up),
        limit(app.limits.1)
    );
    let mut counts = [0usize; 7];
    for t in torrents {
        let i = match t.state {
            TorrentState::Downloading | TorrentState::FetchingMetadata => 0,
            TorrentState::Seeding => 1,
            TorrentState::Checking { .. } => 2,
            TorrentState::Queued => 3,
            TorrentState::Paused => 4,
            TorrentState::Finished(_) => 5,
            TorrentState::Error(_) => 6,
        };
        counts[i] += 1;
    }
    // Only what there is: each count is one kind of thing (torrent states; bad files apart).
    let bad_files = app.notes.iter().filter(|n| n.error).count();
    let mut parts: Vec<String> = [
        (counts[0], "downloading"),
        (counts[1], "seeding"),
        (counts[2], "checking"),
        (counts[3], "queued"),
        (counts[4], "paused"),
        (counts[5], "done"),
        (counts[6], "in error"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, label)| format!("{n} {label}"))
    .collect();
    if torrents.is_empty() {
        parts.push("no torrents".into());
    }
    if bad_files > 0 {
        parts.push(format!(
            "{bad_files} bad file{}",
            if bad_files == 1 { "" } else { "s" }
        ));
    }
    let port = format!(" port {} ({})", app.listen_port, app.transport);
    let left_room = (top.width as usize).saturating_sub(width(&port));
    let left = ellipsize(&format!("{rates} │ {}", parts.join(", ")), left_room);
    let [l, r] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(width(&port).min(top.width as usize) as u16),
    ])
    .areas(top);
    f.render_widget(Paragraph::new(left), l);
    f.render_widget(Paragraph::new(port).alignment(Alignment::Right), r);

    if let Some(input) = &app.input {
        let (label, hint) = match input.kind {
            InputKind::Add => ("add (path, URL or magnet): ", "  Enter add  Esc cancel"),
            InputKind::Filter => ("filter: ", "  Enter keep  Esc clear"),
            InputKind::Goals(_) => (
                "seed until ratio, minutes (0 none, - default): ",
                "  Enter set  Esc cancel",
            ),
        };
        let room = (bottom.width as usize).saturating_sub(width(label) + width(hint) + 1);
        // The end of what is typed stays in view.
        let typed = ellipsize_start(&format::printable(&input.text), room);
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::raw(label).bold(),
                Span::raw(typed),
                Span::raw("█").add_modifier(Modifier::SLOW_BLINK),
                Span::raw(hint).dim(),
            ])),
            bottom,
        );
        return;
    }
    let hints = match app.view {
        View::List => "? help  a add  Enter details  p pause  r recheck  d remove  s sort  / filter  q quit",
        View::Detail => "? help  Tab next list  ↑↓ scroll  [ ] other torrent  Esc back  p pause  r recheck  q quit",
        View::Problems | View::Help => "↑↓ scroll  Esc back",
    };
    let line = match &app.message {
        Some(m) => {
            let m = ellipsize(
                &format::printable(m),
                (bottom.width as usize).saturating_sub(10),
            );
            let rest = (bottom.width as usize).saturating_sub(width(&m) + 3);
            Line::from(vec![
                Span::raw(m).style(Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(" │ ").dim(),
                Span::raw(ellipsize(hints, rest)).dim(),
            ])
        }
        None => Line::from(ellipsize(hints, bottom.width as usize)).dim(),
    };
    f.render_widget(Paragraph::new(line), bottom);
}

#[cfg(test)]
mod tests;
