#![no_main]
//! `metainfo`: see `zigtorrent_engine::testing::fuzz_bodies::metainfo` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::metainfo(data);
});
