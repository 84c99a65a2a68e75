//! `FsStorage`: positioned file I/O, `.part` files renamed into place, durable resume state.
//! (Pending.)
