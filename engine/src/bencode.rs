//! Bounded bencode: every untrusted bencode passes [`scan`] before serde_bencode sees it.
//! (Stub: API fixed, implementation pending.)

use std::ops::Range;

use serde::de::DeserializeOwned;

/// BEP 3 puts no limit on nesting; we do, so deep lists cannot overflow the stack.
pub const MAX_DEPTH: usize = 64;

/// Limits applied by [`scan`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deepest nesting of lists and dictionaries accepted.
    pub max_depth: usize,
    /// Largest input accepted, in bytes.
    pub max_size: usize,
}

/// What a successful scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Byte span of the value of the top-level dictionary's `info` key, if any.
    pub info_span: Option<Range<usize>>,
}

/// Malformed or over-limit bencode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BencodeError {
    /// Placeholder until the scanner lands.
    #[error("bencode error at byte {offset}: {reason}")]
    Invalid {
        /// Where the problem was found.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The checked bytes did not decode into the expected shape.
    #[error("bencode does not match the expected structure: {0}")]
    Shape(String),
}

/// Check that `input` is exactly one well-formed bencode value within `limits`.
pub fn scan(input: &[u8], limits: Limits) -> Result<Scanned, BencodeError> {
    let _ = (input, limits);
    unimplemented!("bencode::scan")
}

/// [`scan`], then decode with serde_bencode.
pub fn decode<T: DeserializeOwned>(input: &[u8], limits: Limits) -> Result<T, BencodeError> {
    let _ = (input, limits);
    unimplemented!("bencode::decode")
}
