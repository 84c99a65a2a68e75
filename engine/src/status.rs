//! Snapshots the torrent task publishes (through `tokio::sync::watch`) for the cli to show.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::queue::{GoalReached, SeedGoals};
use crate::selection::FilePriority;
use crate::tracker::TrackerStatus;
use crate::types::{Bitfield, InfoHash};

/// Where a torrent is in its life.
#[derive(Clone, Debug, PartialEq)]
pub enum TorrentState {
    /// Added from a magnet link: asking peers for the metadata (BEP 9). Sizes, pieces and
    /// files are unknown until it arrives.
    FetchingMetadata,
    /// Opening storage and, if resume state could not be trusted, hashing existing data.
    Checking {
        /// Fraction of pieces checked, 0.0–1.0.
        progress: f32,
    },
    /// Fetching missing pieces.
    Downloading,
    /// Every wanted piece is here (every piece, unless the user skipped files: then
    /// [`TorrentStatus::have_bytes`] may be less than the total); serving others.
    Seeding,
    /// Stopped by the user; nothing is transferred.
    Paused,
    /// Waiting for a slot under the session's limits on active downloads or seeds: no
    /// connections, no announces. Starts by itself in queue order.
    Queued,
    /// Stopped seeding at one of its goals (`stopped` was announced); stays so across
    /// restarts until resumed, which turns that goal off for this torrent.
    Finished(GoalReached),
    /// Stopped by an error (disk full, permission denied, …); verified data is kept.
    Error(String),
}

impl TorrentState {
    /// A short lower-case word: metadata, checking, downloading, seeding, paused, queued,
    /// done, error.
    pub fn label(&self) -> &'static str {
        match self {
            TorrentState::FetchingMetadata => "metadata",
            TorrentState::Checking { .. } => "checking",
            TorrentState::Downloading => "downloading",
            TorrentState::Seeding => "seeding",
            TorrentState::Paused => "paused",
            TorrentState::Queued => "queued",
            TorrentState::Finished(_) => "done",
            TorrentState::Error(_) => "error",
        }
    }
}

/// One torrent as the user sees it.
#[derive(Clone, Debug)]
pub struct TorrentStatus {
    /// Display name.
    pub name: String,
    /// Identity.
    pub info_hash: InfoHash,
    /// Lifecycle state.
    pub state: TorrentState,
    /// Size of all files.
    pub total_bytes: u64,
    /// Bytes in verified pieces.
    pub have_bytes: u64,
    /// Bytes in wanted pieces: pieces holding bytes of a file that is not skipped (pieces
    /// shared with a skipped file count whole). Equal to `total_bytes` when nothing is skipped.
    pub wanted_bytes: u64,
    /// Bytes in verified wanted pieces: progress and ETA against what the user wants.
    pub wanted_have_bytes: u64,
    /// Pieces are fetched in order (for playing while downloading).
    pub sequential: bool,
    /// Verified pieces.
    pub pieces_have: u32,
    /// All pieces.
    pub pieces_total: u32,
    /// Payload bytes/s received (recent average).
    pub download_rate: u64,
    /// Payload bytes/s sent (recent average).
    pub upload_rate: u64,
    /// Payload bytes received this session.
    pub downloaded: u64,
    /// Payload bytes sent this session.
    pub uploaded: u64,
    /// Payload bytes received over every run (kept in the state folder).
    pub all_time_downloaded: u64,
    /// Payload bytes sent over every run (kept in the state folder).
    pub all_time_uploaded: u64,
    /// When the torrent was first added, in seconds since the unix epoch.
    pub added_at: u64,
    /// Time spent seeding over every run.
    pub seeding_time: Duration,
    /// Its own seeding goals (`Goal::Global`: the session's default applies).
    pub seed_goals: SeedGoals,
    /// Its place in the session's queue, from 0 (lower starts first).
    pub queue_position: u64,
    /// Bytes received in pieces that failed their hash.
    pub wasted: u64,
    /// Open peer connections.
    pub peers_connected: usize,
    /// Peer addresses known (connected or not).
    pub peers_known: usize,
    /// Hosts banned this session for sending data that failed its hash.
    pub peers_banned: usize,
    /// Last tracker problem, if the last announce failed.
    pub tracker_error: Option<String>,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// Files with their own progress.
    pub files: Vec<FileStatus>,
    /// Every tracker with its last result.
    pub trackers: Vec<TrackerStatus>,
    /// When the next regular announce is due.
    pub next_announce: Option<Instant>,
    /// Verified pieces (the piece map).
    pub pieces: Bitfield,
    /// When this session finished downloading it (its last piece verified; the moment it
    /// announces `completed`). `None` while downloading, and for a torrent that was complete
    /// when it started.
    pub completed_at: Option<std::time::SystemTime>,
    /// The folder its files are in (paths in [`TorrentStatus::files`] are relative to it): the
    /// session's download folder, or the completed folder they were moved to.
    pub download_dir: PathBuf,
    /// Its own completed folder, if set ([`crate::TorrentHandle::set_completed_dir`]);
    /// `None`: the session's ([`crate::SessionConfig::completed_dir`]) applies.
    pub completed_dir: Option<PathBuf>,
    /// Its files are being moved to this folder right now (no peers meanwhile).
    pub moving_to: Option<PathBuf>,
    /// Why it was not moved to its completed folder when it completed (files it did not write
    /// itself, or a storage backend that cannot move); it seeds from where it is.
    pub move_refused: Option<String>,
}

/// One connected peer.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    /// Remote address.
    pub addr: SocketAddr,
    /// Transport name (`tcp`, `utp`, …).
    pub transport: String,
    /// How the connection's payload travels (MSE/PE).
    pub encryption: crate::peer::Encryption,
    /// Client, from its peer id (e.g. `-lt2080-` → `lt 2080`).
    pub client: String,
    /// We dialled it (true) or it dialled us.
    pub outgoing: bool,
    /// Payload bytes/s from it.
    pub download_rate: u64,
    /// Payload bytes/s to it.
    pub upload_rate: u64,
    /// We choke it.
    pub am_choking: bool,
    /// We want its data.
    pub am_interested: bool,
    /// It chokes us.
    pub peer_choking: bool,
    /// It wants our data.
    pub peer_interested: bool,
    /// It has not sent what we asked for in a while.
    pub snubbed: bool,
    /// Fraction of the torrent it has, 0.0–1.0.
    pub progress: f32,
    /// Which extensions the connection speaks.
    pub extensions: PeerExtensionFlags,
}

/// Extensions a connection speaks: BEP 6 and BEP 10 when both handshakes offer them, and the
/// BEP 10 extensions the peer's extended handshake names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerExtensionFlags {
    /// The fast extension (BEP 6).
    pub fast: bool,
    /// The extension protocol (BEP 10).
    pub extension_protocol: bool,
    /// Metadata exchange (BEP 9, `ut_metadata`).
    pub ut_metadata: bool,
    /// Peer exchange (BEP 11, `ut_pex`).
    pub ut_pex: bool,
}

/// One file of the torrent.
#[derive(Clone, Debug)]
pub struct FileStatus {
    /// Relative path under the downloads folder.
    pub path: PathBuf,
    /// Length in bytes.
    pub length: u64,
    /// Bytes of it in verified pieces.
    pub have_bytes: u64,
    /// The user's choice for it.
    pub priority: FilePriority,
}

impl TorrentStatus {
    /// A status for a torrent that has just been added.
    pub fn new(name: String, info_hash: InfoHash, total_bytes: u64, pieces_total: u32) -> Self {
        TorrentStatus {
            name,
            info_hash,
            state: TorrentState::Checking { progress: 0.0 },
            total_bytes,
            have_bytes: 0,
            wanted_bytes: total_bytes,
            wanted_have_bytes: 0,
            sequential: false,
            pieces_have: 0,
            pieces_total,
            download_rate: 0,
            upload_rate: 0,
            downloaded: 0,
            uploaded: 0,
            all_time_downloaded: 0,
            all_time_uploaded: 0,
            added_at: 0,
            seeding_time: Duration::ZERO,
            seed_goals: SeedGoals::default(),
            queue_position: 0,
            wasted: 0,
            peers_connected: 0,
            peers_known: 0,
            peers_banned: 0,
            tracker_error: None,
            peers: Vec::new(),
            files: Vec::new(),
            trackers: Vec::new(),
            download_dir: PathBuf::new(),
            completed_dir: None,
            moving_to: None,
            move_refused: None,
            next_announce: None,
            pieces: Bitfield::new(pieces_total as usize),
            completed_at: None,
        }
    }

    /// All-time share ratio: see [`ratio`].
    pub fn ratio(&self) -> f64 {
        ratio(
            self.all_time_uploaded,
            self.all_time_downloaded,
            self.total_bytes,
        )
    }

    /// Completion, 0.0–1.0, by bytes (0 while the metadata is unknown).
    pub fn progress(&self) -> f64 {
        if self.state == TorrentState::FetchingMetadata {
            0.0
        } else if self.total_bytes == 0 {
            1.0
        } else {
            self.have_bytes as f64 / self.total_bytes as f64
        }
    }

    /// Completion of what the user wants, 0.0–1.0, by bytes: [`TorrentStatus::progress`]
    /// counted over wanted pieces only (1.0 when nothing is wanted).
    pub fn wanted_progress(&self) -> f64 {
        if self.state == TorrentState::FetchingMetadata {
            0.0
        } else if self.wanted_bytes == 0 {
            1.0
        } else {
            self.wanted_have_bytes as f64 / self.wanted_bytes as f64
        }
    }
}

/// Share ratio: all-time uploaded / max(all-time downloaded, size). Never dividing by less
/// than the size means a torrent seeded from data already on disk (nothing downloaded) still
/// has a meaningful ratio (uploaded / size, as Transmission and qBittorrent do for such
/// torrents), and bytes downloaded twice (failed
/// hashes, a recheck that lost data) count against it. 0 while nothing is known (a magnet
/// without metadata that downloaded nothing).
pub fn ratio(uploaded: u64, downloaded: u64, total_bytes: u64) -> f64 {
    let base = downloaded.max(total_bytes);
    if base == 0 {
        0.0
    } else {
        uploaded as f64 / base as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_divides_by_the_larger_of_downloaded_and_size() {
        assert_eq!(ratio(0, 0, 0), 0.0);
        assert_eq!(ratio(50, 0, 100), 0.5); // seeded from disk
        assert_eq!(ratio(300, 200, 100), 1.5); // downloaded more than its size
        assert_eq!(ratio(100, 0, 0), 0.0); // size unknown yet
    }

    #[test]
    fn progress_of_what_is_wanted() {
        let mut s = TorrentStatus::new("t".into(), InfoHash([1; 20]), 1000, 10);
        assert_eq!((s.wanted_bytes, s.wanted_progress()), (1000, 0.0));
        // 300 of 1000 bytes skipped; 350 of the 700 wanted are here, and 50 more of others.
        s.state = TorrentState::Downloading;
        s.wanted_bytes = 700;
        s.wanted_have_bytes = 350;
        s.have_bytes = 400;
        assert_eq!(s.wanted_progress(), 0.5);
        assert_eq!(s.progress(), 0.4);
        s.wanted_bytes = 0; // everything skipped: nothing left to want
        assert_eq!(s.wanted_progress(), 1.0);
        s.state = TorrentState::FetchingMetadata;
        assert_eq!(s.wanted_progress(), 0.0);
    }
}
