#![no_main]
//! `wire_frames`: see `zigtorrent_engine::testing::fuzz_bodies::wire_frames` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::wire_frames(data);
});
