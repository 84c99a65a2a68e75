//! The menu's state and key handling, apart from any terminal: what is selected, which view is
//! open, sorting and filtering, the text prompt, the confirm prompt, problems reported by the
//! watch folder, and a minute of rate history. `ui/` draws it; `tui.rs` feeds it keys and
//! snapshots and carries out its actions.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::time::Duration;

use zigtorrent_engine::{
    FilePriority, Goal, InfoHash, QueueMove, SeedGoals, TorrentState, TorrentStatus,
};

use crate::format::printable;
use crate::watch::FolderEvent;

/// Rate samples kept (one a second: the last minute).
pub const HISTORY_LEN: usize = 60;

/// Rows PageUp/PageDown move.
const PAGE: isize = 10;

/// More rows than the help screen has at any width (until it is first drawn).
const HELP_ROWS_MAX: usize = 200;

/// Longest text the prompt takes (a magnet link with many trackers is a few KiB).
const MAX_INPUT: usize = 8 * 1024;

/// Which screen is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The table of torrents.
    List,
    /// Everything about the selected torrent.
    Detail,
    /// Every problem, in full.
    Problems,
    /// Every key.
    Help,
}

/// The lists of the detail view, one shown at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// The torrent's files.
    Files,
    /// Connected peers.
    Peers,
    /// Trackers and their last results.
    Trackers,
    /// Rate graphs and the piece map.
    Pieces,
}

impl Tab {
    /// In the order of the tab bar.
    pub const ALL: [Tab; 4] = [Tab::Files, Tab::Peers, Tab::Trackers, Tab::Pieces];

    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// What the torrent list is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Name, A to Z.
    Name,
    /// Total size, largest first.
    Size,
    /// Fraction verified, most first.
    Progress,
    /// Download rate, fastest first.
    Down,
    /// Upload rate, fastest first.
    Up,
    /// Uploaded ÷ downloaded, highest first.
    Ratio,
    /// Lifecycle state.
    State,
    /// When it was added, newest first.
    Added,
    /// Place in the download and seed queue, first first.
    Queue,
}

impl SortKey {
    /// In the order `s` steps through them.
    pub const ALL: [SortKey; 9] = [
        SortKey::Name,
        SortKey::Size,
        SortKey::Progress,
        SortKey::State,
        SortKey::Down,
        SortKey::Up,
        SortKey::Ratio,
        SortKey::Added,
        SortKey::Queue,
    ];

    /// As the list's header and the help name it.
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Size => "size",
            SortKey::Progress => "progress",
            SortKey::Down => "down",
            SortKey::Up => "up",
            SortKey::Ratio => "ratio",
            SortKey::State => "state",
            SortKey::Added => "added",
            SortKey::Queue => "queue",
        }
    }

    fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }
}

/// What the one-line text prompt is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A path, URL or magnet link to add.
    Add,
    /// Text the list is filtered by (applied as it is typed).
    Filter,
    /// A torrent's seeding goals: `RATIO MINUTES`, each a number, `0` (none) or `-` (the
    /// session's default).
    Goals(InfoHash),
}

/// The text prompt in the footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// What Enter does with the text.
    pub kind: InputKind,
    /// Typed so far.
    pub text: String,
}

/// A problem with a file in the watch folder, shown until it is fixed or removed.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderNote {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (or which file it duplicates).
    pub text: String,
    /// An error (true) or only a notice, such as a duplicate (false).
    pub error: bool,
}

/// What the user asked for that the session must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Pause it if running, resume it if paused.
    TogglePause(InfoHash),
    /// Hash all its data again.
    Recheck(InfoHash),
    /// Take it out of the session (data stays).
    Remove(InfoHash),
    /// Take it out of the session and delete the data it wrote.
    RemoveWithData(InfoHash),
    /// New priorities for all its files (one per file, in order).
    SetPriorities(InfoHash, Vec<FilePriority>),
    /// Turn sequential download on or off.
    SetSequential(InfoHash, bool),
    /// Move it in the queue.
    QueueMove(InfoHash, QueueMove),
    /// Its own seeding goals.
    SetGoals(InfoHash, SeedGoals),
    /// Add a torrent from a path, URL or magnet link.
    Add(String),
    /// Stop gracefully.
    Quit,
    /// Second Ctrl-C while stopping: leave now.
    ForceQuit,
}

/// Per-torrent and total rate history.
#[derive(Default)]
pub struct History {
    /// Download rates, oldest first.
    pub down: VecDeque<u64>,
    /// Upload rates, oldest first.
    pub up: VecDeque<u64>,
}

impl History {
    fn push(&mut self, down: u64, up: u64) {
        for (q, v) in [(&mut self.down, down), (&mut self.up, up)] {
            if q.len() == HISTORY_LEN {
                q.pop_front();
            }
            q.push_back(v);
        }
    }
}

/// The folders the session works on, absolute, for the menu to show.
#[derive(Clone, Debug, Default)]
pub struct Folders {
    /// Where `.torrent` and `.magnet` files are picked up.
    pub watch: PathBuf,
    /// Where data goes.
    pub downloads: PathBuf,
}

/// The menu's state.
pub struct App {
    /// Current screen.
    pub view: View,
    /// Where Esc goes back to from the help and problems screens.
    pub back: View,
    /// Selected row of the table.
    pub selected: usize,
    /// The selected torrent: the selection follows it when rows move, and comes back to it when
    /// it reappears (a recheck takes it out of the session for a moment).
    pub selected_hash: Option<InfoHash>,
    /// A torrent waiting for the user to confirm its removal.
    pub confirm_remove: Option<(InfoHash, String)>,
    /// Quitting: flushing and announcing `stopped`.
    pub stopping: bool,
    /// Watch-folder problems, by file.
    pub notes: Vec<FolderNote>,
    /// Rate history per torrent.
    pub history: HashMap<InfoHash, History>,
    /// Rate history of the whole session.
    pub total_history: History,
    /// One line about the last thing done (shown in the footer).
    pub message: Option<String>,
    /// Port the session listens on.
    pub listen_port: u16,
    /// Transport name.
    pub transport: String,
    /// Session rate limits (download, upload) in bytes/s, 0: none.
    pub limits: (u64, u64),
    /// The watch and download folders.
    pub folders: Folders,
    /// What the list is sorted by.
    pub sort: SortKey,
    /// Sorted the other way round from the key's natural order.
    pub sort_reversed: bool,
    /// Only torrents whose name or state contains this (case-insensitive) are listed.
    pub filter: String,
    /// The text prompt, while one is open.
    pub input: Option<Input>,
    /// Torrents in the session before filtering (for "3 of 9").
    pub unfiltered: usize,
    /// Open tab of the detail view.
    pub tab: Tab,
    /// Cursor row in each detail tab.
    pub tab_rows: [usize; 4],
    /// First problem shown in the problems screen.
    pub problem_row: usize,
    /// First line shown in the help screen.
    pub help_row: usize,
    /// The largest useful first rows of the help and problems screens, as last drawn (they
    /// depend on the terminal's size): scrolling stops there.
    pub scroll_ends: std::cell::Cell<(usize, usize)>,
}

impl App {
    /// A fresh menu.
    pub fn new(listen_port: u16, transport: String) -> Self {
        App {
            view: View::List,
            back: View::List,
            selected: 0,
            selected_hash: None,
            confirm_remove: None,
            stopping: false,
            notes: Vec::new(),
            history: HashMap::new(),
            total_history: History::default(),
            message: None,
            listen_port,
            transport,
            limits: (0, 0),
            folders: Folders::default(),
            sort: SortKey::Name,
            sort_reversed: false,
            filter: String::new(),
            input: None,
            unfiltered: 0,
            tab: Tab::Files,
            tab_rows: [0; 4],
            problem_row: 0,
            help_row: 0,
            scroll_ends: std::cell::Cell::new((HELP_ROWS_MAX, usize::MAX)),
        }
    }

    /// Filter and sort the torrents the way the table shows them, and keep the selection on
    /// its torrent.
    pub fn arrange(&mut self, torrents: &mut Vec<TorrentStatus>) {
        self.unfiltered = torrents.len();
        // Only a torrent gone from the session keeps its claim on the selection; one merely
        // filtered out gives it to the row the user sees highlighted.
        let in_session = |h: &InfoHash| torrents.iter().any(|t| t.info_hash == *h);
        let selected_in_session = self.selected_hash.as_ref().is_some_and(in_session);
        if !self.filter.is_empty() {
            let needle = self.filter.to_lowercase();
            torrents.retain(|t| {
                t.name.to_lowercase().contains(&needle) || t.state.label().contains(&needle)
            });
        }
        let key = self.sort;
        torrents.sort_by(|a, b| {
            let by_key = match key {
                SortKey::Name => std::cmp::Ordering::Equal,
                SortKey::Size => b.total_bytes.cmp(&a.total_bytes),
                SortKey::Progress => b.wanted_progress().total_cmp(&a.wanted_progress()),
                SortKey::Down => b.download_rate.cmp(&a.download_rate),
                SortKey::Up => b.upload_rate.cmp(&a.upload_rate),
                SortKey::Ratio => b.ratio().total_cmp(&a.ratio()),
                SortKey::Added => b.added_at.cmp(&a.added_at),
                SortKey::Queue => a.queue_position.cmp(&b.queue_position),
                SortKey::State => state_rank(&a.state).cmp(&state_rank(&b.state)),
            };
            let by_key = if self.sort_reversed {
                by_key.reverse()
            } else {
                by_key
            };
            let by_name = a
                .name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.info_hash.0.cmp(&b.info_hash.0));
            let by_name = if self.sort_reversed && key == SortKey::Name {
                by_name.reverse()
            } else {
                by_name
            };
            by_key.then(by_name)
        });
        if let Some(h) = self.selected_hash {
            if let Some(i) = torrents.iter().position(|t| t.info_hash == h) {
                self.selected = i;
            }
        }
        if torrents.is_empty() {
            self.selected = 0;
            if self.view == View::Detail {
                self.view = View::List;
            }
        } else {
            self.selected = self.selected.min(torrents.len() - 1);
            let shown = self
                .selected_hash
                .is_some_and(|h| torrents.iter().any(|t| t.info_hash == h));
            // A selected torrent gone from the session for now (a recheck) keeps its claim.
            if !shown && (self.selected_hash.is_none() || selected_in_session) {
                self.selected_hash = Some(torrents[self.selected].info_hash);
            }
        }
    }

    /// Record one second of rates.
    pub fn sample(&mut self, torrents: &[TorrentStatus]) {
        let (mut down, mut up) = (0, 0);
        for t in torrents {
            self.history
                .entry(t.info_hash)
                .or_default()
                .push(t.download_rate, t.upload_rate);
            down += t.download_rate;
            up += t.upload_rate;
        }
        // A set, not a scan per entry: with 10,000 torrents that was 10^8 comparisons a second.
        let present: std::collections::HashSet<_> = torrents.iter().map(|t| t.info_hash).collect();
        self.history.retain(|h, _| present.contains(h));
        self.total_history.push(down, up);
    }

    /// Take a watch-folder event into the notes.
    pub fn on_folder_event(&mut self, ev: &FolderEvent) {
        match ev {
            FolderEvent::Added { name, .. } => self.message = Some(format!("added {name}")),
            FolderEvent::Failed { path, reason } => self.set_note(FolderNote {
                path: path.clone(),
                text: reason.clone(),
                error: true,
            }),
            FolderEvent::Duplicate { path, of, name, .. } => self.set_note(FolderNote {
                path: path.clone(),
                text: format!("duplicate of {} ({name})", file_name(of)),
                error: false,
            }),
            FolderEvent::Cleared { path } => self.notes.retain(|n| &n.path != path),
        }
    }

    fn set_note(&mut self, note: FolderNote) {
        self.notes.retain(|n| n.path != note.path);
        self.notes.push(note);
        self.notes.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// Handle one key; `torrents` as arranged for the current frame.
    pub fn on_key(&mut self, key: KeyEvent, torrents: &[TorrentStatus]) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let ctrl_c = ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C'));
        if self.stopping {
            return ctrl_c.then_some(Action::ForceQuit);
        }
        if ctrl_c {
            return Some(Action::Quit);
        }
        if let Some((hash, _)) = self.confirm_remove.take() {
            return match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => {
                    Some(Action::Remove(hash))
                }
                KeyCode::Char('D') => Some(Action::RemoveWithData(hash)),
                _ => {
                    self.message = Some("removal cancelled".into());
                    None
                }
            };
        }
        if self.input.is_some() {
            return self.on_input_key(key, ctrl);
        }
        match self.view {
            View::Help => {
                self.on_scroll_key(key.code, Scroll::Help);
                if matches!(
                    key.code,
                    KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Backspace
                ) {
                    self.view = self.back;
                }
                return None;
            }
            View::Problems => {
                let n = problems(self, torrents).len();
                self.on_scroll_key(key.code, Scroll::Problems(n));
                if matches!(
                    key.code,
                    KeyCode::Esc | KeyCode::Char('e') | KeyCode::Backspace | KeyCode::Left
                ) {
                    self.view = self.back;
                }
                return None;
            }
            View::List | View::Detail => {}
        }
        let selected = torrents.get(self.selected);
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => return Some(Action::Quit),
            KeyCode::Char('?') | KeyCode::F(1) => {
                self.back = self.view;
                self.view = View::Help;
                self.help_row = 0;
            }
            KeyCode::Char('e') => {
                self.back = self.view;
                self.view = View::Problems;
                self.problem_row = 0;
            }
            KeyCode::Char('a') => {
                self.input = Some(Input {
                    kind: InputKind::Add,
                    text: String::new(),
                })
            }
            KeyCode::Char('/') => {
                self.input = Some(Input {
                    kind: InputKind::Filter,
                    text: self.filter.clone(),
                })
            }
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                let t = selected?;
                if let TorrentState::Error(_) = t.state {
                    self.message = Some(format!(
                        "{} is in error: fix what the Problems box says, then press r to check its data again",
                        printable(&t.name)
                    ));
                    return None;
                }
                return Some(Action::TogglePause(t.info_hash));
            }
            KeyCode::Char('r') => return selected.map(|t| Action::Recheck(t.info_hash)),
            KeyCode::Char('K') | KeyCode::Char('J') | KeyCode::Char('T') | KeyCode::Char('B') => {
                let how = match key.code {
                    KeyCode::Char('K') => QueueMove::Up,
                    KeyCode::Char('J') => QueueMove::Down,
                    KeyCode::Char('T') => QueueMove::Top,
                    _ => QueueMove::Bottom,
                };
                return Some(Action::QueueMove(selected?.info_hash, how));
            }
            KeyCode::Char('L') => {
                let t = selected?;
                self.input = Some(Input {
                    kind: InputKind::Goals(t.info_hash),
                    text: goals_text(&t.seed_goals),
                });
            }
            KeyCode::Char('o') => {
                let t = selected?;
                if t.state == TorrentState::FetchingMetadata {
                    self.message = Some("the order can be chosen once the metadata is in".into());
                    return None;
                }
                return Some(Action::SetSequential(t.info_hash, !t.sequential));
            }
            KeyCode::Char('x') | KeyCode::Char('+') | KeyCode::Char('-')
                if self.view == View::Detail && self.tab == Tab::Files =>
            {
                return self.file_priority_key(key.code, selected?);
            }
            KeyCode::Char('d') | KeyCode::Delete => {
                if let Some(t) = selected {
                    self.confirm_remove = Some((t.info_hash, t.name.clone()));
                }
            }
            _ if self.view == View::Detail => self.on_detail_key(key.code, torrents),
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.sort_reversed = false;
                self.message = Some(format!("sorted by {}", self.sort.label()));
            }
            KeyCode::Char('S') => {
                self.sort_reversed = !self.sort_reversed;
                self.message = Some(format!(
                    "sorted by {}{}",
                    self.sort.label(),
                    if self.sort_reversed { ", reversed" } else { "" }
                ));
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1, torrents),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1, torrents),
            KeyCode::PageUp => self.move_by(-PAGE, torrents),
            KeyCode::PageDown => self.move_by(PAGE, torrents),
            KeyCode::Home | KeyCode::Char('g') => {
                self.move_by(-(torrents.len() as isize), torrents)
            }
            KeyCode::End | KeyCode::Char('G') => self.move_by(torrents.len() as isize, torrents),
            KeyCode::Enter if selected.is_some() => self.view = View::Detail,
            KeyCode::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                self.message = Some("filter cleared".into());
            }
            _ => {}
        }
        None
    }

    /// `x` skips or wants the file under the cursor, `+` / `-` raise or lower its priority.
    fn file_priority_key(&mut self, code: KeyCode, t: &TorrentStatus) -> Option<Action> {
        let row = self.tab_rows[Tab::Files.index()];
        let file = t.files.get(row)?;
        let new = match (code, file.priority) {
            (KeyCode::Char('x'), FilePriority::Skip) => FilePriority::Normal,
            (KeyCode::Char('x'), _) => FilePriority::Skip,
            (KeyCode::Char('+'), FilePriority::Skip) => FilePriority::Normal,
            (KeyCode::Char('+'), _) => FilePriority::High,
            (KeyCode::Char('-'), FilePriority::High) => FilePriority::Normal,
            (KeyCode::Char('-'), _) => FilePriority::Skip,
            _ => return None,
        };
        if new == file.priority {
            return None;
        }
        let mut all: Vec<FilePriority> = t.files.iter().map(|f| f.priority).collect();
        all[row] = new;
        Some(Action::SetPriorities(t.info_hash, all))
    }

    fn on_detail_key(&mut self, code: KeyCode, torrents: &[TorrentStatus]) {
        let rows = torrents
            .get(self.selected)
            .map_or(0, |t| tab_len(t, self.tab));
        match code {
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => self.view = View::List,
            KeyCode::Tab | KeyCode::Right => {
                self.tab = Tab::ALL[(self.tab.index() + 1) % Tab::ALL.len()]
            }
            KeyCode::BackTab => {
                self.tab = Tab::ALL[(self.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]
            }
            KeyCode::Char(c @ '1'..='4') => self.tab = Tab::ALL[c as usize - '1' as usize],
            KeyCode::Char('[') => self.move_by(-1, torrents),
            KeyCode::Char(']') => self.move_by(1, torrents),
            other => self.on_scroll_key(other, Scroll::Tab(rows)),
        }
    }

    fn on_input_key(&mut self, key: KeyEvent, ctrl: bool) -> Option<Action> {
        let input = self.input.as_mut()?;
        match key.code {
            KeyCode::Esc => {
                if input.kind == InputKind::Filter {
                    self.filter.clear();
                }
                self.input = None;
            }
            KeyCode::Enter => {
                let input = self.input.take()?;
                let text = input.text.trim().to_string();
                match input.kind {
                    InputKind::Filter => self.filter = text,
                    InputKind::Add if text.is_empty() => {}
                    InputKind::Add => return Some(Action::Add(text)),
                    InputKind::Goals(h) => match parse_goals(&text) {
                        Ok(goals) => return Some(Action::SetGoals(h, goals)),
                        Err(e) => self.message = Some(e),
                    },
                }
            }
            KeyCode::Backspace => {
                input.text.pop();
            }
            KeyCode::Char('u') if ctrl => input.text.clear(),
            KeyCode::Char(c)
                if !ctrl && !c.is_control() && input.text.len() + c.len_utf8() <= MAX_INPUT =>
            {
                input.text.push(c)
            }
            _ => {}
        }
        if let Some(input) = &self.input {
            if input.kind == InputKind::Filter {
                self.filter = input.text.trim().to_string();
            }
        }
        None
    }

    /// Pasted text (bracketed paste) goes into an open prompt.
    pub fn on_paste(&mut self, text: &str) {
        if let Some(input) = self.input.as_mut() {
            for c in text.chars().filter(|c| !c.is_control()) {
                if input.text.len() + c.len_utf8() > MAX_INPUT {
                    break;
                }
                input.text.push(c);
            }
            if input.kind == InputKind::Filter {
                self.filter = input.text.trim().to_string();
            }
        }
    }

    fn on_scroll_key(&mut self, code: KeyCode, what: Scroll) {
        let (row, len) = match what {
            Scroll::Help => (&mut self.help_row, self.scroll_ends.get().0 + 1),
            Scroll::Problems(n) => (
                &mut self.problem_row,
                n.min(self.scroll_ends.get().1.saturating_add(1)),
            ),
            Scroll::Tab(n) => (&mut self.tab_rows[self.tab.index()], n),
        };
        let last = len.saturating_sub(1) as isize;
        let delta = match code {
            KeyCode::Up | KeyCode::Char('k') => -1,
            KeyCode::Down | KeyCode::Char('j') => 1,
            KeyCode::PageUp => -PAGE,
            KeyCode::PageDown => PAGE,
            KeyCode::Home | KeyCode::Char('g') => -(isize::MAX / 2),
            KeyCode::End | KeyCode::Char('G') => isize::MAX / 2,
            _ => return,
        };
        *row = (*row as isize).saturating_add(delta).clamp(0, last.max(0)) as usize;
    }

    fn move_by(&mut self, delta: isize, torrents: &[TorrentStatus]) {
        if torrents.is_empty() {
            return;
        }
        let last = torrents.len() as isize - 1;
        let i = (self.selected as isize + delta).clamp(0, last) as usize;
        if i != self.selected {
            self.tab_rows = [0; 4];
        }
        self.selected = i;
        self.selected_hash = Some(torrents[i].info_hash);
    }
}

/// What a scroll key moves.
enum Scroll {
    Help,
    Problems(usize),
    Tab(usize),
}

/// Rows in a detail tab (the pieces tab has none to scroll).
pub fn tab_len(t: &TorrentStatus, tab: Tab) -> usize {
    match tab {
        Tab::Files => t.files.len(),
        Tab::Peers => t.peers.len(),
        Tab::Trackers => t.trackers.len(),
        Tab::Pieces => 0,
    }
}

/// One problem to show: watch-folder notes, torrents in error, tracker failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `error`, `note` or `tracker`.
    pub tag: &'static str,
    /// What and where, printable.
    pub text: String,
}

/// Every problem, watch-folder files first.
pub fn problems(app: &App, torrents: &[TorrentStatus]) -> Vec<Problem> {
    let mut out = Vec::new();
    for n in &app.notes {
        out.push(Problem {
            tag: if n.error { "error" } else { "note" },
            text: printable(&format!("{}: {}", file_name(&n.path), n.text)).into_owned(),
        });
    }
    for t in torrents {
        if let TorrentState::Error(e) = &t.state {
            out.push(Problem {
                tag: "error",
                text: printable(&format!("{}: {e} (press r to recheck once fixed)", t.name))
                    .into_owned(),
            });
        }
        if let Some(why) = &t.move_refused {
            out.push(Problem {
                tag: "note",
                text: printable(&format!(
                    "{}: not moved to the completed folder: {why}",
                    t.name
                ))
                .into_owned(),
            });
        }
        if let Some(e) = &t.tracker_error {
            out.push(Problem {
                tag: "tracker",
                text: printable(&format!("{}: {e}", t.name)).into_owned(),
            });
        }
    }
    out
}

/// `RATIO MINUTES` as the goals prompt shows them: `-` for the session's default, `0` for none.
pub fn goals_text(g: &SeedGoals) -> String {
    let ratio = match g.ratio {
        Goal::Global => "-".to_string(),
        Goal::Off => "0".to_string(),
        Goal::Value(r) => format!("{r}"),
    };
    let time = match g.time {
        Goal::Global => "-".to_string(),
        Goal::Off => "0".to_string(),
        Goal::Value(d) => format!("{}", d.as_secs() / 60),
    };
    format!("{ratio} {time}")
}

/// Smallest ratio goal taken (records keep thousandths, as `--seed-ratio`).
const MIN_RATIO_GOAL: f64 = 0.001;
/// Largest ratio goal taken (as `--seed-ratio`).
const MAX_RATIO_GOAL: f64 = 1e6;
/// Longest time goal taken, in minutes (a century, as `--seed-time`).
const MAX_TIME_GOAL_MINUTES: u64 = 100 * 366 * 24 * 60;

/// Read the goals prompt: `RATIO MINUTES`; a missing second word keeps the default.
pub fn parse_goals(text: &str) -> Result<SeedGoals, String> {
    let mut words = text.split_whitespace();
    let (r, t) = (words.next().unwrap_or("-"), words.next().unwrap_or("-"));
    if words.next().is_some() {
        return Err("goals: give a ratio and minutes, e.g. `2 1440`, `0 -` or `- -`".into());
    }
    let ratio = match r {
        "-" => Goal::Global,
        _ => match r.parse::<f64>() {
            Ok(0.0) => Goal::Off,
            Ok(v) if v.is_finite() && (MIN_RATIO_GOAL..=MAX_RATIO_GOAL).contains(&v) => {
                Goal::Value(v)
            }
            _ => {
                return Err(format!(
                    "goals: ratio {r:?} is not 0 or a number from 0.001 to 1000000"
                ))
            }
        },
    };
    let time = match t {
        "-" => Goal::Global,
        _ => match t.parse::<u64>() {
            Ok(0) => Goal::Off,
            Ok(m) if m <= MAX_TIME_GOAL_MINUTES => Goal::Value(Duration::from_secs(m * 60)),
            _ => return Err(format!("goals: {t:?} is not a number of minutes")),
        },
    };
    Ok(SeedGoals { ratio, time })
}

/// Order of states when sorting by state: the ones that need attention first.
fn state_rank(s: &TorrentState) -> u8 {
    match s {
        TorrentState::Error(_) => 0,
        TorrentState::Downloading => 1,
        TorrentState::FetchingMetadata => 2,
        TorrentState::Checking { .. } => 3,
        TorrentState::Queued => 4,
        TorrentState::Seeding => 5,
        TorrentState::Finished(_) => 6,
        TorrentState::Paused => 7,
    }
}

/// The last component of a path, for short display.
pub fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Whether a torrent's state counts as paused (for the pause/resume toggle).
pub fn is_paused(s: &TorrentStatus) -> bool {
    matches!(s.state, TorrentState::Paused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zigtorrent_engine::TorrentStatus;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn torrents(names: &[&str]) -> Vec<TorrentStatus> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| TorrentStatus::new(n.to_string(), InfoHash([i as u8; 20]), 100, 1))
            .collect()
    }

    #[test]
    fn selection_follows_its_torrent_and_keys_act_on_it() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = torrents(&["b", "a", "c"]);
        app.arrange(&mut ts);
        assert_eq!(ts[0].name, "a");
        assert_eq!(app.on_key(key(KeyCode::Char('j')), &ts), None);
        assert_eq!(app.selected_hash, Some(ts[1].info_hash));
        // A new torrent sorting first moves the rows; the selection stays on "b".
        ts.push(TorrentStatus::new("0".into(), InfoHash([9; 20]), 1, 1));
        app.arrange(&mut ts);
        assert_eq!(ts[app.selected].name, "b");
        assert_eq!(
            app.on_key(key(KeyCode::Char('p')), &ts),
            Some(Action::TogglePause(ts[app.selected].info_hash))
        );
        app.on_key(key(KeyCode::Enter), &ts);
        assert_eq!(app.view, View::Detail);
        app.on_key(key(KeyCode::Esc), &ts);
        assert_eq!(app.view, View::List);
    }

    #[test]
    fn a_recheck_keeps_the_selection_though_the_torrent_leaves_for_a_moment() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = torrents(&["a", "b", "c"]);
        app.arrange(&mut ts);
        app.on_key(key(KeyCode::Char('j')), &ts);
        let b = ts[1].info_hash;
        assert_eq!(
            app.on_key(key(KeyCode::Char('r')), &ts),
            Some(Action::Recheck(b))
        );
        // The recheck takes "b" out of the session and adds it again.
        let mut without = torrents(&["a", "b", "c"]);
        without.remove(1);
        app.arrange(&mut without);
        let mut back = torrents(&["a", "b", "c"]);
        app.arrange(&mut back);
        assert_eq!(back[app.selected].info_hash, b);
        assert_eq!(
            app.on_key(key(KeyCode::Char('p')), &back),
            Some(Action::TogglePause(b))
        );
    }

    #[test]
    fn a_filter_hands_the_selection_to_the_row_shown() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = torrents(&["apple", "berry", "cherry"]);
        app.arrange(&mut ts);
        assert_eq!(ts[app.selected].name, "apple");
        app.filter = "cherry".into();
        let mut ts = torrents(&["apple", "berry", "cherry"]);
        app.arrange(&mut ts);
        assert_eq!(ts[app.selected].name, "cherry");
        app.filter.clear();
        let mut ts = torrents(&["apple", "berry", "cherry"]);
        app.arrange(&mut ts);
        assert_eq!(
            ts[app.selected].name, "cherry",
            "the row the user saw stays selected"
        );
    }

    #[test]
    fn pause_on_an_error_says_how_to_recover() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = torrents(&["a"]);
        ts[0].state = TorrentState::Error("disk full".into());
        app.arrange(&mut ts);
        assert_eq!(app.on_key(key(KeyCode::Char('p')), &ts), None);
        let m = app.message.clone().unwrap();
        assert!(m.contains("press r"), "{m}");
    }

    #[test]
    fn file_keys_choose_priorities_and_o_the_order() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = torrents(&["a"]);
        for i in 0..3 {
            ts[0].files.push(zigtorrent_engine::FileStatus {
                path: format!("a/{i}").into(),
                length: 10,
                have_bytes: 0,
                priority: FilePriority::Normal,
            });
        }
        app.arrange(&mut ts);
        let h = ts[0].info_hash;
        // Not in the files tab of the details: x does nothing.
        assert_eq!(app.on_key(key(KeyCode::Char('x')), &ts), None);
        app.on_key(key(KeyCode::Enter), &ts);
        app.on_key(key(KeyCode::Down), &ts);
        use FilePriority::*;
        assert_eq!(
            app.on_key(key(KeyCode::Char('x')), &ts),
            Some(Action::SetPriorities(h, vec![Normal, Skip, Normal]))
        );
        assert_eq!(
            app.on_key(key(KeyCode::Char('+')), &ts),
            Some(Action::SetPriorities(h, vec![Normal, High, Normal]))
        );
        ts[0].files[1].priority = High;
        assert_eq!(
            app.on_key(key(KeyCode::Char('+')), &ts),
            None,
            "already high"
        );
        assert_eq!(
            app.on_key(key(KeyCode::Char('o')), &ts),
            Some(Action::SetSequential(h, true))
        );
    }

    #[test]
    fn goals_prompt_round_trips_and_refuses_nonsense() {
        let g = parse_goals("2.5 90").unwrap();
        assert_eq!(g.ratio, Goal::Value(2.5));
        assert_eq!(g.time, Goal::Value(Duration::from_secs(5400)));
        assert_eq!(goals_text(&g), "2.5 90");
        let g = parse_goals("0 -").unwrap();
        assert_eq!((g.ratio, g.time), (Goal::Off, Goal::Global));
        assert_eq!(parse_goals("").unwrap(), SeedGoals::default());
        for bad in ["x", "-1", "NaN", "inf", "1 2 3", "1 -5", "1e9", "0.0001"] {
            assert!(parse_goals(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queue_keys_move_the_selected_torrent() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = torrents(&["a", "b"]);
        app.arrange(&mut ts);
        let h = ts[0].info_hash;
        assert_eq!(
            app.on_key(key(KeyCode::Char('J')), &ts),
            Some(Action::QueueMove(h, QueueMove::Down))
        );
        assert_eq!(
            app.on_key(key(KeyCode::Char('T')), &ts),
            Some(Action::QueueMove(h, QueueMove::Top))
        );
        app.on_key(key(KeyCode::Char('L')), &ts);
        for _ in 0..3 {
            app.on_key(key(KeyCode::Backspace), &ts);
        }
        for c in "3 60".chars() {
            app.on_key(key(KeyCode::Char(c)), &ts);
        }
        assert_eq!(
            app.on_key(key(KeyCode::Enter), &ts),
            Some(Action::SetGoals(
                h,
                SeedGoals {
                    ratio: Goal::Value(3.0),
                    time: Goal::Value(Duration::from_secs(3600))
                }
            ))
        );
    }

    #[test]
    fn remove_asks_first() {
        let mut app = App::new(6881, "tcp".into());
        let mut ts = torrents(&["a"]);
        app.arrange(&mut ts);
        assert_eq!(app.on_key(key(KeyCode::Char('d')), &ts), None);
        assert!(app.confirm_remove.is_some());
        assert_eq!(app.on_key(key(KeyCode::Char('n')), &ts), None);
        assert!(app.confirm_remove.is_none());
        app.on_key(key(KeyCode::Char('d')), &ts);
        assert_eq!(
            app.on_key(key(KeyCode::Char('y')), &ts),
            Some(Action::Remove(ts[0].info_hash))
        );
        app.on_key(key(KeyCode::Char('d')), &ts);
        assert_eq!(
            app.on_key(key(KeyCode::Char('D')), &ts),
            Some(Action::RemoveWithData(ts[0].info_hash))
        );
    }

    #[test]
    fn quit_then_second_ctrl_c_forces() {
        let mut app = App::new(6881, "tcp".into());
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(app.on_key(ctrl_c, &[]), Some(Action::Quit));
        app.stopping = true;
        assert_eq!(app.on_key(key(KeyCode::Char('q')), &[]), None);
        assert_eq!(app.on_key(ctrl_c, &[]), Some(Action::ForceQuit));
    }
}
