#![no_main]
//! `lsd_announce`: see `zigtorrent_engine::testing::fuzz_bodies::lsd_announce` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::lsd_announce(data);
});
