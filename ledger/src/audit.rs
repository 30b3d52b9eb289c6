//! The full audit behind `medguard ledger verify`: recompute the tree from
//! the entries, check every checkpoint's signature, its root and its
//! consistency with the previous one, and name the first entry where
//! anything was edited, deleted, reordered or truncated. Also: entries that
//! no signed checkpoint covers, a checkpoint log that went backwards,
//! admissions whose versions went down, a view cache that disagrees with the
//! entries, and consistency with checkpoints held elsewhere (a witness's
//! copy, or the checkpoint of an old receipt): that last check is the one
//! that catches someone who holds the signing key and rewrote history.
//! Reads the files as they are and changes nothing.

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
    /// Events worth knowing that are not tampering by themselves: recovery
    /// quarantines, new ledgers that replaced lost ones.
    pub notices: Vec<String>,
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
    audit_against(data_dir, key, &[])
}

/// [`audit`], and checks that the log is consistent with every checkpoint
/// in `witnessed` (already verified with `key` by the caller): one that
/// covers more entries than the log holds means it was cut back; one whose
/// root differs from the log's at its size means history was rewritten.
pub fn audit_against(
    data_dir: &Path,
    key: &NoteVerifier,
    witnessed: &[Checkpoint],
) -> Result<AuditReport, LedgerError> {
    let dir = data_dir.join(LEDGER_DIR);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LedgerError::Io { path, source }
    };
    let mut problems = Vec::new();
    // A running medguard (a server) holds the ledger and appends while we
    // read: then what lies past the checkpoints read first is in flight, not
    // evidence. Otherwise a shared lock keeps writers out until we are done.
    let lock_path = dir.join(crate::store::LOCK);
    let lock = File::open(&lock_path).ok();
    let live = match &lock {
        Some(f) => matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
        None => false,
    };
    // Checkpoints first: entries are written before their checkpoint, so
    // everything these cover is already in the files read next.
    let path = dir.join(CHECKPOINTS);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(&path))?;

    // 1. Every entry, in order: framing, CRC, JSON, leaf hash.
    let path = dir.join(ENTRIES);
    let mut reader = BufReader::with_capacity(1 << 20, File::open(&path).map_err(io(&path))?);
    let mut leaves = Vec::new();
    let mut view = View::default();
    let mut notices = Vec::new();
    // The view the cache claims to be, recomputed at its size.
    let cache: Option<crate::view::SealedView> = std::fs::read(dir.join(VIEW))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let cache_size = cache.as_ref().map(|c| c.view.size);
    let mut view_at_cache = (cache_size == Some(0)).then(View::default);
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
            Ok(entry) => {
                if let Some(p) = rollback(&view, &entry, index) {
                    problems.push(p);
                }
                match &entry {
                    Entry::EntriesQuarantined {
                        count,
                        file,
                        sha256,
                        forged,
                        ..
                    } => {
                        let held = std::fs::read(dir.join(file))
                            .ok()
                            .map(|b| medguard_attest::Sha256Digest::of(&b));
                        if held != Some(*sha256) {
                            problems.push(Problem {
                                first_entry: Some(index),
                                what: format!(
                                    "the quarantine file {file} that entry {index} records is missing or altered"
                                ),
                            });
                        }
                        if *forged > 0 {
                            problems.push(Problem {
                                first_entry: Some(index),
                                what: format!(
                                    "entry {index}: {forged} of {count} entries found past the last signed checkpoint carried a MAC that does not verify: written by someone without the ledger's key, or damaged; they were quarantined unsigned in {file}"
                                ),
                            });
                        } else {
                            notices.push(format!(
                                "entry {index}: on opening, {count} unacknowledged entries without their MAC (a crash before it reached the disk) were quarantined unsigned in {file} (sha256 {sha256})"
                            ));
                        }
                    }
                    Entry::LedgerCreated {
                        replaces: Some(old),
                        ..
                    } => notices.push(format!(
                        "entry {index}: this ledger was started to replace the lost ledger {old}; rollback marks before it are not in this log"
                    )),
                    _ => {}
                }
                view.apply(&entry);
            }
            Err(_) => {
                view.size += 1;
                problems.push(Problem {
                    first_entry: Some(index),
                    what: format!("entry {index} is not a valid ledger entry"),
                });
            }
        }
        if cache_size == Some(index + 1) {
            view_at_cache = Some(view.clone());
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
    let mut recorded: Vec<&[u8]> = stored.chunks_exact(32).collect();
    if live {
        // Leaf hashes of entries appended after we read the log.
        recorded.truncate(leaves.len());
    }
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
    // 4. Entries past the latest checkpoint were never signed.
    let covered = previous.as_ref().map_or(0, |c| c.size);
    let appended = n.max(recorded.len() as u64);
    if appended > covered && !root_problem {
        if live {
            notices.push(format!(
                "entries {covered}..{appended} were being committed while the audit read the files (a medguard process holds the ledger)"
            ));
        } else {
            problems.push(Problem {
                first_entry: Some(covered),
                what: format!(
                    "entries {covered}..{appended} are covered by no signed checkpoint: never acknowledged (a crash; opening the ledger checkpoints them if they carry their MACs, else quarantines them) or appended by someone without the key"
                ),
            });
        }
    }
    // 5. Checkpoints held elsewhere.
    for w in witnessed {
        if w.size > n {
            problems.push(Problem {
                first_entry: Some(n),
                what: format!(
                    "the log was cut back: a checkpoint held elsewhere covers {} entries, the log holds {n}",
                    w.size
                ),
            });
            continue;
        }
        let root = if w.size == 0 {
            merkle::empty_root()
        } else {
            merkle::range_root(&levels, 0, w.size).map_err(LedgerError::Corrupt)?
        };
        if root != w.root {
            problems.push(Problem {
                first_entry: Some(0),
                what: format!(
                    "history was rewritten: the first {} entries do not have the root a checkpoint held elsewhere signed ({}, the log gives {root})",
                    w.size, w.root
                ),
            });
        }
    }
    // 6. The cached view (rollback marks) must be what the entries say at
    //    the size it claims.
    if let Some(cache) = cache {
        let size = cache.view.size;
        let root = match size {
            0 => Some(merkle::empty_root()),
            s if s <= n => merkle::range_root(&levels, 0, s).ok(),
            _ => None,
        };
        let agrees = view_at_cache.as_ref() == Some(&cache.view)
            && root.map(|r| r.to_string()).as_ref() == Some(&cache.root);
        if !agrees {
            problems.push(Problem {
                first_entry: None,
                what: format!(
                    "view.json (the cached rollback high-water marks, as of entry {}) disagrees with the entries; opening the ledger ignores it and rebuilds the marks",
                    cache.view.size
                ),
            });
        }
    }
    problems.sort_by_key(|p| p.first_entry.unwrap_or(u64::MAX));
    Ok(AuditReport {
        entries: n,
        checkpoints: verified,
        latest: previous,
        problems,
        notices,
    })
}

/// An admission below (or reusing with other contents) the version already
/// admitted for its model: the policy refuses these, so one in the log was
/// admitted by a tampered medguard or written by hand.
fn rollback(view: &View, entry: &Entry, index: u64) -> Option<Problem> {
    let Entry::ModelAdmitted {
        model,
        version,
        manifest_sha256,
        ..
    } = entry
    else {
        return None;
    };
    let hw = view.high_water.get(model)?;
    let what = if *version < hw.version {
        format!(
            "entry {index} admits {model} {version} after {} was admitted: a rollback",
            hw.version
        )
    } else if *version == hw.version && *manifest_sha256 != hw.manifest_sha256 {
        format!(
            "entry {index} admits {model} {version} with manifest {manifest_sha256}, but {version} was admitted before as {}",
            hw.manifest_sha256
        )
    } else {
        return None;
    };
    Some(Problem {
        first_entry: Some(index),
        what,
    })
}
