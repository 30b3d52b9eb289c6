//! One test per attack from the security review (issue 10), named for it.
//! Each failed on the ledger as it was before the fix.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::{inference, record_starts};
use medguard_attest::Sha256Digest;
use medguard_ledger::{Checkpoint, Entry, Ledger, LedgerError, audit, audit_against};

fn admitted(version: &str, manifest: u8) -> Entry {
    Entry::ModelAdmitted {
        time: "2026-11-28T12:00:00Z".parse().unwrap(),
        model: "pneumonia-cnn".into(),
        version: version.parse().unwrap(),
        model_sha256: Sha256Digest::of(b"model"),
        manifest_sha256: Sha256Digest::from_bytes([manifest; 32]),
        signer: "vendor".into(),
        signer_fingerprint: Sha256Digest::of(b"key"),
        policy_sha256: Sha256Digest::of(b"policy"),
        training: None,
    }
}

/// Rewrites every entry of the log with `edit`, framing and CRCs valid, as
/// someone with write access to the files would.
fn forge_entries(dir: &Path, mut edit: impl FnMut(String) -> String) {
    let log = fs::read(dir.join("entries.log")).unwrap();
    let mut out = Vec::new();
    for at in record_starts(&log) {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        let payload = edit(String::from_utf8(log[at + 8..at + 8 + len].to_vec()).unwrap());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(payload.as_bytes()).to_le_bytes());
        out.extend_from_slice(payload.as_bytes());
    }
    fs::write(dir.join("entries.log"), out).unwrap();
}

fn cut_checkpoints(dir: &Path, keep: usize) {
    let cps = fs::read(dir.join("checkpoints.log")).unwrap();
    let starts = record_starts(&cps);
    fs::write(dir.join("checkpoints.log"), &cps[..starts[keep]]).unwrap();
}

fn entries(ledger: &Ledger) -> Vec<Entry> {
    (0..ledger.size())
        .map(|i| serde_json::from_slice(&ledger.read_entry(i).unwrap()).unwrap())
        .collect()
}

#[test]
fn issue_10_1_a_forged_verdict_past_a_cut_checkpoint_log_is_never_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    for i in 0..7 {
        ledger.append(&[inference(i)]).unwrap();
    }
    let key = ledger.verifier();
    // What a witness (or an old receipt) holds.
    let witness: Checkpoint = key.open(ledger.checkpoint().1).unwrap();
    drop(ledger);
    let dir = tmp.path().join("ledger");
    cut_checkpoints(&dir, 1);
    // One verdict flipped, its CRC fixed: the review's reproduction.
    let log = fs::read(dir.join("entries.log")).unwrap();
    let mut flipped = false;
    forge_entries(&dir, |e| {
        if !flipped && e.contains("\"seed\":4") {
            flipped = true;
            return e.replace("\"verdict\":\"accept\"", "\"verdict\":\"reject\"");
        }
        e
    });
    assert_ne!(log, fs::read(dir.join("entries.log")).unwrap());

    // The view this ledger sealed at 8 entries proves the log was cut: the
    // ledger stops, and keeps the view as evidence.
    let err = Ledger::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("cut back or rewritten"), "{err}");
    fs::rename(dir.join("view.json"), tmp.path().join("evidence.json")).unwrap();
    let ledger = Ledger::open(tmp.path()).unwrap();
    // The entries before the forged one carry the ledger's own MACs and are
    // signed again; from the forged one on nothing is signed.
    let now = entries(&ledger);
    assert_eq!(now.len(), 6, "{now:?}");
    assert_eq!(now[4], inference(3));
    assert!(
        matches!(
            now[5],
            Entry::EntriesQuarantined {
                count: 3,
                first_index: 5,
                forged: 1,
                ..
            }
        ),
        "{:?}",
        now[5]
    );
    assert!(
        !now.iter()
            .any(|e| matches!(e, Entry::Inference { seed: 4, .. }))
    );
    drop(ledger);
    let report = audit(tmp.path(), &key).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].what.contains("MAC that does not verify"));
    // The witness's checkpoint shows the log no longer holds what it signed.
    let report = audit_against(tmp.path(), &key, &[witness]).unwrap();
    assert!(
        report.problems.iter().any(|p| p.what.contains("cut back")),
        "{:?}",
        report.problems
    );
}

#[test]
fn issue_10_1_a_cut_checkpoint_log_loses_no_acknowledged_entry() {
    // The reviewer's second attack: cut the checkpoints to make acknowledged
    // entries look unacknowledged, hoping they are dropped with their marks.
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    ledger.append(&[admitted("2.0.0", 2)]).unwrap();
    ledger.append(&[inference(1), inference(2)]).unwrap();
    let key = ledger.verifier();
    let witness = key.open(ledger.checkpoint().1).unwrap();
    drop(ledger);
    cut_checkpoints(&tmp.path().join("ledger"), 1);
    let ledger = Ledger::open(tmp.path()).unwrap();
    assert_eq!(ledger.size(), 4);
    assert_eq!(
        ledger.view().high_water["pneumonia-cnn"]
            .version
            .to_string(),
        "2.0.0"
    );
    drop(ledger);
    let report = audit_against(tmp.path(), &key, &[witness]).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn issue_10_1_a_witness_catches_history_rewritten_by_someone_with_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Ledger::open(tmp.path()).unwrap());
    // A backup of the young ledger, restored later: genuine files, signed
    // with the real key, but not the history the witness saw.
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&tmp.path().join("ledger"), backup.path());
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    ledger.append(&[inference(1), inference(2)]).unwrap();
    let key = ledger.verifier();
    let witness = key.open(ledger.checkpoint().1).unwrap();
    drop(ledger);
    fs::remove_dir_all(tmp.path().join("ledger")).unwrap();
    copy_dir(backup.path(), &tmp.path().join("ledger"));
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    ledger
        .append(&[inference(3), inference(4), inference(5)])
        .unwrap();
    drop(ledger);
    assert!(audit(tmp.path(), &key).unwrap().problems.is_empty());
    let report = audit_against(tmp.path(), &key, &[witness]).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].what.contains("history was rewritten"));
    // A consistent witness passes.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp2.path()).unwrap();
    ledger.append(&[inference(1)]).unwrap();
    let key = ledger.verifier();
    let old = key.open(ledger.checkpoint().1).unwrap();
    ledger.append(&[inference(2)]).unwrap();
    drop(ledger);
    let report = audit_against(tmp2.path(), &key, &[old]).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn issue_10_2_an_entry_edited_in_place_or_an_index_pointed_elsewhere_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    ledger.append(&[admitted("2.0.0", 2)]).unwrap();
    ledger.append(&[admitted("3.0.0", 3)]).unwrap();
    drop(ledger);
    let dir = tmp.path().join("ledger");
    fs::remove_file(dir.join("view.json")).unwrap();
    // Same length, CRC fixed: the marks would read 0.0.0 if believed.
    forge_entries(&dir, |e| e.replace("\"3.0.0\"", "\"0.0.0\""));
    let err = Ledger::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("MAC fails"), "{err}");
    // The index slot of entry 2 pointed at entry 1's record.
    forge_entries(&dir, |e| e.replace("\"0.0.0\"", "\"3.0.0\""));
    let mut idx = fs::read(dir.join("entries.idx")).unwrap();
    let one: [u8; 8] = idx[8..16].try_into().unwrap();
    idx[16..24].copy_from_slice(&one);
    fs::write(dir.join("entries.idx"), idx).unwrap();
    let err = Ledger::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("damaged"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn issue_10_1_a_checkpoint_log_that_went_backwards_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    for i in 0..3 {
        ledger.append(&[inference(i)]).unwrap();
    }
    let key = ledger.verifier();
    drop(ledger);
    // Append an old, genuinely signed checkpoint after the newest.
    let path = tmp.path().join("ledger/checkpoints.log");
    let mut cps = fs::read(&path).unwrap();
    let starts = record_starts(&cps);
    let old = cps[starts[2]..starts[3]].to_vec();
    cps.extend_from_slice(&old);
    fs::write(&path, cps).unwrap();
    let report = audit(tmp.path(), &key).unwrap();
    assert!(
        report.problems.iter().any(|p| p.what.contains("shrinks")),
        "{:?}",
        report.problems
    );
}

#[test]
fn issue_10_2_an_edited_view_cache_does_not_clear_rollback_marks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    ledger.append(&[admitted("2.0.0", 2)]).unwrap();
    ledger.append(&[inference(1)]).unwrap();
    let key = ledger.verifier();
    drop(ledger);
    let view = tmp.path().join("ledger/view.json");
    let mark = |tmp: &Path| {
        Ledger::open(tmp).unwrap().view().high_water["pneumonia-cnn"]
            .version
            .to_string()
    };
    // The cache edited in its own format: marks cleared, MAC kept.
    let mut sealed: serde_json::Value = serde_json::from_slice(&fs::read(&view).unwrap()).unwrap();
    sealed["view"]["high_water"] = serde_json::json!({});
    fs::write(&view, serde_json::to_vec(&sealed).unwrap()).unwrap();
    let report = audit(tmp.path(), &key).unwrap();
    assert!(
        report.problems[0].what.contains("view.json"),
        "{:?}",
        report.problems
    );
    assert_eq!(mark(tmp.path()), "2.0.0");
    // The review's reproduction: an unsealed cache one entry behind.
    fs::write(&view, br#"{"size": 2, "high_water": {}, "policy": null}"#).unwrap();
    assert_eq!(mark(tmp.path()), "2.0.0");
}

#[test]
fn issue_10_2_the_audit_finds_admitted_versions_that_went_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    // What a tampered medguard would sign: the policy refuses both.
    ledger
        .append(&[admitted("1.2.0", 1), admitted("1.1.0", 2)])
        .unwrap();
    ledger.append(&[admitted("1.2.0", 3)]).unwrap();
    let key = ledger.verifier();
    drop(ledger);
    let report = audit(tmp.path(), &key).unwrap();
    let found: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.first_entry, p.what.as_str()))
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, Some(2));
    assert!(found[0].1.contains("a rollback"), "{found:?}");
    assert_eq!(found[1].0, Some(3));
    assert!(found[1].1.contains("admitted before as"), "{found:?}");
}

#[test]
fn issue_10_2_a_deleted_ledger_is_an_error_until_replaced_on_purpose() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(tmp.path()).unwrap();
    let old = ledger.origin().to_owned();
    drop(ledger);
    fs::remove_dir_all(tmp.path().join("ledger")).unwrap();
    match Ledger::open(tmp.path()) {
        Err(LedgerError::Missing { origin, .. }) => assert_eq!(origin, old),
        other => panic!("{other:?}"),
    }
    // Still missing, nothing was created by the failed open.
    assert!(!tmp.path().join("ledger").exists());
    let ledger = Ledger::create_replacing(tmp.path()).unwrap();
    let first = entries(&ledger).remove(0);
    assert!(
        matches!(&first, Entry::LedgerCreated { replaces: Some(o), .. } if *o == old),
        "{first:?}"
    );
    let key = ledger.verifier();
    drop(ledger);
    assert!(matches!(
        Ledger::create_replacing(tmp.path()),
        Err(LedgerError::Exists(_))
    ));
    Ledger::open(tmp.path()).unwrap();
    let report = audit(tmp.path(), &key).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report.notices[0].contains("replace"),
        "{:?}",
        report.notices
    );
}

#[test]
fn issue_10_2_a_ledger_swapped_in_from_elsewhere_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    drop(Ledger::open(a.path()).unwrap());
    drop(Ledger::open(b.path()).unwrap());
    fs::remove_dir_all(a.path().join("ledger")).unwrap();
    fs::rename(b.path().join("ledger"), a.path().join("ledger")).unwrap();
    let err = Ledger::open(a.path()).unwrap_err().to_string();
    assert!(err.contains("was replaced"), "{err}");
}

#[test]
fn issue_10_2_a_genuine_view_the_log_no_longer_matches_stops_the_ledger() {
    // The reviewer's follow-up: a whole-directory restore from an older
    // backup, keeping the newer sealed view, used to drop the marks quietly.
    let tmp = tempfile::tempdir().unwrap();
    drop(Ledger::open(tmp.path()).unwrap());
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&tmp.path().join("ledger"), backup.path());
    let mut ledger = Ledger::open(tmp.path()).unwrap();
    ledger.append(&[admitted("2.0.0", 2)]).unwrap();
    drop(ledger);
    let view = fs::read(tmp.path().join("ledger/view.json")).unwrap();
    fs::remove_dir_all(tmp.path().join("ledger")).unwrap();
    copy_dir(backup.path(), &tmp.path().join("ledger"));
    fs::write(tmp.path().join("ledger/view.json"), &view).unwrap();
    let err = Ledger::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("cut back or rewritten"), "{err}");
    // The evidence is kept.
    assert_eq!(fs::read(tmp.path().join("ledger/view.json")).unwrap(), view);
}
