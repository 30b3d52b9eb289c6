//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.
//!
//! Leaves hash as `SHA-256(0x00 || entry)`, interior nodes as
//! `SHA-256(0x01 || left || right)`, and a tree of `n` leaves splits at the
//! largest power of two below `n`. Proofs are built from a [`NodeSource`]
//! that can return the hash of any *perfect* subtree (a power-of-two run of
//! leaves aligned to its size); every other subtree the proofs need lies on
//! the tree's right edge and is assembled from O(log n) perfect ones, so a
//! proof costs O(log n) reads.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 tree hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The largest power of two strictly less than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Where proofs read perfect-subtree hashes from.
pub trait NodeSource {
    /// The error a read can fail with.
    type Error;

    /// The hash of the perfect subtree at `level` (2^level leaves) number
    /// `index`, covering leaves `[index << level, (index + 1) << level)`.
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Hashes of leaves kept in memory are a node source (for tests and small
/// trees): perfect subtrees are recomputed.
impl NodeSource for [Hash] {
    type Error = std::convert::Infallible;

    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        let start = (index << level) as usize;
        Ok(root_of(&self[start..start + (1usize << level)]))
    }
}

/// The root of a tree with these leaf hashes (MTH in RFC 6962).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// MTH of leaves `[start, end)`, where `start` is aligned to the largest
/// power of two not above `end - start` (true of every range the proofs
/// ask for): perfect pieces from the source, combined right to left.
pub fn range_root<S: NodeSource + ?Sized>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    debug_assert!(end > start);
    let n = end - start;
    if n.is_power_of_two() {
        let level = n.trailing_zeros();
        return src.perfect(level, start >> level);
    }
    let k = split(n);
    Ok(node_hash(
        &range_root(src, start, start + k)?,
        &range_root(src, start + k, end)?,
    ))
}

/// The audit path of leaf `index` in the tree of `size` leaves (PATH in
/// RFC 6962 §2.1.1), nearest the leaf first.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    fn path<S: NodeSource + ?Sized>(
        src: &S,
        m: u64,
        start: u64,
        n: u64,
        out: &mut Vec<Hash>,
    ) -> Result<(), S::Error> {
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            path(src, m, start, k, out)?;
            out.push(range_root(src, start + k, start + n)?);
        } else {
            path(src, m - k, start + k, n - k, out)?;
            out.push(range_root(src, start, start + k)?);
        }
        Ok(())
    }
    debug_assert!(index < size);
    let mut out = Vec::new();
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

/// The proof that the tree of `new` leaves extends the tree of `old`
/// leaves (PROOF in RFC 6962 §2.1.2), for `0 < old <= new`.
pub fn consistency_proof<S: NodeSource + ?Sized>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, S::Error> {
    fn subproof<S: NodeSource + ?Sized>(
        src: &S,
        m: u64,
        start: u64,
        n: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), S::Error> {
        if m == n {
            if !whole {
                out.push(range_root(src, start, start + n)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            subproof(src, m, start, k, whole, out)?;
            out.push(range_root(src, start + k, start + n)?);
        } else {
            subproof(src, m - k, start + k, n - k, false, out)?;
            out.push(range_root(src, start, start + k)?);
        }
        Ok(())
    }
    debug_assert!(0 < old && old <= new);
    let mut out = Vec::new();
    subproof(src, old, 0, new, true, &mut out)?;
    Ok(out)
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The index or sizes are impossible.
    #[error("proof parameters are out of range: {0}")]
    Range(String),
    /// The proof has the wrong number of hashes.
    #[error("proof has {actual} hashes; {expected} expected")]
    Length {
        /// Needed.
        expected: usize,
        /// Given.
        actual: usize,
    },
    /// The recomputed root differs.
    #[error("recomputed root {computed} does not match {expected}")]
    Mismatch {
        /// The root the proof leads to.
        computed: Hash,
        /// The root it should lead to.
        expected: Hash,
    },
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves with
/// root `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: Hash,
    proof: &[Hash],
    root: Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf {index} in a tree of {size}"
        )));
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Length {
                expected: inclusion_len(index, size),
                actual: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length {
            expected: inclusion_len(index, size),
            actual: proof.len(),
        });
    }
    if r != root {
        return Err(ProofError::Mismatch {
            computed: r,
            expected: root,
        });
    }
    Ok(())
}

fn inclusion_len(index: u64, size: u64) -> usize {
    // Length of PATH(index, D[size]) without building it.
    let (mut m, mut n, mut len) = (index, size, 0);
    while n > 1 {
        let k = split(n);
        if m < k {
            n = k;
        } else {
            m -= k;
            n -= k;
        }
        len += 1;
    }
    len
}

/// Checks that the tree of `new` leaves with root `new_root` extends the
/// tree of `old` leaves with root `old_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: Hash,
    new_root: Hash,
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Range(format!(
            "old size {old} is larger than new size {new}"
        )));
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::Length {
                expected: 0,
                actual: proof.len(),
            });
        }
        if old_root != new_root {
            return Err(ProofError::Mismatch {
                computed: old_root,
                expected: new_root,
            });
        }
        return Ok(());
    }
    if old == 0 {
        // Every tree extends the empty one; there is nothing to prove.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Length {
                expected: 0,
                actual: proof.len(),
            })
        };
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if proof.is_empty() {
        return Err(ProofError::Length {
            expected: 1,
            actual: 0,
        });
    }
    // When the old tree is a perfect left subtree, its root starts the path.
    if old.is_power_of_two() {
        proof.insert(0, old_root);
    }
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (proof[0], proof[0]);
    for c in &proof[1..] {
        if snode == 0 {
            return Err(ProofError::Length {
                expected: proof.len() - 1,
                actual: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length {
            expected: proof.len() + 1,
            actual: proof.len(),
        });
    }
    if fr != old_root {
        return Err(ProofError::Mismatch {
            computed: fr,
            expected: old_root,
        });
    }
    if sr != new_root {
        return Err(ProofError::Mismatch {
            computed: sr,
            expected: new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    #[test]
    fn every_proof_of_every_small_tree_verifies_and_tampering_fails() {
        for size in 1..=40u64 {
            let l = leaves(size);
            let root = root_of(&l);
            for index in 0..size {
                let proof = inclusion_proof(l.as_slice(), index, size).unwrap();
                assert_eq!(proof.len(), inclusion_len(index, size));
                verify_inclusion(index, size, l[index as usize], &proof, root).unwrap();
                let wrong = leaf_hash(b"other");
                assert!(verify_inclusion(index, size, wrong, &proof, root).is_err());
                if let Some((_, short)) = proof.split_last() {
                    assert!(verify_inclusion(index, size, l[index as usize], short, root).is_err());
                }
            }
            for old in 1..=size {
                let old_root = root_of(&l[..old as usize]);
                let proof = consistency_proof(l.as_slice(), old, size).unwrap();
                verify_consistency(old, size, &proof, old_root, root).unwrap();
                if old < size {
                    let forged = root_of(&leaves(old + 1)[1..]);
                    assert!(verify_consistency(old, size, &proof, forged, root).is_err());
                    let mut bad = proof.clone();
                    bad[0].0[0] ^= 1;
                    assert!(verify_consistency(old, size, &bad, old_root, root).is_err());
                }
            }
        }
    }
}
