//! Early writeback. The kernel keeps written pages dirty until a large share of memory is dirty,
//! so a fast download would otherwise reach its final fsync (before the rename into place) with
//! the whole file still to write: seconds of stall at the end. Asking for writeback of each
//! piece as it is written overlaps the disk with the network; the fsync at finalize still
//! provides durability, so this changes speed, never what is promised.

// `sync_file_range` has no std wrapper; this is the crate's only unsafe code.
#![allow(unsafe_code)]

use std::fs::File;

/// Start writing back `len` bytes at `offset` of `file`; returns at once. Best effort: an error
/// only means the pages are written later, by fsync.
pub fn start(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: `file` is borrowed for the whole call, so its descriptor is open and valid;
        // the call takes only integers and reads or writes no memory of ours.
        let _ = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}
