//! The Merkle proofs against RFC 6962's published test vectors and against
//! an independent implementation: Cloudflare's `tlog_tiles`, a port of Go's
//! `golang.org/x/mod/sumdb/tlog` (the checksum database's log).

#![allow(clippy::unwrap_used)]

use medguard_ledger::merkle::{self, Hash};
use tlog_tiles::tlog;

/// The leaves of the test tree in RFC 6962's reference tests
/// (certificate-transparency `merkle_tree_test.cc`).
fn rfc_leaves() -> Vec<Vec<u8>> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|h| hex::decode(h).unwrap())
    .collect()
}

#[test]
fn roots_match_the_rfc_6962_test_vectors() {
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let leaves: Vec<Hash> = rfc_leaves().iter().map(|d| merkle::leaf_hash(d)).collect();
    assert_eq!(
        merkle::empty_root().to_string(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    for (n, root) in roots.iter().enumerate() {
        assert_eq!(
            merkle::root_of(&leaves[..=n]).to_string(),
            *root,
            "size {}",
            n + 1
        );
    }
}

/// tlog's storage: every stored hash in its own index layout.
struct Stored(Vec<tlog::Hash>);

impl tlog::HashReader for Stored {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog::Hash>, tlog::Error> {
        Ok(indexes.iter().map(|&i| self.0[i as usize]).collect())
    }
}

#[test]
fn proofs_agree_with_go_tlog_both_ways() {
    const N: u64 = 130;
    let data: Vec<Vec<u8>> = (0..N).map(|i| format!("entry {i}").into_bytes()).collect();
    let ours: Vec<Hash> = data.iter().map(|d| merkle::leaf_hash(d)).collect();
    let mut stored = Stored(Vec::new());
    for (i, d) in data.iter().enumerate() {
        let new = tlog::stored_hashes(i as u64, d, &stored).unwrap();
        stored.0.extend(new);
    }
    let t = |h: Hash| tlog::Hash(h.0);
    for size in 1..=N {
        let root = merkle::root_of(&ours[..size as usize]);
        let their_root = tlog::tree_hash(size, &stored).unwrap();
        assert_eq!(t(root), their_root, "root at {size}");
        for index in (0..size).step_by(7).chain([size - 1]) {
            let proof = merkle::inclusion_proof(ours.as_slice(), index, size).unwrap();
            let theirs = tlog::prove_record(size, index, &stored).unwrap();
            assert_eq!(proof.iter().map(|h| t(*h)).collect::<Vec<_>>(), theirs);
            tlog::check_record(
                &proof.iter().map(|h| t(*h)).collect(),
                size,
                their_root,
                index,
                t(ours[index as usize]),
            )
            .unwrap();
            let theirs: Vec<Hash> = theirs.into_iter().map(|h| Hash(h.0)).collect();
            merkle::verify_inclusion(index, size, ours[index as usize], &theirs, root).unwrap();
        }
        for old in (1..=size).step_by(5).chain([size]) {
            let old_root = merkle::root_of(&ours[..old as usize]);
            let proof = merkle::consistency_proof(ours.as_slice(), old, size).unwrap();
            let theirs = tlog::prove_tree(size, old, &stored).unwrap();
            assert_eq!(
                proof.iter().map(|h| t(*h)).collect::<Vec<_>>(),
                theirs,
                "{old}->{size}"
            );
            tlog::check_tree(
                &proof.iter().map(|h| t(*h)).collect(),
                size,
                their_root,
                old,
                t(old_root),
            )
            .unwrap();
            let theirs: Vec<Hash> = theirs.into_iter().map(|h| Hash(h.0)).collect();
            merkle::verify_consistency(old, size, &theirs, old_root, root).unwrap();
        }
    }
}
