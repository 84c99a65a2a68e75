//! BEP 10 extensions on live connections: serving the metadata (BEP 9, so a magnet leecher can
//! start from us alone) and peer exchange (BEP 11, `ut_pex`). The codecs and their limits live in
//! `crate::metadata` and `crate::pex`; this module only ties them to the torrent's peers.
//!
//! Bounds: a peer gets metadata pieces within its `ServeBudget` (then rejects); it may send one
//! PEX message per `PexIntake` window (others are dropped unread), and each message adds at most
//! 50 addresses per family to the address book (which has its own cap); we send each peer at
//! most one PEX message a minute. Private torrents (BEP 27) speak no PEX.

use std::net::SocketAddr;
use std::time::Instant;

use crate::torrent::now;

use bytes::Bytes;

use super::Torrent;
use crate::extension::{ExtendedHandshake, Extension, ExtensionIds};
use crate::metadata::{self, MetadataMessage, ServeBudget};
use crate::peer::proto::{CLIENT_NAME, MAX_QUEUED_UPLOADS};
use crate::peer::{PeerCommand, PeerKey};
use crate::pex::{PexFlags, PexIntake, PexMessage, PexState};

/// What we know of one peer's extensions.
#[derive(Default)]
pub(super) struct PeerExtensions {
    /// The peer's ids for the extensions (from its extended handshake).
    theirs: ExtensionIds,
    /// The port it listens on (`p`), for peers that dialled us.
    listen_port: Option<u16>,
    pex_out: PexState,
    pex_in: PexIntake,
    serving: ServeBudget,
}

impl PeerExtensions {
    /// The peer's ids for the extensions (none until its extended handshake arrives).
    pub(super) fn theirs(&self) -> ExtensionIds {
        self.theirs
    }
}

impl super::Peer {
    /// Where this peer accepts connections: the address we dialled, or the address and
    /// listening port (BEP 10 `p`) of a peer that dialled us.
    pub(super) fn listen_addr(&self) -> Option<SocketAddr> {
        if self.outgoing {
            Some(self.addr)
        } else {
            Some(SocketAddr::new(self.addr.ip(), self.ext.listen_port?))
        }
    }
}

impl Torrent {
    /// Our extended handshake for this torrent: `ut_metadata` with the size we can serve,
    /// `ut_pex` unless private or turned off.
    pub(super) fn our_extended_handshake(&self) -> ExtendedHandshake {
        let size = u32::try_from(self.metainfo.info_bytes.len()).ok();
        let mut hs = ExtendedHandshake::ours(
            size,
            MAX_QUEUED_UPLOADS as u32,
            Some(self.p.listen_port),
            CLIENT_NAME,
        );
        if !self.pex_enabled() {
            hs.ids.ut_pex = None;
        }
        hs
    }

    /// BEP 27: no peer exchange for private torrents.
    pub(super) fn pex_enabled(&self) -> bool {
        self.p.pex && !self.metainfo.info.private
    }

    /// A BEP 10 message under one of our ids (0: the peer's extended handshake).
    pub(super) fn on_extended(&mut self, key: PeerKey, id: u8, payload: Bytes) {
        let now = now();
        if id == 0 {
            match ExtendedHandshake::parse(&payload) {
                Ok(hs) => {
                    if let Some(peer) = self.peers.get_mut(&key) {
                        peer.ext.theirs = hs.ids;
                        peer.ext.listen_port = hs.port;
                    }
                }
                Err(e) => tracing::debug!(peer = key, error = %e, "extended handshake ignored"),
            }
            return;
        }
        match Extension::from_local_id(id) {
            Some(Extension::Metadata) => self.on_metadata_message(key, payload, now),
            Some(Extension::Pex) if self.pex_enabled() => self.on_pex_message(key, payload, now),
            _ => {}
        }
    }

    fn on_metadata_message(&mut self, key: PeerKey, payload: Bytes, now: Instant) {
        let pieces = metadata::piece_count(self.metainfo.info_bytes.len() as u32);
        let info = self.metainfo.info_bytes.clone();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(their_id) = peer.ext.theirs.ut_metadata else {
            return; // it never said how to answer
        };
        let piece = match MetadataMessage::decode(payload) {
            Ok(Some(MetadataMessage::Request { piece })) => piece,
            // Data and rejects answer requests we never sent while live: ignored.
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(addr = %peer.addr, error = %e, "bad ut_metadata message ignored");
                return;
            }
        };
        let reply = if peer.ext.serving.allow(now, pieces) {
            metadata::serve(&info, piece)
        } else {
            MetadataMessage::Reject { piece }
        };
        let _ = peer.tx.try_send(PeerCommand::SendExtended {
            id: their_id,
            payload: reply.encode(),
        });
    }

    fn on_pex_message(&mut self, key: PeerKey, payload: Bytes, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if !peer.ext.pex_in.accept(now) {
            return; // more often than BEP 11 allows: dropped unread
        }
        match PexMessage::decode(&payload) {
            Ok(msg) => {
                let found: Vec<SocketAddr> = msg.added.into_iter().map(|(a, _)| a).collect();
                if !found.is_empty() {
                    tracing::debug!(addr = %peer.addr, peers = found.len(), "peer exchange");
                    self.add_known(found);
                    self.dial_new_now();
                }
            }
            Err(e) => tracing::debug!(addr = %peer.addr, error = %e, "bad ut_pex message ignored"),
        }
    }

    /// Send each peer that speaks PEX what changed in our peer set (at most once a minute).
    pub(super) fn send_pex(&mut self, now: Instant) {
        if !self.pex_enabled() {
            return;
        }
        // Addresses others can dial: where we dialled, or an incoming peer's listen port.
        let current: Vec<(PeerKey, SocketAddr, PexFlags)> = self
            .peers
            .iter()
            .filter_map(|(key, p)| {
                let addr = p.listen_addr()?;
                let mut flags = 0;
                if p.outgoing {
                    flags |= PexFlags::REACHABLE.0;
                }
                if p.bitfield.is_full() {
                    flags |= PexFlags::SEED.0;
                }
                if p.transport == "utp" {
                    flags |= PexFlags::UTP.0;
                }
                Some((*key, addr, PexFlags(flags)))
            })
            .collect();
        for (key, peer) in self.peers.iter_mut() {
            let Some(id) = peer.ext.theirs.ut_pex else {
                continue;
            };
            let others: Vec<(SocketAddr, PexFlags)> = current
                .iter()
                .filter(|(k, _, _)| k != key)
                .map(|(_, a, f)| (*a, *f))
                .collect();
            if let Some(msg) = peer.ext.pex_out.poll(now, &others) {
                let _ = peer.tx.try_send(PeerCommand::SendExtended {
                    id,
                    payload: msg.encode(),
                });
            }
        }
    }
}
