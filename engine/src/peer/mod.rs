//! One peer connection, after the transport has connected: MSE/PE encryption when the policy
//! and the peer agree (`connect.rs` decides, `mse/` runs it), the BEP 3 handshake
//! (`handshake.rs`), then the protocol ([`proto::PeerProto`], sans-IO) joined to the stream by
//! a thin tokio driver (`driver.rs`, [`run_peer`]). Every decision about *what* to request or
//! whom to choke is taken by the torrent task, which talks to a connection through bounded
//! channels: [`PeerCommand`]s in, [`PeerEvent`]s out.
//!
//! Uploads are served by the connection directly (the torrent task is not involved per block):
//! the protocol checks a request (range, 16 KiB cap, piece present, peer unchoked or the piece
//! allowed-fast, BEP 6) and the driver answers it from storage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::ratelimit::RateLimiter;
use crate::storage::{Layout, Storage, StorageError};
use crate::transport::BoxStream;
use crate::types::{Bitfield, BitfieldError, BlockRef, InfoHash, PeerId};
use crate::wire::{Handshake, Message, WireError};

mod connect;
mod driver;
pub mod fast;
mod handshake;
pub mod mse;
pub mod proto;

pub use connect::{DialError, Dialer, Encryption, EncryptionPolicy, MAX_REMEMBERED_ADDRESSES};
pub use driver::run_peer;
pub use handshake::{
    handshake_incoming, handshake_outgoing, read_handshake, read_handshake_incoming,
    HandshakeError, FIRST_BYTE_TIMEOUT, HANDSHAKE_TIMEOUT,
};
pub use proto::{PeerProto, ProtoConfig, Transmit};

/// Identifies a connection within its torrent.
pub type PeerKey = crate::picker::PeerKey;

/// What a peer connection tells its torrent task.
#[derive(Debug)]
pub enum PeerEvent {
    /// The peer sent its bitfield (already validated against the piece count), or a BEP 6
    /// have-all (then every bit is set). Only pieces new to the connection arrive this way.
    Bitfield(Bitfield),
    /// The peer has a new piece (index validated).
    Have(u32),
    /// The peer choked us: outstanding requests are void, unless the connection speaks the fast
    /// extension (BEP 6): then the peer rejects each one it will not serve
    /// ([`PeerEvent::Rejected`]) and serves its allowed-fast pieces.
    Choke,
    /// The peer unchoked us.
    Unchoke,
    /// The peer wants our data.
    Interested,
    /// The peer no longer wants our data.
    NotInterested,
    /// The peer queues at most this many of our requests (`reqq`, BEP 10).
    RequestLimit(u32),
    /// A block arrived (not yet checked against the picker).
    Block(BlockRef, Bytes),
    /// BEP 6: the peer will not serve this request (in range; not checked against what we
    /// asked for).
    Rejected(BlockRef),
    /// BEP 6: the peer serves this piece (in range) even while it chokes us. Each piece once.
    AllowedFast(u32),
    /// A BEP 10 extension message under one of the ids we advertised (`id` 0: the peer's
    /// extended handshake, without its id byte). Only produced once the torrent advertises
    /// extensions ([`ProtoConfig::local_extension_ids`]).
    Extended {
        /// Our id for the extension (0: the extended handshake).
        id: u8,
        /// The message after its id byte (bencoded, maybe followed by raw data).
        payload: Bytes,
    },
    /// Storage could not read a block we advertised (file deleted, truncated, unreadable): we
    /// no longer have that data. The connection ends right after.
    ReadFailed(BlockRef, StorageError),
    /// The connection ended.
    Closed(CloseReason),
}

/// Commands from the torrent task to a connection.
#[derive(Debug)]
pub enum PeerCommand {
    /// Send these messages.
    Send(Vec<Message>),
    /// Choke or unchoke the peer (tracked for upload checks).
    SetChoking(bool),
    /// Send a BEP 10 extension message under the peer's `id` for it (from its `m` dictionary).
    SendExtended {
        /// The peer's id for the extension.
        id: u8,
        /// The message after the id byte.
        payload: Bytes,
    },
    /// End the connection.
    Close,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    /// A frame the codec refused (too long, wrong payload size).
    #[error("protocol error: {0}")]
    Protocol(WireError),
    /// A `have` beyond the last piece.
    #[error("have for piece {0} out of range")]
    HaveOutOfRange(u32),
    /// A bitfield of the wrong length or with spare bits set.
    #[error("bad bitfield: {0}")]
    BadBitfield(#[from] BitfieldError),
    /// A `piece` message outside the torrent.
    #[error("piece message out of range: {0:?}")]
    BlockOutOfRange(BlockRef),
    /// A request outside the torrent or over 16 KiB.
    #[error("invalid request {0:?}")]
    InvalidRequest(BlockRef),
    /// A BEP 6 message (this id) on a connection where the fast extension was not negotiated
    /// (BEP 6 and libtorrent close the connection).
    #[error("fast extension message {0} without the fast extension")]
    FastNotNegotiated(u8),
    /// Requests we could not serve, one after another, beyond any honest pipeline
    /// ([`proto::MAX_REFUSED_IN_A_ROW`]).
    #[error("{0} requests in a row we had to refuse")]
    RequestFlood(u32),
    /// Choke/interest flips beyond the allowed rate.
    #[error("choke/interest state flipping too fast")]
    FlipFlood,
    /// The peer said nothing for too long.
    #[error("idle timeout")]
    IdleTimeout,
    /// The peer closed the stream.
    #[error("connection closed by peer")]
    ClosedByPeer,
    /// The torrent asked us to close.
    #[error("closed by us")]
    ClosedByUs,
    /// Reading the stream failed.
    #[error("read error: {0}")]
    Read(std::io::Error),
    /// Writing the stream failed or stalled.
    #[error("write error: {0}")]
    Write(std::io::Error),
    /// Storage could not read a block we advertised (also reported as
    /// [`PeerEvent::ReadFailed`], with the storage error).
    #[error("storage read failed for {0:?}")]
    StorageReadFailed(BlockRef),
    /// The torrent task is gone.
    #[error("torrent stopped")]
    TorrentStopped,
    /// One of the connection's own tasks stopped or panicked.
    #[error("{task} stopped: {detail}")]
    TaskStopped {
        /// Which task.
        task: &'static str,
        /// What happened to it.
        detail: String,
    },
}

/// Counters and flags shared between a connection's tasks and its torrent.
#[derive(Debug, Default)]
pub struct PeerShared {
    /// Whether we choke the peer (mirrors the protocol's state, for readers outside it).
    pub am_choking: AtomicBool,
    /// Payload bytes we sent.
    pub uploaded: AtomicU64,
}

/// A handshaken connection, ready to be driven.
pub struct Connection {
    /// The byte stream, positioned after both handshakes.
    pub stream: BoxStream,
    /// Remote address.
    pub addr: SocketAddr,
    /// The peer's handshake.
    pub remote: Handshake,
    /// Name of the transport that carried it.
    pub transport: String,
    /// How its payload travels (MSE/PE).
    pub encryption: Encryption,
}

/// Everything a connection's tasks need.
pub struct PeerContext {
    /// Key within the torrent.
    pub key: PeerKey,
    /// Torrent geometry, for request and block checks.
    pub layout: Arc<Layout>,
    /// Where uploads are read from.
    pub storage: Arc<dyn Storage>,
    /// Events to the torrent task.
    pub events: mpsc::Sender<(PeerKey, PeerEvent)>,
    /// Shared flags and counters.
    pub shared: Arc<PeerShared>,
    /// Our bitfield to send first (None: we have nothing). With the fast extension it becomes
    /// have-all or have-none when it is full or empty.
    pub initial_bitfield: Option<Bitfield>,
    /// Torrent identity (for logs).
    pub info_hash: InfoHash,
    /// Our id (unused for now beyond logs).
    pub peer_id: PeerId,
    /// Session-wide limit on bytes received (paid after each read).
    pub download_limit: Arc<RateLimiter>,
    /// Session-wide limit on block data sent (paid before each write).
    pub upload_limit: Arc<RateLimiter>,
    /// Our BEP 10 extended handshake (which extensions we speak with this torrent's peers).
    pub extended_handshake: crate::extension::ExtendedHandshake,
}
