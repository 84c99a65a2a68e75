//! Helpers for tests across the workspace (feature `testing`): the storage conformance suite
//! every backend must pass, in-process tracker fixtures, and storage decorators.

pub mod decorators;
pub mod storage_suite;
pub mod tracker_fixture;
