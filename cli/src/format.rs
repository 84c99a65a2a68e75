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

/// `s` with control characters (escape sequences, newlines, …) replaced by `?`: text from
/// torrents, trackers and file names must not move the cursor or split a status line.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::rate(3 * 1024 * 1024), "3.0 MiB/s");
    }

    #[test]
    fn printable_replaces_control_characters() {
        assert_eq!(super::printable("plain name"), "plain name");
        assert_eq!(super::printable("a\x1b[2Jb\nc\td"), "a?[2Jb?c?d");
    }
}
