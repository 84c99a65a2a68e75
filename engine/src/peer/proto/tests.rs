//! The protocol driven by scripted bytes and a hand-moved clock: no sockets, no tokio.

use std::path::PathBuf;

use super::*;

/// 4 pieces of 32 KiB, the last one short (100 000 − 3 × 32 768 = 1 696 bytes).
const PIECE_LEN: u32 = 32 * 1024;
const LAST_PIECE_LEN: u32 = 1_696;

fn layout() -> Arc<Layout> {
    Arc::new(Layout::new(PIECE_LEN, [(PathBuf::from("f"), 100_000)]))
}

fn config(have: &[u32]) -> ProtoConfig {
    let layout = layout();
    let mut bf = Bitfield::new(layout.piece_count() as usize);
    for &p in have {
        bf.set(p as usize);
    }
    let have = have.to_vec();
    ProtoConfig {
        layout,
        initial_bitfield: Some(bf),
        peer_extensions: false,
        extended_handshake: basic_extended_handshake(),
        has_piece: Box::new(move |p| have.contains(&p)),
        fast: false,
        allowed_fast: Vec::new(),
    }
}

/// A connection where both sides offered BEP 6; we grant `allowed`.
fn fast_proto(have: &[u32], allowed: &[u32], now: Instant) -> PeerProto {
    PeerProto::new(
        ProtoConfig {
            fast: true,
            allowed_fast: allowed.to_vec(),
            ..config(have)
        },
        now,
    )
}

fn reject(index: u32, begin: u32, length: u32) -> Message {
    Message::RejectRequest {
        index,
        begin,
        length,
    }
}

fn proto(have: &[u32], now: Instant) -> PeerProto {
    PeerProto::new(config(have), now)
}

fn frames(msgs: &[Message]) -> BytesMut {
    let mut b = BytesMut::new();
    for m in msgs {
        m.encode(&mut b);
    }
    b
}

fn feed(p: &mut PeerProto, msgs: &[Message], now: Instant) {
    let mut b = frames(msgs);
    p.handle_input(&mut b, now);
}

fn events(p: &mut PeerProto) -> Vec<String> {
    std::iter::from_fn(|| p.poll_event())
        .map(|e| format!("{e:?}"))
        .collect()
}

/// Everything the protocol wants sent, decoded back into messages.
fn sent(p: &mut PeerProto, now: Instant) -> Vec<Message> {
    let mut bytes = BytesMut::new();
    if let Some(t) = p.poll_transmit(now) {
        for c in &t.chunks {
            bytes.extend_from_slice(c);
        }
    }
    let mut out = Vec::new();
    while let Some(m) = wire::decode(&mut bytes, 1 << 20).expect("we encode valid frames") {
        out.push(m);
    }
    assert!(bytes.is_empty(), "a partial frame was handed out");
    out
}

fn request(index: u32, begin: u32, length: u32) -> Message {
    Message::Request {
        index,
        begin,
        length,
    }
}

fn block(piece: u32, begin: u32, length: u32) -> BlockRef {
    BlockRef {
        piece,
        begin,
        length,
    }
}

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

#[test]
fn a_flip_flood_in_the_byte_stream_ends_the_connection() {
    let now = Instant::now();
    let mut p = proto(&[], now);
    let flood: Vec<Message> = (0..=FLIP_BURST as usize)
        .map(|i| {
            if i % 2 == 0 {
                Message::Interested
            } else {
                Message::NotInterested
            }
        })
        .collect();
    feed(&mut p, &flood, now);
    assert!(matches!(p.poll_close(), Some(CloseReason::FlipFlood)));
    assert!(p.is_closed());
    // Nothing is handled after the close.
    feed(&mut p, &[Message::Have(1)], now);
    assert!(events(&mut p).is_empty());
    assert!(p.poll_timeout().is_none());
}

#[test]
fn haves_are_checked_against_the_piece_count_and_repeats_dropped() {
    let now = Instant::now();
    let mut p = proto(&[], now);
    feed(
        &mut p,
        &[Message::Have(2), Message::Have(2), Message::Have(3)],
        now,
    );
    assert_eq!(events(&mut p), ["Have(2)", "Have(3)"]);
    // A bitfield that adds nothing new is dropped; one that adds a piece goes through whole.
    feed(
        &mut p,
        &[Message::Bitfield(Bytes::from_static(&[0x30]))],
        now,
    );
    assert!(events(&mut p).is_empty());
    feed(
        &mut p,
        &[Message::Bitfield(Bytes::from_static(&[0xb0]))],
        now,
    );
    let ev = events(&mut p);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0].starts_with("Bitfield"), "{ev:?}");
    feed(&mut p, &[Message::Have(0)], now);
    assert!(events(&mut p).is_empty(), "piece 0 came with the bitfield");
    // Piece 4 does not exist.
    feed(&mut p, &[Message::Have(4)], now);
    assert!(matches!(
        p.poll_close(),
        Some(CloseReason::HaveOutOfRange(4))
    ));
}

#[test]
fn bitfields_of_the_wrong_shape_end_the_connection() {
    let now = Instant::now();
    // 4 pieces: one byte whose low four bits are spare.
    for bad in [&[0xf0, 0][..], &[][..], &[0xf1][..]] {
        let mut p = proto(&[], now);
        feed(
            &mut p,
            &[Message::Bitfield(Bytes::copy_from_slice(bad))],
            now,
        );
        assert!(
            matches!(p.poll_close(), Some(CloseReason::BadBitfield(_))),
            "{bad:?} accepted"
        );
        assert!(events(&mut p).is_empty());
    }
}

#[test]
fn oversized_frames_and_blocks_outside_the_torrent_end_the_connection() {
    let now = Instant::now();
    let mut p = proto(&[], now);
    let mut b = BytesMut::from(&[0, 1, 0, 0, 7][..]); // 65 536 bytes announced
    p.handle_input(&mut b, now);
    assert!(matches!(
        p.poll_close(),
        Some(CloseReason::Protocol(wire::WireError::TooLong { .. }))
    ));
    let mut p = proto(&[], now);
    let data = Bytes::from(vec![1; 100]);
    feed(
        &mut p,
        &[Message::Piece {
            index: 3,
            begin: LAST_PIECE_LEN - 99,
            data,
        }],
        now,
    );
    assert!(matches!(
        p.poll_close(),
        Some(CloseReason::BlockOutOfRange(b)) if b == block(3, LAST_PIECE_LEN - 99, 100)
    ));
}

#[test]
fn requests_are_served_only_unchoked_in_range_and_for_pieces_we_have() {
    let now = Instant::now();
    let mut p = proto(&[0, 3], now);
    // Choked (the start state): dropped.
    feed(&mut p, &[request(0, 0, BLOCK_SIZE)], now);
    assert_eq!(p.poll_upload_request(), None);
    p.handle_command(PeerCommand::SetChoking(false));
    assert_eq!(sent(&mut p, now).last(), Some(&Message::Unchoke));
    feed(
        &mut p,
        &[
            request(0, 0, BLOCK_SIZE),
            request(1, 0, BLOCK_SIZE), // a piece we do not have: dropped
            request(3, 0, LAST_PIECE_LEN),
        ],
        now,
    );
    assert_eq!(p.poll_upload_request(), Some(block(0, 0, BLOCK_SIZE)));
    assert_eq!(p.poll_upload_request(), Some(block(3, 0, LAST_PIECE_LEN)));
    assert_eq!(p.poll_upload_request(), None);
    // Choked again: requests are dropped, and so is data read for an earlier one.
    feed(&mut p, &[request(0, BLOCK_SIZE, BLOCK_SIZE)], now);
    p.handle_command(PeerCommand::SetChoking(true));
    assert_eq!(
        p.poll_upload_request(),
        None,
        "the choke discards the queue"
    );
    p.handle_upload(
        block(0, 0, BLOCK_SIZE),
        Bytes::from(vec![7; BLOCK_SIZE as usize]),
    );
    assert_eq!(sent(&mut p, now), [Message::Choke]);
    assert_eq!(p.uploaded(), 0);
    assert!(!p.is_closed());
}

#[test]
fn requests_out_of_range_or_over_16_kib_end_the_connection() {
    let now = Instant::now();
    for bad in [
        request(0, 0, BLOCK_SIZE + 1),
        request(4, 0, 1),
        request(3, LAST_PIECE_LEN - 1, 2),
        request(0, PIECE_LEN, 1),
        request(0, 0, 0),
        request(0, u32::MAX, BLOCK_SIZE),
    ] {
        // Even while choked: a malformed request is a broken peer, not a late one.
        let mut p = proto(&[0, 1, 2, 3], now);
        feed(&mut p, std::slice::from_ref(&bad), now);
        assert!(
            matches!(p.poll_close(), Some(CloseReason::InvalidRequest(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn served_blocks_go_out_behind_earlier_messages_without_copies() {
    let now = Instant::now();
    let mut p = proto(&[0], now);
    assert!(matches!(&sent(&mut p, now)[..], [Message::Bitfield(_)]));
    p.handle_command(PeerCommand::SetChoking(false));
    feed(&mut p, &[request(0, 16_384, 1000)], now);
    assert_eq!(p.poll_upload_request(), Some(block(0, 16_384, 1000)));
    p.handle_command(PeerCommand::Send(vec![Message::Have(0)]));
    let data = Bytes::from(vec![9; 1000]);
    // Data nobody asked for is dropped; the read we handed out goes out.
    p.handle_upload(block(0, 0, 1000), data.clone());
    p.handle_upload(block(0, 16_384, 1000), data.clone());
    assert_eq!(p.pending_transmit(), 5 + 9 + PIECE_HEADER + 1000);
    let t = p.poll_transmit(now).expect("queued");
    assert_eq!(t.payload, 1000);
    assert!(
        t.chunks.iter().any(|c| c.as_ptr() == data.as_ptr()),
        "block data was copied"
    );
    assert_eq!(p.uploaded(), 1000);
    assert_eq!(p.pending_transmit(), 0);
    assert!(p.poll_transmit(now).is_none());
}

const PIECE_HEADER: usize = wire::PIECE_HEADER_LEN;

#[test]
fn keep_alives_are_scheduled_and_a_silent_peer_times_out() {
    let start = Instant::now();
    let mut p = proto(&[], start);
    assert_eq!(p.poll_timeout(), Some(start + KEEPALIVE_INTERVAL));
    // Early wake-ups change nothing.
    p.handle_timeout(start + KEEPALIVE_INTERVAL / 2);
    assert!(sent(&mut p, start).is_empty());
    let t1 = start + KEEPALIVE_INTERVAL;
    p.handle_timeout(t1);
    assert_eq!(sent(&mut p, t1), [Message::KeepAlive]);
    // Sending restarts our clock: the next keep-alive, or the idle deadline, whichever is first.
    assert_eq!(p.poll_timeout(), Some(start + IDLE_TIMEOUT));
    // The peer talks at 100 s: its idle deadline moves.
    let t2 = start + Duration::from_secs(100);
    feed(&mut p, &[Message::KeepAlive], t2);
    assert_eq!(p.poll_timeout(), Some(t1 + KEEPALIVE_INTERVAL));
    let t3 = t1 + KEEPALIVE_INTERVAL;
    p.handle_timeout(t3);
    assert!(!p.is_closed());
    assert_eq!(sent(&mut p, t3), [Message::KeepAlive]);
    assert_eq!(p.poll_timeout(), Some(t3 + KEEPALIVE_INTERVAL));
    // We keep talking, the peer does not: 180 s after its last word it is gone.
    let t4 = t3 + KEEPALIVE_INTERVAL;
    assert!(t4 < t2 + IDLE_TIMEOUT);
    p.handle_timeout(t4);
    assert_eq!(sent(&mut p, t4), [Message::KeepAlive]);
    assert_eq!(p.poll_timeout(), Some(t2 + IDLE_TIMEOUT));
    p.handle_timeout(t2 + IDLE_TIMEOUT - Duration::from_millis(1));
    assert!(!p.is_closed());
    p.handle_timeout(t2 + IDLE_TIMEOUT);
    assert!(matches!(p.poll_close(), Some(CloseReason::IdleTimeout)));
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn no_keep_alive_is_added_behind_bytes_still_waiting() {
    let start = Instant::now();
    let mut p = proto(&[], start);
    p.handle_command(PeerCommand::Send(vec![Message::Interested]));
    let t = start + KEEPALIVE_INTERVAL;
    p.handle_timeout(t);
    // The timer moved on (it must not fire again at once) and only the waiting bytes go out.
    assert!(p.poll_timeout().expect("alive") > t);
    assert_eq!(sent(&mut p, t), [Message::Interested]);
}

/// A script of every kind of frame the protocol keeps, with a block among them.
fn script() -> BytesMut {
    frames(&[
        Message::Bitfield(Bytes::from_static(&[0x80])),
        Message::Unchoke,
        Message::Piece {
            index: 1,
            begin: 64,
            data: Bytes::from((0..200u8).collect::<Vec<_>>()),
        },
        Message::Have(2),
        Message::KeepAlive,
        Message::Interested,
        Message::Have(3),
    ])
}

#[test]
fn a_stream_split_at_any_point_gives_the_same_events() {
    let now = Instant::now();
    let whole = script();
    let mut p = proto(&[], now);
    let mut b = whole.clone();
    p.handle_input(&mut b, now);
    let expected = events(&mut p);
    assert_eq!(expected.len(), 6, "{expected:?}");
    assert!(expected[2].starts_with("Block(BlockRef { piece: 1, begin: 64, length: 200 }"));
    for split in 0..=whole.len() {
        let mut p = proto(&[], now);
        let mut buf = BytesMut::from(&whole[..split]);
        p.handle_input(&mut buf, now);
        let mut got = events(&mut p);
        buf.extend_from_slice(&whole[split..]);
        p.handle_input(&mut buf, now);
        got.extend(events(&mut p));
        assert!(buf.is_empty());
        assert_eq!(got, expected, "split at {split}");
        assert!(!p.is_closed(), "split at {split}");
    }
}

#[test]
fn block_data_is_split_off_the_receive_buffer_without_copying() {
    let now = Instant::now();
    let mut p = proto(&[], now);
    let mut buf = script();
    let base = buf.as_ptr() as usize;
    p.handle_input(&mut buf, now);
    let data = std::iter::from_fn(|| p.poll_event())
        .find_map(|e| match e {
            PeerEvent::Block(_, data) => Some(data),
            _ => None,
        })
        .expect("a block");
    // Bitfield frame (6 bytes), unchoke (5), then the piece header (13).
    assert_eq!(data.as_ptr() as usize, base + 6 + 5 + PIECE_HEADER);
}

fn pump(from: &mut PeerProto, to: &mut PeerProto, now: Instant) -> Vec<String> {
    if let Some(t) = from.poll_transmit(now) {
        let mut buf = BytesMut::new();
        for c in &t.chunks {
            buf.extend_from_slice(c);
        }
        to.handle_input(&mut buf, now);
        assert!(buf.is_empty());
    }
    events(to)
}

#[test]
fn two_protocols_talk_to_each_other() {
    let now = Instant::now();
    let mut seeder = PeerProto::new(
        ProtoConfig {
            peer_extensions: true,
            ..config(&[0, 1, 2, 3])
        },
        now,
    );
    let mut leecher = PeerProto::new(
        ProtoConfig {
            peer_extensions: true,
            extended_handshake: crate::extension::ExtendedHandshake {
                ids: crate::extension::ExtensionIds {
                    ut_metadata: None,
                    ut_pex: Some(2),
                },
                ..basic_extended_handshake()
            },
            ..config(&[])
        },
        now,
    );
    let ev = pump(&mut seeder, &mut leecher, now);
    assert!(ev[0].starts_with("Bitfield"), "{ev:?}");
    assert_eq!(ev[1], "RequestLimit(1024)");
    // The leecher advertises an extension, so the torrent sees the seeder's handshake too.
    assert!(ev[2].starts_with("Extended { id: 0"), "{ev:?}");
    assert_eq!(ev.len(), 3);
    let ev = pump(&mut leecher, &mut seeder, now);
    assert_eq!(
        ev,
        ["RequestLimit(1024)"],
        "a leecher with nothing sends no bitfield"
    );

    leecher.handle_command(PeerCommand::Send(vec![Message::Interested]));
    assert_eq!(pump(&mut leecher, &mut seeder, now), ["Interested"]);
    seeder.handle_command(PeerCommand::SetChoking(false));
    assert_eq!(pump(&mut seeder, &mut leecher, now), ["Unchoke"]);
    leecher.handle_command(PeerCommand::Send(vec![request(3, 0, LAST_PIECE_LEN)]));
    assert!(pump(&mut leecher, &mut seeder, now).is_empty());
    let asked = seeder.poll_upload_request().expect("a served request");
    assert_eq!(asked, block(3, 0, LAST_PIECE_LEN));
    let data = Bytes::from(vec![0x5a; LAST_PIECE_LEN as usize]);
    seeder.handle_upload(asked, data.clone());
    let ev = pump(&mut seeder, &mut leecher, now);
    assert_eq!(ev, [format!("{:?}", PeerEvent::Block(asked, data))]);
    assert_eq!(seeder.uploaded(), u64::from(LAST_PIECE_LEN));

    // Extension messages: under an id the leecher advertised they reach its torrent; others
    // are dropped.
    seeder.handle_command(PeerCommand::SendExtended {
        id: 2,
        payload: Bytes::from_static(b"d8:msg_typei0ee"),
    });
    seeder.handle_command(PeerCommand::SendExtended {
        id: 1,
        payload: Bytes::from_static(b"de"),
    });
    let ev = pump(&mut seeder, &mut leecher, now);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0].starts_with("Extended { id: 2"), "{ev:?}");
    assert!(ev[0].contains("d8:msg_typei0ee"), "{ev:?}");
    // …and a peer that advertises none drops them all.
    leecher.handle_command(PeerCommand::SendExtended {
        id: 2,
        payload: Bytes::from_static(b"de"),
    });
    assert!(pump(&mut leecher, &mut seeder, now).is_empty());

    leecher.handle_command(PeerCommand::Close);
    assert!(matches!(
        leecher.poll_close(),
        Some(CloseReason::ClosedByUs)
    ));
    assert!(!seeder.is_closed());
}

#[test]
fn events_before_a_protocol_error_still_reach_the_torrent() {
    let now = Instant::now();
    let mut p = proto(&[], now);
    feed(
        &mut p,
        &[Message::Have(1), Message::Have(9), Message::Have(2)],
        now,
    );
    assert_eq!(events(&mut p), ["Have(1)"]);
    assert!(matches!(
        p.poll_close(),
        Some(CloseReason::HaveOutOfRange(9))
    ));
    assert!(p.poll_close().is_none(), "the reason is given once");
}

fn extended(payload: &'static [u8]) -> Message {
    Message::Unknown {
        id: wire::EXTENDED,
        payload: Bytes::from_static(payload),
    }
}

#[test]
fn the_peers_reqq_is_told_once_per_change_and_extension_quirks_are_ignored() {
    let now = Instant::now();
    let mut p = proto(&[], now);
    feed(
        &mut p,
        &[
            extended(b"\0d4:reqqi250ee"),
            extended(b"\0d4:reqqi250ee"),
            extended(b""),
            extended(b"\0not bencode"),
            extended(b"\x05d1:xi1ee"), // an id we never advertised
            extended(b"\0d4:reqqi500ee"),
        ],
        now,
    );
    assert_eq!(events(&mut p), ["RequestLimit(250)", "RequestLimit(500)"]);
    assert!(!p.is_closed());
}

#[test]
fn queued_requests_are_bounded() {
    let now = Instant::now();
    let mut p = proto(&[0, 1, 2], now);
    p.handle_command(PeerCommand::SetChoking(false));
    // 2 pieces of 2 blocks, asked for again and again: past the bound they are dropped.
    let asks: Vec<Message> = (0..MAX_QUEUED_UPLOADS + 100)
        .map(|i| request((i % 2) as u32, (i / 2 % 2) as u32 * BLOCK_SIZE, BLOCK_SIZE))
        .collect();
    feed(&mut p, &asks, now);
    let queued = std::iter::from_fn(|| p.poll_upload_request()).count();
    assert_eq!(queued, MAX_QUEUED_UPLOADS);
    assert!(!p.is_closed());
}

// ---- BEP 6, the fast extension ----

#[test]
fn the_first_message_with_fast_says_have_all_or_have_none() {
    let now = Instant::now();
    assert_eq!(
        sent(&mut fast_proto(&[], &[], now), now),
        [Message::HaveNone]
    );
    assert_eq!(
        sent(&mut fast_proto(&[0, 1, 2, 3], &[], now), now),
        [Message::HaveAll]
    );
    assert_eq!(
        sent(&mut fast_proto(&[0, 2], &[], now), now),
        [Message::Bitfield(Bytes::from_static(&[0xa0]))]
    );
    // No bitfield at all (a torrent with nothing) is have-none too.
    let mut p = PeerProto::new(
        ProtoConfig {
            fast: true,
            initial_bitfield: None,
            ..config(&[])
        },
        now,
    );
    assert_eq!(sent(&mut p, now), [Message::HaveNone]);
    // Without fast, BEP 3: nothing when we have nothing, a bitfield when we have all.
    assert!(sent(&mut proto(&[], now), now).is_empty());
    assert!(matches!(
        &sent(&mut proto(&[0, 1, 2, 3], now), now)[..],
        [Message::Bitfield(_)]
    ));
}

#[test]
fn fast_messages_from_the_peer_become_events() {
    let now = Instant::now();
    let mut p = fast_proto(&[], &[], now);
    // Have-none says nothing new; a suggestion is accepted and ignored.
    feed(&mut p, &[Message::HaveNone, Message::Suggest(2)], now);
    assert!(events(&mut p).is_empty());
    feed(&mut p, &[Message::Have(1), Message::HaveAll], now);
    let ev = events(&mut p);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0], "Have(1)");
    assert_eq!(
        ev[1],
        format!("{:?}", PeerEvent::Bitfield(Bitfield::full(4)))
    );
    // Every piece is known now: a second have-all and later haves are dropped.
    feed(&mut p, &[Message::HaveAll, Message::Have(3)], now);
    assert!(events(&mut p).is_empty());
    feed(
        &mut p,
        &[
            reject(3, 0, LAST_PIECE_LEN),
            reject(3, 0, LAST_PIECE_LEN + 1), // outside the torrent: not ours, ignored
            Message::AllowedFast(2),
            Message::AllowedFast(2), // repeated
            Message::AllowedFast(4), // no such piece
            Message::AllowedFast(0),
        ],
        now,
    );
    assert_eq!(
        events(&mut p),
        [
            format!("{:?}", PeerEvent::Rejected(block(3, 0, LAST_PIECE_LEN))),
            "AllowedFast(2)".to_string(),
            "AllowedFast(0)".to_string(),
        ]
    );
    assert!(!p.is_closed());
}

#[test]
fn allowed_fast_grants_from_a_peer_are_bounded() {
    let now = Instant::now();
    // A torrent of 100 pieces so there are more grants than the cap.
    let layout = Arc::new(Layout::new(
        16 * 1024,
        [(PathBuf::from("f"), 100 * 16 * 1024)],
    ));
    let mut p = PeerProto::new(
        ProtoConfig {
            layout,
            initial_bitfield: None,
            fast: true,
            ..config(&[])
        },
        now,
    );
    let grants: Vec<Message> = (0..100).map(Message::AllowedFast).collect();
    feed(&mut p, &grants, now);
    assert_eq!(events(&mut p).len(), MAX_ALLOWED_FAST_RECEIVED);
}

#[test]
fn fast_messages_without_fast_end_the_connection() {
    let now = Instant::now();
    for (msg, id) in [
        (Message::Suggest(0), 0x0d),
        (Message::HaveAll, 0x0e),
        (Message::HaveNone, 0x0f),
        (reject(0, 0, BLOCK_SIZE), 0x10),
        (Message::AllowedFast(0), 0x11),
    ] {
        let mut p = proto(&[0], now);
        feed(&mut p, &[msg.clone(), Message::Have(1)], now);
        assert!(
            matches!(p.poll_close(), Some(CloseReason::FastNotNegotiated(i)) if i == id),
            "{msg:?} accepted"
        );
        assert!(
            events(&mut p).is_empty(),
            "{msg:?}: handled after the error"
        );
    }
}

#[test]
fn with_fast_every_refused_request_is_rejected() {
    let now = Instant::now();
    let mut p = fast_proto(&[0, 3], &[], now);
    assert_eq!(
        sent(&mut p, now),
        [Message::Bitfield(Bytes::from_static(&[0x90]))]
    );
    // Choked: rejected, not dropped.
    feed(&mut p, &[request(0, 0, BLOCK_SIZE)], now);
    assert_eq!(p.poll_upload_request(), None);
    assert_eq!(sent(&mut p, now), [reject(0, 0, BLOCK_SIZE)]);
    p.handle_command(PeerCommand::SetChoking(false));
    feed(
        &mut p,
        &[
            request(0, 0, BLOCK_SIZE),
            request(1, 0, BLOCK_SIZE), // a piece we do not have
            request(3, 0, LAST_PIECE_LEN),
        ],
        now,
    );
    assert_eq!(
        sent(&mut p, now),
        [Message::Unchoke, reject(1, 0, BLOCK_SIZE)]
    );
    assert_eq!(p.poll_upload_request(), Some(block(0, 0, BLOCK_SIZE)));
    assert_eq!(p.poll_upload_request(), Some(block(3, 0, LAST_PIECE_LEN)));
    assert_eq!(p.poll_upload_request(), None);
    // A full queue: the request past the limit is rejected. Two are in flight already.
    let mut more: Vec<Message> = (0..MAX_QUEUED_UPLOADS - 2)
        .map(|i| request(0, (i as u32 % 2) * BLOCK_SIZE, BLOCK_SIZE))
        .collect();
    more.push(request(3, 0, LAST_PIECE_LEN));
    feed(&mut p, &more, now);
    assert_eq!(
        sent(&mut p, now),
        [reject(3, 0, LAST_PIECE_LEN)],
        "only the one over the limit"
    );
    // Data handed back frees a place.
    p.handle_upload(
        block(0, 0, BLOCK_SIZE),
        Bytes::from(vec![0; BLOCK_SIZE as usize]),
    );
    let _ = sent(&mut p, now);
    feed(&mut p, &[request(3, 0, LAST_PIECE_LEN)], now);
    assert!(sent(&mut p, now).is_empty(), "queued, not rejected");
    assert!(!p.is_closed());
}

#[test]
fn a_choke_rejects_queued_and_in_flight_requests_but_keeps_allowed_fast_ones() {
    let now = Instant::now();
    let mut p = fast_proto(&[0, 1, 2, 3], &[3], now);
    p.handle_command(PeerCommand::SetChoking(false));
    feed(
        &mut p,
        &[
            request(0, 0, BLOCK_SIZE),
            request(3, 0, LAST_PIECE_LEN),
            request(1, 0, BLOCK_SIZE),
        ],
        now,
    );
    // Two reads under way, one still queued.
    assert_eq!(p.poll_upload_request(), Some(block(0, 0, BLOCK_SIZE)));
    assert_eq!(p.poll_upload_request(), Some(block(3, 0, LAST_PIECE_LEN)));
    let _ = sent(&mut p, now);
    p.handle_command(PeerCommand::SetChoking(true));
    assert_eq!(
        sent(&mut p, now),
        [
            Message::Choke,
            reject(0, 0, BLOCK_SIZE),
            reject(1, 0, BLOCK_SIZE)
        ]
    );
    assert_eq!(p.poll_upload_request(), None, "the queued one is gone");
    // The overtaken read is dropped; the allowed-fast one goes out although we choke.
    p.handle_upload(
        block(0, 0, BLOCK_SIZE),
        Bytes::from(vec![1; BLOCK_SIZE as usize]),
    );
    let data = Bytes::from(vec![3; LAST_PIECE_LEN as usize]);
    p.handle_upload(block(3, 0, LAST_PIECE_LEN), data.clone());
    assert_eq!(
        sent(&mut p, now),
        [Message::Piece {
            index: 3,
            begin: 0,
            data
        }]
    );
    assert_eq!(p.uploaded(), u64::from(LAST_PIECE_LEN));
    // A second choke has nothing left to reject.
    p.handle_command(PeerCommand::SetChoking(false));
    p.handle_command(PeerCommand::SetChoking(true));
    assert_eq!(sent(&mut p, now), [Message::Unchoke, Message::Choke]);
}

#[test]
fn allowed_fast_pieces_are_granted_on_interest_and_served_while_choking() {
    let now = Instant::now();
    // We grant 0, 1 and 3; we lack 1 and the peer has 3: only 0 is worth telling.
    let mut p = fast_proto(&[0, 2, 3], &[0, 1, 3], now);
    let _ = sent(&mut p, now);
    feed(&mut p, &[Message::Have(3)], now);
    assert!(sent(&mut p, now).is_empty(), "nothing before interest");
    feed(&mut p, &[Message::Interested], now);
    assert_eq!(sent(&mut p, now), [Message::AllowedFast(0)]);
    assert_eq!(events(&mut p), ["Have(3)", "Interested"]);
    // Once per connection.
    feed(
        &mut p,
        &[Message::NotInterested, Message::Interested],
        now + Duration::from_secs(1),
    );
    assert!(sent(&mut p, now).is_empty());
    // Still choked: the granted piece is served, others and ungranted ones rejected.
    feed(
        &mut p,
        &[
            request(0, 0, BLOCK_SIZE),
            request(2, 0, BLOCK_SIZE),
            request(1, 0, BLOCK_SIZE), // granted but we lack it
        ],
        now,
    );
    assert_eq!(p.poll_upload_request(), Some(block(0, 0, BLOCK_SIZE)));
    assert_eq!(p.poll_upload_request(), None);
    assert_eq!(
        sent(&mut p, now),
        [reject(2, 0, BLOCK_SIZE), reject(1, 0, BLOCK_SIZE)]
    );
    assert!(p.am_choking());
}

#[test]
fn without_fast_a_grant_means_nothing() {
    let now = Instant::now();
    // A set handed in for a peer without BEP 6 is not used: BEP 3 drops silently.
    let mut p = PeerProto::new(
        ProtoConfig {
            allowed_fast: vec![0],
            ..config(&[0])
        },
        now,
    );
    let _ = sent(&mut p, now);
    feed(
        &mut p,
        &[Message::Interested, request(0, 0, BLOCK_SIZE)],
        now,
    );
    assert_eq!(p.poll_upload_request(), None);
    assert!(sent(&mut p, now).is_empty(), "no grant, no reject");
}

#[test]
fn two_fast_protocols_talk_to_each_other() {
    let now = Instant::now();
    let mut seeder = fast_proto(&[0, 1, 2, 3], &[2], now);
    let mut leecher = fast_proto(&[], &[], now);
    let ev = pump(&mut seeder, &mut leecher, now);
    assert_eq!(
        ev,
        [format!("{:?}", PeerEvent::Bitfield(Bitfield::full(4)))]
    );
    assert!(pump(&mut leecher, &mut seeder, now).is_empty(), "have-none");
    leecher.handle_command(PeerCommand::Send(vec![Message::Interested]));
    assert_eq!(pump(&mut leecher, &mut seeder, now), ["Interested"]);
    assert_eq!(pump(&mut seeder, &mut leecher, now), ["AllowedFast(2)"]);
    leecher.handle_command(PeerCommand::Send(vec![
        request(2, 0, BLOCK_SIZE),
        request(1, 0, BLOCK_SIZE),
    ]));
    assert!(pump(&mut leecher, &mut seeder, now).is_empty());
    let asked = seeder
        .poll_upload_request()
        .expect("the allowed-fast request");
    let data = Bytes::from(vec![2; BLOCK_SIZE as usize]);
    seeder.handle_upload(asked, data.clone());
    assert_eq!(
        pump(&mut seeder, &mut leecher, now),
        [
            format!("{:?}", PeerEvent::Rejected(block(1, 0, BLOCK_SIZE))),
            format!("{:?}", PeerEvent::Block(block(2, 0, BLOCK_SIZE), data)),
        ]
    );
}

#[test]
fn a_peer_that_keeps_requesting_what_we_refuse_is_cut_off_with_a_bounded_buffer() {
    let now = Instant::now();
    let mut p = fast_proto(&[0, 3], &[], now);
    let _ = sent(&mut p, now);
    // Choked: each request costs a reject; the peer never reads them (nothing is taken).
    let flood: Vec<Message> = (0..MAX_REFUSED_IN_A_ROW + 100)
        .map(|i| request(0, (i % 2) * BLOCK_SIZE, BLOCK_SIZE))
        .collect();
    feed(&mut p, &flood, now);
    assert!(p.is_closed());
    assert!(
        matches!(p.poll_close(), Some(CloseReason::RequestFlood(n)) if n == MAX_REFUSED_IN_A_ROW + 1)
    );
    assert!(
        p.pending_transmit() <= 17 * MAX_REFUSED_IN_A_ROW as usize + 64,
        "{}",
        p.pending_transmit()
    );
}

#[test]
fn requests_we_take_reset_the_count_of_refusals() {
    let now = Instant::now();
    let mut p = fast_proto(&[0, 3], &[], now);
    let _ = sent(&mut p, now);
    // Just under the limit while choked, then one taken after the unchoke, then as many again.
    let refused: Vec<Message> = (0..MAX_REFUSED_IN_A_ROW)
        .map(|i| request(0, (i % 2) * BLOCK_SIZE, BLOCK_SIZE))
        .collect();
    feed(&mut p, &refused, now);
    assert!(!p.is_closed());
    p.handle_command(PeerCommand::SetChoking(false));
    feed(&mut p, &[request(0, 0, BLOCK_SIZE)], now);
    assert_eq!(p.poll_upload_request(), Some(block(0, 0, BLOCK_SIZE)));
    p.handle_command(PeerCommand::SetChoking(true));
    let _ = sent(&mut p, now);
    feed(&mut p, &refused, now);
    assert!(!p.is_closed(), "{:?}", p.poll_close());
}
