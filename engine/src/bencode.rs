//! Bounded bencode: every untrusted bencode passes [`scan`] before serde_bencode sees it.
//!
//! serde_bencode alone allocates a claimed string length before checking the input, recurses
//! without a depth limit and cannot report where a value sits in the input. [`scan`] closes those
//! gaps with one pass over the bytes that keeps an explicit stack (it never recurses), so the
//! checked bytes can then be handed to serde_bencode safely. The scanner owns syntax and limits
//! only; what the values mean is the caller's business.
//!
//! Decisions (BEP 3 leaves them open or real files break them):
//! - dictionary keys out of sorted order are accepted (real torrents have them, and the info-hash
//!   is taken over the raw bytes anyway) and reported in [`Scanned::keys_sorted`]; a key repeated
//!   in one dictionary is rejected, since two readers could disagree on which value counts;
//! - integers and string lengths must be canonical: no leading zeros, no `-0`, integers fit `i64`.

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

impl Limits {
    /// [`MAX_DEPTH`] and the given size cap.
    pub const fn with_max_size(max_size: usize) -> Self {
        Limits {
            max_depth: MAX_DEPTH,
            max_size,
        }
    }
}

/// What a successful scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Byte span of the value of the top-level dictionary's `info` key, if any.
    pub info_span: Option<Range<usize>>,
    /// Whether every dictionary's keys appeared in strictly increasing byte order, i.e. the
    /// encoding is canonical as BEP 3 asks (given the scan's other checks).
    pub keys_sorted: bool,
    /// Number of values in the input, dictionary keys included. A decoder that builds a tree
    /// spends memory per value, so callers can cap this before decoding.
    pub items: usize,
}

/// Malformed or over-limit bencode.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BencodeError {
    /// A syntax error not covered by a more specific variant (e.g. an unexpected byte).
    #[error("bencode error at byte {offset}: {reason}")]
    Invalid {
        /// Where the problem was found.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The input is larger than [`Limits::max_size`].
    #[error("bencode input of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Lists and dictionaries nest deeper than [`Limits::max_depth`].
    #[error("bencode nests deeper than {max} levels at byte {offset}")]
    TooDeep {
        /// Where the container that went over the limit opens.
        offset: usize,
        /// The limit.
        max: usize,
    },
    /// The input ends inside a value.
    #[error("bencode input ends early at byte {offset}")]
    UnexpectedEof {
        /// The input length.
        offset: usize,
    },
    /// An integer is empty, not canonical (`i03e`, `i-0e`) or does not fit `i64`.
    #[error("bad bencode integer at byte {offset}")]
    BadInteger {
        /// Where the integer starts (its `i`).
        offset: usize,
    },
    /// A string length is not canonical (`03:`), does not fit, or runs past the end of input.
    #[error("bad bencode string length at byte {offset}")]
    BadLength {
        /// Where the length digits start.
        offset: usize,
    },
    /// A dictionary key is not a byte string.
    #[error("bencode dictionary key at byte {offset} is not a string")]
    KeyNotString {
        /// Where the offending key starts.
        offset: usize,
    },
    /// A key appears twice in one dictionary.
    #[error("duplicate bencode dictionary key at byte {offset}")]
    DuplicateKey {
        /// Where the repeated key starts.
        offset: usize,
    },
    /// Bytes follow the one top-level value.
    #[error("trailing bytes after the bencode value at byte {offset}")]
    TrailingBytes {
        /// Where the trailing bytes start.
        offset: usize,
    },
    /// The checked bytes did not decode into the expected shape.
    #[error("bencode does not match the expected structure: {0}")]
    Shape(String),
}

/// One open container on the scanner's explicit stack.
enum Frame {
    List,
    Dict(DictFrame),
}

struct DictFrame {
    /// Spans of the keys seen so far (kept to find duplicates in unsorted dictionaries).
    keys: Vec<Range<usize>>,
    /// True when the next item is a key, false when it is the value of the last key.
    expecting_key: bool,
    /// Keys so far were strictly increasing.
    sorted: bool,
}

/// Check that `input` is exactly one well-formed bencode value within `limits`.
///
/// Runs in one pass with an explicit stack bounded by `limits.max_depth`, allocates nothing
/// proportional to claimed lengths, and reports the span of the top-level dictionary's `info`
/// value so callers can hash it exactly as it appears.
pub fn scan(input: &[u8], limits: Limits) -> Result<Scanned, BencodeError> {
    if input.len() > limits.max_size {
        return Err(BencodeError::TooLarge {
            size: input.len(),
            max: limits.max_size,
        });
    }
    scan_value(input, limits, false).map(|(scanned, _)| scanned)
}

/// [`scan`] for one value at the front of `input` with other bytes after it (BEP 9 `data`
/// messages put the metadata piece right after their dictionary). Returns the scan and the
/// value's length; `limits.max_size` bounds the value, and the bytes after it are not read.
pub fn scan_prefix(input: &[u8], limits: Limits) -> Result<(Scanned, usize), BencodeError> {
    let (scanned, end) = scan_value(input, limits, true)?;
    if end > limits.max_size {
        return Err(BencodeError::TooLarge {
            size: end,
            max: limits.max_size,
        });
    }
    Ok((scanned, end))
}

/// The scanner behind [`scan`] and [`scan_prefix`]: one value from the start of `input`, and
/// where it ends; bytes after it are an error unless `trailing_ok`.
fn scan_value(
    input: &[u8],
    limits: Limits,
    trailing_ok: bool,
) -> Result<(Scanned, usize), BencodeError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut pos = 0usize;
    let mut keys_sorted = true;
    let mut items = 0usize;
    // Start of the top-level `info` value once its key has been read, and the finished span.
    let mut info_start: Option<usize> = None;
    let mut info_span: Option<Range<usize>> = None;

    loop {
        let start = pos;
        let Some(&byte) = input.get(pos) else {
            return Err(BencodeError::UnexpectedEof {
                offset: input.len(),
            });
        };
        if byte != b'e' {
            items += 1;
        }

        // Inside a dictionary awaiting a key: only a string key or the closing `e` may follow.
        if let Some(Frame::Dict(d)) = stack.last_mut() {
            if d.expecting_key && byte != b'e' {
                if !byte.is_ascii_digit() {
                    return Err(BencodeError::KeyNotString { offset: pos });
                }
                let key = read_string(input, &mut pos)?;
                if let Some(prev) = d.keys.last() {
                    match input[prev.clone()].cmp(&input[key.clone()]) {
                        std::cmp::Ordering::Less => {}
                        std::cmp::Ordering::Equal => {
                            return Err(BencodeError::DuplicateKey { offset: start })
                        }
                        std::cmp::Ordering::Greater => d.sorted = false,
                    }
                }
                if stack.len() == 1 && &input[key.clone()] == b"info" {
                    info_start = Some(pos);
                }
                // The borrow of `d` ended with the last use above; reborrow to record the key.
                if let Some(Frame::Dict(d)) = stack.last_mut() {
                    d.keys.push(key);
                    d.expecting_key = false;
                }
                continue;
            }
        }

        match byte {
            b'i' => {
                read_integer(input, &mut pos)?;
            }
            b'0'..=b'9' => {
                read_string(input, &mut pos)?;
            }
            b'l' | b'd' => {
                if stack.len() >= limits.max_depth {
                    return Err(BencodeError::TooDeep {
                        offset: pos,
                        max: limits.max_depth,
                    });
                }
                stack.push(if byte == b'l' {
                    Frame::List
                } else {
                    Frame::Dict(DictFrame {
                        keys: Vec::new(),
                        expecting_key: true,
                        sorted: true,
                    })
                });
                pos += 1;
                continue;
            }
            b'e' => {
                match stack.pop() {
                    None => {
                        return Err(BencodeError::Invalid {
                            offset: pos,
                            reason: "unexpected `e`",
                        })
                    }
                    Some(Frame::List) => {}
                    Some(Frame::Dict(d)) => {
                        if !d.expecting_key {
                            return Err(BencodeError::Invalid {
                                offset: pos,
                                reason: "dictionary key without a value",
                            });
                        }
                        if !d.sorted {
                            keys_sorted = false;
                            check_duplicates(input, d.keys)?;
                        }
                    }
                }
                pos += 1;
            }
            _ => {
                return Err(BencodeError::Invalid {
                    offset: pos,
                    reason: "unexpected byte",
                })
            }
        }

        // A value ended at `pos`: a scalar just read or a container just closed.
        match stack.last_mut() {
            None => {
                if pos != input.len() && !trailing_ok {
                    return Err(BencodeError::TrailingBytes { offset: pos });
                }
                let scanned = Scanned {
                    info_span,
                    keys_sorted,
                    items,
                };
                return Ok((scanned, pos));
            }
            Some(Frame::List) => {}
            Some(Frame::Dict(d)) => {
                d.expecting_key = true;
                if stack.len() == 1 {
                    if let Some(s) = info_start.take() {
                        info_span = Some(s..pos);
                    }
                }
            }
        }
    }
}

/// Read `<len>:<bytes>` at `*pos`; returns the span of the bytes and moves past them.
fn read_string(input: &[u8], pos: &mut usize) -> Result<Range<usize>, BencodeError> {
    let start = *pos;
    let bad = BencodeError::BadLength { offset: start };
    let mut len: usize = 0;
    let mut digits = 0usize;
    let mut p = start;
    loop {
        let Some(&b) = input.get(p) else {
            return Err(BencodeError::UnexpectedEof {
                offset: input.len(),
            });
        };
        match b {
            b'0'..=b'9' => {
                if digits == 1 && len == 0 {
                    return Err(bad); // leading zero
                }
                len = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(usize::from(b - b'0')))
                    .ok_or(bad.clone())?;
                digits += 1;
                p += 1;
            }
            b':' if digits > 0 => break,
            _ => return Err(bad),
        }
    }
    let data_start = p + 1;
    // `data_start <= input.len()` because `p` indexed a byte; the subtraction cannot underflow.
    if len > input.len() - data_start {
        return Err(bad);
    }
    *pos = data_start + len;
    Ok(data_start..data_start + len)
}

/// Read `i<int>e` at `*pos` and move past it.
fn read_integer(input: &[u8], pos: &mut usize) -> Result<i64, BencodeError> {
    let start = *pos;
    let bad = BencodeError::BadInteger { offset: start };
    let mut p = start + 1;
    let negative = input.get(p) == Some(&b'-');
    if negative {
        p += 1;
    }
    let digits_start = p;
    // Accumulate the magnitude as u64 so i64::MIN (one past i64::MAX) is representable.
    let mut magnitude: u64 = 0;
    loop {
        let Some(&b) = input.get(p) else {
            return Err(BencodeError::UnexpectedEof {
                offset: input.len(),
            });
        };
        match b {
            b'0'..=b'9' => {
                magnitude = magnitude
                    .checked_mul(10)
                    .and_then(|m| m.checked_add(u64::from(b - b'0')))
                    .ok_or(bad.clone())?;
                p += 1;
            }
            b'e' => break,
            _ => return Err(bad),
        }
    }
    let digits = &input[digits_start..p];
    if digits.is_empty() || (digits[0] == b'0' && (digits.len() > 1 || negative)) {
        return Err(bad);
    }
    let value = if negative {
        0i64.checked_sub_unsigned(magnitude).ok_or(bad)?
    } else {
        i64::try_from(magnitude).map_err(|_| bad)?
    };
    *pos = p + 1;
    Ok(value)
}

/// Reject a repeated key in a dictionary whose keys arrived out of order.
fn check_duplicates(input: &[u8], mut keys: Vec<Range<usize>>) -> Result<(), BencodeError> {
    keys.sort_by(|a, b| {
        input[a.clone()]
            .cmp(&input[b.clone()])
            .then(a.start.cmp(&b.start))
    });
    for pair in keys.windows(2) {
        if input[pair[0].clone()] == input[pair[1].clone()] {
            // Report the later of the two occurrences; a string's length prefix precedes it, so
            // point at the data start, which is enough to find it.
            return Err(BencodeError::DuplicateKey {
                offset: pair[1].start,
            });
        }
    }
    Ok(())
}

/// [`scan`], then decode with serde_bencode.
pub fn decode<T: DeserializeOwned>(input: &[u8], limits: Limits) -> Result<T, BencodeError> {
    scan(input, limits)?;
    serde_bencode::from_bytes(input).map_err(|e| BencodeError::Shape(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_depth: MAX_DEPTH,
        max_size: 1 << 20,
    };

    fn ok(input: &[u8]) -> Scanned {
        scan(input, L)
            .unwrap_or_else(|e| panic!("{:?} rejected: {e}", String::from_utf8_lossy(input)))
    }

    fn err(input: &[u8]) -> BencodeError {
        match scan(input, L) {
            Ok(s) => panic!("{:?} accepted: {s:?}", String::from_utf8_lossy(input)),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_well_formed_values() {
        for v in [
            &b"i0e"[..],
            b"i-1e",
            b"i42e",
            b"i9223372036854775807e",
            b"i-9223372036854775808e",
            b"0:",
            b"4:spam",
            b"le",
            b"de",
            b"l4:spami3ee",
            b"d3:cow3:moo4:spam4:eggse",
            b"d4:spaml1:a1:bee",
            b"lldeleee",
        ] {
            ok(v);
        }
    }

    #[test]
    fn rejects_bad_integers() {
        for v in [
            &b"ie"[..],
            b"i-e",
            b"i-0e",
            b"i03e",
            b"i00e",
            b"i-03e",
            b"i1.5e",
            b"i+1e",
            b"i 1e",
        ] {
            assert!(
                matches!(err(v), BencodeError::BadInteger { offset: 0 }),
                "{v:?}"
            );
        }
        assert_eq!(
            err(b"i9223372036854775808e"),
            BencodeError::BadInteger { offset: 0 }
        );
        assert_eq!(
            err(b"i-9223372036854775809e"),
            BencodeError::BadInteger { offset: 0 }
        );
        assert_eq!(
            err(b"i99999999999999999999999999e"),
            BencodeError::BadInteger { offset: 0 }
        );
        assert_eq!(err(b"li1e"), BencodeError::UnexpectedEof { offset: 4 });
    }

    #[test]
    fn rejects_bad_string_lengths() {
        assert_eq!(err(b"03:abc"), BencodeError::BadLength { offset: 0 });
        assert_eq!(err(b"00:"), BencodeError::BadLength { offset: 0 });
        assert_eq!(
            err(b"9999999999:abc"),
            BencodeError::BadLength { offset: 0 }
        );
        assert_eq!(
            err(b"99999999999999999999999999999:x"),
            BencodeError::BadLength { offset: 0 }
        );
        assert_eq!(err(b"4:abc"), BencodeError::BadLength { offset: 0 });
        assert_eq!(err(b"l6:abcde"), BencodeError::BadLength { offset: 1 });
        assert_eq!(err(b"3x:abc"), BencodeError::BadLength { offset: 0 });
        assert!(matches!(
            err(b"-3:abc"),
            BencodeError::Invalid { offset: 0, .. }
        ));
        assert_eq!(err(b"3"), BencodeError::UnexpectedEof { offset: 1 });
    }

    #[test]
    fn rejects_truncated_and_trailing_input() {
        assert_eq!(err(b""), BencodeError::UnexpectedEof { offset: 0 });
        assert_eq!(err(b"l"), BencodeError::UnexpectedEof { offset: 1 });
        assert_eq!(err(b"d3:cow"), BencodeError::UnexpectedEof { offset: 6 });
        assert_eq!(
            err(b"d3:cow3:moo"),
            BencodeError::UnexpectedEof { offset: 11 }
        );
        assert_eq!(err(b"i1"), BencodeError::UnexpectedEof { offset: 2 });
        assert_eq!(err(b"i1ei2e"), BencodeError::TrailingBytes { offset: 3 });
        assert_eq!(err(b"dex"), BencodeError::TrailingBytes { offset: 2 });
        assert_eq!(err(b"le\n"), BencodeError::TrailingBytes { offset: 2 });
        assert!(matches!(err(b"e"), BencodeError::Invalid { offset: 0, .. }));
        assert!(matches!(err(b"x"), BencodeError::Invalid { offset: 0, .. }));
    }

    #[test]
    fn rejects_bad_dictionaries() {
        assert_eq!(err(b"di1ei2ee"), BencodeError::KeyNotString { offset: 1 });
        assert_eq!(err(b"dlei2ee"), BencodeError::KeyNotString { offset: 1 });
        assert!(matches!(
            err(b"d3:cowe"),
            BencodeError::Invalid { offset: 6, .. }
        ));
        // Sorted duplicate caught at once, unsorted duplicate caught at the end.
        assert_eq!(
            err(b"d1:ai1e1:ai2ee"),
            BencodeError::DuplicateKey { offset: 7 }
        );
        assert!(matches!(
            err(b"d1:bi1e1:ai2e1:bi3ee"),
            BencodeError::DuplicateKey { .. }
        ));
        // Duplicates in nested dictionaries too.
        assert!(matches!(
            err(b"d1:xd1:bi1e1:ai2e1:bi3eee"),
            BencodeError::DuplicateKey { .. }
        ));
    }

    #[test]
    fn unsorted_keys_are_accepted_but_reported() {
        assert!(ok(b"d1:ai1e1:bi2ee").keys_sorted);
        assert!(!ok(b"d1:bi1e1:ai2ee").keys_sorted);
        assert!(!ok(b"ld1:bi1e1:ai2eee").keys_sorted);
        // Byte order, not length order: "ab" < "b".
        assert!(ok(b"d2:abi1e1:bi2ee").keys_sorted);
    }

    #[test]
    fn counts_items() {
        assert_eq!(ok(b"i1e").items, 1);
        assert_eq!(ok(b"le").items, 1);
        assert_eq!(ok(b"d1:ai1e1:bl0:deee").items, 7);
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        let deep = |n: usize| {
            let mut v = vec![b'l'; n];
            v.extend(vec![b'e'; n]);
            v
        };
        ok(&deep(MAX_DEPTH));
        assert_eq!(
            err(&deep(MAX_DEPTH + 1)),
            BencodeError::TooDeep {
                offset: MAX_DEPTH,
                max: MAX_DEPTH
            }
        );
        assert!(matches!(err(&deep(10_000)), BencodeError::TooDeep { .. }));
        // Unterminated deep nesting is rejected just the same, not walked to the end.
        assert!(matches!(
            err(&vec![b'l'; 100_000]),
            BencodeError::TooDeep { .. }
        ));
        let mut dicts = Vec::new();
        for _ in 0..10_000 {
            dicts.extend_from_slice(b"d1:a");
        }
        assert!(matches!(err(&dicts), BencodeError::TooDeep { .. }));
    }

    #[test]
    fn size_is_bounded() {
        let lim = Limits {
            max_depth: MAX_DEPTH,
            max_size: 4,
        };
        assert!(scan(b"4:ab", lim).is_err());
        assert!(scan(b"2:ab", lim).is_ok());
        assert_eq!(
            scan(b"5:abcd", lim),
            Err(BencodeError::TooLarge { size: 6, max: 4 })
        );
    }

    #[test]
    fn info_span_is_the_raw_top_level_value() {
        let input = b"d8:announce3:url4:infod1:zi1e1:ai2ee5:extrai0ee";
        let s = ok(input);
        assert_eq!(&input[s.info_span.clone().unwrap()], b"d1:zi1e1:ai2ee");
        // A nested `info` key does not count; a top-level one after it does.
        let input = b"d1:ad4:infoi1ee4:info4:spame";
        assert_eq!(&input[ok(input).info_span.unwrap()], b"4:spam");
        assert_eq!(ok(b"d1:ad4:infoi1eee").info_span, None);
        assert_eq!(ok(b"l4:infoi1ee").info_span, None);
        assert_eq!(ok(b"d4:infoi-7ee").info_span, Some(7..11));
    }

    #[test]
    fn decode_checks_before_serde() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct T {
            a: i64,
            #[serde(with = "serde_bytes")]
            b: Vec<u8>,
        }
        let t: T = decode(b"d1:ai5e1:b2:xye", L).unwrap();
        assert_eq!(
            t,
            T {
                a: 5,
                b: b"xy".to_vec()
            }
        );
        assert!(matches!(
            decode::<T>(b"d1:ai5ee", L),
            Err(BencodeError::Shape(_))
        ));
        assert!(matches!(
            decode::<T>(b"d1:ai5e1:b2:xyeJUNK", L),
            Err(BencodeError::TrailingBytes { .. })
        ));
        assert!(matches!(
            decode::<T>(b"d1:ai5e1:b9999999999:e", L),
            Err(BencodeError::BadLength { .. })
        ));
    }

    #[test]
    fn scan_prefix_stops_at_the_end_of_the_value() {
        // A BEP 9 data message: the dictionary, then raw bytes that are not bencode.
        let msg = b"d8:msg_typei1e5:piecei0ee\xff\x00garbage";
        let (s, end) = scan_prefix(msg, L).unwrap();
        assert_eq!(end, 25);
        assert_eq!(s.items, 5);
        assert_eq!(scan_prefix(b"i5e", L).unwrap().1, 3);
        // The cap bounds the value, not what follows it.
        let small = Limits {
            max_depth: 4,
            max_size: 25,
        };
        assert_eq!(scan_prefix(msg, small).unwrap().1, 25);
        let tiny = Limits {
            max_depth: 4,
            max_size: 24,
        };
        assert!(matches!(
            scan_prefix(msg, tiny),
            Err(BencodeError::TooLarge { size: 25, max: 24 })
        ));
        // Still a well-formed value: an unfinished one or a bad length is an error.
        assert!(scan_prefix(b"d8:msg_typei1e", L).is_err());
        assert!(scan_prefix(b"d5:piece99:xe", L).is_err());
        assert!(scan_prefix(b"", L).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"ide0123456789:-lx";
        for _ in 0..20_000 {
            let len = rng.gen_range(0..40);
            let v: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            if let Ok(s) = scan(&v, L) {
                // Whatever the scanner accepts, serde_bencode must parse without trouble.
                let _: serde_bencode::value::Value =
                    serde_bencode::from_bytes(&v).expect("scanned bytes decode");
                if let Some(span) = s.info_span {
                    assert!(span.end <= v.len());
                }
            }
        }
    }
}
