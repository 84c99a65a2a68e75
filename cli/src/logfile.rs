//! The menu's log file, kept to a bounded size: past [`MAX_BYTES`] it is renamed to
//! `<name>.1` (replacing the previous one) and a fresh file is started, so a client that runs for
//! months keeps at most two files of logs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Size at which the log starts over (the previous one is kept as `.1`).
pub const MAX_BYTES: u64 = 8 * 1024 * 1024;

/// An append-only log file that rotates itself at a size limit. Share it behind a `Mutex`
/// (`tracing_subscriber` takes `Mutex<W: Write>` as a writer).
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    written: u64,
    limit: u64,
}

impl RotatingLog {
    /// Opens (creating or appending to) `path`; an existing file already past the limit is
    /// rotated first.
    pub fn open(path: &Path, limit: u64) -> io::Result<Mutex<Self>> {
        let file = append(path)?;
        let written = file.metadata()?.len();
        let mut log = RotatingLog {
            path: path.to_path_buf(),
            file,
            written,
            limit,
        };
        if log.written >= log.limit {
            log.rotate();
        }
        Ok(Mutex::new(log))
    }

    /// Moves the log to `.1` and starts a new one. On failure it keeps the open file and tries
    /// again after another half limit of writes, not on every line. A log already moved whose
    /// new file could not be opened (out of descriptors, say) is not moved twice: the next try
    /// only opens the new file.
    fn rotate(&mut self) {
        let moved = !self.path.exists() || {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, old).is_ok()
        };
        match moved.then(|| append(&self.path)) {
            Some(Ok(file)) => {
                self.file = file;
                self.written = 0;
            }
            _ => self.written = self.limit / 2,
        }
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A record never splits across files: rotation happens between writes.
        if self.written >= self.limit {
            self.rotate();
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_limit_and_keeps_one_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zigtorrent.log");
        let log = RotatingLog::open(&path, 100).unwrap();
        let line = [b'x'; 40];
        for _ in 0..10 {
            log.lock().unwrap().write_all(&line).unwrap();
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let previous = std::fs::metadata(dir.path().join("zigtorrent.log.1"))
            .unwrap()
            .len();
        // 400 bytes written in 40-byte records with a 100-byte limit: files of 120 bytes.
        assert!(current <= 120, "current log {current} bytes");
        assert_eq!(previous, 120);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "only the log and one previous file");
    }

    #[test]
    fn an_oversized_log_from_a_previous_run_is_rotated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zigtorrent.log");
        std::fs::write(&path, vec![b'y'; 500]).unwrap();
        let log = RotatingLog::open(&path, 100).unwrap();
        log.lock().unwrap().write_all(b"fresh\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"fresh\n");
        assert_eq!(
            std::fs::metadata(dir.path().join("zigtorrent.log.1"))
                .unwrap()
                .len(),
            500
        );
    }
}

/// A log writer that lets no control character from logged text (tracker messages, peer names,
/// file names: all hostile) reach a terminal, or a log file someone will `cat`. Each write
/// (`tracing` writes one whole event per call) is decoded lossily and every unsafe character
/// (`format::is_unsafe`: controls, C1 included, and invisible bidi/zero-width ones) becomes `?`,
/// but tabs and the newline that ends the event: a newline inside one would forge a log line.
pub struct Printable<W>(pub W);

impl<W: Write> Write for Printable<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let unsafe_char = |c: char| c != '\t' && crate::format::is_unsafe(c);
        if body.chars().any(unsafe_char) {
            let mut clean: String = body
                .chars()
                .map(|c| if unsafe_char(c) { '?' } else { c })
                .collect();
            if body.len() < text.len() {
                clean.push('\n');
            }
            self.0.write_all(clean.as_bytes())?;
        } else {
            self.0.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod printable_tests {
    use std::io::Write;

    #[test]
    fn control_characters_never_pass() {
        let mut out = super::Printable(Vec::new());
        out.write_all(
            b"tracker refused: \x1b]0;OWNED\x07\x1b[2J\xc2\x9b31m ok\tfine\nFAKE ERROR line\n",
        )
        .unwrap();
        let s = String::from_utf8(out.0).unwrap();
        assert_eq!(
            s,
            "tracker refused: ?]0;OWNED??[2J?31m ok\tfine?FAKE ERROR line\n"
        );
    }
}
