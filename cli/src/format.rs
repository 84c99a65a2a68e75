//! Human-readable sizes and rates.

/// `1.5 MiB` style.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `1.5 MiB/s` style.
pub fn rate(n: u64) -> String {
    format!("{}/s", bytes(n))
}

/// A rate in at most ten cells for table columns: `512 B/s`, `99.9 KiB/s`, `1023 KiB/s`.
pub fn rate_short(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B/s");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 100.0 {
        format!("{v:.1} {}/s", UNITS[unit])
    } else {
        format!("{v:.0} {}/s", UNITS[unit])
    }
}

/// `s` with control characters (escape sequences, newlines, …) replaced by `?`: text from
/// torrents, trackers and file names must not move the cursor or split a status line.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(is_unsafe) {
        s.chars()
            .map(|c| if is_unsafe(c) { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Characters that must not reach a terminal from hostile text: controls (C0, DEL, C1: escape
/// sequences, line breaks that forge lines) and the invisible characters that reorder or hide
/// text (bidi overrides and isolates, zero-width ones, line/paragraph separators, the soft
/// hyphen, Hangul fillers, the Mongolian vowel separator, tag characters).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_text_is_made_printable() {
        assert_eq!(
            super::printable("a\u{1b}[31mb\nc\u{202E}d\u{200B}e\u{9b}f"),
            "a?[31mb?c?d?e?f"
        );
        assert_eq!(super::printable("plain ünïcode 名前"), "plain ünïcode 名前");
        assert_eq!(
            super::printable("a\u{AD}b\u{3164}c\u{E0041}d\u{115F}e"),
            "a?b?c?d?e"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::rate(3 * 1024 * 1024), "3.0 MiB/s");
        assert_eq!(super::rate_short(512), "512 B/s");
        assert_eq!(super::rate_short(1023 * 1024 + 1000), "1024 KiB/s");
        assert_eq!(super::rate_short(99 * 1024), "99.0 KiB/s");
        assert_eq!(super::rate_short(u64::MAX), "16384 PiB/s");
    }

    #[test]
    fn printable_replaces_control_characters() {
        assert_eq!(super::printable("plain name"), "plain name");
        assert_eq!(super::printable("a\x1b[2Jb\nc\td"), "a?[2Jb?c?d");
    }
}
