#![no_main]
//! `ut_metadata`: see `zigtorrent_engine::testing::fuzz_bodies::ut_metadata` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::ut_metadata(data);
});
