//! The full audit behind `medguard ledger verify`: recompute the tree from
//! the entries, check every checkpoint's signature, its root and its
//! consistency with the previous one, and name the first entry where
//! anything was edited, deleted, reordered or truncated. Reads the files as
//! they are and changes nothing.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::entry::Entry;
use crate::merkle::{self, Hash, NodeSource};
use crate::note::{Checkpoint, NoteVerifier};
use crate::store::{
    self, CHECKPOINTS, ENTRIES, LEDGER_DIR, LedgerError, VIEW, level_file, records,
};
use crate::view::View;

/// What the audit found.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// Whole, readable entries.
    pub entries: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// The latest of them.
    pub latest: Option<Checkpoint>,
    /// Every problem, earliest entry first; empty if the ledger is intact.
    pub problems: Vec<Problem>,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first entry affected, when it can be located.
    pub first_entry: Option<u64>,
    /// What is wrong.
    pub what: String,
}

/// All tree levels in memory, built from the recomputed leaves.
struct Levels(Vec<Vec<Hash>>);

impl Levels {
    fn build(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let up = below
                .chunks_exact(2)
                .map(|p| merkle::node_hash(&p[0], &p[1]))
                .collect();
            levels.push(up);
        }
        Self(levels)
    }
}

impl NodeSource for Levels {
    type Error = String;

    fn perfect(&self, level: u32, index: u64) -> Result<Hash, String> {
        self.0
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or_else(|| format!("no node {index} at level {level}"))
    }
}

/// Audits the ledger in `data_dir/ledger` against its public `key`.
pub fn audit(data_dir: &Path, key: &NoteVerifier) -> Result<AuditReport, LedgerError> {
    let dir = data_dir.join(LEDGER_DIR);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LedgerError::Io { path, source }
    };
    let mut problems = Vec::new();

    // 1. Every entry, in order: framing, CRC, JSON, leaf hash.
    let path = dir.join(ENTRIES);
    let mut reader = BufReader::with_capacity(1 << 20, File::open(&path).map_err(io(&path))?);
    let mut leaves = Vec::new();
    let mut view = View::default();
    loop {
        let index = leaves.len() as u64;
        let mut header = [0u8; store::HEADER];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // A partial header is a torn tail; an empty read is the end.
                break;
            }
            Err(e) => return Err(io(&path)(e)),
        }
        let (len, crc) = store::header(header);
        let mut payload = vec![0u8; len.unwrap_or(0)];
        let whole = len.is_some() && reader.read_exact(&mut payload).is_ok();
        if !whole || crc32fast::hash(&payload) != crc {
            problems.push(Problem {
                first_entry: Some(index),
                what: format!(
                    "entry {index} is damaged: its bytes do not match their length and checksum (edited in place, or torn)"
                ),
            });
            break;
        }
        match serde_json::from_slice::<Entry>(&payload) {
            Ok(entry) => view.apply(&entry),
            Err(_) => problems.push(Problem {
                first_entry: Some(index),
                what: format!("entry {index} is not a valid ledger entry"),
            }),
        }
        leaves.push(merkle::leaf_hash(&payload));
    }
    let n = leaves.len() as u64;

    // 2. Against the leaf hashes recorded when each entry was appended.
    let path = dir.join(level_file(0));
    let mut stored = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut stored))
        .map_err(io(&path))?;
    let recorded: Vec<&[u8]> = stored.chunks_exact(32).collect();
    let precise = (0..leaves.len().min(recorded.len())).find(|&i| leaves[i].0 != recorded[i]);
    if let Some(i) = precise {
        problems.push(Problem {
            first_entry: Some(i as u64),
            what: format!(
                "entry {i} differs from the entry appended at that position (edited, deleted or reordered)"
            ),
        });
    } else if recorded.len() > leaves.len() {
        problems.push(Problem {
            first_entry: Some(n),
            what: format!(
                "entries from {n} on are missing: {} were appended (deleted or truncated)",
                recorded.len()
            ),
        });
    }

    // 3. Every checkpoint: signature, root, consistency with the previous.
    let levels = Levels::build(leaves);
    let path = dir.join(CHECKPOINTS);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(&path))?;
    let (notes, _) = records(&bytes);
    let mut previous: Option<Checkpoint> = None;
    let mut verified = 0u64;
    let mut root_problem = false;
    for (c, range) in notes.iter().enumerate() {
        let text = String::from_utf8_lossy(&bytes[range.clone()]);
        let checkpoint = match key.open(&text) {
            Ok(cp) => cp,
            Err(e) => {
                problems.push(Problem {
                    first_entry: previous.as_ref().map(|p| p.size),
                    what: format!("checkpoint {c}: {e}"),
                });
                continue;
            }
        };
        verified += 1;
        let after = previous.as_ref().map_or(0, |p| p.size);
        if checkpoint.size < after {
            problems.push(Problem {
                first_entry: Some(checkpoint.size),
                what: format!(
                    "checkpoint {c} shrinks the log from {after} to {} entries",
                    checkpoint.size
                ),
            });
        } else if checkpoint.size > n {
            if !root_problem {
                problems.push(Problem {
                    first_entry: Some(n),
                    what: format!(
                        "truncated: checkpoint {c} covers {} entries, the log holds {n}",
                        checkpoint.size
                    ),
                });
                root_problem = true;
            }
        } else {
            let root = if checkpoint.size == 0 {
                merkle::empty_root()
            } else {
                merkle::range_root(&levels, 0, checkpoint.size).map_err(LedgerError::Corrupt)?
            };
            // An exact position from the recorded leaf hashes explains it better.
            let located = precise.is_some_and(|i| (after..checkpoint.size).contains(&(i as u64)));
            if root != checkpoint.root {
                if !root_problem && !located {
                    problems.push(Problem {
                        first_entry: Some(after),
                        what: format!(
                            "entries {after}..{} do not match signed checkpoint {c}: one of them was edited, deleted, inserted or reordered",
                            checkpoint.size
                        ),
                    });
                }
                root_problem = true;
            } else if let Some(p) = previous.as_ref().filter(|p| p.size > 0) {
                let proof = merkle::consistency_proof(&levels, p.size, checkpoint.size)
                    .map_err(LedgerError::Corrupt)?;
                if let Err(e) = merkle::verify_consistency(
                    p.size,
                    checkpoint.size,
                    &proof,
                    p.root,
                    checkpoint.root,
                ) {
                    problems.push(Problem {
                        first_entry: Some(p.size),
                        what: format!("checkpoints {} and {c} are not consistent: {e}", c - 1),
                    });
                }
            }
        }
        previous = Some(checkpoint);
    }
    if verified == 0 {
        problems.push(Problem {
            first_entry: Some(0),
            what: "no checkpoint verifies with this key".into(),
        });
    }
    // 4. The cached view (rollback marks) must be what the entries say.
    let path = dir.join(VIEW);
    if let Ok(bytes) = std::fs::read(&path) {
        let cached: Option<View> = serde_json::from_slice(&bytes).ok();
        if cached.as_ref().is_some_and(|c| c.size == view.size) && cached.as_ref() != Some(&view) {
            problems.push(Problem {
                first_entry: None,
                what: "view.json (the cached rollback high-water marks) disagrees with the entries; delete it to have it rebuilt".into(),
            });
        }
    }
    problems.sort_by_key(|p| p.first_entry.unwrap_or(u64::MAX));
    Ok(AuditReport {
        entries: n,
        checkpoints: verified,
        latest: previous,
        problems,
    })
}
