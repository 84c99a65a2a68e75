//! Stats: the status snapshot published for the menu, the status lines and (later) the API.

#[allow(unused_imports)]
use super::*;

impl Torrent {
    pub(super) fn publish(&self) {
        let have = self.readable_pieces();
        let have = have.as_ref();
        let have_bytes: u64 = if have.is_full() {
            self.layout.total_length
        } else {
            have.iter_ones()
                .map(|i| self.layout.piece_len(i as u32) as u64)
                .sum()
        };
        let state = if let Some(e) = &self.error {
            TorrentState::Error(e.clone())
        } else if self.paused {
            TorrentState::Paused
        } else if let Some(goal) = self.finished {
            TorrentState::Finished(goal)
        } else if self.queued {
            TorrentState::Queued
        } else if have.is_full() {
            TorrentState::Seeding
        } else {
            TorrentState::Downloading
        };
        let uploaded = self.uploaded;
        let total = self.layout.piece_count().max(1) as f32;
        let peers = self
            .peers
            .values()
            .map(|p| PeerStatus {
                addr: p.addr,
                transport: p.transport.clone(),
                client: p.client.clone(),
                outgoing: p.outgoing,
                download_rate: p.download_rate as u64,
                upload_rate: p.upload_rate as u64,
                am_choking: p.am_choking,
                am_interested: p.am_interested,
                peer_choking: p.peer_choking,
                peer_interested: p.peer_interested,
                snubbed: p.snubbed,
                progress: p.bitfield.count_ones() as f32 / total,
            })
            .collect();
        let files = self.file_progress();
        let trackers = self.announcer.status();
        let record = &self.keeper.record;
        self.p.publish(|s| {
            s.state = state;
            s.all_time_downloaded = record.downloaded;
            s.all_time_uploaded = record.uploaded;
            s.seeding_time = self.keeper.seeding();
            s.seed_goals = record.goals;
            s.queue_position = self.keeper.queue_position();
            s.have_bytes = have_bytes;
            s.pieces_have = have.count_ones() as u32;
            s.download_rate = self.download_rate as u64;
            s.upload_rate = self.upload_rate as u64;
            s.downloaded = self.downloaded;
            s.uploaded = uploaded;
            s.wasted = self.wasted;
            s.peers_connected = self.peers.len();
            s.peers_known = self.known.len();
            s.tracker_error = self.announcer.error().cloned();
            s.peers = peers;
            s.files = files;
            s.trackers = trackers;
            s.next_announce = self.announcer.next();
            s.peers_banned = self.banned.len();
            s.pieces = have.clone();
        });
    }

    /// Verified bytes per file.
    pub(super) fn file_progress(&self) -> Vec<FileStatus> {
        let have = self.readable_pieces();
        let have = have.as_ref();
        let pl = self.layout.piece_length as u64;
        self.layout
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let have_bytes = if have.is_full() {
                    f.length
                } else {
                    self.layout
                        .pieces_for_file(i)
                        .filter(|p| have.get(*p as usize))
                        .map(|p| {
                            let start = (p as u64 * pl).max(f.offset);
                            let end = ((p as u64 + 1) * pl).min(f.offset + f.length);
                            end.saturating_sub(start)
                        })
                        .sum()
                };
                FileStatus {
                    path: f.path.clone(),
                    length: f.length,
                    have_bytes,
                }
            })
            .collect()
    }
}

/// A readable client name from a peer id: Azureus style `-XX1234-` becomes `XX 1234`.
pub(super) fn client_name(id: &PeerId) -> String {
    let b = &id.0;
    if b[0] == b'-' && b[7] == b'-' && b[1..7].iter().all(|c| c.is_ascii_alphanumeric()) {
        let code = String::from_utf8_lossy(&b[1..3]);
        let version = String::from_utf8_lossy(&b[3..7]);
        return format!("{code} {version}");
    }
    let printable: String = b
        .iter()
        .take(8)
        .map(|&c| if c.is_ascii_graphic() { c as char } else { '.' })
        .collect();
    printable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names() {
        let mut id = [b'x'; 20];
        id[..8].copy_from_slice(b"-lt2080-");
        assert_eq!(client_name(&PeerId(id)), "lt 2080");
        id[..8].copy_from_slice(b"M7-2-2--");
        assert_eq!(client_name(&PeerId(id)), "M7-2-2--");
        id[0] = 0;
        assert_eq!(client_name(&PeerId(id)), ".7-2-2--");
    }
}
