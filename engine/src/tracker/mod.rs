//! Trackers: HTTP/HTTPS (BEP 3, BEP 23 compact, BEP 7 `peers6`), UDP (BEP 15), tiers (BEP 12).
//! (Stub: API fixed, implementation pending.)

use std::net::SocketAddr;
use std::time::Duration;

use crate::types::{InfoHash, PeerId};

/// The `event` of an announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Regular re-announce.
    None,
    /// First announce.
    Started,
    /// Download finished.
    Completed,
    /// Shutting down.
    Stopped,
}

/// Everything an announce says about us.
#[derive(Clone, Debug)]
pub struct AnnounceRequest {
    /// Torrent.
    pub info_hash: InfoHash,
    /// Our id.
    pub peer_id: PeerId,
    /// Our listening port.
    pub port: u16,
    /// Bytes uploaded this session.
    pub uploaded: u64,
    /// Bytes downloaded this session.
    pub downloaded: u64,
    /// Bytes still missing.
    pub left: u64,
    /// Event.
    pub event: Event,
    /// Peers wanted (`None`: tracker default).
    pub num_want: Option<u32>,
    /// Random key identifying us across IP changes.
    pub key: u32,
}

/// A successful announce.
#[derive(Clone, Debug, Default)]
pub struct AnnounceResponse {
    /// When to announce next.
    pub interval: Duration,
    /// Announce no sooner than this.
    pub min_interval: Option<Duration>,
    /// Peers (IPv4 and IPv6), capped.
    pub peers: Vec<SocketAddr>,
    /// `warning message`.
    pub warning: Option<String>,
    /// Seeders, if the tracker said.
    pub complete: Option<u32>,
    /// Leechers, if the tracker said.
    pub incomplete: Option<u32>,
}

/// Why an announce failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The tracker answered with `failure reason`.
    #[error("tracker refused: {0}")]
    Failure(String),
    /// Placeholder until the client lands.
    #[error("{0}")]
    Other(String),
}

/// Announces to HTTP(S) and UDP trackers. One per session; cheap to share.
#[derive(Clone, Debug)]
pub struct TrackerClient {}

impl TrackerClient {
    /// A client with default timeouts.
    pub fn new() -> Self {
        TrackerClient {}
    }
    /// Announce to one tracker URL (`http`, `https` or `udp`).
    pub async fn announce(
        &self,
        url: &str,
        request: &AnnounceRequest,
    ) -> Result<AnnounceResponse, TrackerError> {
        let _ = (url, request);
        unimplemented!()
    }
}

impl Default for TrackerClient {
    fn default() -> Self {
        Self::new()
    }
}

/// BEP 12 tiers: try trackers in order, tiers shuffled once, a responding tracker moves to the
/// front of its tier.
#[derive(Clone, Debug)]
pub struct TrackerTiers {}

impl TrackerTiers {
    /// Tiers as in the torrent (each tier shuffled here).
    pub fn new(tiers: Vec<Vec<String>>) -> Self {
        let _ = tiers;
        TrackerTiers {}
    }
    /// Whether there is any tracker at all.
    pub fn is_empty(&self) -> bool {
        unimplemented!()
    }
    /// Announce per BEP 12; returns the URL that answered and its response, or the last error.
    pub async fn announce(
        &mut self,
        client: &TrackerClient,
        request: &AnnounceRequest,
    ) -> Result<(String, AnnounceResponse), TrackerError> {
        let _ = (client, request);
        unimplemented!()
    }
}
