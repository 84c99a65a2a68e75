//! ZigTorrent's engine: the BitTorrent protocol and the session that runs torrents.
//!
//! The engine owns no sockets or files of its own beyond trackers: peers are reached through a
//! [`Transport`] and bytes are kept by a [`Storage`], both chosen at run time by name from a
//! [`Registry`].
//!
//! Module map: [`bencode`] (bounded scanner) → [`metainfo`] (`.torrent` files) →
//! [`tracker`] (peer discovery) → [`wire`] (BEP 3 codec) → [`picker`] / [`choker`] (decisions)
//! → [`session`] (tasks that tie them to transports and storage). Magnets and extensions,
//! sans-IO: [`magnet`] (URIs) · [`extension`] (BEP 10 handshake, ids) · [`metadata`] (BEP 9
//! fetch and serve) · [`pex`] (BEP 11). The user's file choice: [`selection`]. Which torrents
//! run: [`queue`] (seeding goals, the download and seed queue; decisions only, the session
//! applies them).

pub mod bencode;
pub mod choker;
pub mod dht;
mod durable;
pub mod extension;
pub mod hash;
pub mod lsd;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod peer;
pub mod pex;
pub mod picker;
pub mod plugin;
pub mod queue;
pub mod ratelimit;
mod recheck;
pub mod registry;
pub mod selection;
pub mod session;
pub mod status;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
mod torrent;
pub mod tracker;
pub mod transport;
pub mod transport_pair;
pub mod types;
pub mod wire;

pub use magnet::Magnet;
pub use metainfo::Metainfo;
pub use peer::{Encryption, EncryptionPolicy};
pub use queue::{Goal, GoalReached, QueueLimits, QueueMove, SeedGoals};
pub use ratelimit::RateLimiter;
pub use registry::{Origin, Registry};
pub use selection::{FilePriority, SelectionError, TorrentOptions};
pub use session::{AddTorrent, Session, SessionConfig, SessionError, StatusChanges, TorrentHandle};
pub use status::{FileStatus, PeerExtensionFlags, PeerStatus, TorrentState, TorrentStatus};
pub use storage::memory::MemoryBackend;
pub use storage::{
    DeletedData, Layout, MoveOutcome, PathConflict, Resume, Storage, StorageBackend, StorageError,
    StorageSpec,
};
pub use transport::{BoxStream, Listener, Transport, TransportError, TransportOptions};
pub use types::{Bitfield, BlockRef, InfoHash, PeerId, PieceIndex};
