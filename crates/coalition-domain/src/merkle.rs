//! The Merkle tree over a period's entry hashes, which an export's manifest signs as its
//! `entries_root`, and the inclusion proofs that let a member or a merchant check one entry
//! against that signed root without anyone else's entries.
//!
//! The tree is RFC 9162's (Certificate Transparency 2.0, section 2.1), so any implementation
//! of it checks these proofs: the leaves are the period's entry hashes in sequence order;
//! a leaf is hashed as SHA-256(0x00 ‖ entry hash), an interior node as
//! SHA-256(0x01 ‖ left ‖ right), so a leaf can never pass as a node nor a node as a leaf; a
//! tree of n > 1 leaves splits at k, the largest power of two below n; the tree of no leaves
//! is SHA-256 of the empty string. An audit path lists the sibling hashes from the leaf up.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The hash of a leaf: its entry hash behind the leaf prefix 0x00.
pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(entry_hash);
    hasher.finalize().into()
}

/// The hash of an interior node: its children behind the node prefix 0x01.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the tree of no leaves.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The root computed as the entries come, in memory of O(log n): a stack of the roots of
/// the complete subtrees seen so far, merged whenever two of the same size meet.
#[derive(Debug, Clone, Default)]
pub struct RootBuilder {
    stack: Vec<(u64, Hash)>,
    leaves: u64,
}

impl RootBuilder {
    pub fn new() -> Self {
        RootBuilder::default()
    }

    /// Adds the next entry's hash.
    pub fn push(&mut self, entry_hash: &Hash) {
        self.leaves += 1;
        let mut size = 1u64;
        let mut hash = leaf_hash(entry_hash);
        while let Some(&(top_size, top_hash)) = self.stack.last() {
            if top_size != size {
                break;
            }
            self.stack.pop();
            hash = node_hash(&top_hash, &hash);
            size += top_size;
        }
        self.stack.push((size, hash));
    }

    /// How many entries were added.
    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    /// The root of the entries added so far. The complete subtrees on the stack have
    /// decreasing sizes that are powers of two, which is exactly the right edge of RFC 9162's
    /// tree: folding them from the right gives its root.
    pub fn root(&self) -> Hash {
        let mut parts = self.stack.iter().rev();
        let Some(&(_, mut hash)) = parts.next() else {
            return empty_root();
        };
        for (_, left) in parts {
            hash = node_hash(left, &hash);
        }
        hash
    }
}

/// The root of a tree over `entry_hashes`.
pub fn root(entry_hashes: &[Hash]) -> Hash {
    let mut builder = RootBuilder::new();
    for hash in entry_hashes {
        builder.push(hash);
    }
    builder.root()
}

/// The largest power of two below `n` (n > 1).
fn split(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The audit paths of the leaves at `wanted` (indices into `entry_hashes`; indices past the
/// end are ignored), computed in one pass over the tree: every subtree's hash once, each
/// path from its leaf up. Memory: the entry hashes given and the paths.
pub fn audit_paths(entry_hashes: &[Hash], wanted: &[usize]) -> BTreeMap<usize, Vec<Hash>> {
    let mut sorted: Vec<usize> = wanted
        .iter()
        .copied()
        .filter(|&index| index < entry_hashes.len())
        .collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut paths: BTreeMap<usize, Vec<Hash>> =
        sorted.iter().map(|&index| (index, Vec::new())).collect();
    if !entry_hashes.is_empty() {
        walk(entry_hashes, 0, &sorted, &mut paths);
    }
    paths
}

/// The hash of the subtree over `leaves` (which start at index `offset` of the tree), adding
/// to the path of each wanted index inside it the sibling of every subtree on its way up.
fn walk(
    leaves: &[Hash],
    offset: usize,
    wanted: &[usize],
    paths: &mut BTreeMap<usize, Vec<Hash>>,
) -> Hash {
    if leaves.len() == 1 {
        return leaf_hash(&leaves[0]);
    }
    if wanted.is_empty() {
        return root(leaves);
    }
    let k = split(leaves.len());
    let middle = wanted.partition_point(|&index| index < offset + k);
    let (left_wanted, right_wanted) = wanted.split_at(middle);
    let left = walk(&leaves[..k], offset, left_wanted, paths);
    let right = walk(&leaves[k..], offset + k, right_wanted, paths);
    for index in left_wanted {
        paths.get_mut(index).expect("wanted").push(right);
    }
    for index in right_wanted {
        paths.get_mut(index).expect("wanted").push(left);
    }
    node_hash(&left, &right)
}

/// The root that the audit `path` of the entry hash at `leaf_index` in a tree of `tree_size`
/// leaves leads to, or `None` when the path cannot be one of such a tree (too short, too
/// long, an index outside the tree). RFC 9162, section 2.1.3.2. The path alone does not fix
/// the tree's size (a left leaf's path is the same in trees of 3 and 4 leaves), so the size
/// must come from what is signed beside the root: the manifest's entry count.
pub fn root_from_path(
    leaf_index: u64,
    tree_size: u64,
    entry_hash: &Hash,
    path: &[Hash],
) -> Option<Hash> {
    if leaf_index >= tree_size {
        return None;
    }
    let mut index = leaf_index;
    let mut last = tree_size - 1;
    let mut hash = leaf_hash(entry_hash);
    for sibling in path {
        if last == 0 {
            return None;
        }
        if index & 1 == 1 || index == last {
            hash = node_hash(sibling, &hash);
            while index & 1 == 0 && index != 0 {
                index >>= 1;
                last >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        index >>= 1;
        last >>= 1;
    }
    (last == 0).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hashes(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| Sha256::digest((i as u64).to_be_bytes()).into())
            .collect()
    }

    /// RFC 9162's definition, recursively, to hold the streaming builder to.
    fn definition(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split(n);
                node_hash(&definition(&leaves[..k]), &definition(&leaves[k..]))
            }
        }
    }

    #[test]
    fn small_trees_have_the_shape_of_the_definition() {
        let leaves = hashes(3);
        let expected = node_hash(
            &node_hash(&leaf_hash(&leaves[0]), &leaf_hash(&leaves[1])),
            &leaf_hash(&leaves[2]),
        );
        assert_eq!(root(&leaves), expected);
        assert_eq!(root(&[]), empty_root());
        assert_eq!(root(&leaves[..1]), leaf_hash(&leaves[0]));
        // A leaf's hash is never the node over anything: the prefixes differ.
        assert_ne!(leaf_hash(&leaves[0]), node_hash(&leaves[0], &leaves[1]));
    }

    /// The worked example of docs/export-format.md, computed there with Python's hashlib.
    #[test]
    fn the_documented_example_holds() {
        let hex32 = |text: &str| -> Hash { hex::decode(text).unwrap().try_into().unwrap() };
        let leaves = [
            hex32("8dc36be0661886890d20753419213ec6004e56cedf8962bcd1b34a965f5b3389"),
            [0x22; 32],
            [0x33; 32],
        ];
        let expected = "d1df3ca29087ef49fdf4ad7c0f1f5ca5e541a925a07996dd627fdd3fc22e636e";
        assert_eq!(hex::encode(root(&leaves)), expected);
        let paths = audit_paths(&leaves, &[0, 2]);
        assert_eq!(
            paths[&0].iter().map(hex::encode).collect::<Vec<_>>(),
            [
                "bc6f27de60abf5319d16ff4c98fe3c42022c84f6a7a2b207c8df19b0ec3d8d58",
                "5e5caeafc27155c368b6f201107d6f8b270747ce636ac5174a56c6e12ef89ad1"
            ]
        );
        assert_eq!(
            paths[&2].iter().map(hex::encode).collect::<Vec<_>>(),
            ["e8c529b174a5c95e68e63f17c37b8c36c9ec2f79989138d719cc2464179d1588"]
        );
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_path_of_the_wrong_length_or_index_leads_nowhere() {
        let leaves = hashes(5);
        let paths = audit_paths(&leaves, &[4]);
        let path = &paths[&4];
        assert!(root_from_path(5, 5, &leaves[4], path).is_none());
        assert!(root_from_path(4, 5, &leaves[4], &path[..path.len() - 1]).is_none());
        let mut longer = path.clone();
        longer.push(leaves[0]);
        assert!(root_from_path(4, 5, &leaves[4], &longer).is_none());
    }

    proptest! {
        #[test]
        fn every_path_leads_to_the_root_and_a_changed_one_does_not(
            n in 1usize..300,
            pick in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
        ) {
            let leaves = hashes(n);
            let expected = definition(&leaves);
            prop_assert_eq!(root(&leaves), expected);
            let all: Vec<usize> = (0..n).collect();
            let paths = audit_paths(&leaves, &all);
            for (index, path) in &paths {
                prop_assert_eq!(
                    root_from_path(*index as u64, n as u64, &leaves[*index], path),
                    Some(expected)
                );
            }
            // One path alone equals the same path computed among all of them.
            let index = pick.index(n);
            let alone = audit_paths(&leaves, &[index]);
            prop_assert_eq!(&alone[&index], &paths[&index]);
            // Another leaf, another index, another size, a changed sibling: not the root.
            let path = &paths[&index];
            let other = Sha256::digest(b"not an entry").into();
            prop_assert_ne!(root_from_path(index as u64, n as u64, &other, path), Some(expected));
            if n > 1 {
                let wrong_index = (index + 1) % n;
                prop_assert_ne!(
                    root_from_path(wrong_index as u64, n as u64, &leaves[index], path),
                    Some(expected)
                );
                let mut changed = path.clone();
                let at = flip.index(changed.len());
                changed[at][0] ^= 1;
                prop_assert_ne!(
                    root_from_path(index as u64, n as u64, &leaves[index], &changed),
                    Some(expected)
                );
            }
        }
    }
}
