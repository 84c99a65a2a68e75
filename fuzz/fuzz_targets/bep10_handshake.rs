#![no_main]
//! `bep10_handshake`: see `zigtorrent_engine::testing::fuzz_bodies::bep10_handshake` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::bep10_handshake(data);
});
