#![no_main]
//! `bencode_scan`: see `zigtorrent_engine::testing::fuzz_bodies::bencode_scan` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::bencode_scan(data);
});
