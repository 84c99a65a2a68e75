//! The peer protocol after the handshake, sans-IO: [`PeerProto`] takes received bytes, the
//! torrent's commands, blocks read from storage and the time, and yields events for the torrent,
//! upload requests to serve, bytes to send and the next instant it wants to be woken.
//!
//! It owns every per-connection decision: frames are decoded with [`wire::decode`] under a cap
//! derived from the torrent, indices and ranges are checked against the layout, repeated haves
//! and bitfields are dropped, choke and interest flips are coalesced and rate-limited, requests
//! are checked (range, 16 KiB cap, piece present, peer unchoked) and bounded, uploads that a
//! choke overtook are dropped, keep-alives are scheduled and a silent peer is timed out.
//!
//! The fast extension (BEP 6), when both handshakes offer it: our first message is have-all or
//! have-none when that says it all; every request we will not serve (choked and not
//! allowed-fast, a piece we lack, a full queue) and every queued or in-flight request a choke
//! overtakes is answered with a reject, except allowed-fast ones, which are still served; the
//! allowed-fast set ([`super::fast`]) is sent once, when the peer first says it is interested
//! (as libtorrent does). Without it, BEP 3: such requests are dropped silently, and a BEP 6
//! message ends the connection (as in libtorrent).
//!
//! It must never read a socket, a file or the clock, nor spawn: `now` comes in as an argument,
//! so tests drive it with scripted bytes and a hand-moved [`Instant`]. The first protocol error
//! ends the connection with a typed [`CloseReason`]; nothing is processed after it.

use crate::extension::{ExtendedHandshake, ExtensionIds};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{CloseReason, PeerCommand, PeerEvent};
use crate::storage::Layout;
use crate::types::{Bitfield, BlockRef, BLOCK_SIZE};
use crate::wire::{self, Message};

/// State flips (choke/unchoke, interested/not interested) a peer may make per second, sustained.
/// Honest clients flip on their rechoke (libtorrent: every 15 s) and when pieces arrive; a few
/// per second leaves room for bursts after a bitfield while a flood is cut off quickly.
const FLIP_RATE: f64 = 4.0;
/// Flips a peer may make in a burst before [`FLIP_RATE`] applies.
const FLIP_BURST: f64 = 40.0;
/// BEP 3 suggests keep-alives every two minutes; silence for longer than this ends the peer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// We send a keep-alive after this much silence on our side.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(90);
/// Requests a peer may have queued with us; beyond this they are dropped. We tell peers this
/// number (`reqq` in our BEP 10 handshake), and libtorrent and Transmission keep below it;
/// without it Transmission pipelines by rate (over a thousand requests at 2 MB/s) and stalls on
/// the ones we drop. Queued requests cost a few bytes each: the driver reads data only a few
/// blocks at a time.
pub const MAX_QUEUED_UPLOADS: usize = 1024;
/// Requests a peer may make in a row that we refuse (choked and not allowed-fast, a piece we
/// lack, our queue full) before it is cut off. Each refusal is a 17-byte reject under BEP 6, and
/// the driver keeps reading while bytes wait to be written, so without a bound a peer that
/// requests and never reads grows our send buffer without end. An honest peer has at most its
/// pipeline in flight when our choke reaches it (at most our `reqq`, [`MAX_QUEUED_UPLOADS`]);
/// twice that leaves room for it. (libtorrent's `max_rejects` is 50, counted more loosely.)
pub const MAX_REFUSED_IN_A_ROW: u32 = 2 * MAX_QUEUED_UPLOADS as u32;
/// Allowed-fast pieces we remember per peer; more are ignored. Honest peers grant a handful
/// (libtorrent 5, us [`super::fast::ALLOWED_FAST_PIECES`]); this bounds what a peer can make
/// the torrent task track.
pub const MAX_ALLOWED_FAST_RECEIVED: usize = 32;
/// Our name in the extended handshake (`v`).
pub const CLIENT_NAME: &str = concat!("ZigTorrent ", env!("CARGO_PKG_VERSION"));

/// Our extended handshake without extension messages: `reqq` and our name only.
pub fn basic_extended_handshake() -> ExtendedHandshake {
    ExtendedHandshake {
        ids: ExtensionIds::default(),
        ..ExtendedHandshake::ours(None, MAX_QUEUED_UPLOADS as u32, None, CLIENT_NAME)
    }
}

/// What a [`PeerProto`] needs to know about its torrent and the remote peer.
pub struct ProtoConfig {
    /// Torrent geometry, for index, block and request checks.
    pub layout: Arc<Layout>,
    /// Our bitfield, sent first when it has a piece.
    pub initial_bitfield: Option<Bitfield>,
    /// Whether the peer's handshake says it speaks BEP 10 (we then send our extended handshake).
    pub peer_extensions: bool,
    /// Our BEP 10 extended handshake, sent to a peer that speaks BEP 10. Messages under the ids
    /// it advertises come out as [`PeerEvent::Extended`]; with none advertised
    /// ([`basic_extended_handshake`]) every extension message but the handshake is dropped.
    pub extended_handshake: ExtendedHandshake,
    /// Whether we have a piece (asked for each request: storage knows, and can lose it).
    pub has_piece: Box<dyn Fn(u32) -> bool + Send>,
    /// Whether both handshakes offer the fast extension (BEP 6).
    pub fast: bool,
    /// The pieces we serve this peer while we choke it ([`super::fast::allowed_fast_set`];
    /// empty for IPv6 peers). Ignored without `fast`.
    pub allowed_fast: Vec<u32>,
}

/// Bytes to send, in order: control messages and block headers gathered in buffers, block data
/// shared with the storage read (never copied).
#[derive(Debug, Default)]
pub struct Transmit {
    /// The chunks, to be written in order (vectored).
    pub chunks: Vec<Bytes>,
    /// How many of those bytes are block data (what the upload rate limit counts).
    pub payload: usize,
}

impl Transmit {
    /// Total bytes in the chunks.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Bytes::is_empty)
    }
}

/// One connection's protocol state after the handshake. See the module docs.
pub struct PeerProto {
    layout: Arc<Layout>,
    piece_count: usize,
    /// Cap on a frame's length field: a block message or our bitfield, whichever is longer.
    max_frame: usize,
    has_piece: Box<dyn Fn(u32) -> bool + Send>,
    local_extension_ids: Vec<u8>,
    /// Choke and interest flips are coalesced per input and rate-limited (see
    /// [`StateCoalescer`]); repeated pieces (haves and bitfields) and `reqq`s are dropped, so a
    /// flood of them costs the torrent task nothing.
    states: StateCoalescer,
    peer_has: Bitfield,
    peer_reqq: Option<u32>,
    am_choking: bool,
    /// BEP 6 negotiated.
    fast: bool,
    /// Pieces we serve while choking (empty without `fast`).
    allowed_fast: Vec<u32>,
    /// The allowed-fast set went out (once, on the peer's first interest).
    allowed_fast_sent: bool,
    /// Allowed-fast pieces the peer granted us (at most [`MAX_ALLOWED_FAST_RECEIVED`]).
    peer_allowed_fast: Vec<u32>,
    /// The peer's requests we refused since we last took one ([`MAX_REFUSED_IN_A_ROW`]).
    refused_in_a_row: u32,
    events: VecDeque<PeerEvent>,
    /// Checked requests not yet handed to the driver.
    upload_requests: VecDeque<BlockRef>,
    /// Requests handed to the driver whose data has not come back, in order; `true` once a
    /// choke voided it (its data is then dropped). With [`Self::upload_requests`], bounded by
    /// [`MAX_QUEUED_UPLOADS`].
    in_flight: VecDeque<(BlockRef, bool)>,
    /// Control messages and block headers not yet split into `chunks`.
    out: BytesMut,
    chunks: Vec<Bytes>,
    /// Bytes in `chunks`.
    chunked: usize,
    /// Block data bytes in `chunks`.
    payload: usize,
    uploaded: u64,
    last_recv: Instant,
    last_send: Instant,
    close: Option<CloseReason>,
    closed: bool,
}

impl PeerProto {
    /// A connection that just finished its handshake at `now`: our bitfield (if we have a
    /// piece) and, for a BEP 10 peer, our extended handshake are queued to send.
    pub fn new(config: ProtoConfig, now: Instant) -> Self {
        let piece_count = config.layout.piece_count() as usize;
        let mut out = BytesMut::new();
        let have = config
            .initial_bitfield
            .as_ref()
            .map_or(0, Bitfield::count_ones);
        match &config.initial_bitfield {
            // BEP 6: with the fast extension the first message is always one of the three.
            _ if config.fast && have == piece_count => Message::HaveAll.encode(&mut out),
            _ if config.fast && have == 0 => Message::HaveNone.encode(&mut out),
            Some(bf) if have > 0 => {
                Message::Bitfield(Bytes::copy_from_slice(bf.as_bytes())).encode(&mut out)
            }
            // BEP 3: a peer with nothing may skip the bitfield.
            _ => {}
        }
        // BEP 10: the extended handshake goes right after the handshake (and our bitfield).
        if config.peer_extensions {
            config.extended_handshake.to_message().encode(&mut out);
        }
        let ids = config.extended_handshake.ids;
        let local_extension_ids = [ids.ut_metadata, ids.ut_pex]
            .into_iter()
            .flatten()
            .collect();
        PeerProto {
            layout: config.layout,
            piece_count,
            max_frame: (BLOCK_SIZE as usize + 13).max(piece_count.div_ceil(8) + 1),
            has_piece: config.has_piece,
            local_extension_ids,
            states: StateCoalescer::new(now),
            peer_has: Bitfield::new(piece_count),
            peer_reqq: None,
            // BEP 3: a connection starts choked on both sides.
            am_choking: true,
            fast: config.fast,
            allowed_fast: if config.fast {
                config.allowed_fast
            } else {
                Vec::new()
            },
            allowed_fast_sent: false,
            peer_allowed_fast: Vec::new(),
            refused_in_a_row: 0,
            events: VecDeque::new(),
            upload_requests: VecDeque::new(),
            in_flight: VecDeque::new(),
            out,
            chunks: Vec::new(),
            chunked: 0,
            payload: 0,
            uploaded: 0,
            last_recv: now,
            last_send: now,
            close: None,
            closed: false,
        }
    }

    /// Take every complete frame off the front of `buf` (bytes received at `now`); a partial
    /// frame stays for the next call. Block data is split off `buf` without copying.
    pub fn handle_input(&mut self, buf: &mut BytesMut, now: Instant) {
        if self.closed {
            return;
        }
        self.last_recv = now;
        loop {
            match wire::decode(buf, self.max_frame) {
                Ok(Some(msg)) => {
                    if let Err(reason) = self.on_message(msg, now) {
                        return self.fail(reason);
                    }
                }
                Ok(None) => break,
                Err(e) => return self.fail(CloseReason::Protocol(e)),
            }
        }
        // Everything received so far is handled: tell the torrent the net state change.
        let drained = self.states.drain();
        self.events.extend(drained);
    }

    fn on_message(&mut self, msg: Message, now: Instant) -> Result<(), CloseReason> {
        let event = match msg {
            Message::Unknown {
                id: wire::EXTENDED,
                payload,
            } => return self.on_extended(payload),
            Message::KeepAlive | Message::Port(_) | Message::Unknown { .. } => return Ok(()),
            Message::Suggest(_)
            | Message::HaveAll
            | Message::HaveNone
            | Message::RejectRequest { .. }
            | Message::AllowedFast(_)
                if !self.fast =>
            {
                return Err(CloseReason::FastNotNegotiated(fast_id(&msg)));
            }
            // BEP 6 lets us ignore suggestions: our picker goes rarest first, and a hint from
            // one peer (meant to help its disk cache) must not steer what we pick.
            Message::Suggest(_) => return Ok(()),
            Message::HaveNone => return Ok(()),
            Message::HaveAll => {
                let all = Bitfield::full(self.piece_count);
                if self.peer_has.is_full() {
                    return Ok(());
                }
                self.peer_has = all.clone();
                PeerEvent::Bitfield(all)
            }
            Message::RejectRequest {
                index,
                begin,
                length,
            } => {
                let block = BlockRef {
                    piece: index,
                    begin,
                    length,
                };
                // Out of range it cannot be anything we asked for: nothing to do.
                if !block_in_range(&self.layout, &block) {
                    return Ok(());
                }
                PeerEvent::Rejected(block)
            }
            Message::AllowedFast(piece) => {
                if piece as usize >= self.piece_count
                    || self.peer_allowed_fast.contains(&piece)
                    || self.peer_allowed_fast.len() >= MAX_ALLOWED_FAST_RECEIVED
                {
                    return Ok(());
                }
                self.peer_allowed_fast.push(piece);
                PeerEvent::AllowedFast(piece)
            }
            Message::Interested if self.fast && !self.allowed_fast_sent => {
                // libtorrent waits for interest too: an uninterested peer needs no grant, and
                // by now its bitfield says which granted pieces it already has.
                self.allowed_fast_sent = true;
                for &piece in &self.allowed_fast {
                    if !self.peer_has.get(piece as usize) && (self.has_piece)(piece) {
                        Message::AllowedFast(piece).encode(&mut self.out);
                    }
                }
                return self
                    .states
                    .on_message(&msg, now)
                    .map_err(|FlipFlood| CloseReason::FlipFlood);
            }
            Message::Choke | Message::Unchoke | Message::Interested | Message::NotInterested => {
                return self
                    .states
                    .on_message(&msg, now)
                    .map_err(|FlipFlood| CloseReason::FlipFlood);
            }
            Message::Have(i) => {
                if i as usize >= self.piece_count {
                    return Err(CloseReason::HaveOutOfRange(i));
                }
                if !self.peer_has.set(i as usize) {
                    return Ok(());
                }
                PeerEvent::Have(i)
            }
            // BEP 3 sends it first, but aria2 also sends a whole bitfield later instead of haves
            // when that is shorter; the torrent counts only the pieces new to it.
            Message::Bitfield(bytes) => {
                let bf = Bitfield::from_bytes(&bytes, self.piece_count)?;
                if !bf.iter_ones().any(|p| !self.peer_has.get(p)) {
                    return Ok(());
                }
                for p in bf.iter_ones() {
                    self.peer_has.set(p);
                }
                PeerEvent::Bitfield(bf)
            }
            Message::Piece { index, begin, data } => {
                let block = BlockRef {
                    piece: index,
                    begin,
                    length: data.len() as u32,
                };
                if !block_in_range(&self.layout, &block) {
                    return Err(CloseReason::BlockOutOfRange(block));
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
                if length > BLOCK_SIZE || !block_in_range(&self.layout, &block) {
                    return Err(CloseReason::InvalidRequest(block));
                }
                // BEP 3: requests while choked are dropped; so are requests for pieces we do
                // not have (we never advertised them). BEP 6: rejected instead, and
                // allowed-fast pieces are served while choked.
                let allowed = !self.am_choking || grants(self.fast, &self.allowed_fast, index);
                let room = self.upload_requests.len() + self.in_flight.len() < MAX_QUEUED_UPLOADS;
                if allowed && room && (self.has_piece)(index) {
                    self.upload_requests.push_back(block);
                    self.refused_in_a_row = 0;
                } else {
                    if allowed && !room {
                        tracing::debug!("upload queue full, request refused");
                    }
                    self.refused_in_a_row += 1;
                    if self.refused_in_a_row > MAX_REFUSED_IN_A_ROW {
                        return Err(CloseReason::RequestFlood(self.refused_in_a_row));
                    }
                    self.refuse(block);
                }
                return Ok(());
            }
            // Cancels race with the data already read; answering is harmless.
            Message::Cancel { .. } => return Ok(()),
        };
        self.emit(event);
        Ok(())
    }

    /// A BEP 10 message: the extended handshake gives the peer's `reqq`; messages under the ids
    /// we advertised go to the torrent; anything else is ignored (we never asked for it).
    fn on_extended(&mut self, payload: Bytes) -> Result<(), CloseReason> {
        let Some(&ext_id) = payload.first() else {
            // Some clients send odd things here; an optional extra is not worth the connection.
            tracing::debug!("empty extension message ignored");
            return Ok(());
        };
        if ext_id != 0 {
            if self.local_extension_ids.contains(&ext_id) {
                self.emit(PeerEvent::Extended {
                    id: ext_id,
                    payload: payload.slice(1..),
                });
            }
            return Ok(());
        }
        // Some clients send this before their bitfield: it is outside the bitfield rule.
        match ExtendedHandshake::parse_payload(&payload) {
            Ok(Some(hs)) if hs.reqq.is_some() && hs.reqq != self.peer_reqq => {
                self.peer_reqq = hs.reqq;
                if let Some(n) = hs.reqq {
                    self.emit(PeerEvent::RequestLimit(n));
                }
            }
            Ok(_) => {}
            // A quirk in an optional extra is not worth the connection.
            Err(e) => tracing::debug!(error = %e, "extended handshake ignored"),
        }
        if !self.local_extension_ids.is_empty() {
            // The torrent learns the peer's own ids (`m`) from it once extensions are on.
            self.emit(PeerEvent::Extended {
                id: 0,
                payload: payload.slice(1..),
            });
        }
        Ok(())
    }

    /// Queue an event; state changes received before it go first, so the torrent sees them in
    /// order (a block after choke + unchoke is valid; the choke still voided older requests).
    fn emit(&mut self, event: PeerEvent) {
        let drained = self.states.drain();
        self.events.extend(drained);
        self.events.push_back(event);
    }

    /// A request we will not serve: BEP 6 rejects it, BEP 3 drops it silently.
    fn refuse(&mut self, block: BlockRef) {
        if self.fast {
            Message::RejectRequest {
                index: block.piece,
                begin: block.begin,
                length: block.length,
            }
            .encode(&mut self.out);
        }
    }

    fn fail(&mut self, reason: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.close = Some(reason);
        }
    }

    /// The next event for the torrent task.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// The next checked request to read from storage and hand back with [`Self::handle_upload`].
    pub fn poll_upload_request(&mut self) -> Option<BlockRef> {
        let block = self.upload_requests.pop_front()?;
        self.in_flight.push_back((block, false));
        Some(block)
    }

    /// Why the connection must end, once (the driver stops at it); `None` while it lives.
    pub fn poll_close(&mut self) -> Option<CloseReason> {
        self.close.take()
    }

    /// Whether the connection has ended (a protocol error, a timeout or our close).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// A command from the torrent task.
    pub fn handle_command(&mut self, cmd: PeerCommand) {
        if self.closed {
            return;
        }
        match cmd {
            PeerCommand::Send(msgs) => {
                for m in &msgs {
                    m.encode(&mut self.out);
                }
            }
            PeerCommand::SetChoking(choke) => {
                if choke != self.am_choking {
                    self.am_choking = choke;
                    if choke {
                        Message::Choke.encode(&mut self.out);
                        self.void_requests();
                    } else {
                        Message::Unchoke.encode(&mut self.out);
                    }
                }
            }
            PeerCommand::SendExtended { id, payload } => {
                let mut p = BytesMut::with_capacity(1 + payload.len());
                p.extend_from_slice(&[id]);
                p.extend_from_slice(&payload);
                Message::Unknown {
                    id: wire::EXTENDED,
                    payload: p.freeze(),
                }
                .encode(&mut self.out);
            }
            PeerCommand::Close => self.fail(CloseReason::ClosedByUs),
        }
    }

    /// BEP 3: a choke discards the peer's pending requests, queued or being read; BEP 6: each
    /// is rejected explicitly, except allowed-fast ones, which we keep serving.
    fn void_requests(&mut self) {
        let (fast, allowed) = (self.fast, &self.allowed_fast);
        let mut voided = Vec::new();
        for (block, void) in self.in_flight.iter_mut() {
            if !*void && !grants(fast, allowed, block.piece) {
                *void = true;
                voided.push(*block);
            }
        }
        self.upload_requests.retain(|block| {
            let keep = grants(fast, allowed, block.piece);
            if !keep {
                voided.push(*block);
            }
            keep
        });
        for block in voided {
            self.refuse(block);
        }
    }

    /// A block read from storage for an upload request taken with
    /// [`Self::poll_upload_request`]: queued to send unless a choke voided the request since
    /// (BEP 3 says drop it then; BEP 6 rejected it already). Data for anything else is dropped.
    pub fn handle_upload(&mut self, block: BlockRef, data: Bytes) {
        if self.closed {
            return;
        }
        // Reads come back in request order: the match is at the front.
        let Some(pos) = self.in_flight.iter().position(|(b, _)| *b == block) else {
            return;
        };
        if let Some((_, true)) = self.in_flight.remove(pos) {
            return;
        }
        wire::encode_piece_header(block.piece, block.begin, data.len() as u32, &mut self.out);
        self.split_out();
        self.uploaded += data.len() as u64;
        self.payload += data.len();
        self.chunked += data.len();
        self.chunks.push(data);
    }

    fn split_out(&mut self) {
        if !self.out.is_empty() {
            self.chunked += self.out.len();
            self.chunks.push(self.out.split().freeze());
        }
    }

    /// Whether we choke the peer.
    pub fn am_choking(&self) -> bool {
        self.am_choking
    }

    /// Block data bytes queued to send so far, in total.
    pub fn uploaded(&self) -> u64 {
        self.uploaded
    }

    /// Bytes queued to send and not yet taken by [`Self::poll_transmit`]: the driver stops
    /// taking commands and uploads above its batch size, so a peer that never reads cannot
    /// make us buffer more.
    pub fn pending_transmit(&self) -> usize {
        self.chunked + self.out.len()
    }

    /// Everything queued to send, handed over at `now` (which restarts the keep-alive clock).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.split_out();
        if self.chunks.is_empty() {
            return None;
        }
        self.last_send = now;
        self.chunked = 0;
        Some(Transmit {
            chunks: std::mem::take(&mut self.chunks),
            payload: std::mem::take(&mut self.payload),
        })
    }

    /// When [`Self::handle_timeout`] must next run: the idle deadline or the next keep-alive.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        Some((self.last_recv + IDLE_TIMEOUT).min(self.last_send + KEEPALIVE_INTERVAL))
    }

    /// Time passed: end a peer silent for [`IDLE_TIMEOUT`], queue a keep-alive after
    /// [`KEEPALIVE_INTERVAL`] of our own silence.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if now >= self.last_recv + IDLE_TIMEOUT {
            return self.fail(CloseReason::IdleTimeout);
        }
        if now >= self.last_send + KEEPALIVE_INTERVAL {
            // With bytes already waiting (a writer that cannot get rid of them) a keep-alive
            // adds nothing; either way the clock restarts so the timer does not spin.
            if self.pending_transmit() == 0 {
                Message::KeepAlive.encode(&mut self.out);
            }
            self.last_send = now;
        }
    }
}

/// Whether we serve `piece` to a peer we choke: in its allowed-fast set, fast negotiated.
fn grants(fast: bool, allowed: &[u32], piece: u32) -> bool {
    fast && allowed.contains(&piece)
}

/// The id of a BEP 6 message (for the close reason).
fn fast_id(msg: &Message) -> u8 {
    let mut b = BytesMut::new();
    msg.encode(&mut b);
    b.get(wire::LENGTH_PREFIX).copied().unwrap_or_default()
}

fn block_in_range(layout: &Layout, b: &BlockRef) -> bool {
    b.piece < layout.piece_count()
        && b.length > 0
        && (b.begin as u64 + b.length as u64) <= layout.piece_len(b.piece) as u64
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
/// Flips received in one input reach the torrent as their net effect, at most three events: a
/// choke (if the peer choked us at any point, our requests are void, BEP 3), then the final
/// choke state, then the final interest. Repeats are free; real flips pay a [`FlipLimiter`].
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

#[cfg(test)]
mod tests;
