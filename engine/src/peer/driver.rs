//! The tokio side of one connection: three tasks joining a [`PeerProto`] to a transport stream
//! and to storage. They move bytes and run effects; every decision is the protocol's.
//!
//! - the **driver** owns the protocol and the read half: it reads into one buffer the protocol
//!   decodes in place (block data is split off without copying), passes commands, blocks read
//!   for uploads and the time in, and hands events to the torrent, checked requests to the
//!   upload server and bytes to the writer;
//! - the **upload server** reads requested blocks from storage, handing them back in request
//!   order. Requests for adjacent blocks of one piece are read together ([`ReadRun`], up to
//!   [`MAX_RUN_BYTES`]), up to [`RUNS_IN_FLIGHT`] reads at a time within
//!   [`READ_AHEAD_BYTES`]: a peer fetching whole pieces costs
//!   one blocking-pool read per 128 KiB, not one per 16 KiB block (the hand-off to and from the
//!   blocking pool, not the copy, was what seeding spent its CPU on);
//! - the **writer** writes what the driver hands it with vectored writes, batched up to
//!   [`WRITE_BATCH`], paying the upload limit first, bounded by [`WRITE_TIMEOUT`].
//!
//! Writing in its own task keeps a slow reader on the other side from stalling what we
//! receive; the driver takes no more commands or uploads while [`WRITE_BATCH`] bytes wait, so
//! such a peer cannot make us buffer more.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use super::fast::{self, ALLOWED_FAST_PIECES};
use super::proto::{PeerProto, ProtoConfig, Transmit, MAX_QUEUED_UPLOADS};
use super::{CloseReason, Connection, PeerCommand, PeerContext, PeerEvent, PeerKey, PeerShared};
use crate::ratelimit::RateLimiter;
use crate::storage::Storage;
use crate::types::{BlockRef, BLOCK_SIZE};

/// Bytes one storage read may cover: adjacent requested blocks of one piece up to this are
/// read with one call (eight 16 KiB blocks).
const MAX_RUN_BYTES: u32 = 128 * 1024;
/// Storage reads for one peer's requests running at once, at most: a peer asking for scattered
/// blocks (one run each) still gets its reads overlapped, as the 16 single-block reads before
/// runs did (a cold disk or an HDD needs them).
const RUNS_IN_FLIGHT: usize = 16;
/// Bytes those reads may cover together, read but not yet handed to the driver: bounds what a
/// peer that requests but never reads can make us hold (with [`UPLOADS_QUEUED`]), as the 16
/// single-block reads did.
const READ_AHEAD_BYTES: u32 = 256 * 1024;
/// The unit of [`READ_AHEAD_BYTES`] in the semaphore that enforces it.
const READ_AHEAD_UNIT: u32 = 1024;
/// Blocks read and not yet taken by the driver.
const UPLOADS_QUEUED: usize = 16;
/// Read buffer per connection. Blocks are split off it without copying, so each buffered
/// block keeps its buffer alive: a small buffer bounds how much junk between blocks a peer
/// can make us hold (at most 4× the block data).
const READ_BUFFER: usize = 64 * 1024;
/// A write that makes no progress for this long ends the connection (a peer that never
/// reads must not hold our upload queue and its slot forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes the writer gathers before one write call, and bytes the driver lets wait for it.
const WRITE_BATCH: usize = 256 * 1024;
/// Batches handed to the writer and not yet taken: one, so the driver gathers the next batch
/// while the writer writes this one.
const TRANSMITS_QUEUED: usize = 1;
/// Vectored write slices per call (Linux's `IOV_MAX` is 1024; 64 covers a batch of blocks).
const IO_SLICES: usize = 64;

/// Run a connection until it ends; spawns the driver, the writer and the upload server and
/// returns when the first of them stops. The final [`PeerEvent::Closed`] is always sent.
pub async fn run_peer(conn: Connection, ctx: PeerContext, commands: mpsc::Receiver<PeerCommand>) {
    let (rd, wr) = tokio::io::split(conn.stream);
    // Each run holds at least one request, and the protocol keeps at most MAX_QUEUED_UPLOADS.
    let (request_tx, request_rx) = mpsc::channel::<ReadRun>(MAX_QUEUED_UPLOADS);
    let (upload_tx, upload_rx) = mpsc::channel::<Upload>(UPLOADS_QUEUED);
    let (transmit_tx, transmit_rx) = mpsc::channel::<Transmit>(TRANSMITS_QUEUED);
    let PeerContext {
        key,
        layout,
        storage,
        events,
        shared,
        initial_bitfield,
        download_limit,
        upload_limit,
        extended_handshake,
        info_hash,
        ..
    } = ctx;
    let pieces = storage.clone();
    // Our handshake always offers BEP 6, so the peer's bit decides.
    let fast = conn.remote.supports_fast();
    // BEP 6 defines the set for IPv4 only (an IPv4-mapped IPv6 address is IPv4).
    let allowed_fast = match conn.addr.ip().to_canonical() {
        std::net::IpAddr::V4(ip) if fast => {
            fast::allowed_fast_set(ip, &info_hash, layout.piece_count(), ALLOWED_FAST_PIECES)
        }
        _ => Vec::new(),
    };
    let proto = PeerProto::new(
        ProtoConfig {
            layout,
            initial_bitfield,
            peer_extensions: conn.remote.supports_extensions(),
            extended_handshake,
            has_piece: Box::new(move |piece| pieces.has_piece(piece)),
            fast,
            allowed_fast,
        },
        Instant::now().into_std(),
    );
    let mut writer = tokio::spawn(write_loop(wr, transmit_rx, upload_limit));
    let mut server = tokio::spawn(serve_uploads(
        request_rx,
        storage,
        upload_tx,
        (key, events.clone()),
    ));
    let mut driver = tokio::spawn(drive(
        rd,
        proto,
        Links {
            key,
            events: events.clone(),
            shared,
            commands,
            uploads: upload_rx,
            requests: request_tx,
            transmit: transmit_tx,
            download_limit,
        },
    ));
    let stopped = |task: &'static str, e: tokio::task::JoinError| CloseReason::TaskStopped {
        task,
        detail: e.to_string(),
    };
    // Whichever ends first ends the connection. The driver goes first: when it stops (a
    // protocol error, our close) the others stop because of it and must not take the blame.
    let reason = tokio::select! {
        biased;
        r = &mut driver => r.unwrap_or_else(|e| stopped("driver", e)),
        w = &mut writer => w.unwrap_or_else(|e| stopped("writer", e)),
        u = &mut server => u.unwrap_or_else(|e| stopped("upload server", e)),
    };
    // The writer and the upload server also stop when the driver dropped its channels on the
    // way out, which can reach us before the driver's own result does: then that result is
    // the reason (a protocol error, our close), not "driver stopped".
    let reason = match reason {
        CloseReason::TaskStopped { task: "driver", .. } => {
            // Bounded all the same: a driver that somehow lives on is aborted below.
            match tokio::time::timeout(Duration::from_secs(1), &mut driver).await {
                Ok(r) => r.unwrap_or_else(|e| stopped("driver", e)),
                Err(_) => reason,
            }
        }
        other => other,
    };
    driver.abort();
    writer.abort();
    server.abort();
    let _ = events.send((key, PeerEvent::Closed(reason))).await;
}

/// The driver's channels and shared counters.
struct Links {
    key: PeerKey,
    events: mpsc::Sender<(PeerKey, PeerEvent)>,
    shared: Arc<PeerShared>,
    commands: mpsc::Receiver<PeerCommand>,
    uploads: mpsc::Receiver<Upload>,
    requests: mpsc::Sender<ReadRun>,
    transmit: mpsc::Sender<Transmit>,
    download_limit: Arc<RateLimiter>,
}

fn now() -> std::time::Instant {
    // tokio's clock, so tests with a paused clock drive the protocol's timers too.
    Instant::now().into_std()
}

async fn drive<R: AsyncRead + Unpin>(mut rd: R, mut proto: PeerProto, mut l: Links) -> CloseReason {
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    // The download limit is paid after each read; reading waits until it is paid off, while
    // commands and uploads go on.
    let mut read_after: Option<Instant> = None;
    // A stopped upload server or writer ends the connection through its own task's result in
    // `run_peer` (with its reason); here the branch only goes quiet.
    let (mut server_gone, mut writer_gone) = (false, false);
    loop {
        while let Some(event) = proto.poll_event() {
            if l.events.send((l.key, event)).await.is_err() {
                return CloseReason::TorrentStopped;
            }
        }
        // The requests of this input, adjacent ones of a piece joined into one read.
        let mut run: Option<ReadRun> = None;
        loop {
            let block = proto.poll_upload_request();
            if let (Some(r), Some(b)) = (run.as_mut(), block) {
                if r.extend(b) {
                    continue;
                }
            }
            if let Some(r) = run.take() {
                match l.requests.try_send(r) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Not expected: the protocol keeps at most MAX_QUEUED_UPLOADS requests
                        // between checking them and getting their data back, and each run
                        // holds at least one (the channel's size).
                        tracing::debug!(peer = l.key, "upload queue full, requests dropped");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => server_gone = true,
                }
            }
            match block {
                Some(b) => run = Some(ReadRun::new(b)),
                None => break,
            }
        }
        l.shared.uploaded.store(proto.uploaded(), Ordering::Relaxed);
        l.shared
            .am_choking
            .store(proto.am_choking(), Ordering::Relaxed);
        if let Some(reason) = proto.poll_close() {
            return reason;
        }
        if buf.capacity() - buf.len() < BLOCK_SIZE as usize {
            buf.reserve(READ_BUFFER);
        }
        let room = proto.pending_transmit() < WRITE_BATCH;
        let to_send = proto.pending_transmit() > 0;
        let timeout = proto.poll_timeout().map(Instant::from_std);
        tokio::select! {
            r = read_some(&mut rd, &mut buf, read_after) => match r {
                Ok(0) => return CloseReason::ClosedByPeer,
                Ok(n) => {
                    read_after = l.download_limit.pay(n);
                    proto.handle_input(&mut buf, now());
                }
                Err(e) => return CloseReason::Read(e),
            },
            cmd = l.commands.recv(), if room => {
                let Some(cmd) = cmd else { return CloseReason::TorrentStopped };
                proto.handle_command(cmd);
                // Gather whatever else is already queued into the same write.
                while proto.pending_transmit() < WRITE_BATCH {
                    match l.commands.try_recv() {
                        Ok(cmd) => proto.handle_command(cmd),
                        Err(_) => break,
                    }
                }
            }
            up = l.uploads.recv(), if room && !server_gone => {
                let Some(up) = up else {
                    server_gone = true;
                    continue;
                };
                proto.handle_upload(up.block, up.data);
                while proto.pending_transmit() < WRITE_BATCH {
                    match l.uploads.try_recv() {
                        Ok(up) => proto.handle_upload(up.block, up.data),
                        Err(_) => break,
                    }
                }
            }
            permit = l.transmit.reserve(), if to_send && !writer_gone => {
                let Ok(permit) = permit else {
                    writer_gone = true;
                    continue;
                };
                if let Some(t) = proto.poll_transmit(now()) {
                    permit.send(t);
                }
            }
            _ = sleep_until(timeout), if timeout.is_some() => proto.handle_timeout(now()),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Wait out the download limit, then read what the stream has. Cancel-safe: the wait restarts
/// with the same deadline, and `read_buf` either read bytes or did not.
async fn read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    after: Option<Instant>,
) -> std::io::Result<usize> {
    if let Some(at) = after {
        tokio::time::sleep_until(at).await;
    }
    rd.read_buf(buf).await
}

/// A block to upload, read by the upload server and handed to the driver in request order.
struct Upload {
    block: BlockRef,
    data: Bytes,
}

/// Requested blocks that one storage read covers: adjacent, in request order, inside one
/// piece, [`MAX_RUN_BYTES`] at most (a single block may be any checked request).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadRun {
    blocks: Vec<BlockRef>,
}

impl ReadRun {
    fn new(block: BlockRef) -> Self {
        ReadRun {
            blocks: vec![block],
        }
    }

    /// Take `block` into the run if it starts where the run ends, in the same piece, and the
    /// run stays within [`MAX_RUN_BYTES`]; otherwise leave the run as it is.
    fn extend(&mut self, block: BlockRef) -> bool {
        let (first, len) = (self.blocks[0], self.len());
        let joins = block.piece == first.piece
            && block.length > 0
            && first.begin.checked_add(len) == Some(block.begin)
            && len + block.length <= MAX_RUN_BYTES;
        if joins {
            self.blocks.push(block);
        }
        joins
    }

    /// Bytes the run covers (requests are at most 16 KiB, a run at most [`MAX_RUN_BYTES`] or
    /// one request, so this cannot overflow).
    fn len(&self) -> u32 {
        self.blocks.iter().map(|b| b.length).sum()
    }

    /// The run's data cut back into its blocks (shared, not copied).
    fn split(&self, data: &Bytes) -> impl Iterator<Item = Upload> + '_ {
        let data = data.clone();
        let mut at = 0usize;
        self.blocks.iter().map(move |&block| {
            let end = at + block.length as usize;
            let up = Upload {
                block,
                data: data.slice(at..end),
            };
            at = end;
            up
        })
    }
}

/// Read the blocks a peer requested, a run of adjacent ones with one call and several runs at
/// a time, handed back in request order. Reading here rather than in the driver keeps disk
/// latency out of the receive path and lets reads overlap.
async fn serve_uploads(
    requests: mpsc::Receiver<ReadRun>,
    storage: Arc<dyn Storage>,
    out: mpsc::Sender<Upload>,
    (key, events): (PeerKey, mpsc::Sender<(PeerKey, PeerEvent)>),
) -> CloseReason {
    let requests = futures::stream::unfold(requests, |mut rx| async move {
        rx.recv().await.map(|run| (run, rx))
    });
    // Fair (FIFO), and `buffered` polls in request order: runs take the budget in order.
    let budget = Arc::new(tokio::sync::Semaphore::new(
        (READ_AHEAD_BYTES / READ_AHEAD_UNIT) as usize,
    ));
    let reads = requests
        .map(|run| {
            let storage = storage.clone();
            let budget = budget.clone();
            async move {
                // A run is at most MAX_RUN_BYTES, within the budget; the semaphore is never
                // closed.
                let permit = budget
                    .acquire_many_owned(run.len().div_ceil(READ_AHEAD_UNIT))
                    .await
                    .ok();
                let first = run.blocks[0];
                let data = storage.read(first.piece, first.begin, run.len()).await;
                (run, data, permit)
            }
        })
        .buffered(RUNS_IN_FLIGHT);
    let mut reads = std::pin::pin!(reads);
    let stopped = |task| CloseReason::TaskStopped {
        task,
        detail: "stopped".into(),
    };
    while let Some((run, data, _permit)) = reads.next().await {
        let data = match data {
            Ok(d) if d.len() == run.len() as usize => d,
            Ok(d) => {
                // A backend that breaks the contract must not make us send garbage framing.
                let block = run.blocks[0];
                let e = crate::storage::StorageError::Io {
                    path: Default::default(),
                    source: std::io::Error::other(format!(
                        "read of {} bytes returned {}",
                        run.len(),
                        d.len()
                    )),
                };
                let _ = events.send((key, PeerEvent::ReadFailed(block, e))).await;
                return CloseReason::StorageReadFailed(block);
            }
            Err(e) => {
                // The torrent must learn that data it advertised is gone (it stops seeding);
                // the close reason alone would lose what failed. A run lies in one piece, so
                // its first block names the piece.
                let block = run.blocks[0];
                let _ = events.send((key, PeerEvent::ReadFailed(block, e))).await;
                return CloseReason::StorageReadFailed(block);
            }
        };
        for up in run.split(&data) {
            if out.send(up).await.is_err() {
                return stopped("driver");
            }
        }
    }
    stopped("driver")
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut transmits: mpsc::Receiver<Transmit>,
    upload_limit: Arc<RateLimiter>,
) -> CloseReason {
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let Some(t) = transmits.recv().await else {
            let _ = wr.shutdown().await;
            return CloseReason::TaskStopped {
                task: "driver",
                detail: "stopped".into(),
            };
        };
        let mut len = t.len();
        // Block data gathered for this write, paid to the upload limiter before it goes out.
        let mut payload = t.payload;
        chunks.extend(t.chunks);
        while len < WRITE_BATCH {
            match transmits.try_recv() {
                Ok(t) => {
                    len += t.len();
                    payload += t.payload;
                    chunks.extend(t.chunks);
                }
                Err(_) => break,
            }
        }
        if payload > 0 {
            upload_limit.acquire(payload).await;
        }
        if let Err(e) = write_chunks(&mut wr, &mut chunks).await {
            return CloseReason::Write(e);
        }
    }
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
            .take(IO_SLICES)
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
    use std::path::PathBuf;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::storage::memory::MemoryBackend;
    use crate::storage::{Layout, StorageBackend, StorageSpec};
    use crate::types::{InfoHash, PeerId};
    use crate::wire::{self, Handshake, Message};

    fn block(piece: u32, begin: u32) -> BlockRef {
        BlockRef {
            piece,
            begin,
            length: BLOCK_SIZE,
        }
    }

    /// Adjacent blocks of one piece join a run up to MAX_RUN_BYTES; a gap, another piece, a
    /// block out of order or a full run start a new one.
    #[test]
    fn read_runs_join_adjacent_blocks_of_one_piece_up_to_the_cap() {
        let mut run = ReadRun::new(block(3, 0));
        let per_run = MAX_RUN_BYTES / BLOCK_SIZE;
        for i in 1..per_run {
            assert!(run.extend(block(3, i * BLOCK_SIZE)), "block {i}");
        }
        assert_eq!(run.len(), MAX_RUN_BYTES);
        assert!(!run.extend(block(3, per_run * BLOCK_SIZE)), "over the cap");
        assert_eq!(run.blocks.len(), per_run as usize);

        let mut run = ReadRun::new(block(3, BLOCK_SIZE));
        assert!(!run.extend(block(4, 2 * BLOCK_SIZE)), "another piece");
        assert!(!run.extend(block(3, 3 * BLOCK_SIZE)), "a gap");
        assert!(!run.extend(block(3, 0)), "backwards");
        assert!(!run.extend(block(3, BLOCK_SIZE)), "the same block again");
        let short = BlockRef {
            piece: 3,
            begin: 2 * BLOCK_SIZE,
            length: 100,
        };
        assert!(run.extend(short), "a short block joins");
        assert!(!run.extend(block(3, 2 * BLOCK_SIZE + 50)), "overlapping");
        assert_eq!(run.len(), BLOCK_SIZE + 100);
    }

    /// A run's data goes back to its blocks in order, each the bytes it asked for.
    #[test]
    fn read_run_splits_its_data_into_its_blocks() {
        let mut run = ReadRun::new(BlockRef {
            piece: 0,
            begin: 10,
            length: 3,
        });
        assert!(run.extend(BlockRef {
            piece: 0,
            begin: 13,
            length: 2,
        }));
        let data = Bytes::from_static(b"abcde");
        let ups: Vec<(BlockRef, Bytes)> = run.split(&data).map(|u| (u.block, u.data)).collect();
        assert_eq!(ups.len(), 2);
        assert_eq!((ups[0].0.begin, &ups[0].1[..]), (10, &b"abc"[..]));
        assert_eq!((ups[1].0.begin, &ups[1].1[..]), (13, &b"de"[..]));
    }

    /// A connection (key 7) over an in-memory pipe of `buffer` bytes to a peer without
    /// extensions, its context, the peer's end of the pipe and the torrent's event queue.
    fn duplex_peer(
        buffer: usize,
        storage: Arc<dyn Storage>,
        layout: Arc<Layout>,
        info_hash: InfoHash,
        initial_bitfield: Option<crate::types::Bitfield>,
    ) -> (
        Connection,
        PeerContext,
        tokio::io::DuplexStream,
        mpsc::Receiver<(PeerKey, PeerEvent)>,
    ) {
        let (ours, theirs) = tokio::io::duplex(buffer);
        let (events_tx, events) = mpsc::channel(16);
        let conn = Connection {
            stream: Box::new(ours),
            addr: "127.0.0.1:6881".parse().unwrap(),
            remote: Handshake {
                reserved: [0; 8],
                info_hash,
                peer_id: PeerId([2; 20]),
            },
            transport: "duplex".into(),
            encryption: Default::default(),
        };
        let ctx = PeerContext {
            key: 7,
            layout,
            storage,
            events: events_tx,
            shared: Arc::new(PeerShared::default()),
            initial_bitfield,
            info_hash,
            peer_id: PeerId([3; 20]),
            download_limit: Arc::new(RateLimiter::new(0)),
            upload_limit: Arc::new(RateLimiter::new(0)),
            extended_handshake: super::super::proto::basic_extended_handshake(),
        };
        (conn, ctx, theirs, events)
    }

    /// The next message the peer side receives.
    async fn next_message(rd: &mut tokio::io::DuplexStream, inbox: &mut BytesMut) -> Message {
        loop {
            if let Some(m) = wire::decode(inbox, 1 << 20).unwrap() {
                return m;
            }
            assert!(rd.read_buf(inbox).await.unwrap() > 0, "connection closed");
        }
    }

    /// Counts reads of the storage it wraps.
    struct CountingStorage {
        inner: Arc<dyn Storage>,
        reads: Arc<std::sync::Mutex<Vec<(u32, u32, u32)>>>,
    }

    #[async_trait::async_trait]
    impl Storage for CountingStorage {
        fn resume(&self) -> crate::storage::Resume {
            self.inner.resume()
        }
        async fn write(
            &self,
            piece: u32,
            offset: u32,
            chunks: Vec<Bytes>,
        ) -> Result<(), crate::storage::StorageError> {
            self.inner.write(piece, offset, chunks).await
        }
        async fn read(
            &self,
            piece: u32,
            offset: u32,
            len: u32,
        ) -> Result<Bytes, crate::storage::StorageError> {
            self.reads.lock().unwrap().push((piece, offset, len));
            self.inner.read(piece, offset, len).await
        }
        async fn mark_complete(&self, piece: u32) -> Result<(), crate::storage::StorageError> {
            self.inner.mark_complete(piece).await
        }
        fn has_piece(&self, piece: u32) -> bool {
            self.inner.has_piece(piece)
        }
        fn is_finalized(&self, file: usize) -> bool {
            self.inner.is_finalized(file)
        }
        async fn flush(&self) -> Result<(), crate::storage::StorageError> {
            self.inner.flush().await
        }
    }

    /// A peer asking for a whole piece and two scattered blocks gets every block, in request
    /// order, with the right bytes, from one storage read per run of adjacent blocks.
    #[tokio::test]
    async fn adjacent_requests_are_served_from_one_read_per_run() {
        const PIECE: u32 = 256 * 1024;
        let info_hash = InfoHash([1; 20]);
        let layout = Arc::new(Layout::new(PIECE, [(PathBuf::from("f"), 2 * PIECE as u64)]));
        let memory = MemoryBackend::new()
            .open(StorageSpec {
                info_hash,
                layout: layout.clone(),
                download_dir: PathBuf::from("unused"),
                state_dir: PathBuf::from("unused"),
                skipped_files: Vec::new(),
            })
            .await
            .unwrap();
        let content: Vec<u8> = (0..2 * PIECE).map(|i| (i % 251) as u8).collect();
        for p in 0..2u32 {
            let piece = &content[(p * PIECE) as usize..((p + 1) * PIECE) as usize];
            memory
                .write(p, 0, vec![Bytes::copy_from_slice(piece)])
                .await
                .unwrap();
            memory.mark_complete(p).await.unwrap();
        }
        let reads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let storage: Arc<dyn Storage> = Arc::new(CountingStorage {
            inner: memory,
            reads: reads.clone(),
        });
        let (conn, ctx, mut theirs, _events) = duplex_peer(
            1 << 20,
            storage,
            layout,
            info_hash,
            Some(crate::types::Bitfield::full(2)),
        );
        let (commands, commands_rx) = mpsc::channel(16);
        let peer = tokio::spawn(run_peer(conn, ctx, commands_rx));
        commands.send(PeerCommand::SetChoking(false)).await.unwrap();
        let mut inbox = BytesMut::new();
        let (t, i) = (&mut theirs, &mut inbox);
        assert!(matches!(next_message(t, i).await, Message::Bitfield(_)));
        assert_eq!(next_message(t, i).await, Message::Unchoke);
        // All requests in one write, so the driver takes them as one input.
        let mut wanted: Vec<BlockRef> = (0..PIECE / BLOCK_SIZE)
            .map(|i| block(0, i * BLOCK_SIZE))
            .collect();
        wanted.push(block(1, 3 * BLOCK_SIZE));
        wanted.push(block(1, 5 * BLOCK_SIZE));
        let mut out = BytesMut::new();
        for b in &wanted {
            Message::Request {
                index: b.piece,
                begin: b.begin,
                length: b.length,
            }
            .encode(&mut out);
        }
        theirs.write_all(&out).await.unwrap();
        for b in &wanted {
            let Message::Piece { index, begin, data } = next_message(&mut theirs, &mut inbox).await
            else {
                panic!("a piece message for {b:?}");
            };
            assert_eq!((index, begin), (b.piece, b.begin));
            let at = (index * PIECE + begin) as usize;
            assert!(
                data[..] == content[at..at + BLOCK_SIZE as usize],
                "data of {b:?}"
            );
        }
        let reads = reads.lock().unwrap().clone();
        assert_eq!(
            reads,
            vec![
                (0, 0, MAX_RUN_BYTES),
                (0, MAX_RUN_BYTES, MAX_RUN_BYTES),
                (1, 3 * BLOCK_SIZE, BLOCK_SIZE),
                (1, 5 * BLOCK_SIZE, BLOCK_SIZE),
            ]
        );
        commands.send(PeerCommand::Close).await.unwrap();
        peer.await.unwrap();
    }

    /// The driver runs the protocol's timers on tokio's clock: a peer that never speaks gets
    /// our keep-alive at 90 s and is dropped at 180 s, with the typed reason.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_gets_keep_alives_then_times_out() {
        let info_hash = InfoHash([1; 20]);
        let layout = Arc::new(Layout::new(32 * 1024, [(PathBuf::from("f"), 100_000)]));
        let storage = MemoryBackend::new()
            .open(StorageSpec {
                info_hash,
                layout: layout.clone(),
                download_dir: PathBuf::from("unused"),
                state_dir: PathBuf::from("unused"),
                skipped_files: Vec::new(),
            })
            .await
            .unwrap();
        // A peer without BEP 10 and no pieces: nothing is sent until the first keep-alive.
        let (conn, ctx, mut theirs, mut events) =
            duplex_peer(1 << 16, storage, layout, info_hash, None);
        let (_commands, commands_rx) = mpsc::channel(16);
        let start = Instant::now();
        let peer = tokio::spawn(run_peer(conn, ctx, commands_rx));
        let mut received = Vec::new();
        let mut keepalive_at = None;
        let mut buf = [0u8; 64];
        loop {
            let n = theirs.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            keepalive_at.get_or_insert(start.elapsed());
        }
        let mut received = BytesMut::from(&received[..]);
        assert_eq!(
            wire::decode(&mut received, 16).unwrap(),
            Some(Message::KeepAlive)
        );
        assert!(received.is_empty(), "only one keep-alive: {received:?}");
        let at = keepalive_at.expect("a keep-alive");
        assert!(
            at >= Duration::from_secs(90) && at < Duration::from_secs(91),
            "{at:?}"
        );
        let (key, event) = events.recv().await.expect("a close event");
        assert_eq!(key, 7);
        assert!(
            matches!(event, PeerEvent::Closed(CloseReason::IdleTimeout)),
            "{event:?}"
        );
        let closed = start.elapsed();
        assert!(
            closed >= Duration::from_secs(180) && closed < Duration::from_secs(181),
            "{closed:?}"
        );
        peer.await.unwrap();
    }
}
