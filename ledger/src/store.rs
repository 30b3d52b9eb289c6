//! The ledger on disk, in `<data dir>/ledger/`:
//!
//! | file | holds |
//! | --- | --- |
//! | `entries.log` | entries, each framed `u32 length, u32 CRC-32, JSON` (little endian) |
//! | `entries.idx` | the byte offset of every entry, `u64` each |
//! | `entries.mac` | per entry, HMAC-SHA256 of its index and leaf hash under a key derived from the checkpoint key, 32 bytes each |
//! | `tree-NN.hashes` | the hashes of the perfect subtrees of level NN (`tree-00` the leaves), 32 bytes each |
//! | `checkpoints.log` | every signed checkpoint, framed like the entries |
//! | `key`, `origin` | the Ed25519 checkpoint key (hex seed, mode 0600) and the log's name |
//! | `input-hmac.key` | the per-deployment secret for input digests (hex, mode 0600) |
//!
//! | `view.json` | the cached rollback marks, MACed and bound to the root they were computed at |
//! | `quarantine-*.log` | whole entries found past the last checkpoint, moved out on open |
//!
//! The data directory itself holds `ledger.origin`, written when the ledger
//! is created: a data directory that has it but no `ledger/` lost its ledger,
//! and opening it is an error until the operator starts a new one on purpose
//! ([`Ledger::create_replacing`]); silently starting afresh would drop every
//! rollback mark.
//!
//! An append is acknowledged only after the entries, index and tree files
//! were fsynced *and then* a checkpoint covering them was written and
//! fsynced: the last checkpoint is the durable boundary. On open, a torn
//! tail is cut back to the last whole entry; anything missing or damaged
//! *before* the boundary is corruption and stops the ledger. Whole entries
//! *past* it were never acknowledged (a crash between their fsync and their
//! checkpoint's). A CRC is no authentication, so the ledger signs them only
//! if each carries its MAC (`entries.mac`), which only the holder of the
//! checkpoint key can compute: then they are the ledger's own and are
//! checkpointed. From the first one without a valid MAC on, they are moved
//! to a quarantine file and an [`Entry::EntriesQuarantined`] entry records
//! their count and digest. Every entry read back (for the rollback marks,
//! `ledger show`, receipts) is checked against its MAC, so an entry edited in
//! place or an index pointed elsewhere is corruption, not data. A
//! failed write or fsync poisons the open ledger: it is not retried (the
//! page cache may already have dropped the data), and the process must
//! reopen it, which runs the recovery above.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use jiff::Timestamp;
use thiserror::Error;

use crate::entry::{Entry, input_hmac};
use crate::merkle::{self, Hash, NodeSource};
use crate::note::{Checkpoint, NoteSigner, NoteVerifier};
use crate::receipt::Receipt;
use crate::view::{Opened, SealedView, View, view_key};

/// The ledger directory's name inside the data directory.
pub const LEDGER_DIR: &str = "ledger";
/// Entries larger than this are refused.
pub const ENTRY_MAX_BYTES: usize = 64 * 1024;

pub(crate) const ENTRIES: &str = "entries.log";
pub(crate) const INDEX: &str = "entries.idx";
const MACS: &str = "entries.mac";
pub(crate) const CHECKPOINTS: &str = "checkpoints.log";
const KEY: &str = "key";
const ORIGIN: &str = "origin";
const SECRET: &str = "input-hmac.key";
pub(crate) const LOCK: &str = "lock";
pub(crate) const VIEW: &str = "view.json";
/// Prefix of the files unacknowledged entries are moved to.
pub(crate) const QUARANTINE_PREFIX: &str = "quarantine-";
/// In the data directory: the origin of the ledger it holds.
const MARKER: &str = "ledger.origin";
/// How long opening waits for another process to release the ledger.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
pub(crate) const HEADER: usize = 8;

pub(crate) fn level_file(level: u32) -> String {
    format!("tree-{level:02}.hashes")
}

/// Why the ledger failed.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// An OS error.
    #[error("ledger {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A write or fsync failed earlier; the ledger must be reopened.
    #[error(
        "the ledger stopped after a failed write or fsync ({0}); nothing after it was acknowledged. Restart to recover"
    )]
    Poisoned(String),
    /// Acknowledged data is missing or damaged.
    #[error(
        "the ledger is damaged: {0}. Nothing was changed; run `medguard ledger verify` to locate it"
    )]
    Corrupt(String),
    /// An entry could not be encoded or is too large.
    #[error("cannot record entry: {0}")]
    Entry(String),
    /// The data directory had a ledger and it is gone.
    #[error(
        "the ledger of {} is missing (it was {origin}); its rollback marks and history went with it. Restore ledger/ from a backup, or start a new ledger on purpose with `medguard ledger new`",
        data_dir.display()
    )]
    Missing {
        /// The data directory.
        data_dir: PathBuf,
        /// The origin of the ledger it had.
        origin: String,
    },
    /// Another process held the ledger for the whole wait.
    #[error(
        "another medguard process has held the ledger in {} for {waited:?}; try again when it has finished, or find the process with `fuser {}/lock`",
        dir.display(), dir.display()
    )]
    Busy {
        /// The ledger directory.
        dir: PathBuf,
        /// How long opening waited.
        waited: std::time::Duration,
    },
    /// `create_replacing` found a ledger.
    #[error("{} already holds a ledger; nothing to replace", .0.display())]
    Exists(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Frames `payload` as a record.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads the whole records at the start of `bytes`: their payload ranges
/// and where the valid prefix ends.
pub(crate) fn records(bytes: &[u8]) -> (Vec<std::ops::Range<usize>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(r) = record_at(bytes, at) {
        at = r.end;
        out.push(r);
    }
    (out, at)
}

/// A record header: the payload length, if believable, and its CRC-32.
pub(crate) fn header(bytes: [u8; HEADER]) -> (Option<usize>, u32) {
    let [a, b, c, d, e, f, g, h] = bytes;
    let len = u32::from_le_bytes([a, b, c, d]) as usize;
    (
        (len <= ENTRY_MAX_BYTES).then_some(len),
        u32::from_le_bytes([e, f, g, h]),
    )
}

/// The payload range of a whole, CRC-valid record at `at`.
pub(crate) fn record_at(bytes: &[u8], at: usize) -> Option<std::ops::Range<usize>> {
    let (len, crc) = header(bytes.get(at..at + HEADER)?.try_into().ok()?);
    let payload = at + HEADER..at + HEADER + len?;
    let data = bytes.get(payload.clone())?;
    (crc32fast::hash(data) == crc).then_some(payload)
}

/// The ledger, open for appending. Holds an exclusive lock on its directory
/// for as long as it lives.
pub struct Ledger {
    dir: PathBuf,
    _lock: File,
    log: File,
    idx: File,
    macs: File,
    entry_key: [u8; 32],
    checkpoints: File,
    levels: Vec<File>,
    counts: Vec<u64>,
    last: Vec<Hash>,
    log_len: u64,
    signer: NoteSigner,
    origin: String,
    secret: [u8; 32],
    view_key: [u8; 32],
    checkpoint: (Checkpoint, String),
    poisoned: Option<String>,
    view: View,
    view_saved: u64,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if self.view_saved != self.view.size && self.poisoned.is_none() {
            self.save_view();
        }
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ledger({}, {} entries)", self.dir.display(), self.size())
    }
}

fn read_hex32(path: &Path) -> Result<[u8; 32], LedgerError> {
    let text = fs::read_to_string(path).map_err(io_at(path))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
        LedgerError::Corrupt(format!("{} is not a 32-byte hex key", path.display()))
    })?;
    Ok(out)
}

fn write_private(path: &Path, text: &str) -> Result<(), LedgerError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))?;
    f.write_all(text.as_bytes()).map_err(io_at(path))?;
    f.sync_all().map_err(io_at(path))
}

fn random32() -> Result<[u8; 32], LedgerError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| LedgerError::Io {
        path: PathBuf::from("(OS random source)"),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(b)
}

/// Opens (creating, mode 0600) a ledger file for reading and appending.
fn open_append(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))
}

fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

impl Ledger {
    /// Opens the ledger in `data_dir/ledger`, creating it (keys, origin, a
    /// first entry naming the key, a first checkpoint) on first use, and
    /// recovering from a crash as the module documentation describes. A data
    /// directory whose ledger went missing is [`LedgerError::Missing`].
    pub fn open(data_dir: &Path) -> Result<Self, LedgerError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(io_at(data_dir))?;
        let dir = data_dir.join(LEDGER_DIR);
        let exists = fs::symlink_metadata(&dir).is_ok();
        if !exists {
            if let Some(origin) = previous_origin(data_dir)? {
                return Err(LedgerError::Missing {
                    data_dir: data_dir.to_owned(),
                    origin,
                });
            }
            create(data_dir, &dir, None)?;
        }
        let ledger = Self::open_dir(&dir)?;
        ledger.mark(data_dir)?;
        Ok(ledger)
    }

    /// Starts a new ledger in a data directory whose ledger is gone, on the
    /// operator's explicit request; its first entry names the origin of the
    /// ledger it replaces. Every rollback mark starts from nothing, so the
    /// operator should re-admit the current models first.
    pub fn create_replacing(data_dir: &Path) -> Result<Self, LedgerError> {
        let dir = data_dir.join(LEDGER_DIR);
        if fs::symlink_metadata(&dir).is_ok() {
            return Err(LedgerError::Exists(dir));
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(io_at(data_dir))?;
        let replaces = previous_origin(data_dir)?;
        create(data_dir, &dir, replaces)?;
        let ledger = Self::open_dir(&dir)?;
        ledger.mark(data_dir)?;
        Ok(ledger)
    }

    /// Records in the data directory that it holds this ledger. A marker
    /// naming another ledger means `ledger/` was swapped for a different
    /// log, unless this ledger was started to replace that one.
    fn mark(&self, data_dir: &Path) -> Result<(), LedgerError> {
        let path = data_dir.join(MARKER);
        match previous_origin(data_dir)? {
            Some(origin) if origin == self.origin => return Ok(()),
            Some(origin) => {
                let first: Option<Entry> = self
                    .read_entry(0)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let replaces = matches!(
                    first,
                    Some(Entry::LedgerCreated { replaces: Some(r), .. }) if r == origin
                );
                if !replaces {
                    return Err(LedgerError::Corrupt(format!(
                        "{} holds the ledger {}, but this data directory's ledger was {origin}: ledger/ was replaced",
                        self.dir.display(),
                        self.origin
                    )));
                }
            }
            None => {}
        }
        let mut tmp = tempfile::NamedTempFile::new_in(data_dir).map_err(io_at(data_dir))?;
        tmp.write_all(format!("{}\n", self.origin).as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io_at(&path))?;
        tmp.persist(&path).map_err(|e| io_at(&path)(e.error))?;
        sync_dir(data_dir)
    }

    /// Opens the ledger directory `dir` itself.
    fn open_dir(dir: &Path) -> Result<Self, LedgerError> {
        let dir = dir.to_owned();
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        // Bounded: a process stuck while holding the lock must not hang
        // every other one on this data directory.
        let started = std::time::Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(LedgerError::Busy {
                        dir: dir.clone(),
                        waited: LOCK_WAIT,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
            }
        }
        let origin = fs::read_to_string(dir.join(ORIGIN))
            .map_err(io_at(&dir.join(ORIGIN)))?
            .trim()
            .to_owned();
        let seed = read_hex32(&dir.join(KEY))?;
        let signer = NoteSigner::new(&origin, &seed);
        let secret = read_hex32(&dir.join(SECRET))?;
        let open = |name: &str| open_append(&dir.join(name));
        let log = open(ENTRIES)?;
        let idx = open(INDEX)?;
        let macs = open(MACS)?;
        let checkpoints = open(CHECKPOINTS)?;
        let mut ledger = Self {
            dir: dir.clone(),
            _lock: lock,
            log,
            idx,
            macs,
            entry_key: entry_key(&seed),
            checkpoints,
            levels: Vec::new(),
            counts: Vec::new(),
            last: Vec::new(),
            log_len: 0,
            signer,
            origin,
            secret,
            view_key: view_key(&seed),
            checkpoint: (
                Checkpoint {
                    origin: String::new(),
                    size: 0,
                    root: merkle::empty_root(),
                },
                String::new(),
            ),
            poisoned: None,
            view: View::default(),
            view_saved: 0,
        };
        ledger.recover()?;
        ledger.load_view()?;
        Ok(ledger)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Brings the files back to the last checkpoint plus any whole entries.
    fn recover(&mut self) -> Result<(), LedgerError> {
        let corrupt = |why: String| LedgerError::Corrupt(why);
        // 1. The last whole, valid checkpoint is the durable boundary.
        let cp_path = self.path(CHECKPOINTS);
        let mut bytes = Vec::new();
        (&self.checkpoints)
            .read_to_end(&mut bytes)
            .map_err(io_at(&cp_path))?;
        let (notes, valid) = records(&bytes);
        let last = notes
            .last()
            .ok_or_else(|| corrupt("it has no checkpoint".into()))?;
        let note = std::str::from_utf8(&bytes[last.clone()])
            .map_err(|_| corrupt("the last checkpoint is not text".into()))?
            .to_owned();
        let checkpoint = self
            .signer
            .verifier()
            .open(&note)
            .map_err(|e| corrupt(format!("the last checkpoint: {e}")))?;
        if valid < bytes.len() {
            self.checkpoints
                .set_len(valid as u64)
                .map_err(io_at(&cp_path))?;
        }
        let acked = checkpoint.size;

        // 2. The entries it covers must all be there.
        let idx_path = self.path(INDEX);
        let idx_len = self.idx.metadata().map_err(io_at(&idx_path))?.len();
        if idx_len / 8 < acked {
            return Err(corrupt(format!(
                "the index holds {} entries but the last checkpoint covers {acked}",
                idx_len / 8
            )));
        }
        let log_path = self.path(ENTRIES);
        let end_acked = if acked == 0 {
            0
        } else {
            let at = self.offset(acked - 1)?;
            let payload = self.record(acked - 1, at)?;
            at + (HEADER + payload.len()) as u64
        };
        // 3. Whole entries past it are kept; a torn tail is cut.
        let log_len = self.log.metadata().map_err(io_at(&log_path))?.len();
        let tail = self.read_at(
            &self.log,
            &log_path,
            end_acked,
            (log_len.saturating_sub(end_acked)) as usize,
        )?;
        let (extra, whole) = records(&tail);
        self.log_len = end_acked + whole as u64;
        if self.log_len < log_len {
            self.log.set_len(self.log_len).map_err(io_at(&log_path))?;
        }
        self.idx.set_len(acked * 8).map_err(io_at(&idx_path))?;
        let mac_path = self.path(MACS);
        let macs_len = self.macs.metadata().map_err(io_at(&mac_path))?.len();
        // The MACs of the entries past the boundary, as far as they were
        // written, before the file is cut back to the boundary.
        let extra_macs = self.read_at(
            &self.macs,
            &mac_path,
            acked * 32,
            (macs_len.saturating_sub(acked * 32) / 32 * 32) as usize,
        )?;
        if macs_len < acked * 32 {
            self.macs.set_len(0).map_err(io_at(&mac_path))?;
        } else {
            self.macs.set_len(acked * 32).map_err(io_at(&mac_path))?;
        }
        // 4. Tree files back to the boundary, checked against its root.
        self.counts.clear();
        self.last.clear();
        for level in 0..64u32 {
            let want = acked >> level;
            let path = self.path(&level_file(level));
            if want == 0 && !path.exists() {
                break;
            }
            let file = open_append(&path)?;
            let have = file.metadata().map_err(io_at(&path))?.len() / 32;
            if have < want {
                return Err(corrupt(format!(
                    "tree level {level} holds {have} hashes; the last checkpoint needs {want}"
                )));
            }
            file.set_len(want * 32).map_err(io_at(&path))?;
            let last = if want > 0 {
                let b = self.read_at(&file, &path, (want - 1) * 32, 32)?;
                Hash(b.try_into().map_err(|_| corrupt("short hash".into()))?)
            } else {
                Hash::default()
            };
            self.levels.push(file);
            self.counts.push(want);
            self.last.push(last);
        }
        let root = self.root_at(acked)?;
        if root != checkpoint.root {
            return Err(corrupt(format!(
                "the tree files give root {root} at size {acked}, the last checkpoint says {}",
                checkpoint.root
            )));
        }
        self.checkpoint = (checkpoint, note);
        // A ledger from before per-entry MACs: its covered entries are
        // checked against the signed root once, then given their MACs.
        if macs_len < acked * 32 {
            self.migrate_macs(acked)?;
        }
        // 5. Whole entries past the boundary: those with their MAC are the
        //    ledger's own and are checkpointed; from the first without one,
        //    they (and any torn bytes after them) are moved out, unsigned.
        if !extra.is_empty() {
            let genuine = extra
                .iter()
                .zip(extra_macs.chunks_exact(32))
                .zip(acked..)
                .take_while(|((r, mac), index)| {
                    self.entry_mac(*index, &merkle::leaf_hash(&tail[(*r).clone()]))[..] == mac[..]
                })
                .count();
            let kept: Vec<Vec<u8>> = extra[..genuine]
                .iter()
                .map(|r| tail[r.clone()].to_vec())
                .collect();
            let cut = extra
                .get(genuine)
                .map(|r| r.start - HEADER)
                .unwrap_or(tail.len());
            let quarantined = (genuine < extra.len()).then(|| &tail[cut..]);
            let file = quarantined
                .map(|q| self.quarantine(acked + genuine as u64, q))
                .transpose()?;
            self.log_len = end_acked;
            self.log.set_len(end_acked).map_err(io_at(&log_path))?;
            self.commit_payloads(&kept)?;
            if let (Some(bytes), Some(file)) = (quarantined, file) {
                let mismatched = extra[genuine..]
                    .iter()
                    .zip(extra_macs.chunks_exact(32).skip(genuine))
                    .zip(acked + genuine as u64..)
                    .filter(|((r, mac), index)| {
                        self.entry_mac(*index, &merkle::leaf_hash(&tail[(*r).clone()]))[..]
                            != mac[..]
                    })
                    .count() as u64;
                let entry = Entry::EntriesQuarantined {
                    time: Timestamp::now(),
                    count: (extra.len() - genuine) as u64,
                    first_index: acked + genuine as u64,
                    sha256: medguard_attest::Sha256Digest::of(bytes),
                    file,
                    forged: mismatched,
                };
                let payload =
                    serde_json::to_vec(&entry).map_err(|e| LedgerError::Entry(e.to_string()))?;
                self.commit_payloads(&[payload])?;
            }
        }
        Ok(())
    }

    /// The MAC of entry `index` with leaf hash `leaf`.
    fn entry_mac(&self, index: u64, leaf: &Hash) -> [u8; 32] {
        entry_mac(&self.entry_key, index, leaf)
    }

    /// Gives the first `acked` entries their MACs, after checking that they
    /// hash to the signed root.
    fn migrate_macs(&mut self, acked: u64) -> Result<(), LedgerError> {
        let mut leaves = Vec::with_capacity(acked as usize);
        for index in 0..acked {
            let payload = self.record(index, self.offset(index)?)?;
            leaves.push(merkle::leaf_hash(&payload));
        }
        let root = merkle::root_of(&leaves);
        if root != self.checkpoint.0.root {
            return Err(LedgerError::Corrupt(format!(
                "the entries give root {root} at size {acked}, the last checkpoint says {}",
                self.checkpoint.0.root
            )));
        }
        let mut buf = Vec::with_capacity(leaves.len() * 32);
        for (index, leaf) in leaves.iter().enumerate() {
            buf.extend_from_slice(&self.entry_mac(index as u64, leaf));
        }
        let path = self.path(MACS);
        self.macs
            .write_all(&buf)
            .and_then(|()| self.macs.sync_data())
            .map_err(io_at(&path))
    }

    /// Writes `bytes`, found past entry `first`, to a new quarantine file
    /// and returns its name. Durable before the log is cut.
    fn quarantine(&self, first: u64, bytes: &[u8]) -> Result<String, LedgerError> {
        let stamp = Timestamp::now().as_nanosecond();
        let name = format!("{QUARANTINE_PREFIX}{first:012}-{stamp}.log");
        let path = self.path(&name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_at(&path))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_at(&path))?;
        sync_dir(&self.dir)?;
        Ok(name)
    }

    /// Loads the cached view, if its seal holds for this log, and folds in
    /// the entries it has not seen; otherwise rebuilds it from every entry.
    fn load_view(&mut self) -> Result<(), LedgerError> {
        let opened = fs::read(self.path(VIEW))
            .ok()
            .and_then(|b| serde_json::from_slice::<SealedView>(&b).ok())
            .map(|sealed| {
                sealed.open(&self.view_key, |size| {
                    (size <= self.size())
                        .then(|| self.root_at(size).ok())
                        .flatten()
                })
            });
        let cached = match opened {
            Some(Opened::View(view)) => Some(view),
            Some(Opened::Contradicts { size, root }) => {
                // Not replaced on close: it is the evidence.
                self.poisoned = Some("the view cache contradicts the log".into());
                return Err(LedgerError::Corrupt(format!(
                    "view.json was sealed by this ledger at {size} entries with root {root}, which this log (now {} entries) does not have: the log was cut back or rewritten. Compare it with a checkpoint held elsewhere (`medguard ledger verify --checkpoint`); to open the ledger anyway, move view.json aside (it is the evidence)",
                    self.size()
                )));
            }
            Some(Opened::Ignored) | None => None,
        };
        let cached_size = cached.as_ref().map(|v| v.size);
        let mut view = cached.unwrap_or_default();
        for index in view.size..self.size() {
            let bytes = self.read_entry(index)?;
            let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| {
                LedgerError::Corrupt(format!("entry {index} is not a ledger entry: {e}"))
            })?;
            view.apply(&entry);
        }
        self.view_saved = cached_size.unwrap_or(u64::MAX);
        self.view = view;
        Ok(())
    }

    /// Writes the view cache atomically. Not fsynced and errors ignored: it
    /// is rebuilt from the entries whenever it is missing or behind.
    fn save_view(&mut self) {
        let Ok(root) = self.root_at(self.view.size) else {
            return;
        };
        let Some(sealed) = SealedView::seal(&self.view_key, self.view.clone(), root) else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&sealed) else {
            return;
        };
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(&self.dir)
            && tmp.write_all(&bytes).is_ok()
            && tmp.persist(self.path(VIEW)).is_ok()
        {
            self.view_saved = self.view.size;
        }
    }

    /// The state derived from every entry: rollback marks, policy in force.
    pub fn view(&self) -> &View {
        &self.view
    }

    fn read_at(
        &self,
        file: &File,
        path: &Path,
        at: u64,
        len: usize,
    ) -> Result<Vec<u8>, LedgerError> {
        let mut buf = vec![0u8; len];
        match file.read_exact_at(&mut buf, at) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(LedgerError::Corrupt(
                format!("{} is shorter than what was recorded in it", path.display()),
            )),
            Err(e) => Err(io_at(path)(e)),
        }
    }

    fn offset(&self, index: u64) -> Result<u64, LedgerError> {
        let b = self.read_at(&self.idx, &self.path(INDEX), index * 8, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// The exact bytes of entry `index`, checked against its MAC.
    pub fn read_entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        if index >= self.size() {
            return Err(LedgerError::Entry(format!(
                "no entry {index}; the ledger has {}",
                self.size()
            )));
        }
        let payload = self.record(index, self.offset(index)?)?;
        let mac = self.read_at(&self.macs, &self.path(MACS), index * 32, 32)?;
        if self.entry_mac(index, &merkle::leaf_hash(&payload))[..] != mac[..] {
            return Err(LedgerError::Corrupt(format!(
                "entry {index} is not the one the ledger wrote there (its MAC fails): edited in place, or the index points elsewhere"
            )));
        }
        Ok(payload)
    }

    /// The payload of entry `index`, whose record starts at `at`.
    fn record(&self, index: u64, at: u64) -> Result<Vec<u8>, LedgerError> {
        let path = self.path(ENTRIES);
        let bytes = self.read_at(&self.log, &path, at, HEADER)?;
        let (len, crc) = header(bytes.try_into().unwrap_or_default());
        let len = len.ok_or_else(|| {
            LedgerError::Corrupt(format!("entry {index} has an impossible length"))
        })?;
        let payload = self.read_at(&self.log, &path, at + HEADER as u64, len)?;
        if crc32fast::hash(&payload) != crc {
            return Err(LedgerError::Corrupt(format!("entry {index} fails its CRC")));
        }
        Ok(payload)
    }

    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.counts.first().copied().unwrap_or(0)
    }

    /// The latest checkpoint and its signed note.
    pub fn checkpoint(&self) -> (&Checkpoint, &str) {
        (&self.checkpoint.0, &self.checkpoint.1)
    }

    /// The key that verifies this ledger's checkpoints.
    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }

    /// The log's origin (its name in checkpoints).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// HMAC-SHA256 of an input tensor under this deployment's secret.
    pub fn input_hmac(&self, tensor: &[u8]) -> String {
        input_hmac(&self.secret, tensor)
    }

    /// The input-naming secret, for threads that digest inputs while
    /// another holds the ledger.
    pub fn input_key(&self) -> crate::entry::InputKey {
        crate::entry::InputKey::new(self.secret)
    }

    /// The root of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Result<Hash, LedgerError> {
        if size == 0 {
            return Ok(merkle::empty_root());
        }
        merkle::range_root(self, 0, size)
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        if index >= size || size > self.size() {
            return Err(LedgerError::Entry(format!(
                "no entry {index} in a tree of {size} (ledger size {})",
                self.size()
            )));
        }
        merkle::inclusion_proof(self, index, size)
    }

    /// The consistency proof between two sizes.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        if old == 0 || old > new || new > self.size() {
            return Err(LedgerError::Entry(format!(
                "no consistency proof from {old} to {new} (ledger size {})",
                self.size()
            )));
        }
        merkle::consistency_proof(self, old, new)
    }

    /// Appends `entries` as one group commit and returns a receipt for each,
    /// all against the checkpoint that made them durable.
    pub fn append(&mut self, entries: &[Entry]) -> Result<Vec<Receipt>, LedgerError> {
        let payloads = entries
            .iter()
            .map(|e| {
                let bytes = serde_json::to_vec(e).map_err(|e| LedgerError::Entry(e.to_string()))?;
                if bytes.len() > ENTRY_MAX_BYTES {
                    return Err(LedgerError::Entry(format!(
                        "{} bytes, more than {ENTRY_MAX_BYTES}",
                        bytes.len()
                    )));
                }
                Ok(bytes)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = self.size();
        self.commit_payloads(&payloads)?;
        let before = (self.view.high_water.clone(), self.view.policy);
        for e in entries {
            self.view.apply(e);
        }
        // Rollback marks are saved as soon as they move; the size alone
        // (every inference) is saved when the ledger is closed, and if the
        // process dies first, opening folds the few newer entries in again.
        if (&self.view.high_water, self.view.policy) != (&before.0, before.1) {
            self.save_view();
        }
        let (checkpoint, note) = self.checkpoint();
        let size = checkpoint.size;
        let note = note.to_owned();
        // The proofs of one batch share most of their nodes: read each once.
        let cached = Cached {
            ledger: self,
            nodes: Default::default(),
        };
        payloads
            .into_iter()
            .zip(first..)
            .map(|(bytes, index)| {
                let proof = merkle::inclusion_proof(&cached, index, size)?;
                Ok(Receipt::new(bytes, index, size, &proof, note.clone()))
            })
            .collect()
    }

    fn commit_payloads(&mut self, payloads: &[Vec<u8>]) -> Result<(), LedgerError> {
        if let Some(why) = &self.poisoned {
            return Err(LedgerError::Poisoned(why.clone()));
        }
        if payloads.is_empty() {
            return Ok(());
        }
        let mut log_buf = Vec::new();
        let mut idx_buf = Vec::with_capacity(payloads.len() * 8);
        let mut mac_buf = Vec::with_capacity(payloads.len() * 32);
        let mut level_bufs: Vec<Vec<u8>> = vec![Vec::new(); self.counts.len()];
        for p in payloads {
            idx_buf.extend_from_slice(&(self.log_len + log_buf.len() as u64).to_le_bytes());
            frame(p, &mut log_buf);
            let leaf = merkle::leaf_hash(p);
            let index = self.size();
            mac_buf.extend_from_slice(&self.entry_mac(index, &leaf));
            self.push_leaf(leaf, &mut level_bufs);
        }
        let result = self.write_and_sync(&log_buf, &idx_buf, &mac_buf, &level_bufs);
        if let Err(e) = result {
            self.poisoned = Some(e.to_string());
            return Err(e);
        }
        self.log_len += log_buf.len() as u64;
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: self.size(),
            root: self.root_at(self.size())?,
        };
        let note = self.signer.sign(&checkpoint);
        let mut rec = Vec::new();
        frame(note.as_bytes(), &mut rec);
        let path = self.path(CHECKPOINTS);
        if let Err(e) = self
            .checkpoints
            .write_all(&rec)
            .and_then(|()| self.checkpoints.sync_data())
        {
            self.poisoned = Some(e.to_string());
            return Err(LedgerError::Io { path, source: e });
        }
        self.checkpoint = (checkpoint, note);
        Ok(())
    }

    fn push_leaf(&mut self, leaf: Hash, bufs: &mut Vec<Vec<u8>>) {
        let mut node = leaf;
        let mut level = 0usize;
        loop {
            if level == self.counts.len() {
                self.counts.push(0);
                self.last.push(Hash::default());
            }
            if level == bufs.len() {
                bufs.push(Vec::new());
            }
            let index = self.counts[level];
            bufs[level].extend_from_slice(&node.0);
            self.counts[level] += 1;
            let left = std::mem::replace(&mut self.last[level], node);
            if index & 1 == 0 {
                break;
            }
            node = merkle::node_hash(&left, &node);
            level += 1;
        }
    }

    fn write_and_sync(
        &mut self,
        log_buf: &[u8],
        idx_buf: &[u8],
        mac_buf: &[u8],
        level_bufs: &[Vec<u8>],
    ) -> Result<(), LedgerError> {
        if self.levels.len() < level_bufs.len() {
            while self.levels.len() < level_bufs.len() {
                let path = self.path(&level_file(self.levels.len() as u32));
                self.levels.push(open_append(&path)?);
            }
            // A new file's name must be durable before anything relies on it.
            sync_dir(&self.dir)?;
        }
        let log_path = self.path(ENTRIES);
        let idx_path = self.path(INDEX);
        self.log.write_all(log_buf).map_err(io_at(&log_path))?;
        self.idx.write_all(idx_buf).map_err(io_at(&idx_path))?;
        let mac_path = self.path(MACS);
        self.macs.write_all(mac_buf).map_err(io_at(&mac_path))?;
        for (level, buf) in level_bufs.iter().enumerate() {
            if !buf.is_empty() {
                let path = self.path(&level_file(level as u32));
                self.levels[level].write_all(buf).map_err(io_at(&path))?;
            }
        }
        self.log.sync_data().map_err(io_at(&log_path))?;
        self.idx.sync_data().map_err(io_at(&idx_path))?;
        self.macs.sync_data().map_err(io_at(&mac_path))?;
        for (level, buf) in level_bufs.iter().enumerate() {
            if !buf.is_empty() {
                let path = self.path(&level_file(level as u32));
                self.levels[level].sync_data().map_err(io_at(&path))?;
            }
        }
        Ok(())
    }
}

impl NodeSource for Ledger {
    type Error = LedgerError;

    fn perfect(&self, level: u32, index: u64) -> Result<Hash, LedgerError> {
        let l = level as usize;
        let count = self.counts.get(l).copied().unwrap_or(0);
        if index >= count {
            return Err(LedgerError::Corrupt(format!(
                "tree level {level} has no node {index}"
            )));
        }
        if index + 1 == count {
            return Ok(self.last[l]);
        }
        let path = self.path(&level_file(level));
        let b = self.read_at(&self.levels[l], &path, index * 32, 32)?;
        Ok(Hash(b.try_into().unwrap_or_default()))
    }
}

/// The checkpoint key of the ledger in `data_dir`, read from its files
/// without opening (or repairing) the ledger: for auditing a ledger that may
/// have been tampered with. An auditor should rather use a copy of the key
/// taken when the ledger was set up.
pub fn local_verifier(data_dir: &Path) -> Result<NoteVerifier, LedgerError> {
    let dir = data_dir.join(LEDGER_DIR);
    let origin_path = dir.join(ORIGIN);
    let origin = fs::read_to_string(&origin_path).map_err(io_at(&origin_path))?;
    Ok(NoteSigner::new(origin.trim(), &read_hex32(&dir.join(KEY))?).verifier())
}

/// The key of the per-entry MACs, derived from the checkpoint signing seed.
fn entry_key(signing_seed: &[u8; 32]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(signing_seed)
        .expect("HMAC takes any key length");
    mac.update(b"medguard-ledger entry-mac key v1");
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 of an entry's index and leaf hash.
fn entry_mac(key: &[u8; 32], index: u64, leaf: &Hash) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&index.to_le_bytes());
    mac.update(&leaf.0);
    mac.finalize().into_bytes().into()
}

/// The origin named by the data directory's marker, if it has one.
fn previous_origin(data_dir: &Path) -> Result<Option<String>, LedgerError> {
    let path = data_dir.join(MARKER);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// The latest signed checkpoint of the ledger in `data_dir`, read from its
/// files without opening (or locking, or repairing) the ledger, verified with
/// its local key: for exporting to a witness while a server holds the ledger.
pub fn latest_checkpoint(data_dir: &Path) -> Result<String, LedgerError> {
    let verifier = local_verifier(data_dir)?;
    let path = data_dir.join(LEDGER_DIR).join(CHECKPOINTS);
    let bytes = fs::read(&path).map_err(io_at(&path))?;
    let (notes, _) = records(&bytes);
    notes
        .iter()
        .rev()
        .filter_map(|r| std::str::from_utf8(&bytes[r.clone()]).ok())
        .find(|note| verifier.open(note).is_ok())
        .map(str::to_owned)
        .ok_or_else(|| LedgerError::Corrupt("no checkpoint verifies with the ledger's key".into()))
}

/// A node source that remembers what it read, for the proofs of one batch.
struct Cached<'a> {
    ledger: &'a Ledger,
    nodes: std::cell::RefCell<std::collections::HashMap<(u32, u64), Hash>>,
}

impl NodeSource for Cached<'_> {
    type Error = LedgerError;

    fn perfect(&self, level: u32, index: u64) -> Result<Hash, LedgerError> {
        if let Some(h) = self.nodes.borrow().get(&(level, index)) {
            return Ok(*h);
        }
        let h = self.ledger.perfect(level, index)?;
        self.nodes.borrow_mut().insert((level, index), h);
        Ok(h)
    }
}

/// Creates a ledger in a temporary directory and renames it into place, so
/// that a crash leaves either no ledger or a whole one.
fn create(data_dir: &Path, dir: &Path, replaces: Option<String>) -> Result<(), LedgerError> {
    let tmp = tempfile::Builder::new()
        .prefix(".ledger-new-")
        .tempdir_in(data_dir)
        .map_err(io_at(data_dir))?;
    let t = tmp.path();
    fs::set_permissions(t, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io_at(t))?;
    let origin = format!("medguard.invalid/ledger/{}", hex::encode(&random32()?[..8]));
    let seed = random32()?;
    write_private(&t.join(KEY), &hex::encode(seed))?;
    write_private(&t.join(SECRET), &hex::encode(random32()?))?;
    write_private(&t.join(ORIGIN), &format!("{origin}\n"))?;
    let signer = NoteSigner::new(&origin, &seed);
    // The empty tree's checkpoint, then the first entry through the normal path.
    let empty = Checkpoint {
        origin: origin.clone(),
        size: 0,
        root: merkle::empty_root(),
    };
    let mut rec = Vec::new();
    frame(signer.sign(&empty).as_bytes(), &mut rec);
    write_private(&t.join(CHECKPOINTS), "")?;
    let cp_path = t.join(CHECKPOINTS);
    let mut f = OpenOptions::new()
        .append(true)
        .open(&cp_path)
        .map_err(io_at(&cp_path))?;
    f.write_all(&rec).map_err(io_at(&cp_path))?;
    f.sync_all().map_err(io_at(&cp_path))?;
    {
        // A throwaway data dir view of the temporary directory.
        let mut ledger = Ledger::open_dir(t)?;
        ledger.append(&[Entry::LedgerCreated {
            time: Timestamp::now(),
            key: signer.verifier().to_string(),
            replaces,
        }])?;
    }
    sync_dir(t)?;
    let kept = tmp.keep();
    match fs::rename(&kept, dir) {
        Ok(()) => sync_dir(data_dir),
        // Another process created it first: use theirs.
        Err(_) if dir.exists() => {
            let _ = fs::remove_dir_all(&kept);
            Ok(())
        }
        Err(e) => Err(io_at(dir)(e)),
    }
}

/// Many threads appending through one ledger: whoever finds no commit in
/// progress commits everything queued so far (leader), the others wait for
/// their receipts. One fsync round serves the whole group.
pub struct GroupCommit {
    state: Mutex<GroupState>,
    done: Condvar,
}

struct GroupState {
    ledger: Option<Ledger>,
    queue: Vec<(u64, Entry)>,
    results: std::collections::HashMap<u64, Result<Receipt, String>>,
    next: u64,
}

impl GroupCommit {
    /// Wraps an open ledger.
    pub fn new(ledger: Ledger) -> Self {
        Self {
            state: Mutex::new(GroupState {
                ledger: Some(ledger),
                queue: Vec::new(),
                results: Default::default(),
                next: 0,
            }),
            done: Condvar::new(),
        }
    }

    /// Appends one entry; returns once it is durable.
    pub fn append(&self, entry: Entry) -> Result<Receipt, LedgerError> {
        let poisoned = |_| LedgerError::Poisoned("a committing thread panicked".into());
        let mut state = self.state.lock().map_err(poisoned)?;
        let ticket = state.next;
        state.next += 1;
        state.queue.push((ticket, entry));
        loop {
            if let Some(result) = state.results.remove(&ticket) {
                return result.map_err(LedgerError::Poisoned);
            }
            if let Some(mut ledger) = state.ledger.take() {
                let batch = std::mem::take(&mut state.queue);
                drop(state);
                let (tickets, entries): (Vec<u64>, Vec<Entry>) = batch.into_iter().unzip();
                // A panic must not take the ledger with it: every waiter
                // would wait forever. It ends this batch and poisons the ledger.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ledger.append(&entries)
                }))
                .unwrap_or_else(|_| {
                    let why = "a thread panicked while committing".to_owned();
                    ledger.poisoned = Some(why.clone());
                    Err(LedgerError::Poisoned(why))
                });
                state = self.state.lock().map_err(poisoned)?;
                state.ledger = Some(ledger);
                match outcome {
                    Ok(receipts) => {
                        for (t, r) in tickets.into_iter().zip(receipts) {
                            state.results.insert(t, Ok(r));
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        for t in tickets {
                            state.results.insert(t, Err(why.clone()));
                        }
                    }
                }
                self.done.notify_all();
            } else {
                state = self.done.wait(state).map_err(poisoned)?;
            }
        }
    }

    /// Appends `entries` together (one commit, unless others join it);
    /// returns their receipts in order once they are durable.
    pub fn append_all(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, LedgerError> {
        // One ticket per entry through the normal path would interleave with
        // other threads' entries; a batch holds the ledger once instead.
        self.exclusive(|ledger| ledger.append(&entries))?
    }

    /// Runs `f` with the ledger to itself: waits for a commit in progress,
    /// and no commit starts until `f` returns. For what must read and
    /// append atomically (admission: check the rollback marks, record).
    pub fn exclusive<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> Result<R, LedgerError> {
        let poisoned = |_| LedgerError::Poisoned("a committing thread panicked".into());
        let mut state = self.state.lock().map_err(poisoned)?;
        let mut ledger = loop {
            if let Some(ledger) = state.ledger.take() {
                break ledger;
            }
            state = self.done.wait(state).map_err(poisoned)?;
        };
        drop(state);
        // Given back even if `f` panics (poisoned then), so no waiter hangs.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut ledger)));
        if out.is_err() {
            ledger.poisoned = Some("a thread panicked while holding the ledger".into());
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.ledger = Some(ledger);
        drop(state);
        self.done.notify_all();
        match out {
            Ok(out) => Ok(out),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The ledger back, once no one appends any more.
    pub fn into_inner(self) -> Option<Ledger> {
        self.state.into_inner().ok().and_then(|s| s.ledger)
    }
}
