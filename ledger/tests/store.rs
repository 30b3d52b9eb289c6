//! The ledger on disk: receipts, reopening, torn tails, and the audit that
//! finds every kind of tampering and says where.

#![allow(clippy::unwrap_used)]

mod common;

use common::inference;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use medguard_ledger::{Entry, Ledger, audit};

fn filled(dir: &Path, batches: u64, per: u64) -> Ledger {
    let mut ledger = Ledger::open(dir).unwrap();
    for b in 0..batches {
        let entries: Vec<Entry> = (0..per).map(|i| inference(b * per + i)).collect();
        ledger.append(&entries).unwrap();
    }
    ledger
}

#[test]
fn receipts_verify_offline_and_the_ledger_survives_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = filled(tmp.path(), 5, 7);
    // The creation entry plus 35.
    assert_eq!(ledger.size(), 36);
    let key = ledger.verifier();
    let receipts = ledger.append(&[inference(100), inference(101)]).unwrap();
    for (r, i) in receipts.iter().zip([36, 37]) {
        assert_eq!(r.index, i);
        let (cp, entry) = r.verify(&key).unwrap();
        assert_eq!(cp.size, 38);
        assert_eq!(entry, inference(100 + i - 36));
        // An edited entry or a proof for another index fails.
        let mut bad = r.clone();
        bad.entry = bad.entry.replace("accept", "reject");
        assert!(bad.verify(&key).is_err());
        let mut bad = r.clone();
        bad.index ^= 1;
        assert!(bad.verify(&key).is_err());
    }
    let root = ledger.checkpoint().0.root;
    drop(ledger);

    let ledger = Ledger::open(tmp.path()).unwrap();
    assert_eq!(ledger.size(), 38);
    assert_eq!(ledger.checkpoint().0.root, root);
    assert_eq!(ledger.verifier(), key);
    // Old receipts keep verifying; consistency from any old size holds.
    let proof = ledger.consistency_proof(10, 38).unwrap();
    medguard_ledger::merkle::verify_consistency(10, 38, &proof, ledger.root_at(10).unwrap(), root)
        .unwrap();
    let report = audit(tmp.path(), &key).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.entries, 38);
    // Nobody but the owner can read the ledger or its secrets.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tmp.path().join("ledger");
    assert_eq!(mode(&dir), 0o700);
    for f in [
        "key",
        "input-hmac.key",
        "entries.log",
        "checkpoints.log",
        "tree-00.hashes",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // One checkpoint for the empty tree, one per commit.
    assert_eq!(report.checkpoints, 8);
}

#[test]
fn a_torn_tail_is_cut_back_to_the_last_whole_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = filled(tmp.path(), 3, 4);
    let key = ledger.verifier();
    drop(ledger);
    let dir = tmp.path().join("ledger");
    let append = |name: &str, bytes: &[u8]| {
        OpenOptions::new()
            .append(true)
            .open(dir.join(name))
            .unwrap()
            .write_all(bytes)
            .unwrap();
    };
    // Half a record header, and half a checkpoint.
    append("entries.log", &[200, 0, 0]);
    append("checkpoints.log", &[50, 0, 0, 0, 1, 2, 3, 4, b'x']);
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    assert_eq!(ledger.size(), 13);
    ledger.append(&[inference(7)]).unwrap();
    drop(ledger);
    let report = audit(tmp.path(), &key).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.entries, 14);
}

#[test]
fn whole_entries_written_but_never_checkpointed_are_signed_only_with_their_macs() {
    // A crash after the data fsync, before the checkpoint: those entries
    // were never acknowledged. With their MACs they are the ledger's own and
    // reopening checkpoints them; without (the crash came before the MACs
    // reached the disk) a CRC does not say who wrote them, so they are moved
    // out and the move recorded.
    for with_macs in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = filled(tmp.path(), 2, 3);
        let key = ledger.verifier();
        drop(ledger);
        let dir = tmp.path().join("ledger");
        let cps = fs::read(dir.join("checkpoints.log")).unwrap();
        let last = *common::record_starts(&cps).last().unwrap();
        fs::write(dir.join("checkpoints.log"), &cps[..last]).unwrap();
        fs::remove_file(dir.join("view.json")).ok();
        if !with_macs {
            let macs = fs::read(dir.join("entries.mac")).unwrap();
            fs::write(dir.join("entries.mac"), &macs[..4 * 32]).unwrap();
        }
        // Before reopening, the audit says what no checkpoint covers.
        let report = audit(tmp.path(), &key).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(report.problems[0].first_entry, Some(4));
        assert!(
            report.problems[0]
                .what
                .contains("covered by no signed checkpoint")
        );

        let ledger = Ledger::open(tmp.path()).unwrap();
        if with_macs {
            assert_eq!(ledger.size(), 7);
            drop(ledger);
            let report = audit(tmp.path(), &key).unwrap();
            assert!(report.problems.is_empty(), "{:?}", report.problems);
            assert!(report.notices.is_empty(), "{:?}", report.notices);
            continue;
        }
        assert_eq!(ledger.size(), 5);
        let last: Entry = serde_json::from_slice(&ledger.read_entry(4).unwrap()).unwrap();
        let Entry::EntriesQuarantined {
            count,
            first_index,
            file,
            sha256,
            forged,
            ..
        } = last
        else {
            panic!("{last:?}")
        };
        assert_eq!((count, first_index, forged), (3, 4, 0));
        let moved = fs::read(dir.join(&file)).unwrap();
        assert_eq!(medguard_attest::Sha256Digest::of(&moved), sha256);
        assert_eq!(common::record_starts(&moved).len(), 3);
        drop(ledger);
        let report = audit(tmp.path(), &key).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.notices.len(), 1, "{:?}", report.notices);
        assert!(
            report.notices[0].contains("quarantined"),
            "{:?}",
            report.notices
        );
    }
}

/// Rewrites the entries (and optionally the leaf hashes) as an attacker with
/// file access would, keeping the framing valid.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<Vec<u8>>), fix_tree: bool) {
    let log = fs::read(dir.join("entries.log")).unwrap();
    let mut payloads = Vec::new();
    let mut at = 0;
    while at < log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        payloads.push(log[at + 8..at + 8 + len].to_vec());
        at += 8 + len;
    }
    edit(&mut payloads);
    let mut out = Vec::new();
    let mut idx = Vec::new();
    let mut leaves = Vec::new();
    for p in &payloads {
        idx.extend_from_slice(&(out.len() as u64).to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
        out.extend_from_slice(p);
        leaves.extend_from_slice(&medguard_ledger::merkle::leaf_hash(p).0);
    }
    fs::write(dir.join("entries.log"), out).unwrap();
    fs::write(dir.join("entries.idx"), idx).unwrap();
    if fix_tree {
        fs::write(dir.join("tree-00.hashes"), leaves).unwrap();
    }
}

fn first_problem(edit: impl FnOnce(&Path)) -> (Option<u64>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = filled(tmp.path(), 10, 3); // entries 0..=30, a checkpoint every 3
    let key = ledger.verifier();
    drop(ledger);
    edit(&tmp.path().join("ledger"));
    let report = audit(tmp.path(), &key).unwrap();
    let p = report
        .problems
        .first()
        .expect("tampering must be found")
        .clone();
    (p.first_entry, p.what)
}

#[test]
fn every_kind_of_tampering_is_found_and_located() {
    let flip = |p: &mut Vec<Vec<u8>>, i: usize| {
        let s = String::from_utf8(p[i].clone())
            .unwrap()
            .replace("accept", "reject");
        p[i] = s.into_bytes();
    };
    // Edited in place, checksum left alone.
    let (at, what) = first_problem(|d| {
        let mut log = fs::read(d.join("entries.log")).unwrap();
        let pos = log.windows(6).rposition(|w| w == b"accept").unwrap();
        log[pos] = b'A';
        fs::write(d.join("entries.log"), log).unwrap();
    });
    assert_eq!(at, Some(30), "{what}");
    assert!(what.contains("damaged"), "{what}");
    // Edited with a fixed-up checksum: the recorded leaf hash differs.
    let (at, what) = first_problem(|d| rewrite(d, |p| flip(p, 12), false));
    assert_eq!(at, Some(12), "{what}");
    assert!(what.contains("differs"), "{what}");
    // Edited and the leaf hashes rewritten too: the signed checkpoint catches
    // it, located to the commit between two checkpoints.
    let (at, what) = first_problem(|d| rewrite(d, |p| flip(p, 12), true));
    assert_eq!(at, Some(10), "{what}");
    assert!(
        what.contains("entries 10..13 do not match signed checkpoint"),
        "{what}"
    );
    // Deleted.
    let (at, what) = first_problem(|d| {
        rewrite(
            d,
            |p| {
                p.remove(20);
            },
            false,
        )
    });
    assert_eq!(at, Some(20), "{what}");
    // Reordered.
    let (at, what) = first_problem(|d| rewrite(d, |p| p.swap(5, 6), true));
    assert_eq!(at, Some(4), "{what}");
    // Truncated (whole entries cut off the end, tree files too).
    let (at, what) = first_problem(|d| rewrite(d, |p| p.truncate(25), true));
    assert_eq!(at, Some(25), "{what}");
    assert!(what.contains("truncated"), "{what}");
    // A forged checkpoint.
    let (_, what) = first_problem(|d| {
        let mut cps = fs::read(d.join("checkpoints.log")).unwrap();
        let pos = cps.windows(3).position(|w| w == b"\n4\n").unwrap();
        cps[pos + 1] = b'5';
        // Keep the framing valid: recompute the CRC of that record.
        let mut at = 0;
        while at < cps.len() {
            let len = u32::from_le_bytes(cps[at..at + 4].try_into().unwrap()) as usize;
            if (at..at + 8 + len).contains(&pos) {
                let crc = crc32fast::hash(&cps[at + 8..at + 8 + len]);
                cps[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            }
            at += 8 + len;
        }
        fs::write(d.join("checkpoints.log"), cps).unwrap();
    });
    assert!(what.contains("does not verify"), "{what}");
}

#[test]
fn damage_before_the_last_checkpoint_stops_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    drop(filled(tmp.path(), 3, 3));
    let dir = tmp.path().join("ledger");
    let log = fs::read(dir.join("entries.log")).unwrap();
    fs::write(dir.join("entries.log"), &log[..log.len() - 20]).unwrap();
    let err = Ledger::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("damaged"), "{err}");
}
