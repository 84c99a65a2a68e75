//! `zigtorrent create`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use zigtorrent_engine::metainfo::{create_torrent, CreateOptions};
use zigtorrent_engine::Metainfo;

/// Arguments of `zigtorrent create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// File or folder to make a torrent of.
    path: PathBuf,
    /// Announce URL; repeat for more trackers (each its own tier).
    #[arg(long = "tracker", value_name = "URL")]
    trackers: Vec<String>,
    /// Piece length in bytes (a power of two, at least 16384); chosen automatically if absent.
    #[arg(long, value_name = "BYTES")]
    piece_length: Option<u32>,
    /// Mark the torrent private (BEP 27).
    #[arg(long)]
    private: bool,
    /// A comment stored in the torrent.
    #[arg(long)]
    comment: Option<String>,
    /// Where to write the .torrent.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

/// Hash the source and write the torrent file.
pub fn create(args: CreateArgs) -> anyhow::Result<()> {
    let options = CreateOptions {
        trackers: args.trackers,
        piece_length: args.piece_length,
        private: args.private,
        comment: args.comment,
    };
    let bytes = create_torrent(&args.path, &options)
        .with_context(|| format!("cannot create a torrent of {}", args.path.display()))?;
    let meta = Metainfo::from_bytes(&bytes).context("created torrent does not parse (bug)")?;
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!("{} {}", meta.info_hash, args.output.display());
    Ok(())
}
