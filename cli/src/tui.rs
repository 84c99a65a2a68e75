//! The terminal menu's event loop: raw mode and the alternate screen (always restored, also
//! after a panic), keys from crossterm's async event stream, a redraw 5 times a second, one
//! rate sample a second, and the graceful stop with "stopping…" on screen.

use std::io::Stdout;
use std::time::Duration;

use std::io::Write;

use crossterm::event::{
    DisableBracketedPaste, EnableBracketedPaste, Event, EventStream, KeyCode, KeyEventKind,
    KeyModifiers,
};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::collections::HashMap;
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use zigtorrent_engine::{FilePriority, InfoHash, TorrentState, TorrentStatus};

use crate::app::{is_paused, Action, App, Folders};
use crate::library;
use crate::run::{Running, Signals};
use crate::settings::Settings;
use crate::ui;
use crate::watch::FolderEvent;

/// Time between redraws (the menu refreshes itself at least 4 times a second).
const REDRAW_INTERVAL: Duration = Duration::from_millis(200);
/// Time between rate samples for the graphs.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How long quitting waits for menu actions in flight (a removal or recheck stops its torrent
/// within 4 s) before cutting them short.
const ACTIONS_GRACE: Duration = Duration::from_secs(5);

type Term = Terminal<CrosstermBackend<Stdout>>;

/// Puts the terminal back however the menu ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

fn setup_terminal() -> anyhow::Result<(Term, TerminalGuard)> {
    // A panic of the menu itself (the main thread) restores the screen before the message is
    // printed. A panic in a background task (caught by tokio; the menu goes on) must not drop
    // the menu out of raw mode or print over it: it goes to the log file.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            restore_terminal();
            previous(info);
        } else {
            tracing::error!("panic in a background task: {info}");
        }
    }));
    enable_raw_mode()?;
    let guard = TerminalGuard;
    crossterm::execute!(
        std::io::stdout(),
        EnterAlternateScreen,
        EnableBracketedPaste
    )?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.hide_cursor()?;
    terminal.clear()?;
    Ok((terminal, guard))
}

/// Run the menu until the user quits or a stop signal arrives, then stop the session.
pub async fn serve(
    running: Running,
    mut folder_events: mpsc::UnboundedReceiver<FolderEvent>,
    mut signals: Signals,
    s: &Settings,
) -> anyhow::Result<()> {
    let (mut terminal, guard) = setup_terminal()?;
    let mut app = App::new(running.session.listen_port(), s.transport.clone());
    app.limits = running.session.rate_limits();
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    app.folders = Folders {
        watch: absolute(&s.torrents),
        downloads: absolute(&s.downloads),
    };
    // The files each torrent came from, copies included (for removals that must hold across
    // restarts).
    let mut origins: HashMap<InfoHash, Vec<PathBuf>> = HashMap::new();
    let mut keys = EventStream::new();
    let mut redraw = tokio::time::interval(REDRAW_INTERVAL);
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut actions: JoinSet<String> = JoinSet::new();
    // The rows as last drawn: keys act on what the user sees.
    let mut shown: Vec<TorrentStatus> = Vec::new();
    let mut force = false;
    loop {
        tokio::select! {
            sig = signals.recv() => {
                tracing::info!(signal = sig, "stopping");
                break;
            }
            Some(ev) = folder_events.recv() => {
                log_folder_event(&ev);
                if let FolderEvent::Added { path, info_hash, .. }
                | FolderEvent::Duplicate { path, info_hash, .. } = &ev
                {
                    let files = origins.entry(*info_hash).or_default();
                    if !files.contains(path) {
                        files.push(path.clone());
                    }
                }
                app.on_folder_event(&ev);
            }
            key = keys.next() => match key {
                Some(Ok(Event::Key(k))) => {
                    if let Some(action) = app.on_key(k, &shown) {
                        match action {
                            Action::Quit => break,
                            Action::ForceQuit => { force = true; break; }
                            other => start_action(other, &running, &shown, &origins, &mut actions, &mut app),
                        }
                    }
                    draw(&mut terminal, &mut app, &running, &mut shown);
                }
                Some(Ok(Event::Paste(text))) => {
                    app.on_paste(&text);
                    draw(&mut terminal, &mut app, &running, &mut shown);
                }
                Some(Ok(Event::Resize(..))) => {
                    let _ = terminal.autoresize();
                    draw(&mut terminal, &mut app, &running, &mut shown);
                }
                Some(Ok(_)) => {}
                // No more terminal input (closed): stop like SIGHUP.
                Some(Err(_)) | None => break,
            },
            Some(done) = actions.join_next() => {
                if let Ok(message) = done {
                    app.message = Some(message);
                }
            }
            _ = sample.tick() => app.sample(&running.snapshot()),
            _ = redraw.tick() => draw(&mut terminal, &mut app, &running, &mut shown),
        }
    }
    if force {
        drop(guard);
        eprintln!("forced exit");
        std::process::exit(130);
    }
    app.stopping = true;
    app.confirm_remove = None;
    draw(&mut terminal, &mut app, &running, &mut shown);
    // Actions in flight finish first: a torrent being removed still stops gracefully, and one
    // being rechecked is back in the session to stop with the others. They hold the session,
    // which the shutdown needs to itself. Removals and rechecks are bounded by the torrent stop
    // timeout; past [`ACTIONS_GRACE`] whatever is left is cut short.
    let shutdown = async move {
        let drained = async { while actions.join_next().await.is_some() {} };
        if tokio::time::timeout(ACTIONS_GRACE, drained).await.is_err() {
            actions.abort_all();
            while actions.join_next().await.is_some() {}
        }
        running.shutdown().await
    };
    tokio::pin!(shutdown);
    // Once the terminal is gone (window closed) the key stream only yields errors: stop
    // polling it, or this loop would spin.
    let mut keys_open = true;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = signals.recv() => { drop(guard); eprintln!("forced exit"); std::process::exit(130); }
            key = keys.next(), if keys_open => {
                if !matches!(key, Some(Ok(_))) {
                    keys_open = false;
                }
                if let Some(Ok(Event::Key(k))) = key {
                    let ctrl_c = k.kind != KeyEventKind::Release
                        && k.modifiers.contains(KeyModifiers::CONTROL)
                        && matches!(k.code, KeyCode::Char('c'));
                    if ctrl_c {
                        drop(guard);
                        eprintln!("forced exit");
                        std::process::exit(130);
                    }
                }
            }
            _ = redraw.tick() => {
                let _ = terminal.draw(|f| ui::draw(f, &app, &shown));
            }
        }
    }
    drop(terminal);
    drop(guard);
    // The terminal may be gone; a failed write must not turn a clean stop into a panic.
    let _ = writeln!(std::io::stdout(), "stopped");
    Ok(())
}

fn draw(terminal: &mut Term, app: &mut App, running: &Running, shown: &mut Vec<TorrentStatus>) {
    *shown = running.snapshot();
    app.arrange(shown);
    // A failed draw (terminal gone) is not fatal: the stop signal follows.
    let _ = terminal.draw(|f| ui::draw(f, app, shown));
}

fn log_folder_event(ev: &FolderEvent) {
    match ev {
        FolderEvent::Added {
            path,
            name,
            info_hash,
        } => tracing::info!(%name, %info_hash, path = %path.display(), "added"),
        FolderEvent::Failed { path, reason } => {
            tracing::warn!(path = %path.display(), %reason, "cannot use torrent file")
        }
        FolderEvent::Duplicate { path, of, .. } => {
            tracing::info!(path = %path.display(), of = %of.display(), "duplicate torrent file")
        }
        FolderEvent::Cleared { .. } => {}
    }
}

fn start_action(
    action: Action,
    running: &Running,
    shown: &[TorrentStatus],
    origins: &HashMap<InfoHash, Vec<PathBuf>>,
    actions: &mut JoinSet<String>,
    app: &mut App,
) {
    let name_of = |h| {
        shown
            .iter()
            .find(|t| t.info_hash == h)
            .map(|t| t.name.clone())
            .unwrap_or_default()
    };
    let session = running.session.clone();
    match action {
        Action::TogglePause(h) => {
            let Some(handle) = session.torrents().into_iter().find(|t| t.info_hash() == h) else {
                return;
            };
            let name = name_of(h);
            let paused = is_paused(&handle.status());
            app.message = Some(format!(
                "{} {name}",
                if paused { "resuming" } else { "pausing" }
            ));
            actions.spawn(async move {
                if paused {
                    handle.resume().await;
                    format!("resumed {name}")
                } else {
                    handle.pause().await;
                    format!("paused {name}")
                }
            });
        }
        Action::Recheck(h) => {
            let name = name_of(h);
            app.message = Some(format!("rechecking {name}"));
            actions.spawn(async move {
                let Some(handle) = session.recheck(h).await else {
                    return format!("{name} is no longer in the session");
                };
                // Report when the check is over, with what it found.
                let mut status = handle.subscribe();
                let done = status
                    .wait_for(|s| !matches!(s.state, TorrentState::Checking { .. }))
                    .await
                    .map(|s| s.clone());
                match done {
                    Ok(s) => match &s.state {
                        TorrentState::Error(e) => format!("recheck of {name} failed: {e}"),
                        _ => format!(
                            "recheck of {name} done: {} verified",
                            ui::percent(s.progress()).trim()
                        ),
                    },
                    Err(_) => format!("{name} left the session during its recheck"),
                }
            });
        }
        Action::Remove(h) => {
            let name = name_of(h);
            app.message = Some(format!("removing {name}"));
            let forget = forget_sources(running, origins, h);
            actions.spawn(async move {
                if !session.remove(h).await {
                    return format!("{name} was already removed");
                }
                match forget.await {
                    Ok(()) => format!("removed {name} (data kept)"),
                    Err(e) => {
                        format!("removed {name}, but it may come back at the next start: {e:#}")
                    }
                }
            });
        }
        Action::RemoveWithData(h) => {
            let name = name_of(h);
            app.message = Some(format!("removing {name} and its data"));
            let forget = forget_sources(running, origins, h);
            actions.spawn(async move {
                let deleted = session.remove_with_data(h).await;
                // Out of the session whatever the deletion did: it must not come back.
                if let Err(e) = forget.await {
                    tracing::warn!(%name, error = %format!("{e:#}"), "removal not remembered");
                }
                let deleted = match deleted {
                    Ok(Some(d)) => d,
                    Ok(None) => return format!("{name} was already removed"),
                    Err(e) => return format!("removed {name}; its data was not deleted: {e}"),
                };
                for (path, why) in &deleted.kept {
                    tracing::info!(path = %path.display(), %why, "kept");
                }
                if deleted.kept.is_empty() {
                    format!("removed {name} and deleted its data")
                } else {
                    format!(
                        "removed {name}, deleted its data; kept {} file(s) it did not write (see the log)",
                        deleted.kept.len()
                    )
                }
            });
        }
        Action::SetPriorities(h, priorities) => {
            let Some(handle) = session.torrents().into_iter().find(|t| t.info_hash() == h) else {
                return;
            };
            let name = name_of(h);
            let skipped = priorities
                .iter()
                .filter(|p| **p == FilePriority::Skip)
                .count();
            actions.spawn(async move {
                match handle.set_file_priorities(priorities).await {
                    Ok(()) => format!("{name}: {skipped} file(s) skipped"),
                    Err(e) => format!("{name}: {e}"),
                }
            });
        }
        Action::SetSequential(h, on) => {
            let Some(handle) = session.torrents().into_iter().find(|t| t.info_hash() == h) else {
                return;
            };
            let name = name_of(h);
            actions.spawn(async move {
                handle.set_sequential(on).await;
                if on {
                    format!("{name}: downloading in order")
                } else {
                    format!("{name}: rarest pieces first")
                }
            });
        }
        Action::QueueMove(h, how) => {
            let name = name_of(h);
            if session.queue_move(h, how) {
                app.message = Some(format!("{name}: moved {how:?} in the queue").to_lowercase());
            }
        }
        Action::SetGoals(h, goals) => {
            let Some(handle) = session.torrents().into_iter().find(|t| t.info_hash() == h) else {
                return;
            };
            let name = name_of(h);
            actions.spawn(async move {
                handle.set_seed_goals(goals).await;
                format!("{name}: seeding goals {}", crate::app::goals_text(&goals))
            });
        }
        Action::Add(source) => {
            app.message = Some(format!("adding {}", crate::format::printable(&source)));
            let state = running.state.clone();
            actions.spawn(async move {
                let resolved = match library::resolve(&source).await {
                    Ok(r) => r,
                    Err(e) => return format!("not added: {e:#}"),
                };
                let name = resolved.name();
                if session
                    .torrents()
                    .iter()
                    .any(|t| t.info_hash() == resolved.torrent.info_hash())
                {
                    return format!("{name} is already in the session");
                }
                // The watcher of `<state>/added/` loads it (and every later start does).
                match tokio::task::spawn_blocking(move || library::store(&state, &resolved)).await {
                    Ok(Ok(_)) => format!("adding {name}…"),
                    Ok(Err(e)) => format!("not added: {e:#}"),
                    Err(e) => format!("not added: {e}"),
                }
            });
        }
        Action::Quit | Action::ForceQuit => {}
    }
}

/// Make a removal hold across restarts: delete the torrent's files in `<state>/added/`, and
/// remember its watch-folder files (see [`library::on_removed`]). Runs when awaited, on the
/// blocking pool.
fn forget_sources(
    running: &Running,
    origins: &HashMap<InfoHash, Vec<PathBuf>>,
    h: InfoHash,
) -> impl std::future::Future<Output = anyhow::Result<()>> {
    let files = origins.get(&h).cloned().unwrap_or_default();
    let state = running.state.clone();
    let removals = running.removals.clone();
    async move {
        if files.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || library::on_removed(&state, &removals, h, &files))
            .await?
    }
}
