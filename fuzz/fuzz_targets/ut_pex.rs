#![no_main]
//! `ut_pex`: see `zigtorrent_engine::testing::fuzz_bodies::ut_pex` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_engine::testing::fuzz_bodies::ut_pex(data);
});
