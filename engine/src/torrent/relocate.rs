//! Moving a torrent that just completed to its completed folder (the torrent's own, kept in
//! its record, or the session's `SessionConfig::completed_dir`).
//!
//! The live phase has stopped: no peers, nothing being hashed, written or flushed, resume state
//! flushed. Here the task waits until every handle on the storage is gone (peer drivers end
//! a moment after they are told to), asks the backend to move the files
//! (`StorageBackend::move_data`), records the new folder (the commit point: a crash before it
//! makes the next start undo the move, one after it makes the next start finish it), and opens
//! storage again at the new place, where the backend's rewritten resume state is trusted
//! without hashing. The torrent is then announced `completed` and seeds from there.
//!
//! When the backend cannot vouch for the files (some were found in place rather than written,
//! or changed since) or cannot move at all, nothing moves: the reason is logged and shown in
//! `TorrentStatus::move_refused`, and the torrent seeds from where it is. A name already taken
//! in the completed folder, or an I/O failure, puts the torrent in `error` naming the path;
//! the files stay whole where they were.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::check::Checking;
use super::record::Keeper;
use super::{now, Phase, TorrentParams};
use crate::metainfo::Metainfo;
use crate::storage::{MoveOutcome, Storage, StorageError, StorageSpec};

/// How long the move waits for the last handles on the storage (peer drivers finishing an
/// upload read) before giving up on moving this time; their reads take milliseconds.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How often it looks meanwhile.
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// Move the files, then hand over to `Checking` at the new place (or at the old one, when
/// nothing moved), or to `Failed`.
pub(super) async fn move_complete(
    params: &mut TorrentParams,
    keeper: &mut Keeper,
    metainfo: Arc<Metainfo>,
    storage: Arc<dyn Storage>,
    peers: Vec<SocketAddr>,
    to: PathBuf,
) -> Option<Phase> {
    let name = metainfo.info.name.clone();
    params.publish(|s| s.moving_to = Some(to.clone()));
    let released = release(storage).await;
    let result = if released {
        let layout = Arc::new(metainfo.info.layout.clone());
        let spec = StorageSpec {
            info_hash: metainfo.info_hash,
            skipped_files: params.selection.get().skipped_for(&layout),
            layout,
            download_dir: params.download_dir.clone(),
            state_dir: params.state_dir.clone(),
        };
        params.backend.move_data(spec, to.clone()).await
    } else {
        Ok(MoveOutcome::NotMoved {
            reasons: vec![(
                params.download_dir.clone(),
                "its storage was still in use".to_string(),
            )],
        })
    };
    params.publish(|s| s.moving_to = None);
    let next = Checking::new(metainfo).with_peers(peers).completing();
    match result {
        Ok(MoveOutcome::Moved { files }) => {
            let from = std::mem::replace(&mut params.download_dir, to.clone());
            keeper.record.download_dir = Some(to.clone());
            if let Err(e) = keeper.save_checked(now()).await {
                // Opening at the new place settles the move there, so this run is right; the
                // next start reads the old folder from the record and moves the files back.
                tracing::error!(
                    name = %name, error = %e,
                    "the new folder could not be recorded; the next start moves the files back"
                );
            }
            tracing::info!(
                name = %name, files = files.len(), from = %from.display(), to = %to.display(),
                "moved to the completed folder"
            );
            // The new folder is shown by the live phase, with the completion.
            params.publish(|s| s.move_refused = None);
            Some(Phase::Checking(next))
        }
        Ok(MoveOutcome::NotMoved { reasons }) => {
            let why = match reasons.as_slice() {
                [(path, why), rest @ ..] => {
                    let more = if rest.is_empty() {
                        String::new()
                    } else {
                        format!(" (and {} more)", rest.len())
                    };
                    format!("{}: {why}{more}", path.display())
                }
                [] => "no reason given".to_string(),
            };
            refused(params, &name, &to, why);
            Some(Phase::Checking(next))
        }
        Err(StorageError::NotSupported(what)) => {
            refused(
                params,
                &name,
                &to,
                format!("this storage backend cannot do it ({what})"),
            );
            Some(Phase::Checking(next))
        }
        Err(e) => {
            tracing::error!(name = %name, to = %to.display(), error = %e, "move to the completed folder failed");
            Some(Phase::Failed(format!(
                "cannot move to the completed folder {}: {e}; the files stay in {}",
                to.display(),
                params.download_dir.display()
            )))
        }
    }
}

/// Nothing moved: say why, and seed from where it is.
fn refused(params: &TorrentParams, name: &str, to: &std::path::Path, why: String) {
    tracing::warn!(
        name = %name, to = %to.display(), reason = %why,
        "not moved to the completed folder; seeding from where it is"
    );
    let note = format!("not moved to {}: {why}", to.display());
    params.publish(|s| s.move_refused = Some(note));
}

/// Drop our handle on the storage once it is the last one; `false` if others still hold it
/// after [`RELEASE_WAIT`].
async fn release(storage: Arc<dyn Storage>) -> bool {
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    while Arc::strong_count(&storage) > 1 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(RELEASE_POLL).await;
    }
    drop(storage);
    true
}
