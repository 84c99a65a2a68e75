//! Helpers for tests across the workspace (feature `testing`): the storage conformance suite
//! every backend must pass, in-process tracker fixtures, storage decorators, and the bodies of
//! the fuzz targets (shared by `fuzz/` and the stable corpus replay test), and the in-memory
//! swarm simulator (`sim`).

pub mod decorators;
pub mod fuzz_bodies;
pub mod sim;
pub mod storage_suite;
pub mod tracker_fixture;
