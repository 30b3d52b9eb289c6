//! The deployment's persistent state: the data directory and, in it, the
//! highest version accepted per model, so that a rollback is refused after a
//! restart too. (The audit ledger will become the one source of these marks.)
//!
//! The file is rewritten atomically (temporary file, fsync, rename) under an
//! exclusive lock, and a mark only ever rises. A state file that cannot be
//! read or parsed stops admission: silently starting afresh would re-open
//! every rollback it guards against.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use medguard_attest::{HighWater, Refusal};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model_dir::read_capped;

/// The high-water file's name inside the data directory.
pub const HIGH_WATER_FILE: &str = "high-water.json";

const HIGH_WATER_SCHEMA: &str = "medguard.high-water/v1";
const LOCK_FILE: &str = "high-water.lock";
const STATE_MAX_BYTES: u64 = 16 << 20;

/// `$XDG_<kind>_HOME/medguard`, else `$HOME/<fallback>/medguard`: where
/// per-user files go when no directory is given.
pub fn user_dir(xdg_var: &str, home_fallback: &str) -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(xdg_var)
        .map(|d| d.join("medguard"))
        .or_else(|| var("HOME").map(|d| d.join(home_fallback).join("medguard")))
}

/// The default data directory: `$XDG_DATA_HOME/medguard` or
/// `~/.local/share/medguard`.
pub fn default_data_dir() -> Option<PathBuf> {
    user_dir("XDG_DATA_HOME", ".local/share")
}

/// Why the state could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    /// An OS error on a state file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state file exists but is not valid.
    #[error(
        "{} is damaged ({why}); it guards against rollbacks, so medguard will not start afresh: restore it from backup or remove it deliberately",
        path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another process recorded a newer version meanwhile (boxed: refusals
    /// carry their evidence and are large).
    #[error(transparent)]
    Refused(Box<Refusal>),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HighWaterFile {
    schema: String,
    models: BTreeMap<String, HighWater>,
}

/// The per-model high-water marks of one data directory.
#[derive(Debug)]
pub struct HighWaterStore {
    dir: PathBuf,
    marks: BTreeMap<String, HighWater>,
}

impl HighWaterStore {
    /// Opens the store in `dir`, creating the directory (mode 0700) if needed.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Io {
                path: dir.to_owned(),
                source,
            })?;
        let marks = read_marks(&dir.join(HIGH_WATER_FILE))?;
        Ok(Self {
            dir: dir.to_owned(),
            marks,
        })
    }

    /// The mark for `model` as of opening.
    pub fn get(&self, model: &str) -> Option<HighWater> {
        self.marks.get(model).cloned()
    }

    /// Raises the mark for `model` to `mark` after an admission. Under the
    /// lock the file is read again: if another process meanwhile recorded a
    /// newer version, or this version with another manifest, the admission
    /// is refused after all.
    pub fn record(&mut self, model: &str, mark: HighWater) -> Result<(), StateError> {
        let path = self.dir.join(HIGH_WATER_FILE);
        let lock_path = self.dir.join(LOCK_FILE);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut marks = read_marks(&path)?;
        match marks.get(model) {
            Some(known) if known.version > mark.version => {
                return Err(StateError::Refused(Box::new(Refusal::Rollback {
                    model: model.to_owned(),
                    version: mark.version,
                    high_water: known.version.clone(),
                })));
            }
            Some(known) if known.version == mark.version => {
                if known.manifest_sha256 != mark.manifest_sha256 {
                    return Err(StateError::Refused(Box::new(Refusal::VersionReuse {
                        model: model.to_owned(),
                        version: mark.version,
                        known: known.manifest_sha256,
                        offered: mark.manifest_sha256,
                    })));
                }
                self.marks = marks;
                return Ok(());
            }
            _ => {}
        }
        marks.insert(model.to_owned(), mark);
        let file = HighWaterFile {
            schema: HIGH_WATER_SCHEMA.to_owned(),
            models: marks,
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(|e| StateError::Damaged {
            path: path.clone(),
            why: e.to_string(),
        })?;
        text.push(b'\n');
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io_err(&self.dir))?;
        tmp.write_all(&text).map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        // The rename is durable only once the directory is synced.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.marks = file.models;
        Ok(())
    }
}

fn read_marks(path: &Path) -> Result<BTreeMap<String, HighWater>, StateError> {
    let bytes = match read_capped(path, STATE_MAX_BYTES) {
        Ok(bytes) => bytes,
        Err(crate::model_dir::ModelDirError::Io { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(BTreeMap::new());
        }
        Err(e) => {
            return Err(StateError::Damaged {
                path: path.to_owned(),
                why: e.to_string(),
            });
        }
    };
    let damaged = |why: String| StateError::Damaged {
        path: path.to_owned(),
        why,
    };
    let file: HighWaterFile = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    if file.schema != HIGH_WATER_SCHEMA {
        return Err(damaged(format!(
            "schema {:?}, expected {HIGH_WATER_SCHEMA:?}",
            file.schema
        )));
    }
    Ok(file.models)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mark(version: &str, digest_byte: u8) -> HighWater {
        HighWater {
            version: version.parse().unwrap(),
            manifest_sha256: medguard_attest::Sha256Digest::from_bytes([digest_byte; 32]),
        }
    }

    #[test]
    fn marks_persist_only_rise_and_refuse_reuse() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut store = HighWaterStore::open(&dir).unwrap();
        assert_eq!(store.get("m"), None);
        store.record("m", mark("1.2.0", 1)).unwrap();
        // Re-admitting the same version and manifest is fine.
        store.record("m", mark("1.2.0", 1)).unwrap();

        // A second process (a restart) sees the mark.
        let mut again = HighWaterStore::open(&dir).unwrap();
        assert_eq!(again.get("m"), Some(mark("1.2.0", 1)));
        assert!(matches!(
            again.record("m", mark("1.1.9", 1)),
            Err(StateError::Refused(r)) if matches!(*r, Refusal::Rollback { .. })
        ));
        assert!(matches!(
            again.record("m", mark("1.2.0", 2)),
            Err(StateError::Refused(r)) if matches!(*r, Refusal::VersionReuse { .. })
        ));
        // A stale store (opened before the other process raised the mark)
        // still refuses: the file is re-read under the lock.
        store.record("m", mark("2.0.0", 3)).unwrap();
        assert!(matches!(
            again.record("m", mark("1.5.0", 1)),
            Err(StateError::Refused(r)) if matches!(*r, Refusal::Rollback { .. })
        ));
        assert_eq!(
            HighWaterStore::open(&dir).unwrap().get("m"),
            Some(mark("2.0.0", 3))
        );

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_damaged_state_file_stops_admission() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(HIGH_WATER_FILE), b"{ not json").unwrap();
        let err = HighWaterStore::open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
