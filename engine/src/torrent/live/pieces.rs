//! Pieces and verification: hashing whole pieces off the runtime, writing only verified data,
//! smart-ban bookkeeping for failed pieces, data lost while seeding, and durable flushes.

#[allow(unused_imports)]
use super::*;

/// Pieces up to this size are hashed on the runtime thread: SHA-1 of 64 KiB takes tens of
/// microseconds, less than handing it to a blocking-pool thread and back. 200 torrents of
/// 1 MiB (16 KiB pieces) downloading at once spent most of their CPU on those hand-offs.
const INLINE_HASH_MAX: u64 = 64 * 1024;

impl Torrent {
    /// Hash the piece (off the runtime unless it is small), write it, mark it complete; report
    /// back.
    pub(super) fn verify(&mut self, piece: PieceIndex, buf: PieceBuf) {
        let bytes = self.layout.piece_len(piece) as u64;
        self.verifying += 1;
        self.verify_backlog += bytes;
        let storage = self.storage.clone();
        let expected = self.metainfo.info.pieces[piece as usize];
        let slots = self.verify_slots.clone();
        let tx = self.internal_tx.clone();
        // Smart ban waits for this piece's good version: digest its blocks too.
        let digest_if_good = self.smart_ban.is_tracked(piece);
        tokio::spawn(async move {
            let blocks: Option<Vec<(Bytes, SocketAddr)>> = buf.blocks.into_iter().collect();
            let (blocks, senders): (Vec<Bytes>, Vec<SocketAddr>) =
                blocks.map(|b| b.into_iter().unzip()).unwrap_or_default();
            let mut digests = None;
            let result = async {
                // Blocks missing here would be a picker bug; treat the piece as bad, not fatal.
                if blocks.is_empty() {
                    return Ok(false);
                }
                // The permit bounds hashing (CPU) only; writes and fsyncs overlap freely, bounded
                // by the verify backlog cap.
                let permit = slots.acquire_owned().await;
                let check = move || {
                    let ok = hash::sha1_chunks(&blocks) == expected;
                    let d = (!ok || digest_if_good)
                        .then(|| blocks.iter().map(|b| block_digest(b)).collect::<Vec<_>>());
                    (ok, blocks, d)
                };
                let (ok, blocks, block_digests) = if bytes <= INLINE_HASH_MAX {
                    check()
                } else {
                    tokio::task::spawn_blocking(check)
                        .await
                        .map_err(|e| StorageError::Io {
                            path: PathBuf::new(),
                            source: std::io::Error::other(e),
                        })?
                };
                drop(permit);
                digests = block_digests;
                if !ok {
                    return Ok(false);
                }
                // One call, not `write` then `mark_complete`: with fs each call is a hand-off to
                // a blocking-pool thread and back, and those hand-offs were most of the CPU of
                // 200 small torrents downloading at once.
                storage.write_piece(piece, blocks).await?;
                Ok(true)
            }
            .await;
            let _ = tx.send(Internal::PieceDone(Box::new(PieceDone {
                piece,
                bytes,
                senders,
                digests,
                result,
            })));
        });
    }

    /// Smart ban: a piece from one host alone is that host's fault; a shared one is recorded
    /// until the piece verifies and shows whose blocks were wrong.
    pub(super) fn on_piece_failed(
        &mut self,
        piece: PieceIndex,
        senders: Vec<SocketAddr>,
        digests: Option<Vec<BlockDigest>>,
    ) {
        let hosts: HashSet<HostKey> = senders.iter().map(|a| ban_key(*a)).collect();
        if hosts.len() == 1 {
            let addr = senders[0];
            tracing::warn!(%addr, piece, "banning peer: sole source of a piece that failed its hash");
            self.ban(addr);
            return;
        }
        if let Some(digests) = digests {
            let blocks: Vec<(SocketAddr, BlockDigest)> = senders.into_iter().zip(digests).collect();
            self.smart_ban.record_failure(piece, &blocks);
        }
    }

    /// Storage could not read data we advertised: the file was deleted, truncated or became
    /// unreadable while we served it. Stop serving and stop claiming those pieces; the user
    /// restores the data and rechecks.
    pub(super) fn on_read_failed(&mut self, block: BlockRef, error: StorageError) {
        if self.error.is_some() {
            return;
        }
        let start = self.layout.piece_range(block.piece).start + block.begin as u64;
        let end = start + block.length as u64;
        let files: Vec<usize> = self
            .layout
            .files_for_piece(block.piece)
            .into_iter()
            .filter(|&f| {
                let file = &self.layout.files[f];
                file.offset < end && start < file.offset + file.length
            })
            .collect();
        for &f in &files {
            for p in self.layout.pieces_for_file(f) {
                self.lost.set(p as usize);
            }
        }
        let names: Vec<String> = files
            .iter()
            .map(|&f| self.layout.files[f].path.display().to_string())
            .collect();
        let what = match &error {
            StorageError::Missing => "missing or truncated".to_string(),
            e => e.to_string(),
        };
        let msg = format!(
            "data lost while seeding: {} {what}; restore it and recheck",
            names.join(", ")
        );
        tracing::error!(piece = block.piece, error = %error, "{msg}");
        self.error = Some(msg);
        self.close_all_peers();
        self.publish();
    }

    /// Flush in a spawned task (fsyncs must not stall the torrent task); one at a time. What
    /// completes meanwhile stays `dirty` and goes into the next flush.
    pub(super) fn start_flush(&mut self) {
        if self.flushing {
            return;
        }
        self.flushing = true;
        self.dirty = false;
        self.last_flush = now();
        let storage = self.storage.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = storage.flush().await;
            let _ = tx.send(Internal::Flushed(Box::new(result)));
        });
    }

    pub(super) fn on_flushed(&mut self, result: Result<(), StorageError>) {
        self.flushing = false;
        if let Err(e) = result {
            tracing::error!(error = %e, "flush failed; pausing torrent");
            self.error = Some(format!("storage error: {e}"));
            self.close_all_peers();
        }
    }

    /// Verified pieces we can still read: the picker's minus any lost while seeding.
    pub(super) fn readable_pieces(&self) -> std::borrow::Cow<'_, Bitfield> {
        let have = self.picker.have();
        if self.lost.count_ones() == 0 {
            return std::borrow::Cow::Borrowed(have);
        }
        let mut readable = have.clone();
        for p in self.lost.iter_ones() {
            readable.clear(p);
        }
        std::borrow::Cow::Owned(readable)
    }
}
