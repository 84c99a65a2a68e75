//! Fitting text and columns into the cells a terminal has: widths in terminal cells (wide
//! characters count two), names cut with `…`, columns dropped by priority.

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Cells `s` takes on screen.
pub fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `s` cut to at most `max` cells, ending in `…` when cut.
pub fn ellipsize(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > max - 1 {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// `s` cut to at most `max` cells from the front, starting with `…` when cut: for paths,
/// whose end says the most.
pub fn ellipsize_start(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut kept = Vec::new();
    let mut used = 0;
    for c in s.chars().rev() {
        let w = c.width().unwrap_or(0);
        if used + w > max - 1 {
            break;
        }
        used += w;
        kept.push(c);
    }
    std::iter::once('…').chain(kept.into_iter().rev()).collect()
}

/// `s` broken into lines of at most `max` cells, at spaces where it can be.
pub fn wrap(s: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut used = 0;
    for word in s.split(' ') {
        let w = width(word);
        if used > 0 && used + 1 + w <= max {
            line.push(' ');
            line.push_str(word);
            used += 1 + w;
            continue;
        }
        if used > 0 {
            lines.push(std::mem::take(&mut line));
            used = 0;
        }
        // A word longer than a line is cut across lines.
        for c in word.chars() {
            let cw = c.width().unwrap_or(0);
            if used + cw > max && used > 0 {
                lines.push(std::mem::take(&mut line));
                used = 0;
            }
            line.push(c);
            used += cw;
        }
    }
    if used > 0 || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// One column of a table that adapts to the terminal's width.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// Header text.
    pub title: &'static str,
    /// Cells it needs (the least, for the flexible column).
    pub width: u16,
    /// Lower keeps it longer: columns are added in this order while they fit.
    pub priority: u8,
    /// The one column that takes the space left (a name): never dropped.
    pub flexible: bool,
}

/// Which columns fit in `available` cells, in display order, with their widths. The flexible
/// column always stays and gets at least its own width, or the whole width when even that
/// does not fit; the others are added by priority until the next one does not fit; whatever is
/// left goes to the flexible column. Columns are separated by `spacing` cells.
pub fn fit_columns(columns: &[Column], available: u16, spacing: u16) -> Vec<(usize, u16)> {
    let Some(flex) = columns.iter().position(|c| c.flexible) else {
        return Vec::new();
    };
    let mut order: Vec<usize> = (0..columns.len()).filter(|&i| i != flex).collect();
    order.sort_by_key(|&i| columns[i].priority);
    let mut used = columns[flex].width;
    let mut chosen = vec![flex];
    for i in order {
        let need = columns[i].width + spacing;
        if used + need > available {
            break;
        }
        used += need;
        chosen.push(i);
    }
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|i| {
            let w = if i == flex {
                (columns[flex].width + available.saturating_sub(used)).min(available)
            } else {
                columns[i].width
            };
            (i, w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_with_an_ellipsis_by_cells() {
        assert_eq!(ellipsize("ubuntu.iso", 20), "ubuntu.iso");
        assert_eq!(ellipsize("ubuntu-24.04-desktop.iso", 10), "ubuntu-24…");
        assert_eq!(width(&ellipsize("名前名前名前", 7)), 7);
        assert_eq!(ellipsize("名前名前名前", 7), "名前名…");
        assert_eq!(ellipsize("abc", 0), "");
        assert_eq!(ellipsize_start("/home/user/torrents", 10), "…/torrents");
    }

    #[test]
    fn wrapping_keeps_words_and_cuts_long_ones() {
        assert_eq!(wrap("one two three", 7), vec!["one two", "three"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), vec![""]);
    }

    #[test]
    fn columns_drop_by_priority_and_the_name_stays() {
        let cols = [
            Column {
                title: "Name",
                width: 10,
                priority: 0,
                flexible: true,
            },
            Column {
                title: "A",
                width: 5,
                priority: 1,
                flexible: false,
            },
            Column {
                title: "B",
                width: 5,
                priority: 3,
                flexible: false,
            },
            Column {
                title: "C",
                width: 5,
                priority: 2,
                flexible: false,
            },
        ];
        // Everything fits: the name takes the rest.
        assert_eq!(
            fit_columns(&cols, 40, 1),
            vec![(0, 22), (1, 5), (2, 5), (3, 5)]
        );
        // B (lowest priority) goes first.
        assert_eq!(fit_columns(&cols, 22, 1), vec![(0, 10), (1, 5), (3, 5)]);
        // Only the name.
        assert_eq!(fit_columns(&cols, 12, 1), vec![(0, 12)]);
        // Narrower than the name's own width: the name gets all there is.
        assert_eq!(fit_columns(&cols, 6, 1), vec![(0, 6)]);
    }
}
