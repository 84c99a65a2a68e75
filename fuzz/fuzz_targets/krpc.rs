#![no_main]
//! `krpc`: see `zigtorrent_engine::testing::fuzz_bodies::krpc` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::krpc(data);
});
