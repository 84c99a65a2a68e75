//! Who we upload to: tit-for-tat with an optimistic unchoke (BEP 3 "choking"). Sans-IO.
//! (Stub: API fixed, implementation pending.)

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::picker::PeerKey;

/// How often the caller should call [`Choker::rechoke`].
pub const RECHOKE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one optimistic unchoke lasts before rotating.
pub const OPTIMISTIC_INTERVAL: Duration = Duration::from_secs(30);
/// Regular (rate-based) upload slots.
pub const REGULAR_SLOTS: usize = 4;

/// One peer as the choker sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerSample {
    /// The peer.
    pub key: PeerKey,
    /// Whether it wants data from us.
    pub interested: bool,
    /// Bytes/s it sends us (leeching criterion).
    pub download_rate: u64,
    /// Bytes/s we send it (seeding criterion).
    pub upload_rate: u64,
}

/// Upload slot allocator.
#[derive(Debug, Default)]
pub struct Choker {}

impl Choker {
    /// A choker with no optimistic peer yet.
    pub fn new() -> Self {
        Choker {}
    }
    /// Decide the set of unchoked peers now.
    pub fn rechoke(
        &mut self,
        now: Instant,
        peers: &[PeerSample],
        seeding: bool,
        rng: &mut impl Rng,
    ) -> HashSet<PeerKey> {
        let _ = (now, peers, seeding, rng);
        unimplemented!()
    }
}
