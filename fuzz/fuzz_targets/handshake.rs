#![no_main]
//! `handshake`: see `zigtorrent_engine::testing::fuzz_bodies::handshake` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::handshake(data);
});
