//! The `zigtorrent` binary: `run` (download and seed a watch folder), `add`, `create` and `info`.

mod add;
mod app;
mod backends;
mod create;
mod format;
mod hook;
mod instance;
mod library;
mod logfile;
mod run;
mod settings;
mod signals;
mod tui;
mod ui;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// ZigTorrent: a BitTorrent client for a folder of .torrent files.
#[derive(Parser, Debug)]
#[command(name = "zigtorrent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download and seed every .torrent in the torrents folder.
    Run(Box<run::RunArgs>),
    /// Add torrents (paths, URLs or magnet links) to the client of a state folder: handed to
    /// it at once if it runs, else at its next start.
    Add(settings::AddArgs),
    /// Make a .torrent of a file or folder.
    Create(create::CreateArgs),
    /// Show what a .torrent file holds.
    Info {
        /// The .torrent file.
        file: PathBuf,
    },
    /// List the transports and storages that can be selected.
    Backends(backends::BackendsArgs),
}

fn main() -> ExitCode {
    // Before anything else: a stop signal during set-up must take the graceful path (issue 9).
    let signals = match signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // Only `run` stops gracefully; the other commands end on a signal as they always did.
        signals.default_action();
    }
    let result = match cli.command {
        Command::Run(args) => run::run(*args, signals.graceful()),
        Command::Add(args) => add::add(args),
        Command::Create(args) => create::create(args),
        Command::Info { file } => info(&file),
        Command::Backends(args) => backends::list(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `zigtorrent info`: every text taken from the torrent goes through [`format::printable`], as
/// in the menu, so a name cannot move the cursor or forge extra lines. Written through one
/// buffered handle whose errors are returned, so a closed pipe (`| head`) exits quietly
/// instead of panicking in `println!`.
fn info(file: &std::path::Path) -> anyhow::Result<()> {
    use format::printable;
    use std::io::Write;
    let meta = run::load_torrent(file)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let info = &meta.info;
    let layout = &info.layout;
    writeln!(out, "name: {}", printable(&info.name))?;
    writeln!(out, "info-hash: {}", meta.info_hash)?;
    writeln!(
        out,
        "total size: {} ({} bytes)",
        format::bytes(layout.total_length),
        layout.total_length
    )?;
    writeln!(
        out,
        "pieces: {} x {} bytes",
        layout.piece_count(),
        layout.piece_length
    )?;
    writeln!(out, "private: {}", if info.private { "yes" } else { "no" })?;
    for (i, tier) in meta.announce_tiers.iter().enumerate() {
        writeln!(out, "tier {}: {}", i + 1, printable(&tier.join(" ")))?;
    }
    if let Some(c) = &meta.comment {
        writeln!(out, "comment: {}", printable(c))?;
    }
    if let Some(c) = &meta.created_by {
        writeln!(out, "created by: {}", printable(c))?;
    }
    writeln!(out, "files: {}", layout.files.len())?;
    for f in &layout.files {
        writeln!(
            out,
            "  {} ({} bytes)",
            printable(&f.path.display().to_string()),
            f.length
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Read a file we were pointed at, with context for the error line. Never blocks: opened
/// `O_NONBLOCK | O_NOCTTY`, and anything but a regular file on the open descriptor (a FIFO, a
/// device, a folder) is refused, as is a file over `max` bytes. Links are followed: the path is
/// the user's own choice.
pub(crate) fn read_file(path: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    read_regular(path, max, true)
}

/// [`read_file`] for the client's own files in the state folder: a link is refused too.
pub(crate) fn read_state_file(path: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    read_regular(path, max, false)
}

fn read_regular(path: &std::path::Path, max: u64, follow: bool) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let md = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(md.is_file(), "{} is not a regular file", path.display());
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= max,
        "{} is larger than {} bytes",
        path.display(),
        max
    );
    Ok(bytes)
}
