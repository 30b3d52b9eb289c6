//! `medguard ledger`: audit the ledger (against witnessed checkpoints too),
//! list it, check receipts offline, export its key and checkpoint, and start
//! a new one where the old is lost.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use medguard_ledger::{
    CheckedLine, Checkpoint, Entry, Ledger, NoteVerifier, audit_against, check_line,
};

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

const RECEIPT_MAX_BYTES: u64 = medguard_ledger::LINE_MAX_BYTES as u64;

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
                match check_line(&text, &key) {
                    Ok(CheckedLine {
                        receipt,
                        checkpoint,
                        entry,
                        unsigned,
                    }) => {
                        println!(
                            "valid: entry {} ({}) is in {} at size {}, root {}",
                            receipt.index,
                            entry.kind(),
                            checkpoint.origin,
                            checkpoint.size,
                            checkpoint.root
                        );
                        println!("{}", printable(&entry.describe()));
                        if !unsigned.is_empty() {
                            println!(
                                "unverified: the receipt does not cover the line's {}",
                                unsigned.join(", ")
                            );
                        }
                        Ok(Exit::Ok)
                    }
                    Err(e) if e.is_refusal() => {
                        eprintln!("medguard: refused: {}", printable(&e.to_string()));
                        Ok(Exit::Refused)
                    }
                    Err(e) => Err(anyhow::anyhow!(
                        "{}: {}",
                        receipt.display(),
                        printable(&e.to_string())
                    )),
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
                        printable(&entry.describe())
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
            certificate: None,
        };
        let shown = printable(&entry.describe());
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
}
