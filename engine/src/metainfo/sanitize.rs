//! Path sanitising for names and paths that come out of `.torrent` files.
//!
//! Policy: **reject, never rewrite.** A component that could make a path mean anything other than
//! "one plain name inside the download folder" makes the whole torrent invalid. Rewriting (e.g.
//! dropping `..`) would silently map two torrent files onto one disk file or change where data
//! lands; a torrent that carries such components is broken or hostile, and refusing it with a
//! clear message is safer than guessing. Rejected, per component:
//!
//! - empty components and the reserved `.` and `..` (BEP 3 paths are plain relative names);
//! - `/` or `\` inside a component (a hidden separator on some platform; covers absolute paths);
//! - NUL (truncates the name in C APIs);
//! - a Windows drive prefix such as `C:` (absolute or drive-relative on Windows).
//!
//! Not rejected: control characters, Windows device names (`CON`, `NUL.txt`), trailing dots or
//! spaces, very long names. They cannot escape the download folder; the file system refuses what
//! it cannot store, and display code must escape what it prints.

use std::fmt;
use std::path::PathBuf;

/// Why a path component was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsafe path component {component:?}: {reason}")]
pub struct UnsafeComponent {
    /// The component as found (after UTF-8 conversion).
    pub component: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Check one path component (or a torrent's `name`) against the policy in the module docs.
pub fn check_component(component: &str) -> Result<(), UnsafeComponent> {
    let reason = if component.is_empty() {
        Some("empty")
    } else if component == "." || component == ".." {
        Some("reserved name")
    } else if component.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if component.contains('\0') {
        Some("contains NUL")
    } else if has_drive_prefix(component) {
        Some("starts with a drive prefix")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(UnsafeComponent {
            component: component.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Join checked components into a relative path.
pub fn join_components<S: AsRef<str>>(
    components: impl IntoIterator<Item = S>,
) -> Result<PathBuf, UnsafeComponent> {
    let mut path = PathBuf::new();
    for c in components {
        let c = c.as_ref();
        check_component(c)?;
        path.push(c);
    }
    Ok(path)
}

fn has_drive_prefix(component: &str) -> bool {
    let b = component.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// Display helper so error messages show a component list readably.
pub(crate) struct Components<'a>(pub &'a [String]);

impl fmt::Display for Components<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for c in [
            "a", "file.txt", "...", "..a", "a..", ".hidden", "名前", "a b", "C", "1:2", "ab:",
        ] {
            check_component(c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
        assert_eq!(
            join_components(["a", "b", "c.txt"]).unwrap(),
            PathBuf::from("a/b/c.txt")
        );
    }

    #[test]
    fn hostile_components_are_rejected() {
        for c in [
            "",
            ".",
            "..",
            "/",
            "/etc",
            "a/b",
            "a\\b",
            "\\",
            "..\\..\\x",
            "a\0b",
            "C:",
            "c:x",
            "C:\\Windows",
        ] {
            assert!(check_component(c).is_err(), "{c:?} accepted");
        }
        assert!(join_components(["a", "..", "b"]).is_err());
        assert!(join_components(["", "etc", "passwd"]).is_err());
    }
}
