//! The `Checking` phase: open storage for a torrent whose metadata is known, take the resume
//! state it trusts, hash whatever it does not, and let storage settle files it found. Commands
//! that arrive meanwhile (peers that dialled us, addresses, pause) are kept, a bounded number,
//! and handed to the live phase: a peer that connects while we check is answered afterwards
//! rather than dropped (libtorrent then waits a long while before trying again).

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Phase, TorrentCommand, TorrentParams};
use crate::metainfo::Metainfo;
use crate::recheck;
use crate::status::TorrentState;
use crate::storage::{Layout, Resume, Storage, StorageError, StorageSpec};
use crate::types::Bitfield;

/// What the `Live` phase starts from: storage open and the verified pieces known.
pub(super) struct Checked {
    pub metainfo: Arc<Metainfo>,
    pub layout: Arc<Layout>,
    pub storage: Arc<dyn Storage>,
    pub have: Bitfield,
    /// Addresses learned before (while fetching metadata), dialled at once.
    pub peers: Vec<std::net::SocketAddr>,
    /// Commands that arrived while checking, in order.
    pub held: Vec<TorrentCommand>,
    /// It completed just before (and moved): the live phase announces it.
    pub completing: bool,
}

/// Commands kept while checking (each may hold a connection that dialled us).
const MAX_HELD: usize = 32;

/// Metadata known, storage not yet open.
pub(super) struct Checking {
    metainfo: Arc<Metainfo>,
    peers: Vec<std::net::SocketAddr>,
    completing: bool,
}

impl Checking {
    pub(super) fn new(metainfo: Arc<Metainfo>) -> Self {
        Checking {
            metainfo,
            peers: Vec::new(),
            completing: false,
        }
    }

    /// It completed just before and its files moved: announced complete once live.
    pub(super) fn completing(mut self) -> Self {
        self.completing = true;
        self
    }

    /// Addresses to dial as soon as the torrent is live.
    pub(super) fn with_peers(mut self, peers: Vec<std::net::SocketAddr>) -> Self {
        self.peers = peers;
        self
    }

    /// Open storage and check existing data; `None` if shut down meanwhile.
    pub(super) async fn run(
        self,
        params: &TorrentParams,
        commands: &mut mpsc::Receiver<TorrentCommand>,
    ) -> Option<Phase> {
        let Checking {
            metainfo,
            peers,
            completing,
        } = self;
        let layout = Arc::new(metainfo.info.layout.clone());
        let spec = StorageSpec {
            info_hash: metainfo.info_hash,
            layout: layout.clone(),
            download_dir: params.download_dir.clone(),
            state_dir: params.state_dir.clone(),
            skipped_files: params.selection.get().skipped_for(&layout),
        };
        let storage = match params.backend.open(spec).await {
            Ok(s) => s,
            Err(e) => return Some(Phase::Failed(format!("cannot open storage: {e}"))),
        };
        let count = layout.piece_count() as usize;
        let (trusted, check) = match storage.resume() {
            Resume::Trusted(bf) if !params.force_recheck && bf.len() == count => {
                (bf, Bitfield::new(count))
            }
            Resume::Partial { complete, check }
                if !params.force_recheck && complete.len() == count && check.len() == count =>
            {
                (complete, check)
            }
            _ => (Bitfield::new(count), Bitfield::full(count)),
        };
        let mut held = Vec::new();
        let have = if check.count_ones() == 0 {
            trusted
        } else {
            match recheck(
                params, &metainfo, &storage, trusted, &check, commands, &mut held,
            )
            .await
            {
                Some(Ok(bf)) => bf,
                Some(Err(e)) => {
                    let message = match e {
                        StorageError::PathInUse { .. } => e.to_string(),
                        e => format!("recheck failed: {e}"),
                    };
                    return Some(Phase::Failed(message));
                }
                None => {
                    let _ = storage.flush().await;
                    return None; // shut down while checking
                }
            }
        };
        Some(Phase::Live(Checked {
            metainfo,
            layout,
            storage,
            have,
            peers,
            held,
            completing,
        }))
    }
}

/// Hash the pieces in `check` (the others in `have` are trusted), mark the good ones complete,
/// let storage settle what it found, and flush. `None` if shut down meanwhile.
async fn recheck(
    params: &TorrentParams,
    metainfo: &Metainfo,
    storage: &Arc<dyn Storage>,
    mut have: Bitfield,
    check: &Bitfield,
    commands: &mut mpsc::Receiver<TorrentCommand>,
    held: &mut Vec<TorrentCommand>,
) -> Option<Result<Bitfield, StorageError>> {
    let total = check.count_ones() as u32;
    let mut checks = std::pin::pin!(recheck::check_pieces(
        &metainfo.info.pieces,
        &metainfo.info.layout,
        storage,
        &params.hash_budget,
        check
    ));
    let mut done = 0u32;
    loop {
        tokio::select! {
            next = checks.next() => match next {
                None => break,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok((piece, ok))) => {
                    done += 1;
                    if ok {
                        have.set(piece as usize);
                    }
                    if done.is_multiple_of(16) || done == total {
                        let progress = done as f32 / total.max(1) as f32;
                        params.publish(|s| s.state = TorrentState::Checking { progress });
                    }
                }
            },
            cmd = commands.recv() => match cmd {
                Some(TorrentCommand::Shutdown(reply)) => { let _ = reply.send(()); return None; }
                None => return None,
                // The new position goes with the live phase's next save: not worth a held slot.
                Some(TorrentCommand::SaveRecord) => {}
                // The rest waits for the live phase; beyond the bound, a peer must redial.
                Some(cmd) if held.len() < MAX_HELD => held.push(cmd),
                Some(_) => {}
            },
        }
    }
    if let Err(e) = storage.recheck_finished(&have).await {
        return Some(Err(e));
    }
    if let Err(e) = storage.flush().await {
        return Some(Err(e));
    }
    Some(Ok(have))
}
