//! Stop signals (SIGINT, SIGTERM, SIGHUP), caught from the first instant of `main`.
//!
//! Handlers are installed before anything else runs (command-line and config parsing, folder
//! creation, the session start), so a signal that arrives during set-up is not fatal: it is
//! queued, set-up notices it at its next step and stops, and the process exits 0. Tokio's own
//! signal streams could only be created once a runtime exists, which left a window of several
//! milliseconds in which the default action (death by the signal) applied.
//!
//! One thread reads signal-hook's self-pipe. Until the command is known it only queues what
//! arrives; then `run` gets every signal as a message ([`Signals`]), while `create`, `info` and
//! `backends` get the default action back (a Ctrl-C stops them as it always did).
//!
//! What remains outside our reach: the dynamic loader and the Rust runtime's start-up run
//! before `main`; a signal in that window (well under a millisecond) still has its default
//! action.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;

/// The signals that stop the client gracefully.
const STOP_SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// What the signal thread does with what it reads, decided once the command is known.
enum Mode {
    /// `run`: forward each signal's name and raise the flag.
    Graceful(mpsc::UnboundedSender<&'static str>, Arc<AtomicBool>),
    /// Every other command: act as if no handler were installed.
    Default,
}

/// Handlers installed, the command not yet known. The first of [`Installed::graceful`] and
/// [`Installed::default_action`] decides; dropping it undecided means the default action.
pub struct Installed {
    mode: std::sync::mpsc::Sender<Mode>,
}

/// Install the handlers and start the thread that reads them. Call first thing in `main`.
pub fn install() -> anyhow::Result<Installed> {
    let mut pipe =
        signal_hook::iterator::Signals::new(STOP_SIGNALS).context("cannot handle stop signals")?;
    let (mode_tx, mode_rx) = std::sync::mpsc::channel::<Mode>();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Signals arriving before the command is known wait in signal-hook's pipe.
            let mode = mode_rx.recv().unwrap_or(Mode::Default);
            for sig in pipe.forever() {
                match &mode {
                    Mode::Graceful(tx, flag) => {
                        flag.store(true, Ordering::SeqCst);
                        // The receiver is gone once the program is exiting anyway.
                        let _ = tx.send(name(sig));
                    }
                    Mode::Default => {
                        // Restores the default action and raises the signal again: the
                        // process ends by it, as if no handler had been installed.
                        let _ = signal_hook::low_level::emulate_default_handler(sig);
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(Installed { mode: mode_tx })
}

impl Installed {
    /// `run`: every stop signal becomes a message for the graceful path.
    pub fn graceful(&self) -> Signals {
        let (tx, rx) = mpsc::unbounded_channel();
        let flag = Arc::new(AtomicBool::new(false));
        // The thread lives as long as the process; if it could not receive this, signals
        // keep their default action, which is what they had before.
        let _ = self.mode.send(Mode::Graceful(tx, flag.clone()));
        Signals { rx, flag }
    }

    /// Any other command: signals act as if no handler were installed.
    pub fn default_action(&self) {
        let _ = self.mode.send(Mode::Default);
    }
}

fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// The stop signals of `zigtorrent run`, as they arrive.
pub struct Signals {
    rx: mpsc::UnboundedReceiver<&'static str>,
    flag: Arc<AtomicBool>,
}

impl Signals {
    /// Whether any stop signal has arrived so far (set-up checks this between its steps).
    pub fn arrived(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Wait for the next stop signal; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        match self.rx.recv().await {
            Some(name) => name,
            // The signal thread never ends while the process runs; if it did, no signal can
            // come any more.
            None => std::future::pending().await,
        }
    }
}
