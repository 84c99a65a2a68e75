//! The menu's state and key handling, apart from any terminal: what is selected, which view is
//! open, the confirm prompt, problems reported by the watch folder, and a minute of rate
//! history. `ui.rs` draws it; `tui.rs` feeds it keys and snapshots and carries out its actions.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use zigtorrent_engine::{InfoHash, TorrentState, TorrentStatus};

use crate::watch::FolderEvent;

/// Rate samples kept (one a second: the last minute).
pub const HISTORY_LEN: usize = 60;

/// Which screen is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The table of torrents.
    List,
    /// Everything about the selected torrent.
    Detail,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pause it if running, resume it if paused.
    TogglePause(InfoHash),
    /// Hash all its data again.
    Recheck(InfoHash),
    /// Take it out of the session (data stays).
    Remove(InfoHash),
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

/// The menu's state.
pub struct App {
    /// Current screen.
    pub view: View,
    /// Selected row of the table.
    pub selected: usize,
    /// The selected torrent, so the selection follows it when rows move.
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
}

impl App {
    /// A fresh menu.
    pub fn new(listen_port: u16, transport: String) -> Self {
        App {
            view: View::List,
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
        }
    }

    /// Sort the torrents the way the table shows them and keep the selection on its torrent.
    pub fn arrange(&mut self, torrents: &mut [TorrentStatus]) {
        torrents.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.info_hash.0.cmp(&b.info_hash.0))
        });
        if let Some(h) = self.selected_hash {
            if let Some(i) = torrents.iter().position(|t| t.info_hash == h) {
                self.selected = i;
            }
        }
        if torrents.is_empty() {
            self.selected = 0;
            self.selected_hash = None;
            if self.view == View::Detail {
                self.view = View::List;
            }
        } else {
            self.selected = self.selected.min(torrents.len() - 1);
            self.selected_hash = Some(torrents[self.selected].info_hash);
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
        self.history
            .retain(|h, _| torrents.iter().any(|t| t.info_hash == *h));
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
            FolderEvent::Duplicate { path, of, name } => self.set_note(FolderNote {
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
        let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
            && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C'));
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
                _ => {
                    self.message = Some("removal cancelled".into());
                    None
                }
            };
        }
        let selected = torrents.get(self.selected);
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => return Some(Action::Quit),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1, torrents),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1, torrents),
            KeyCode::PageUp => self.move_by(-10, torrents),
            KeyCode::PageDown => self.move_by(10, torrents),
            KeyCode::Home | KeyCode::Char('g') => {
                self.move_by(-(torrents.len() as isize), torrents)
            }
            KeyCode::End | KeyCode::Char('G') => self.move_by(torrents.len() as isize, torrents),
            KeyCode::Enter if selected.is_some() => self.view = View::Detail,
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => self.view = View::List,
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                return selected.map(|t| Action::TogglePause(t.info_hash))
            }
            KeyCode::Char('r') => return selected.map(|t| Action::Recheck(t.info_hash)),
            KeyCode::Char('d') | KeyCode::Delete => {
                if let Some(t) = selected {
                    self.confirm_remove = Some((t.info_hash, t.name.clone()));
                }
            }
            _ => {}
        }
        None
    }

    fn move_by(&mut self, delta: isize, torrents: &[TorrentStatus]) {
        if torrents.is_empty() {
            return;
        }
        let last = torrents.len() as isize - 1;
        let i = (self.selected as isize + delta).clamp(0, last) as usize;
        self.selected = i;
        self.selected_hash = Some(torrents[i].info_hash);
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
