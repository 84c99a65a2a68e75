#![no_main]
//! `tracker_udp`: see `zigtorrent_engine::testing::fuzz_bodies::tracker_udp` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::tracker_udp(data);
});
