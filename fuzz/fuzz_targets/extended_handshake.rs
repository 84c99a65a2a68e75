#![no_main]
//! `extended_handshake`: see `zigtorrent_engine::testing::fuzz_bodies::extended_handshake` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::extended_handshake(data);
});
