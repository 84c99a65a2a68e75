//! One peer connection: handshake, then a reader task and a writer task over any transport
//! stream. The drivers only move and check messages; every decision about *what* to request or
//! whom to choke is taken by the torrent task, which talks to them through bounded channels.
//!
//! Uploads are served here directly (the torrent task is not involved per block): a request is
//! checked (range, 16 KiB cap, piece present, peer unchoked) and answered from storage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::ratelimit::RateLimiter;
use crate::storage::{Layout, Storage, StorageError};
use crate::transport::BoxStream;
use crate::types::{Bitfield, BlockRef, InfoHash, PeerId, BLOCK_SIZE};
use crate::wire::{self, Handshake, Message, HANDSHAKE_LEN};

/// How long a peer may take to send its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an incoming connection may stay silent before its first byte. A real client sends
/// its handshake at once (it dialled us to talk); a socket that says nothing only holds a
/// half-open slot, so it gets a fraction of [`HANDSHAKE_TIMEOUT`].
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// State flips (choke/unchoke, interested/not interested) a peer may make per second, sustained.
/// Honest clients flip on their rechoke (libtorrent: every 15 s) and when pieces arrive; a few
/// per second leaves room for bursts after a bitfield while a flood is cut off quickly.
const FLIP_RATE: f64 = 4.0;
/// Flips a peer may make in a burst before [`FLIP_RATE`] applies.
const FLIP_BURST: f64 = 40.0;
/// BEP 3 suggests keep-alives every two minutes; silence for longer than this ends the peer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// We send a keep-alive after this much silence on our side.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(90);
/// Requests a peer may have queued with us; beyond this they are dropped. We tell peers this
/// number (`reqq` in our BEP 10 handshake), and libtorrent and Transmission keep below it;
/// without it Transmission pipelines by rate (over a thousand requests at 2 MB/s) and stalls on
/// the ones we drop. Queued requests cost a few bytes each: data is read only
/// [`READS_IN_FLIGHT`] at a time.
const MAX_QUEUED_UPLOADS: usize = 1024;

/// Our name in the extended handshake (`v`).
const CLIENT_NAME: &str = concat!("ZigTorrent ", env!("CARGO_PKG_VERSION"));
/// Disk reads for one peer's requests running at once (and blocks read but not yet handed to
/// the writer): bounds what a peer that requests but never reads can make us hold.
const READS_IN_FLIGHT: usize = 16;
/// Read buffer per connection. Blocks are split off it without copying, so each buffered
/// block keeps its buffer alive: a small buffer bounds how much junk between blocks a peer
/// can make us hold (at most 4× the block data).
const READ_BUFFER: usize = 64 * 1024;
/// A write that makes no progress for this long ends the connection (a peer that never
/// reads must not hold our upload queue and its slot forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes the writer gathers before one write call.
const WRITE_BATCH: usize = 256 * 1024;

/// Identifies a connection within its torrent.
pub type PeerKey = crate::picker::PeerKey;

/// What a peer driver tells its torrent task.
#[derive(Debug)]
pub enum PeerEvent {
    /// The peer sent its bitfield (already validated against the piece count).
    Bitfield(Bitfield),
    /// The peer has a new piece (index validated).
    Have(u32),
    /// The peer choked us: outstanding requests are void.
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
    /// Storage could not read a block we advertised (file deleted, truncated, unreadable): we
    /// no longer have that data. The connection ends right after.
    ReadFailed(BlockRef, StorageError),
    /// The connection ended.
    Closed(String),
}

/// Commands from the torrent task to a peer's writer.
#[derive(Debug)]
pub enum PeerCommand {
    /// Send these messages.
    Send(Vec<Message>),
    /// Choke or unchoke the peer (tracked for upload checks).
    SetChoking(bool),
    /// End the connection.
    Close,
}

/// Counters and flags shared between a connection's tasks and its torrent.
#[derive(Debug, Default)]
pub struct PeerShared {
    /// Whether we choke the peer (requests are ignored while true).
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
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer took too long.
    #[error("handshake timed out")]
    Timeout,
    /// Not a BitTorrent handshake.
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    /// The peer asked for another torrent.
    #[error("peer wants another torrent")]
    WrongInfoHash,
    /// We connected to ourselves.
    #[error("connected to ourselves")]
    SelfConnection,
}

/// Read the 68-byte handshake off `stream`.
pub async fn read_handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Handshake, HandshakeError> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    Ok(Handshake::decode(&buf)?)
}

/// Read the handshake of a peer that dialled us: its first byte within `first_byte`, the whole
/// handshake within [`HANDSHAKE_TIMEOUT`] of the start.
pub async fn read_handshake_incoming<S: AsyncRead + Unpin>(
    stream: &mut S,
    first_byte: Duration,
) -> Result<Handshake, HandshakeError> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = [0u8; HANDSHAKE_LEN];
    let n = tokio::time::timeout(first_byte.min(HANDSHAKE_TIMEOUT), stream.read(&mut buf))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    if n == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    tokio::time::timeout_at(deadline, stream.read_exact(&mut buf[n..]))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    Ok(Handshake::decode(&buf)?)
}

/// Outgoing side: send ours, read theirs, check it.
pub async fn handshake_outgoing(
    mut stream: BoxStream,
    ours: Handshake,
) -> Result<(BoxStream, Handshake), HandshakeError> {
    stream.write_all(&ours.encode()).await?;
    let theirs = read_handshake(&mut stream).await?;
    check_remote(&ours, &theirs)?;
    Ok((stream, theirs))
}

/// Incoming side, after the session read their handshake and routed it here: answer with ours.
pub async fn handshake_incoming(
    mut stream: BoxStream,
    ours: Handshake,
    theirs: &Handshake,
) -> Result<BoxStream, HandshakeError> {
    check_remote(&ours, theirs)?;
    stream.write_all(&ours.encode()).await?;
    Ok(stream)
}

fn check_remote(ours: &Handshake, theirs: &Handshake) -> Result<(), HandshakeError> {
    if theirs.info_hash != ours.info_hash {
        return Err(HandshakeError::WrongInfoHash);
    }
    if theirs.peer_id == ours.peer_id {
        return Err(HandshakeError::SelfConnection);
    }
    Ok(())
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
    /// Our bitfield to send first (None: we have nothing).
    pub initial_bitfield: Option<Bitfield>,
    /// Torrent identity (for logs).
    pub info_hash: InfoHash,
    /// Our id (unused for now beyond logs).
    pub peer_id: PeerId,
    /// Session-wide limit on bytes received (paid after each read).
    pub download_limit: Arc<RateLimiter>,
    /// Session-wide limit on block data sent (paid before each write).
    pub upload_limit: Arc<RateLimiter>,
}

/// Run a connection until it ends; spawns a reader and writer and returns when both stop.
/// The final [`PeerEvent::Closed`] is always sent.
pub async fn run_peer(conn: Connection, ctx: PeerContext, commands: mpsc::Receiver<PeerCommand>) {
    let (rd, wr) = tokio::io::split(conn.stream);
    let (request_tx, request_rx) = mpsc::channel::<BlockRef>(MAX_QUEUED_UPLOADS);
    let (upload_tx, upload_rx) = mpsc::channel::<Upload>(READS_IN_FLIGHT);
    let key = ctx.key;
    let events = ctx.events.clone();
    let shared = ctx.shared.clone();
    let mut first = Vec::new();
    if let Some(bf) = &ctx.initial_bitfield {
        if bf.count_ones() > 0 {
            first.push(Message::Bitfield(Bytes::copy_from_slice(bf.as_bytes())));
        }
    }
    // BEP 10: the extended handshake goes right after the handshake (and our bitfield).
    if conn.remote.supports_extensions() {
        first.push(wire::extended_handshake(MAX_QUEUED_UPLOADS, CLIENT_NAME));
    }
    let upload_limit = ctx.upload_limit.clone();
    let mut writer = tokio::spawn(write_loop(
        wr,
        commands,
        upload_rx,
        shared,
        first,
        upload_limit,
    ));
    let mut server = tokio::spawn(serve_uploads(
        request_rx,
        ctx.storage.clone(),
        upload_tx,
        (key, events.clone()),
    ));
    let mut reader = tokio::spawn(read_loop(rd, ctx, request_tx));
    // Whichever ends first ends the connection.
    let reason = tokio::select! {
        r = &mut reader => r.unwrap_or_else(|e| format!("reader panicked: {e}")),
        w = &mut writer => w.unwrap_or_else(|e| format!("writer panicked: {e}")),
        u = &mut server => u.unwrap_or_else(|e| format!("upload server panicked: {e}")),
    };
    reader.abort();
    writer.abort();
    server.abort();
    let _ = events.send((key, PeerEvent::Closed(reason))).await;
}

/// Read the blocks a peer requested, several at a time but handed to the writer in request
/// order. Reading here rather than in the reader keeps disk latency out of the receive path
/// and lets reads overlap.
async fn serve_uploads(
    requests: mpsc::Receiver<BlockRef>,
    storage: Arc<dyn Storage>,
    out: mpsc::Sender<Upload>,
    (key, events): (PeerKey, mpsc::Sender<(PeerKey, PeerEvent)>),
) -> String {
    let requests = futures::stream::unfold(requests, |mut rx| async move {
        rx.recv().await.map(|block| (block, rx))
    });
    let reads = requests
        .map(|block| {
            let storage = storage.clone();
            async move {
                let data = storage.read(block.piece, block.begin, block.length).await;
                (block, data)
            }
        })
        .buffered(READS_IN_FLIGHT);
    let mut reads = std::pin::pin!(reads);
    while let Some((block, data)) = reads.next().await {
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                let reason = format!("storage read failed: {e}");
                // The torrent must learn that data it advertised is gone (it stops seeding);
                // a string in `Closed` would lose what failed.
                let _ = events.send((key, PeerEvent::ReadFailed(block, e))).await;
                return reason;
            }
        };
        if out.send(Upload { block, data }).await.is_err() {
            return "writer stopped".into();
        }
    }
    "reader stopped".into()
}

/// A block to upload, read by the upload server and written by the writer in request order.
struct Upload {
    block: BlockRef,
    data: Bytes,
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    ctx: PeerContext,
    uploads: mpsc::Sender<BlockRef>,
) -> String {
    let piece_count = ctx.layout.piece_count() as usize;
    let max_len = (BLOCK_SIZE as usize + 13).max(piece_count.div_ceil(8) + 1);
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    // Choke and interest flips are coalesced per read and rate-limited (see `StateCoalescer`);
    // repeated pieces (haves and bitfields) and `reqq`s are dropped here, so a flood of them
    // costs the torrent task nothing.
    let mut states = StateCoalescer::new(Instant::now());
    let mut peer_has = Bitfield::new(piece_count);
    let mut peer_reqq = None;
    loop {
        let msg = match wire::decode(&mut buf, max_len) {
            Ok(Some(m)) => m,
            Ok(None) => {
                // Everything read so far is handled: tell the torrent the net state change.
                for event in states.drain() {
                    if ctx.events.send((ctx.key, event)).await.is_err() {
                        return "torrent stopped".into();
                    }
                }
                if buf.capacity() - buf.len() < BLOCK_SIZE as usize {
                    buf.reserve(READ_BUFFER);
                }
                match tokio::time::timeout(IDLE_TIMEOUT, rd.read_buf(&mut buf)).await {
                    Err(_) => return "idle timeout".into(),
                    Ok(Err(e)) => return format!("read error: {e}"),
                    Ok(Ok(0)) => return "connection closed by peer".into(),
                    Ok(Ok(n)) => {
                        ctx.download_limit.acquire(n).await;
                        continue;
                    }
                }
            }
            Err(e) => return format!("protocol error: {e}"),
        };
        if let Message::Unknown {
            id: wire::EXTENDED,
            payload,
        } = &msg
        {
            // Some clients send this before their bitfield: it is outside the bitfield rule.
            match wire::parse_extended(payload) {
                Ok(Some(hs)) if hs.reqq.is_some() && hs.reqq != peer_reqq => {
                    peer_reqq = hs.reqq;
                    if let Some(n) = hs.reqq {
                        if ctx
                            .events
                            .send((ctx.key, PeerEvent::RequestLimit(n)))
                            .await
                            .is_err()
                        {
                            return "torrent stopped".into();
                        }
                    }
                }
                Ok(_) => {}
                // A quirk in an optional extra is not worth the connection.
                Err(e) => tracing::debug!(peer = ctx.key, error = %e, "extended handshake ignored"),
            }
            continue;
        }
        let event = match msg {
            Message::KeepAlive | Message::Port(_) | Message::Unknown { .. } => continue,
            Message::Choke | Message::Unchoke | Message::Interested | Message::NotInterested => {
                if states.on_message(&msg, Instant::now()).is_err() {
                    return "choke/interest state flipping too fast".into();
                }
                continue;
            }
            Message::Have(i) => {
                if i as usize >= piece_count {
                    return format!("have for piece {i} out of range");
                }
                if !peer_has.set(i as usize) {
                    continue;
                }
                PeerEvent::Have(i)
            }
            // BEP 3 sends it first, but aria2 also sends a whole bitfield later instead of haves
            // when that is shorter; the torrent counts only the pieces new to it.
            Message::Bitfield(bytes) => match Bitfield::from_bytes(&bytes, piece_count) {
                Ok(bf) => {
                    if !bf.iter_ones().any(|p| !peer_has.get(p)) {
                        continue;
                    }
                    for p in bf.iter_ones() {
                        peer_has.set(p);
                    }
                    PeerEvent::Bitfield(bf)
                }
                Err(e) => return format!("bad bitfield: {e}"),
            },
            Message::Piece { index, begin, data } => {
                let block = BlockRef {
                    piece: index,
                    begin,
                    length: data.len() as u32,
                };
                if !block_in_range(&ctx.layout, &block) {
                    return format!("piece message out of range: {block:?}");
                }
                PeerEvent::Block(block, data)
            }
            Message::Request {
                index,
                begin,
                length,
            } => {
                let block = BlockRef {
                    piece: index,
                    begin,
                    length,
                };
                if length > BLOCK_SIZE || !block_in_range(&ctx.layout, &block) {
                    return format!("invalid request {block:?}");
                }
                if ctx.shared.am_choking.load(Ordering::Relaxed) || !ctx.storage.has_piece(index) {
                    // BEP 3: requests while choked are dropped; so are requests for pieces we
                    // do not have (we never advertised them).
                    continue;
                }
                match uploads.try_send(block) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!(peer = ctx.key, "upload queue full, request dropped");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return "upload server stopped".into()
                    }
                }
                continue;
            }
            // Cancels race with the data already read; answering is harmless.
            Message::Cancel { .. } => continue,
        };
        // State changes read before this event go first, so the torrent sees them in order
        // (a block after choke + unchoke is valid; the choke still voided older requests).
        for e in states.drain().into_iter().chain(std::iter::once(event)) {
            if ctx.events.send((ctx.key, e)).await.is_err() {
                return "torrent stopped".into();
            }
        }
    }
}

/// Sustained-rate limit on a peer's state flips: a token bucket of [`FLIP_BURST`] tokens
/// refilled at [`FLIP_RATE`] per second. Sans-IO: the caller passes the time.
#[derive(Debug)]
struct FlipLimiter {
    tokens: f64,
    last: Instant,
}

impl FlipLimiter {
    fn new(now: Instant) -> Self {
        FlipLimiter {
            tokens: FLIP_BURST,
            last: now,
        }
    }

    /// Pay for one flip at `now`; false when the peer is over its rate.
    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * FLIP_RATE).min(FLIP_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A peer that flips its state faster than [`FLIP_RATE`] per second, sustained.
#[derive(Debug, PartialEq)]
struct FlipFlood;

/// The peer's choke and interest state as it sends it, and as the torrent task last heard it.
/// Flips read in one go reach the torrent as their net effect, at most three events: a choke
/// (if the peer choked us at any point, our requests are void, BEP 3), then the final choke
/// state, then the final interest. Repeats are free; real flips pay a [`FlipLimiter`].
#[derive(Debug)]
struct StateCoalescer {
    choking: bool,
    interested: bool,
    told_choking: bool,
    told_interested: bool,
    choked_since_told: bool,
    limiter: FlipLimiter,
}

impl StateCoalescer {
    fn new(now: Instant) -> Self {
        // BEP 3: a connection starts choked and not interested, on both sides.
        StateCoalescer {
            choking: true,
            interested: false,
            told_choking: true,
            told_interested: false,
            choked_since_told: false,
            limiter: FlipLimiter::new(now),
        }
    }

    /// Take a choke, unchoke, interested or not-interested message (others are ignored).
    fn on_message(&mut self, msg: &Message, now: Instant) -> Result<(), FlipFlood> {
        let (choking, interested) = match msg {
            Message::Choke => (true, self.interested),
            Message::Unchoke => (false, self.interested),
            Message::Interested => (self.choking, true),
            Message::NotInterested => (self.choking, false),
            _ => return Ok(()),
        };
        if (choking, interested) == (self.choking, self.interested) {
            return Ok(());
        }
        if !self.limiter.allow(now) {
            return Err(FlipFlood);
        }
        if choking && !self.choking {
            self.choked_since_told = true;
        }
        self.choking = choking;
        self.interested = interested;
        Ok(())
    }

    /// The events that bring the torrent up to date, in order.
    fn drain(&mut self) -> Vec<PeerEvent> {
        let mut out = Vec::new();
        if self.choked_since_told && !self.told_choking {
            out.push(PeerEvent::Choke);
            self.told_choking = true;
        }
        self.choked_since_told = false;
        if self.choking != self.told_choking {
            out.push(if self.choking {
                PeerEvent::Choke
            } else {
                PeerEvent::Unchoke
            });
            self.told_choking = self.choking;
        }
        if self.interested != self.told_interested {
            out.push(if self.interested {
                PeerEvent::Interested
            } else {
                PeerEvent::NotInterested
            });
            self.told_interested = self.interested;
        }
        out
    }
}

fn block_in_range(layout: &Layout, b: &BlockRef) -> bool {
    b.piece < layout.piece_count()
        && b.length > 0
        && (b.begin as u64 + b.length as u64) <= layout.piece_len(b.piece) as u64
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut commands: mpsc::Receiver<PeerCommand>,
    mut uploads: mpsc::Receiver<Upload>,
    shared: Arc<PeerShared>,
    first: Vec<Message>,
    upload_limit: Arc<RateLimiter>,
) -> String {
    let mut buf = BytesMut::with_capacity(WRITE_BATCH);
    for m in &first {
        m.encode(&mut buf);
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
    keepalive.tick().await;
    // Block data gathered for the next write, paid to the upload limiter before it goes out.
    let mut pending_payload = 0usize;
    loop {
        if !buf.is_empty() || !chunks.is_empty() {
            if !buf.is_empty() {
                chunks.push(buf.split().freeze());
            }
            let payload = std::mem::take(&mut pending_payload);
            if payload > 0 {
                upload_limit.acquire(payload).await;
            }
            if let Err(e) = write_chunks(&mut wr, &mut chunks).await {
                return format!("write error: {e}");
            }
            keepalive.reset();
        }
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return "torrent stopped".into() };
                if !apply(cmd, &mut buf, &shared) {
                    let _ = wr.shutdown().await;
                    return "closed by us".into();
                }
                // Gather whatever else is already queued into the same write.
                while buf.len() < WRITE_BATCH {
                    match commands.try_recv() {
                        Ok(cmd) => if !apply(cmd, &mut buf, &shared) {
                            let _ = wr.shutdown().await;
                            return "closed by us".into();
                        },
                        Err(_) => break,
                    }
                }
            }
            up = uploads.recv() => {
                let Some(up) = up else { return "reader stopped".into() };
                pending_payload += up.data.len();
                push_upload(up, &mut buf, &mut chunks, &shared);
                let mut batched = 0;
                while batched < WRITE_BATCH {
                    match uploads.try_recv() {
                        Ok(up) => { batched += up.data.len(); pending_payload += up.data.len(); push_upload(up, &mut buf, &mut chunks, &shared); }
                        Err(_) => break,
                    }
                }
            }
            _ = keepalive.tick() => Message::KeepAlive.encode(&mut buf),
        }
    }
}

fn push_upload(up: Upload, buf: &mut BytesMut, chunks: &mut Vec<Bytes>, shared: &PeerShared) {
    if shared.am_choking.load(Ordering::Relaxed) {
        return; // choked since the request was read: BEP 3 says drop it
    }
    wire::encode_piece_header(up.block.piece, up.block.begin, up.data.len() as u32, buf);
    chunks.push(buf.split().freeze());
    shared
        .uploaded
        .fetch_add(up.data.len() as u64, Ordering::Relaxed);
    chunks.push(up.data);
}

/// Apply one command; false means close.
fn apply(cmd: PeerCommand, buf: &mut BytesMut, shared: &PeerShared) -> bool {
    match cmd {
        PeerCommand::Send(msgs) => {
            for m in &msgs {
                m.encode(buf);
            }
        }
        PeerCommand::SetChoking(choke) => {
            let was = shared.am_choking.swap(choke, Ordering::Relaxed);
            if was != choke {
                if choke {
                    Message::Choke
                } else {
                    Message::Unchoke
                }
                .encode(buf);
            }
        }
        PeerCommand::Close => return false,
    }
    true
}

/// Write every chunk with vectored writes, so block data goes out without being copied.
async fn write_chunks<W: AsyncWrite + Unpin>(
    wr: &mut W,
    chunks: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut start = 0;
    while start < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[start..]
            .iter()
            .take(64)
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut n = tokio::time::timeout(WRITE_TIMEOUT, wr.write_vectored(&slices))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write stalled"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let c = &mut chunks[start];
            if n >= c.len() {
                n -= c.len();
                start += 1;
            } else {
                let _ = c.split_to(n);
                n = 0;
            }
        }
    }
    chunks.clear();
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(events: &[PeerEvent]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match e {
                PeerEvent::Choke => "choke",
                PeerEvent::Unchoke => "unchoke",
                PeerEvent::Interested => "interested",
                PeerEvent::NotInterested => "not interested",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn flips_in_one_read_reach_the_torrent_as_their_net_effect() {
        let now = Instant::now();
        let mut s = StateCoalescer::new(now);
        for m in [
            Message::Unchoke,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
        ] {
            s.on_message(&m, now).unwrap();
        }
        assert_eq!(names(&s.drain()), ["unchoke", "interested"]);
        assert!(s.drain().is_empty(), "nothing new: nothing to say");
        // Unchoked, then choke + unchoke in one read: the choke voided our requests, so it is
        // still reported before the final unchoke.
        s.on_message(&Message::Choke, now).unwrap();
        s.on_message(&Message::Unchoke, now).unwrap();
        assert_eq!(names(&s.drain()), ["choke", "unchoke"]);
        // Interest flipped back and forth: no change to report.
        s.on_message(&Message::NotInterested, now).unwrap();
        s.on_message(&Message::Interested, now).unwrap();
        assert!(s.drain().is_empty());
        // Repeats are free and silent.
        for _ in 0..1000 {
            s.on_message(&Message::Unchoke, now).unwrap();
            s.on_message(&Message::Interested, now).unwrap();
        }
        assert!(s.drain().is_empty());
    }

    #[test]
    fn a_peer_flipping_faster_than_the_rate_is_cut_off() {
        let start = Instant::now();
        let mut s = StateCoalescer::new(start);
        // The burst is allowed at once…
        let mut now = start;
        let mut flips = 0;
        let result = loop {
            let m = if flips % 2 == 0 {
                Message::Unchoke
            } else {
                Message::Choke
            };
            if let Err(e) = s.on_message(&m, now) {
                break e;
            }
            flips += 1;
            assert!(flips <= FLIP_BURST as usize, "burst not bounded");
        };
        assert_eq!(result, FlipFlood);
        assert_eq!(flips, FLIP_BURST as usize);
        // …and then a steady rate at the limit is fine for a long time.
        let mut s = StateCoalescer::new(start);
        let step = Duration::from_secs_f64(1.0 / FLIP_RATE);
        for i in 0..10_000 {
            now += step;
            let m = if i % 2 == 0 {
                Message::Unchoke
            } else {
                Message::Choke
            };
            assert!(
                s.on_message(&m, now).is_ok(),
                "flip {i} at the allowed rate refused"
            );
        }
        // Twice the rate, sustained, is refused once the burst is spent.
        let half = step / 2;
        let refused = (0..10_000).any(|i| {
            now += half;
            let m = if i % 2 == 0 {
                Message::Unchoke
            } else {
                Message::Choke
            };
            s.on_message(&m, now).is_err()
        });
        assert!(refused);
    }

    #[tokio::test]
    async fn a_silent_incoming_connection_times_out_at_the_first_byte() {
        tokio::time::pause();
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let r = read_handshake_incoming(&mut ours, Duration::from_secs(3)).await;
        assert!(matches!(r, Err(HandshakeError::Timeout)), "{r:?}");
        // The paused clock advances exactly to the timer (rounded up to its 1 ms tick).
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        drop(theirs);
    }

    #[tokio::test]
    async fn a_slow_handshake_is_bounded_as_a_whole() {
        tokio::time::pause();
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let (r, _) = tokio::join!(
            read_handshake_incoming(&mut ours, Duration::from_secs(3)),
            async {
                // One byte at once, then nothing: the first-byte rule is met, the whole is not.
                theirs.write_all(&[19]).await.unwrap();
            }
        );
        assert!(matches!(r, Err(HandshakeError::Timeout)), "{r:?}");
        let waited = start.elapsed();
        assert!(
            waited >= HANDSHAKE_TIMEOUT && waited < HANDSHAKE_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
    }
}
