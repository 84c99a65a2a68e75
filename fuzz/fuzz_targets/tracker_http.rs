#![no_main]
//! `tracker_http`: see `zigtorrent_engine::testing::fuzz_bodies::tracker_http` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::tracker_http(data);
});
