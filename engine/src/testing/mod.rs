//! Helpers for tests across the workspace (feature `testing`): the storage conformance suite
//! every backend must pass, and in-process tracker fixtures.

pub mod storage_suite;
pub mod tracker_fixture;
