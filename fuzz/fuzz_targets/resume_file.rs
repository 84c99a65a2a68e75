#![no_main]
//! `resume_file`: a whole resume file (`<state>/<hash>.resume`) from memory; whatever parses must
//! encode and parse back to itself. See `zigtorrent_storage_fs::fuzz_resume_file`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zigtorrent_storage_fs::fuzz_resume_file(data);
});
