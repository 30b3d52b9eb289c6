use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use medguard_ledger::{Entry, NoteVerifier, Receipt, audit};

use super::{Exit, StateArgs};
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
    /// is a receipt or a line of `predict --json` output that carries one.
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
                let value = value.get("receipt").cloned().unwrap_or(value);
                let receipt: Receipt = serde_json::from_value(value)
                    .with_context(|| "not a medguard receipt".to_string())?;
                match receipt.verify(&key) {
                    Ok((checkpoint, entry)) => {
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
            Action::Verify { key } => {
                let dir = state.dir()?;
                let key = match key {
                    Some(path) => read_key(&path)?,
                    None => medguard_ledger::store::local_verifier(&dir)?,
                };
                let report = audit(&dir, &key)?;
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
                            eprintln!("medguard: ledger: {}", p.what);
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
                        println!("{}", String::from_utf8_lossy(&bytes));
                        continue;
                    }
                    let entry: Entry = serde_json::from_slice(&bytes)
                        .with_context(|| format!("entry {index} is not a ledger entry"))?;
                    println!("#{index:<6} {}  {}", entry.time(), describe(&entry));
                }
                Ok(Exit::Ok)
            }
            Action::Key => {
                println!("{}", state.open_ledger()?.verifier());
                Ok(Exit::Ok)
            }
            Action::Checkpoint => {
                print!("{}", state.open_ledger()?.checkpoint().1);
                Ok(Exit::Ok)
            }
        }
    }
}

/// One line per entry for people.
fn describe(entry: &Entry) -> String {
    match entry {
        Entry::LedgerCreated { key, .. } => format!("ledger created, checkpoint key {key}"),
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
            ..
        } => format!(
            "inference {model} {version}: {verdict}{} -> {} (input {})",
            p_value.map(|p| format!(" p {p:.4}")).unwrap_or_default(),
            label.as_deref().unwrap_or("withheld"),
            &input_hmac[..16.min(input_hmac.len())]
        ),
    }
}
