//! Requests: interest, per-peer pipelines topped up from the picker, and what an arriving block
//! does (accepted only if asked of that very peer; a whole piece goes to verification), or a
//! BEP 6 reject (the block goes to another peer at once). A peer that chokes us is asked only
//! for the pieces it allowed us fast (BEP 6).

#[allow(unused_imports)]
use super::*;

impl Torrent {
    pub(super) fn update_interest(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let interesting = self.picker.is_interesting(&peer.bitfield);
        if interesting != peer.am_interested {
            peer.am_interested = interesting;
            let msg = if interesting {
                Message::Interested
            } else {
                Message::NotInterested
            };
            let _ = peer.tx.try_send(PeerCommand::Send(vec![msg]));
        }
        if interesting {
            self.fill_requests(key);
        }
    }

    pub(super) fn on_block(&mut self, key: PeerKey, block: BlockRef, data: Bytes) {
        let peer = self.peers.get_mut(&key).expect("caller checked");
        let addr = peer.addr;
        // Only blocks we asked this peer for count: a peer must not be able to slip data into
        // pieces others are filling (that would get honest peers blamed for bad hashes).
        let outcome = if peer.requests.remove(&block).is_some() {
            self.picker.on_block(key, block)
        } else {
            BlockOutcome::Unexpected
        };
        match outcome {
            BlockOutcome::Unexpected => {
                self.wasted += data.len() as u64;
            }
            BlockOutcome::Accepted {
                cancel,
                piece_complete,
            } => {
                peer.last_block = now();
                peer.last_active = peer.last_block;
                peer.snubbed = false;
                peer.window_down += data.len() as u64;
                self.window_down += data.len() as u64;
                self.downloaded += data.len() as u64;
                for other in cancel {
                    if let Some(p) = self.peers.get_mut(&other) {
                        if p.requests.remove(&block).is_some() {
                            let _ = p.tx.try_send(PeerCommand::Send(vec![Message::Cancel {
                                index: block.piece,
                                begin: block.begin,
                                length: block.length,
                            }]));
                        }
                    }
                }
                let piece_len = self.layout.piece_len(block.piece);
                let buf = self.pieces.entry(block.piece).or_insert_with(|| PieceBuf {
                    blocks: vec![None; piece_len.div_ceil(BLOCK_SIZE) as usize],
                });
                let slot = (block.begin / BLOCK_SIZE) as usize;
                if let Some(s) = buf.blocks.get_mut(slot) {
                    *s = Some((data, addr));
                }
                if piece_complete {
                    if let Some(buf) = self.pieces.remove(&block.piece) {
                        self.verify(block.piece, buf);
                    }
                }
            }
        }
        self.fill_requests(key);
    }

    /// BEP 6: the peer will not serve `block`. A block we asked it for goes back to the picker
    /// and to another peer at once (not at the request timeout); the peer is not asked for that
    /// piece again for a while. A reject for anything else is ignored.
    pub(super) fn on_rejected(&mut self, key: PeerKey, block: BlockRef) {
        let peer = self.peers.get_mut(&key).expect("caller checked");
        if peer.requests.remove(&block).is_none() {
            tracing::debug!(addr = %peer.addr, ?block, "reject for a block not asked of it");
            return;
        }
        peer.rejected.insert(block.piece, now());
        self.picker.release(key, block);
        // Others first, so the block goes to someone who will serve it.
        let keys: Vec<PeerKey> = self.peers.keys().copied().filter(|k| *k != key).collect();
        for other in keys {
            self.fill_requests(other);
        }
        self.fill_requests(key);
    }

    pub(super) fn refill_all(&mut self) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.fill_requests(key);
        }
    }

    pub(super) fn fill_requests(&mut self, key: PeerKey) {
        if !self.active() || self.is_seed() || self.verify_backlog > VERIFY_BACKLOG_CAP {
            return;
        }
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        // BEP 6: a peer that chokes us still serves the pieces it allowed us fast (asked once
        // it has kept us choked a while, see ALLOWED_FAST_WAIT).
        let choked_fast = peer.peer_choking
            && peer.fast
            && !peer.allowed_fast.is_empty()
            && now().duration_since(peer.choked_at) >= ALLOWED_FAST_WAIT;
        if (peer.peer_choking && !choked_fast) || !peer.am_interested {
            return;
        }
        let depth = if peer.snubbed {
            1
        } else {
            peer.depth.min(peer.request_limit)
        };
        let free = depth.saturating_sub(peer.requests.len());
        if free == 0 || (free < REFILL_BATCH.min(depth) && !peer.requests.is_empty()) {
            return;
        }
        let now = now();
        let mut picked = Vec::with_capacity(free);
        if peer.peer_choking || !peer.rejected.is_empty() {
            // Only what it will serve: its allowed-fast pieces while it chokes us, and
            // nothing it rejected lately (see REJECT_MEMORY).
            let mut offer = if peer.peer_choking {
                let mut only = Bitfield::new(peer.bitfield.len());
                for &p in &peer.allowed_fast {
                    if peer.bitfield.get(p as usize) {
                        only.set(p as usize);
                    }
                }
                only
            } else {
                peer.bitfield.clone()
            };
            for &p in peer.rejected.keys() {
                offer.clear(p as usize);
            }
            self.picker.pick(key, &offer, free, &mut picked);
        } else {
            self.picker.pick(key, &peer.bitfield, free, &mut picked);
        }
        if picked.is_empty() {
            return;
        }
        let msgs = picked
            .iter()
            .map(|b| {
                peer.requests.insert(*b, now);
                Message::Request {
                    index: b.piece,
                    begin: b.begin,
                    length: b.length,
                }
            })
            .collect();
        if peer.tx.try_send(PeerCommand::Send(msgs)).is_err() {
            // Writer backed up or gone: give the blocks back.
            for b in picked {
                peer.requests.remove(&b);
                self.picker.release(key, b);
            }
        }
    }
}
