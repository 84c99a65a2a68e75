//! Stats: the status snapshot published for the menu, the status lines and (later) the API.

#[allow(unused_imports)]
use super::*;

/// Weight of the newest one-second sample in a [`Rate`]: rates follow changes within a few
/// seconds.
const RATE_ALPHA: f64 = 0.5;

/// Seconds without a byte after which a [`Rate`] reads zero.
const RATE_IDLE_SECONDS: u8 = 3;

/// A transfer rate in bytes per second: an exponential average of one-second samples that
/// reads zero once nothing has moved for [`RATE_IDLE_SECONDS`], so a finished or stalled
/// transfer does not show a halving trickle (down to `1 B/s`) for half a minute.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Rate {
    average: f64,
    idle_seconds: u8,
}

impl Rate {
    /// Take the bytes moved in the last second.
    pub(super) fn add_second(&mut self, bytes: u64) {
        if bytes == 0 {
            self.idle_seconds = self.idle_seconds.saturating_add(1);
        } else {
            self.idle_seconds = 0;
        }
        self.average = if self.idle_seconds >= RATE_IDLE_SECONDS {
            0.0
        } else {
            self.average * (1.0 - RATE_ALPHA) + bytes as f64 * RATE_ALPHA
        };
    }

    /// Bytes per second.
    pub(super) fn get(&self) -> f64 {
        self.average
    }

    /// Bytes per second, whole.
    pub(super) fn bytes_per_second(&self) -> u64 {
        self.average as u64
    }
}

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
        let wanted = self.picker.wanted();
        let (wanted_bytes, wanted_have_bytes) = if wanted.is_full() {
            (self.layout.total_length, have_bytes)
        } else {
            wanted.iter_ones().fold((0u64, 0u64), |(w, h), i| {
                let len = self.layout.piece_len(i as u32) as u64;
                (w + len, h + if have.get(i) { len } else { 0 })
            })
        };
        let state = if let Some(e) = &self.error {
            TorrentState::Error(e.clone())
        } else if self.paused {
            TorrentState::Paused
        } else if let Some(goal) = self.finished {
            TorrentState::Finished(goal)
        } else if self.queued {
            TorrentState::Queued
        } else if wanted_have_bytes == wanted_bytes {
            // Every wanted piece is here (all of them unless files are skipped): seeding.
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
                encryption: p.encryption,
                client: p.client.clone(),
                outgoing: p.outgoing,
                download_rate: p.download_rate.bytes_per_second(),
                upload_rate: p.upload_rate.bytes_per_second(),
                am_choking: p.am_choking,
                am_interested: p.am_interested,
                peer_choking: p.peer_choking,
                peer_interested: p.peer_interested,
                snubbed: p.snubbed,
                progress: p.bitfield.count_ones() as f32 / total,
                extensions: PeerExtensionFlags {
                    fast: p.fast,
                    extension_protocol: p.extension_protocol,
                    ut_metadata: p.ext.theirs().ut_metadata.is_some(),
                    ut_pex: p.ext.theirs().ut_pex.is_some(),
                },
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
            s.wanted_bytes = wanted_bytes;
            s.wanted_have_bytes = wanted_have_bytes;
            s.sequential = self.sequential;
            s.pieces_have = have.count_ones() as u32;
            // A paused torrent moves nothing, whatever the averages still hold.
            let (down, up) = if self.paused {
                (0, 0)
            } else {
                (
                    self.download_rate.bytes_per_second(),
                    self.upload_rate.bytes_per_second(),
                )
            };
            s.download_rate = down;
            s.upload_rate = up;
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
                    priority: self.file_priorities.get(i).copied().unwrap_or_default(),
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

#[cfg(test)]
mod rate_tests {
    use super::Rate;

    #[test]
    fn a_rate_follows_its_samples_and_reads_zero_once_idle() {
        let mut r = Rate::default();
        for _ in 0..10 {
            r.add_second(1_000_000);
        }
        assert!(r.bytes_per_second() > 990_000, "{r:?}");
        r.add_second(0);
        r.add_second(0);
        assert!(
            r.bytes_per_second() > 0,
            "two quiet seconds still average: {r:?}"
        );
        r.add_second(0);
        assert_eq!(r.bytes_per_second(), 0, "{r:?}");
        r.add_second(4_000);
        assert_eq!(r.bytes_per_second(), 2_000, "{r:?}");
    }
}
