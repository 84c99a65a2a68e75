#![no_main]
//! `magnet`: see `zigtorrent_engine::testing::fuzz_bodies::magnet` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::magnet(data);
});
