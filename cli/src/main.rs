//! The `zigtorrent` binary.
fn main() {}
