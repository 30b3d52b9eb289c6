//! `medguard ledger`: audit the ledger (against witnessed checkpoints too),
//! list it, check receipts offline, export its key and checkpoint, and start
//! a new one where the old is lost.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use medguard_ledger::{Checkpoint, Entry, Ledger, NoteVerifier, Receipt, audit_against};

use super::{Exit, StateArgs, json_printable, printable};
use crate::model_dir::read_capped;

/// The audit ledger: check it, list it, check a receipt, export its key.
#[derive(Debug, Args)]
pub struct LedgerCmd {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Recompute the tree from every entry, check every checkpoint's
    /// signature, root and consistency with the previous one; exit 1 and
    /// name the first entry affected if anything was edited, deleted,
    /// reordered or truncated.
    Verify {
        /// The ledger's public key (as `medguard ledger key` prints it)
        /// [default: the key stored beside the ledger].
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// A checkpoint held outside this machine (a witness's copy, the
        /// output of `medguard ledger checkpoint`, or a receipt or `predict
        /// --json` line that carries one): the log must still contain what
        /// it signed. This catches a history rewritten even by someone who
        /// holds the signing key. Repeatable.
        #[arg(long, value_name = "FILE")]
        checkpoint: Vec<PathBuf>,
    },
    /// Print entries readably, oldest first.
    Show {
        /// First entry to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many to print at most.
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// One JSON entry per line, exactly as recorded.
        #[arg(long)]
        json: bool,
    },
    /// Check a receipt offline with only the ledger's public key. RECEIPT
    /// is a receipt or a line of `predict --json` output that carries one;
    /// for such a line, its label, verdict, p-value, probabilities, seed and
    /// model must also be what the signed entry says.
    VerifyReceipt {
        /// The receipt file.
        receipt: PathBuf,
        /// The ledger's public key (as `medguard ledger key` prints it).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Print the ledger's public key (C2SP verifier key), for auditors.
    Key,
    /// Print the latest signed checkpoint, to hand to a witness.
    Checkpoint,
    /// Start a new ledger in a data directory whose ledger is missing. Its
    /// history and rollback marks are gone: restore ledger/ from a backup
    /// instead if there is one. The new ledger's first entry names the one it
    /// replaces.
    New,
}

const RECEIPT_MAX_BYTES: u64 = 1 << 20;

fn read_key(path: &Path) -> anyhow::Result<NoteVerifier> {
    let text = String::from_utf8(read_capped(path, 4096)?)
        .with_context(|| format!("{} is not text", path.display()))?;
    text.parse()
        .with_context(|| format!("reading the ledger key {}", path.display()))
}

impl LedgerCmd {
    pub(super) fn execute(self, state: &StateArgs) -> anyhow::Result<Exit> {
        match self.action {
            Action::VerifyReceipt { receipt, key } => {
                let key = read_key(&key)?;
                let text = read_capped(&receipt, RECEIPT_MAX_BYTES)?;
                let value: serde_json::Value = serde_json::from_slice(&text)
                    .with_context(|| format!("{} is not JSON", receipt.display()))?;
                // serde_json keeps the last of two equal keys; a viewer may
                // show the first. A line with a key twice is refused.
                let keys: TopLevelKeys = serde_json::from_slice(&text)
                    .with_context(|| format!("{} is not a JSON object", receipt.display()))?;
                if let Some(twice) = keys.duplicate() {
                    eprintln!(
                        "medguard: refused: the result line has the key {} twice",
                        printable(&twice)
                    );
                    return Ok(Exit::Refused);
                }
                let receipt: Receipt =
                    serde_json::from_value(value.get("receipt").cloned().unwrap_or(value.clone()))
                        .with_context(|| "not a medguard receipt".to_string())?;
                match receipt.verify(&key) {
                    Ok((checkpoint, entry)) => {
                        if let Err(why) = cross_check(&value, &entry) {
                            eprintln!(
                                "medguard: refused: the result does not match its receipt: {why}"
                            );
                            return Ok(Exit::Refused);
                        }
                        println!(
                            "valid: entry {} ({}) is in {} at size {}, root {}",
                            receipt.index,
                            entry.kind(),
                            checkpoint.origin,
                            checkpoint.size,
                            checkpoint.root
                        );
                        println!("{}", describe(&entry));
                        Ok(Exit::Ok)
                    }
                    Err(e) => {
                        eprintln!("medguard: refused: receipt does not verify: {e}");
                        Ok(Exit::Refused)
                    }
                }
            }
            Action::Verify { key, checkpoint } => {
                let dir = state.dir()?;
                let key = match key {
                    Some(path) => read_key(&path)?,
                    None => medguard_ledger::store::local_verifier(&dir)?,
                };
                let witnessed = checkpoint
                    .iter()
                    .map(|path| read_checkpoint(path, &key))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let report = audit_against(&dir, &key, &witnessed)?;
                for notice in &report.notices {
                    eprintln!("medguard: ledger: note: {}", printable(notice));
                }
                match report.problems.first() {
                    None => {
                        let (size, root) = report
                            .latest
                            .as_ref()
                            .map(|c| (c.size, c.root.to_string()))
                            .unwrap_or_default();
                        println!(
                            "intact: {} entries, {} checkpoints verified with {}; latest size {size}, root {root}",
                            report.entries,
                            report.checkpoints,
                            key.name()
                        );
                        Ok(Exit::Ok)
                    }
                    Some(first) => {
                        for p in &report.problems {
                            eprintln!("medguard: ledger: {}", printable(&p.what));
                        }
                        match first.first_entry {
                            Some(i) => eprintln!(
                                "medguard: refused: the ledger was altered; first entry affected: {i}"
                            ),
                            None => eprintln!("medguard: refused: the ledger was altered"),
                        }
                        Ok(Exit::Refused)
                    }
                }
            }
            Action::Show { from, limit, json } => {
                let ledger = state.open_ledger()?;
                let end = from.saturating_add(limit).min(ledger.size());
                for index in from..end {
                    let bytes = ledger.read_entry(index)?;
                    if json {
                        // serde_json leaves DEL, C1 and bidi controls raw;
                        // escaped as JSON, the line still parses the same.
                        println!("{}", json_printable(&String::from_utf8_lossy(&bytes)));
                        continue;
                    }
                    let entry: Entry = serde_json::from_slice(&bytes)
                        .with_context(|| format!("entry {index} is not a ledger entry"))?;
                    println!(
                        "#{index:<6} {}  {}",
                        entry.time(),
                        printable(&describe(&entry))
                    );
                }
                Ok(Exit::Ok)
            }
            // Read-only, without the ledger's lock: a witness's cron job runs
            // these while a server holds the ledger. The first use of a data
            // directory creates its ledger.
            Action::Key => {
                let dir = state.dir()?;
                if !dir.join(medguard_ledger::store::LEDGER_DIR).exists() {
                    drop(state.open_ledger()?);
                }
                println!("{}", medguard_ledger::store::local_verifier(&dir)?);
                Ok(Exit::Ok)
            }
            Action::Checkpoint => {
                let dir = state.dir()?;
                if !dir.join(medguard_ledger::store::LEDGER_DIR).exists() {
                    drop(state.open_ledger()?);
                }
                print!("{}", medguard_ledger::store::latest_checkpoint(&dir)?);
                Ok(Exit::Ok)
            }
            Action::New => {
                let dir = state.dir()?;
                let ledger = Ledger::create_replacing(&dir)
                    .with_context(|| format!("starting a new ledger in {}", dir.display()))?;
                println!(
                    "new ledger {} in {}; checkpoint key {}",
                    ledger.origin(),
                    dir.display(),
                    ledger.verifier()
                );
                Ok(Exit::Ok)
            }
        }
    }
}

/// Reads a checkpoint held elsewhere: a signed note, or a receipt or
/// `predict --json` line carrying one; it must verify with `key`.
fn read_checkpoint(path: &Path, key: &NoteVerifier) -> anyhow::Result<Checkpoint> {
    let text = String::from_utf8(read_capped(path, RECEIPT_MAX_BYTES)?)
        .with_context(|| format!("{} is not text", path.display()))?;
    let note = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => value
            .pointer("/receipt/checkpoint")
            .or_else(|| value.get("checkpoint"))
            .and_then(|c| c.as_str())
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "{} is JSON without a checkpoint (expected a receipt or a predict --json line)",
                    path.display()
                )
            })?,
        Err(_) => text,
    };
    key.open(&note)
        .with_context(|| format!("the checkpoint in {} does not verify", path.display()))
}

/// Checks the fields of a `predict --json` line against the entry its
/// receipt proves; a bare receipt has none of them and passes.
fn cross_check(line: &serde_json::Value, entry: &Entry) -> Result<(), String> {
    use serde_json::{Value, json};
    const RESULT_FIELDS: [&str; 6] = [
        "label",
        "verdict",
        "p_value",
        "probabilities",
        "seed",
        "model",
    ];
    // What a `predict --json` line may hold besides its receipt.
    const LINE_FIELDS: [&str; 5] = [
        "input",
        "statistics",
        "integrity",
        "guest_sha256",
        "receipt",
    ];
    if line.get("receipt").is_none() {
        // A bare receipt: nothing shown beside it to check.
        return Ok(());
    }
    if let Some(obj) = line.as_object()
        && let Some(extra) = obj
            .keys()
            .find(|k| !RESULT_FIELDS.contains(&k.as_str()) && !LINE_FIELDS.contains(&k.as_str()))
    {
        return Err(format!(
            "the line has a field `{}` medguard never writes",
            printable(extra)
        ));
    }
    let Entry::Inference {
        model,
        version,
        model_sha256,
        guest_sha256,
        verdict,
        p_value,
        label,
        probabilities,
        seed,
        ..
    } = entry
    else {
        return Err(format!(
            "the line carries a result but the receipt is for a {} entry",
            entry.kind()
        ));
    };
    let expected = [
        ("label", json!(label)),
        ("verdict", json!(verdict)),
        ("p_value", json!(p_value)),
        ("probabilities", json!(probabilities)),
        ("seed", json!(seed)),
        (
            "model",
            json!({"name": model, "version": version.to_string(), "sha256": model_sha256.to_string()}),
        ),
        ("guest_sha256", json!(guest_sha256.to_string())),
    ];
    for (field, want) in expected {
        let got = line.get(field).cloned().unwrap_or(Value::Null);
        // Numbers are compared as the f32/f64 they were printed from.
        let same = match (field, &got, &want) {
            ("probabilities", Value::Object(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        let f = |v: &Value| v.as_f64().map(|x| x as f32);
                        b.get(k).and_then(f).is_some() && b.get(k).and_then(f) == f(v)
                    })
            }
            _ => got == want,
        };
        if !same {
            return Err(format!(
                "`{field}` is {} in the line but {} in the signed entry",
                printable(&got.to_string()),
                printable(&want.to_string())
            ));
        }
    }
    Ok(())
}

/// The top-level keys of a JSON object, in order, duplicates kept.
struct TopLevelKeys(Vec<String>);

impl TopLevelKeys {
    fn duplicate(&self) -> Option<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.0.iter().find(|k| !seen.insert(k.as_str())).cloned()
    }
}

impl<'de> serde::Deserialize<'de> for TopLevelKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = TopLevelKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevelKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(TopLevelKeys(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// One line per entry for people.
fn describe(entry: &Entry) -> String {
    match entry {
        Entry::LedgerCreated { key, replaces, .. } => match replaces {
            Some(old) => {
                format!("ledger created, checkpoint key {key}, replacing lost ledger {old}")
            }
            None => format!("ledger created, checkpoint key {key}"),
        },
        Entry::EntriesQuarantined {
            count,
            first_index,
            file,
            ..
        } => format!(
            "{count} unsigned entries found past the last checkpoint (from {first_index}) were moved to {file}"
        ),
        Entry::ModelAdmitted {
            model,
            version,
            model_sha256,
            signer,
            ..
        } => format!("admitted {model} {version} (sha256 {model_sha256}) signed by {signer}"),
        Entry::ModelRefused {
            directory, reason, ..
        } => format!("refused {directory}: {reason}"),
        Entry::PolicyChanged { from, to, .. } => match from {
            Some(from) => format!("trust policy changed from {from} to {to}"),
            None => format!("trust policy in force: {to}"),
        },
        Entry::Inference {
            model,
            version,
            verdict,
            p_value,
            label,
            input_hmac,
            caller,
            ..
        } => format!(
            "inference {model} {version}: {verdict}{} -> {} (input {}){}",
            p_value.map(|p| format!(" p {p:.4}")).unwrap_or_default(),
            label.as_deref().unwrap_or("withheld"),
            input_hmac.chars().take(16).collect::<String>(),
            for_caller(caller.as_deref())
        ),
        Entry::InferenceFailed {
            model,
            version,
            failure,
            images,
            input_hmac,
            caller,
            ..
        } => format!(
            "inference {model} {version} failed: {} ({images} images, input {}){}",
            failure.as_str(),
            input_hmac.chars().take(16).collect::<String>(),
            for_caller(caller.as_deref())
        ),
        Entry::DriftAlarm {
            model,
            version,
            window,
            flagged,
            expected_flag_rate,
            ..
        } => format!(
            "drift alarm {model} {version}: {flagged} of the last {window} inputs flagged, {:.1} expected",
            expected_flag_rate * *window as f64
        ),
    }
}

/// ` for NAME` when an entry names who asked.
fn for_caller(caller: Option<&str>) -> String {
    caller.map(|c| format!(" for {c}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Issue 10, item 10: `ledger show` sliced `input_hmac` by bytes (a panic
    /// on a non-ASCII one) and printed control characters raw.
    #[test]
    fn hostile_entry_text_is_shown_escaped_and_never_panics() {
        let entry = Entry::Inference {
            time: "2026-12-01T00:00:00Z".parse().unwrap(),
            model: "m\u{1b}[2J".into(),
            version: semver::Version::new(1, 0, 0),
            model_sha256: medguard_attest::Sha256Digest::of(b"m"),
            guest_sha256: medguard_attest::Sha256Digest::of(b"g"),
            input_hmac: "\u{e9}".repeat(20),
            verdict: medguard_ledger::entry::Verdict::Flag,
            p_value: None,
            label: Some("normal\u{7}".into()),
            probabilities: None,
            policy: medguard_ledger::entry::ScreeningPolicy::Enforce,
            seed: 1,
            caller: None,
        };
        let shown = printable(&describe(&entry));
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        assert!(shown.contains(&"\u{e9}".repeat(16)), "{shown}");
        // In JSON, the same characters become JSON escapes of the same value.
        let raw = "{\"a\":\"x\u{7f}\u{202e}\u{9b}y\"}";
        let escaped = crate::cli::json_printable(raw);
        assert!(!escaped.chars().any(crate::cli::hostile), "{escaped:?}");
        let a: serde_json::Value = serde_json::from_str(raw).unwrap();
        let b: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_result_line_must_match_its_signed_entry() {
        let entry = Entry::Inference {
            time: "2026-12-01T00:00:00Z".parse().unwrap(),
            model: "pneumonia-cnn".into(),
            version: semver::Version::new(1, 0, 0),
            model_sha256: medguard_attest::Sha256Digest::of(b"m"),
            guest_sha256: medguard_attest::Sha256Digest::of(b"g"),
            input_hmac: "00".into(),
            verdict: medguard_ledger::entry::Verdict::Accept,
            p_value: Some(0.25),
            label: Some("normal".into()),
            probabilities: Some([("normal".into(), 0.9), ("pneumonia".into(), 0.1)].into()),
            policy: medguard_ledger::entry::ScreeningPolicy::Enforce,
            seed: 7,
            caller: None,
        };
        let line = serde_json::json!({
            "label": "normal", "verdict": "accept", "p_value": 0.25, "seed": 7,
            "probabilities": {"normal": 0.9f32, "pneumonia": 0.1f32},
            "model": {"name": "pneumonia-cnn", "version": "1.0.0",
                      "sha256": medguard_attest::Sha256Digest::of(b"m").to_string()},
            "guest_sha256": medguard_attest::Sha256Digest::of(b"g").to_string(),
            "input": "a.png",
            "receipt": {"entry": "x"},
        });
        cross_check(&line, &entry).unwrap();
        for (field, value) in [
            ("label", serde_json::json!("pneumonia")),
            ("verdict", serde_json::json!("reject")),
            ("p_value", serde_json::json!(0.5)),
            ("seed", serde_json::json!(8)),
            (
                "probabilities",
                serde_json::json!({"normal": 0.1f32, "pneumonia": 0.9f32}),
            ),
            ("guest_sha256", serde_json::json!("sha256:00")),
            ("shown_label", serde_json::json!("pneumonia")),
        ] {
            let mut edited = line.clone();
            edited[field] = value;
            let err = cross_check(&edited, &entry).unwrap_err();
            assert!(err.contains(field), "{err}");
            // A field missing altogether is a mismatch too.
            if field != "shown_label" {
                edited.as_object_mut().unwrap().remove(field);
                assert!(cross_check(&edited, &entry).is_err(), "{field}");
            }
        }
        // A bare receipt carries no result fields and passes.
        cross_check(&serde_json::json!({"entry": "x"}), &entry).unwrap();
    }
}
