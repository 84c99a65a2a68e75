//! The table of torrents: columns by priority, the name never dropped and cut with `…`, the
//! folders in the frame, the empty-state hint, and a short problems box.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use ratatui::Frame;
use zigtorrent_engine::TorrentStatus;

use super::text::{ellipsize, ellipsize_start, fit_columns, wrap, Column};
use super::{
    bar, eta, percent, position, ratio, scroll_offset, size_text, state_color, state_text,
};
use crate::app::{problems, App, SortKey};
use crate::format::{self, printable};

/// The columns, in display order. Priorities: what a user looks at first stays longest.
const COLUMNS: [Column; 10] = [
    Column {
        title: "Name",
        width: 12,
        priority: 0,
        flexible: true,
    },
    Column {
        title: "Size",
        width: 10,
        priority: 6,
        flexible: false,
    },
    Column {
        title: "",
        width: 10,
        priority: 9,
        flexible: false,
    },
    Column {
        title: "Done",
        width: 6,
        priority: 1,
        flexible: false,
    },
    Column {
        title: "State",
        width: 11,
        priority: 2,
        flexible: false,
    },
    Column {
        title: "Down",
        width: 10,
        priority: 3,
        flexible: false,
    },
    Column {
        title: "Up",
        width: 10,
        priority: 4,
        flexible: false,
    },
    Column {
        title: "ETA",
        width: 6,
        priority: 5,
        flexible: false,
    },
    Column {
        title: "Peers",
        width: 7,
        priority: 7,
        flexible: false,
    },
    Column {
        title: "Ratio",
        width: 6,
        priority: 8,
        flexible: false,
    },
];
const NAME: usize = 0;
const BAR: usize = 2;

/// Which column shows each sort key (for the ▲▼ mark).
fn sort_column(key: SortKey) -> Option<usize> {
    Some(match key {
        SortKey::Name => 0,
        SortKey::Size => 1,
        SortKey::Progress => 3,
        SortKey::State => 4,
        SortKey::Down => 5,
        SortKey::Up => 6,
        SortKey::Ratio => 9,
        SortKey::Added | SortKey::Queue => return None,
    })
}

/// The name column gets at least a third of the width: a table of anonymous numbers is
/// useless, so numbers go first.
fn name_share(available: u16) -> u16 {
    (available / 3).max(COLUMNS[NAME].width)
}

/// Rows the problems box gets: few on a small screen (`e` shows them all).
fn problem_rows(area: Rect, count: usize) -> u16 {
    if count == 0 {
        return 0;
    }
    let cap = if area.height >= 30 { 6 } else { 2 };
    (count as u16).min(cap) + 2
}

pub(super) fn draw(f: &mut Frame, area: Rect, app: &App, torrents: &[TorrentStatus]) {
    let problems = problems(app, torrents);
    let box_rows = problem_rows(area, problems.len());
    let [table_area, problem_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(box_rows)]).areas(area);

    let available = table_area.width.saturating_sub(2);
    let mut cols = COLUMNS;
    cols[NAME].width = name_share(available).min(available);
    let fitted = fit_columns(&cols, available, 1);
    let sorted = sort_column(app.sort);
    let mark = if app.sort_reversed == (app.sort == SortKey::Name) {
        "▼"
    } else {
        "▲"
    };
    let header = Row::new(fitted.iter().map(|&(i, _)| {
        let title = if Some(i) == sorted {
            format!("{}{mark}", COLUMNS[i].title)
        } else {
            COLUMNS[i].title.to_string()
        };
        Cell::from(title).bold()
    }));
    let name_width = fitted
        .iter()
        .find(|(i, _)| *i == NAME)
        .map_or(0, |&(_, w)| w as usize);
    let rows = torrents.iter().map(|t| {
        Row::new(fitted.iter().map(|&(i, _)| match i {
            0 => Cell::from(ellipsize(&printable(&t.name), name_width)),
            1 => Cell::from(size_text(t)),
            BAR => Cell::from(bar(t.wanted_progress(), 10)),
            3 => Cell::from(percent(t.wanted_progress())),
            4 => Cell::from(state_text(t)).fg(state_color(&t.state)),
            5 => Cell::from(format::rate_short(t.download_rate)),
            6 => Cell::from(format::rate_short(t.upload_rate)),
            7 => Cell::from(eta(t)),
            8 => Cell::from(format!("{}/{}", t.peers_connected, t.peers_known)),
            _ => Cell::from(ratio(t)),
        }))
    });
    let widths: Vec<Constraint> = fitted.iter().map(|&(_, w)| Constraint::Length(w)).collect();

    let shown_rows = table_area.height.saturating_sub(3) as usize;
    let offset = scroll_offset(app.selected, shown_rows, torrents.len());
    let mut title = format!(" ZigTorrent — {} torrents ", app.unfiltered);
    if sorted.is_none() {
        title = format!(
            " ZigTorrent — {} torrents, by {}{} ",
            app.unfiltered,
            app.sort.label(),
            if app.sort_reversed { ", reversed" } else { "" }
        );
    }
    if !app.filter.is_empty() {
        title = format!(
            " ZigTorrent — {} of {} match “{}” ",
            torrents.len(),
            app.unfiltered,
            printable(&app.filter)
        );
    }
    let folders = if app.folders.watch.as_os_str().is_empty() {
        String::new()
    } else {
        let text = format!(
            " {} → {} ",
            app.folders.watch.display(),
            app.folders.downloads.display()
        );
        ellipsize_start(&text, available.saturating_sub(2) as usize)
    };
    let table = Table::new(rows, widths)
        .header(header)
        .block(
            Block::bordered()
                .title(ellipsize(&title, available as usize))
                .title_top(Line::from(position(offset, shown_rows, torrents.len())).right_aligned())
                .title_bottom(Line::from(printable(&folders).into_owned()).dim()),
        )
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .column_spacing(1);
    let mut state = TableState::default()
        .with_offset(offset)
        .with_selected((!torrents.is_empty()).then_some(app.selected));
    f.render_stateful_widget(table, table_area, &mut state);

    if torrents.is_empty() && table_area.height > 3 {
        let hint = Rect {
            x: table_area.x + 2,
            y: table_area.y + 2,
            width: table_area.width.saturating_sub(4),
            height: table_area.height.saturating_sub(3),
        };
        let text = if app.unfiltered > 0 {
            format!(
                "Nothing matches “{}”. Esc clears the filter.",
                printable(&app.filter)
            )
        } else {
            format!(
                "No torrents yet. Drop .torrent or .magnet files into {} or press a to add a path, URL or magnet link.",
                printable(&app.folders.watch.display().to_string())
            )
        };
        let lines: Vec<Line> = wrap(&text, hint.width as usize)
            .into_iter()
            .map(Line::from)
            .collect();
        f.render_widget(Paragraph::new(lines).italic(), hint);
    }

    if !problems.is_empty() {
        let inner = problem_area.width.saturating_sub(2) as usize;
        let rows = problem_area.height.saturating_sub(2) as usize;
        let lines: Vec<Line> = problems
            .iter()
            .take(rows)
            .map(|p| {
                Line::from(vec![
                    Span::raw(format!("{}: ", p.tag)).bold(),
                    Span::raw(ellipsize(&p.text, inner.saturating_sub(p.tag.len() + 2))),
                ])
            })
            .collect();
        let more = problems.len().saturating_sub(rows);
        let title = if more > 0 {
            format!(" Problems ({}, {more} more: e shows all) ", problems.len())
        } else {
            format!(" Problems ({}) ", problems.len())
        };
        f.render_widget(
            Paragraph::new(lines).block(
                Block::bordered()
                    .title(ellipsize(&title, inner))
                    .fg(Color::Red),
            ),
            problem_area,
        );
    }
}
