//! The conflict check over a torrent's file paths, in time linear in the total path bytes.
//!
//! Every file's components are walked down a tree keyed by `(parent node, component)`, so each
//! component is hashed exactly once, however deep it sits. (Hashing every ancestor path of every
//! file, as an earlier version did, costs the square of the depth: a single file 80,000
//! components deep took 90 s.) Comparison is byte-exact on the sanitised components; folding
//! case for file systems that fold it is the storage's business.

use std::collections::HashMap;
use std::ffi::OsStr;

/// What a tree node stands for.
#[derive(Clone, Copy)]
enum Node {
    /// A folder some file lies under.
    Folder,
    /// File number `.0` (its index in the torrent).
    File(usize),
}

/// Why a file cannot be placed beside the ones inserted before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Conflict {
    /// An earlier file has exactly this path.
    SamePath {
        /// The earlier file.
        other: usize,
    },
    /// An earlier file sits where this one needs a folder, or this file sits where an earlier
    /// one needs a folder. `depth` is how many components of the new file's path the clash
    /// spans (the clashing path is its first `depth` components).
    FileAndFolder {
        /// The earlier file, when it is the one in the way (else the earlier file is under
        /// the new one's path).
        other: Option<usize>,
        /// Components of the new file's path up to the clash.
        depth: usize,
    },
}

/// Files inserted so far, as a tree of components.
#[derive(Default)]
pub(super) struct PathTree<'a> {
    nodes: Vec<Node>,
    children: HashMap<(usize, &'a OsStr), usize>,
    /// Component lookups done so far: the work measure the linearity test asserts on.
    steps: usize,
}

/// The implicit root: the torrent's `name` folder, under which every file lies.
const ROOT: usize = usize::MAX;

impl<'a> PathTree<'a> {
    /// A tree sized for about `files` files.
    pub(super) fn with_capacity(files: usize) -> Self {
        PathTree {
            nodes: Vec::with_capacity(files),
            children: HashMap::with_capacity(files),
            steps: 0,
        }
    }

    /// Place file `index` at `components` (non-empty), or say what it clashes with. After an
    /// error the tree may hold part of the refused path; it is meant to be dropped then.
    pub(super) fn insert(
        &mut self,
        index: usize,
        components: impl IntoIterator<Item = &'a OsStr>,
    ) -> Result<(), Conflict> {
        let mut parent = ROOT;
        let mut components = components.into_iter().peekable();
        let mut depth = 0;
        while let Some(component) = components.next() {
            self.steps += 1;
            depth += 1;
            let is_file = components.peek().is_none();
            match self.children.get(&(parent, component)) {
                Some(&node) => match (self.nodes[node], is_file) {
                    (Node::Folder, false) => parent = node,
                    (Node::File(other), false) => {
                        return Err(Conflict::FileAndFolder {
                            other: Some(other),
                            depth,
                        })
                    }
                    (Node::File(other), true) => return Err(Conflict::SamePath { other }),
                    (Node::Folder, true) => {
                        return Err(Conflict::FileAndFolder { other: None, depth })
                    }
                },
                None => {
                    let node = self.nodes.len();
                    self.nodes.push(if is_file {
                        Node::File(index)
                    } else {
                        Node::Folder
                    });
                    self.children.insert((parent, component), node);
                    parent = node;
                }
            }
        }
        Ok(())
    }

    /// Component lookups done so far (one per component inserted, whatever the depths).
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the linearity tests"))]
    pub(super) fn steps(&self) -> usize {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::{Path, PathBuf};

    fn path(p: &str) -> &Path {
        Path::new(p)
    }

    #[test]
    fn conflicts_are_found_in_either_order() {
        let paths = [path("a/b"), path("a/c"), path("d")];
        let mut t = PathTree::default();
        for (i, p) in paths.iter().enumerate() {
            t.insert(i, p.iter()).unwrap();
        }
        let same = path("a/c");
        assert_eq!(
            t.insert(3, same.iter()),
            Err(Conflict::SamePath { other: 1 })
        );
        let under_file = path("d/e/f");
        assert_eq!(
            t.insert(3, under_file.iter()),
            Err(Conflict::FileAndFolder {
                other: Some(2),
                depth: 1
            })
        );
        let over_folder = path("a");
        assert_eq!(
            t.insert(3, over_folder.iter()),
            Err(Conflict::FileAndFolder {
                other: None,
                depth: 1
            })
        );
        // Byte-exact: case and look-alike names are distinct here (storage folds case).
        let other_case = path("A/b");
        t.insert(3, other_case.iter()).unwrap();
    }

    #[test]
    fn work_is_one_step_per_component() {
        let deep: PathBuf = (0..10_000).map(|i| format!("c{i}")).collect();
        let mut t = PathTree::default();
        t.insert(0, deep.iter()).unwrap();
        assert_eq!(t.steps(), 10_000);
        assert_eq!(t.nodes.len(), 10_000);
    }
}
