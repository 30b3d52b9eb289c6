//! A cache of compiled guests and prepared snapshots whose integrity is
//! protected by an HMAC.
//!
//! wasmtime maps a compiled artifact as executable code, so loading one
//! anyone could have written would be code execution. Each artifact is
//! therefore stored with HMAC-SHA256 under a per-installation key (created
//! once, mode 0600, in a 0700 directory) over what the entry is (the guest's
//! digest; for a snapshot also the model's and its load inputs'), the engine's
//! compatibility hash and the artifact. A file that fails the MAC is never
//! deserialised; the guest is compiled afresh and the entry rewritten.
//!
//! An entry is the artifact as wasmtime wrote it, then a format tag and the
//! MAC. Start-up checks the MAC over the open file, then has wasmtime map
//! that same open file (by `/proc/self/fd`): no copy of tens of megabytes
//! into fresh memory, and code pages come in as they are first run. Entries
//! are written beside and renamed into place, never changed where they lie.
//!
//! HMAC rather than directory permissions alone: it also catches bit rot and a
//! cache directory that was copied between machines or users.

use std::fs::{self, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use medguard_attest::Sha256Digest;
use sha2::Sha256;
use thiserror::Error;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Ends every entry, before its MAC: an entry is the artifact exactly as
/// wasmtime serialised it (so that wasmtime can map the file), then this,
/// then the tag.
const MAGIC: &[u8; 8] = b"MGCWASM2";
const KEY_FILE: &str = "cache.key";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 32;
const TRAILER_LEN: u64 = (MAGIC.len() + TAG_LEN) as u64;
/// The buffer the MAC reads a stored artifact through.
const MAC_CHUNK: usize = 1 << 20;
/// A compiled tract guest is tens of MB; anything far larger is not ours.
const ARTIFACT_MAX_BYTES: u64 = 1 << 30;

/// Why the cache could not be opened, read or written.
#[derive(Debug, Error)]
pub enum CacheError {
    /// A filesystem operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The directory or key file can be written by other users.
    #[error("{} is writable by group or others (mode {mode:o}); use a directory only you can write", path.display())]
    Permissions {
        /// The offending path.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The directory or key belongs to another user, who could have planted
    /// a key and artifacts that pass their MAC.
    #[error("{} belongs to uid {owner}, not to this user (uid {me}); use a cache directory of your own", path.display())]
    Owner {
        /// The offending path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective user.
        me: u32,
    },
    /// The key is not a regular file (a link, FIFO or device).
    #[error("cache key {} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// The key file is not 32 bytes.
    #[error("cache key {} is damaged; delete the cache directory to start afresh", .0.display())]
    BadKey(PathBuf),
    /// The artifact failed its integrity check: it was not written by this installation.
    #[error("compiled guest {} failed its integrity check and was not loaded", .0.display())]
    Tampered(PathBuf),
    /// The artifact passed its MAC but wasmtime refused it.
    #[error("compiled guest {} is incompatible with this engine: {why}", path.display())]
    Incompatible {
        /// The artifact.
        path: PathBuf,
        /// wasmtime's reason.
        why: String,
    },
}

/// What a cache entry is the compiled form of; the MAC covers it, so an
/// entry cannot be passed off as another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// The guest component with this SHA-256, as it is.
    Guest(Sha256Digest),
    /// The guest component with this SHA-256, instrumented so that
    /// snapshots can be taken of it.
    Instrumented(Sha256Digest),
    /// A snapshot of `guest` with a model already loaded in it.
    Snapshot {
        /// SHA-256 of the guest the snapshot was taken of.
        guest: Sha256Digest,
        /// SHA-256 of the model bytes loaded.
        model: Sha256Digest,
        /// The manifest's canonical digest
        /// ([`medguard_attest::AttestedModel::manifest_digest`]): the tensor
        /// spec and screening profile `load` was given come from it.
        manifest: Sha256Digest,
    },
}

/// An HMAC-protected directory of compiled guests.
#[derive(Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

impl CompiledCache {
    /// The default location: `$MEDGUARD_CACHE_DIR`, else `$XDG_CACHE_HOME/medguard`,
    /// else `$HOME/.cache/medguard`.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("MEDGUARD_CACHE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| crate::state::user_dir("XDG_CACHE_HOME", ".cache"))
    }

    /// Opens (creating if needed) the cache in `dir` and its key.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error("create cache directory", dir, e))?;
        check_private(dir)?;
        let key_path = dir.join(KEY_FILE);
        let key = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
        {
            Ok(mut f) => {
                let mut key = [0u8; KEY_LEN];
                getrandom::fill(&mut key).map_err(|e| CacheError::Io {
                    what: "draw a cache key for",
                    path: key_path.clone(),
                    source: io::Error::other(e.to_string()),
                })?;
                f.write_all(&key)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io_error("write cache key", &key_path, e))?;
                key
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // No links, no blocking open; owner and mode checked on the
                // opened file, so it cannot be swapped between check and read.
                let file =
                    crate::model_dir::open_regular(&key_path, crate::model_dir::Links::Refuse)
                        .map_err(|_| CacheError::NotAFile(key_path.clone()))?;
                let meta = file
                    .metadata()
                    .map_err(|e| io_error("inspect", &key_path, e))?;
                check_owner(&key_path, &meta, 0o077)?;
                let mut bytes = Vec::new();
                file.take(KEY_LEN as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| io_error("read cache key", &key_path, e))?;
                bytes
                    .try_into()
                    .map_err(|_| CacheError::BadKey(key_path.clone()))?
            }
            Err(e) => return Err(io_error("create cache key", &key_path, e)),
        };
        Ok(Self {
            dir: dir.to_owned(),
            key,
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `artifact`, compiled by `engine`, lives.
    pub fn entry_path(&self, engine: &Engine, artifact: &Artifact) -> PathBuf {
        let engine_hash = engine_hash(engine);
        self.dir.join(match artifact {
            Artifact::Guest(guest) => format!("guest-{guest}-{engine_hash:016x}.cwasm"),
            Artifact::Instrumented(guest) => {
                format!("instrumented-{guest}-{engine_hash:016x}.cwasm")
            }
            Artifact::Snapshot {
                guest,
                model,
                manifest,
            } => {
                // One name per (guest, model, manifest): hosts with other
                // guests sharing the directory keep their own entries.
                let mut key = Vec::with_capacity(96);
                for digest in [guest, model, manifest] {
                    key.extend_from_slice(digest.as_bytes());
                }
                let key = Sha256Digest::of(&key);
                format!("snapshot-{key}-{engine_hash:016x}.cwasm")
            }
        })
    }

    pub(super) fn load(
        &self,
        engine: &Engine,
        artifact: &Artifact,
    ) -> Result<Option<Component>, CacheError> {
        self.load_as(engine, artifact, true)
    }

    /// [`CompiledCache::load`]; `in_place: false` always takes the path of a
    /// system that cannot name an open file (read into memory).
    fn load_as(
        &self,
        engine: &Engine,
        artifact: &Artifact,
        in_place: bool,
    ) -> Result<Option<Component>, CacheError> {
        let engine_hash = engine_hash(engine);
        let path = self.entry_path(engine, artifact);
        let file = match crate::model_dir::open_regular(&path, crate::model_dir::Links::Refuse) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CacheError::Io {
                    what: "open",
                    path,
                    source,
                });
            }
        };
        let loaded = match self.verify(&file, &path, engine_hash, artifact, in_place)? {
            // The common case: wasmtime maps the verified file itself, so
            // start-up neither copies the artifact nor touches code it does
            // not run.
            Verified::InFile => map_verified(engine, &file),
            Verified::InMemory(bytes) => deserialize(engine, &bytes),
        };
        loaded
            .map(Some)
            .map_err(|why| CacheError::Incompatible { path, why })
    }

    /// Checks `file`'s trailer and MAC. Where the operating system can name
    /// the open file (`/proc/self/fd`), the MAC is taken over the file as it
    /// is stored and the artifact stays there; elsewhere the artifact is read
    /// into memory and the MAC taken over that copy.
    fn verify(
        &self,
        file: &fs::File,
        path: &Path,
        engine_hash: u64,
        artifact: &Artifact,
        in_place: bool,
    ) -> Result<Verified, CacheError> {
        use std::os::unix::fs::FileExt;
        let read_error = |source| CacheError::Io {
            what: "read",
            path: path.to_owned(),
            source,
        };
        let meta = file.metadata().map_err(|e| io_error("inspect", path, e))?;
        // This user's, private, and not also reachable under another name:
        // then only this user (who can read the key anyway) can change it.
        check_owner(path, &meta, 0o077)?;
        {
            use std::os::unix::fs::MetadataExt;
            if meta.nlink() != 1 {
                return Err(CacheError::Tampered(path.to_owned()));
            }
        }
        let size = meta.len();
        if !(TRAILER_LEN..=ARTIFACT_MAX_BYTES).contains(&size) {
            return Err(CacheError::Tampered(path.to_owned()));
        }
        let body = size - TRAILER_LEN;
        let mut trailer = [0u8; TRAILER_LEN as usize];
        match file.read_exact_at(&mut trailer, body) {
            Ok(()) => {}
            // Shorter than its length said a moment ago: someone is writing it.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(CacheError::Tampered(path.to_owned()));
            }
            Err(e) => return Err(read_error(e)),
        }
        let (magic, tag) = trailer.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(CacheError::Tampered(path.to_owned()));
        }
        let mut mac = self.mac(engine_hash, artifact);
        let verified = if in_place && maps_in_place(file) {
            // One small buffer, reused: the bytes pass through the CPU cache
            // once, and no fresh memory is faulted in for them.
            let mut buf = vec![0u8; MAC_CHUNK];
            let mut at = 0;
            while at < body {
                let want = usize::try_from((body - at).min(MAC_CHUNK as u64)).unwrap_or(MAC_CHUNK);
                match file.read_at(&mut buf[..want], at) {
                    Ok(0) => return Err(CacheError::Tampered(path.to_owned())),
                    Ok(n) => {
                        mac.update(&buf[..n]);
                        at += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(read_error(e)),
                }
            }
            Verified::InFile
        } else {
            // The MAC is computed while the file is read, on a second core
            // when there is one.
            let bytes = medguard_attest::read_hashing(
                io::Read::take(file, body),
                ARTIFACT_MAX_BYTES,
                body,
                &mut mac,
            )
            .map_err(read_error)?
            .filter(|bytes| bytes.len() as u64 == body)
            .ok_or_else(|| CacheError::Tampered(path.to_owned()))?;
            Verified::InMemory(bytes)
        };
        if mac.verify_slice(tag).is_err() {
            return Err(CacheError::Tampered(path.to_owned()));
        }
        Ok(verified)
    }

    pub(super) fn store(
        &self,
        engine: &Engine,
        artifact: &Artifact,
        component: &Component,
    ) -> Result<(), CacheError> {
        let engine_hash = engine_hash(engine);
        let path = self.entry_path(engine, artifact);
        let compiled = component.serialize().map_err(|e| CacheError::Io {
            what: "serialise compiled guest for",
            path: path.clone(),
            source: io::Error::other(format!("{e:#}")),
        })?;
        let mut mac = self.mac(engine_hash, artifact);
        mac.update(&compiled);
        let tag = mac.finalize().into_bytes();
        // Write beside, then rename: a reader never sees half an artifact.
        // Unique per process and call: two threads storing the same entry
        // never write one file.
        static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp{}-{}",
            std::process::id(),
            STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let write = || -> io::Result<()> {
            // A new file or nothing: never one planted at this name, nor
            // what a link there points to.
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The artifact first, as wasmtime maps it; what checks it after.
            f.write_all(&compiled)?;
            f.write_all(MAGIC)?;
            f.write_all(&tag)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            CacheError::Io {
                what: "write",
                path,
                source,
            }
        })
    }

    /// The MAC over what `artifact` is and the engine it was compiled by;
    /// the caller feeds it the compiled bytes.
    fn mac(&self, engine_hash: u64, artifact: &Artifact) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        match artifact {
            Artifact::Guest(guest) => {
                mac.update(b"medguard compiled guest v1\0");
                mac.update(guest.as_bytes());
            }
            Artifact::Instrumented(guest) => {
                mac.update(b"medguard instrumented guest v1\0");
                mac.update(guest.as_bytes());
            }
            Artifact::Snapshot {
                guest,
                model,
                manifest,
            } => {
                mac.update(b"medguard prepared snapshot v1\0");
                mac.update(guest.as_bytes());
                mac.update(model.as_bytes());
                mac.update(manifest.as_bytes());
            }
        }
        mac.update(&engine_hash.to_le_bytes());
        mac
    }
}

/// Identifies the engine's compiler settings and the entry format; an
/// artifact from other settings or an older format gets a different name and
/// is never tried.
fn engine_hash(engine: &Engine) -> u64 {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    MAGIC.hash(&mut h);
    h.finish()
}

/// Where the entry's bytes are once their MAC has been checked.
enum Verified {
    /// In the file, which stays open: wasmtime maps it by its open
    /// descriptor's name.
    InFile,
    /// Read into memory (no way to name the open file).
    InMemory(Vec<u8>),
}

/// Whether `file` can be mapped where it lies: it has a name to map it by,
/// and it is on a local filesystem. A network or FUSE filesystem can change
/// or drop a mapped file's pages under the process (a stale NFS handle is a
/// SIGBUS hours later), so there the artifact is read into memory instead.
fn maps_in_place(file: &fs::File) -> bool {
    open_file_path(file).is_some() && on_local_filesystem(file)
}

#[cfg(target_os = "linux")]
fn on_local_filesystem(file: &fs::File) -> bool {
    // ext2/3/4, XFS, Btrfs, tmpfs, overlayfs, ZFS, F2FS, bcachefs.
    const LOCAL: [u64; 8] = [
        0xEF53,
        0x5846_5342,
        0x9123_683E,
        0x0102_1994,
        0x794C_7630,
        0x2FC1_2FC1,
        0xF2F5_2010,
        0xCA45_1A4E,
    ];
    rustix::fs::fstatfs(file).is_ok_and(|fs| {
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let kind = fs.f_type as u64;
        LOCAL.contains(&kind)
    })
}

#[cfg(not(target_os = "linux"))]
fn on_local_filesystem(_file: &fs::File) -> bool {
    false
}

/// A path that opens the very file `file` has open, whatever has since
/// happened to its name: the file whose bytes were checked is the file that
/// is mapped, even if another is renamed over the entry meanwhile.
fn open_file_path(file: &fs::File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    path.exists().then_some(path)
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> CacheError {
    CacheError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The cache directory: not a link, owned by this user, writable by no one else.
fn check_private(path: &Path) -> Result<(), CacheError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_error("inspect", path, e))?;
    if meta.file_type().is_symlink() {
        return Err(CacheError::Permissions {
            path: path.to_owned(),
            mode: meta.permissions().mode() & 0o7777,
        });
    }
    check_owner(path, &meta, 0o022)
}

/// `meta` must belong to the effective user and have none of `forbidden` mode bits.
fn check_owner(path: &Path, meta: &fs::Metadata, forbidden: u32) -> Result<(), CacheError> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(CacheError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(CacheError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Has wasmtime map `file`, whose MAC was just checked, as the compiled
/// component.
#[allow(unsafe_code)]
fn map_verified(engine: &Engine, file: &fs::File) -> Result<Component, String> {
    let path = open_file_path(file).ok_or("the open cache entry has no name to map it by")?;
    // SAFETY: the path names the open file whose bytes passed the HMAC under
    // this installation's private key, so it is an artifact this
    // installation serialised; wasmtime checks the engine compatibility
    // header itself and finds every section through the ELF header, so the
    // trailer after the image is never read. wasmtime maps the file
    // privately and reads code from it as it runs, so its bytes must stay as
    // checked: entries are written beside and renamed into place, never
    // rewritten; `verify` refused it unless it is this user's, mode 0600 or
    // stricter, with one link, and on a local filesystem. Only this user (or
    // root) could still write it, and they could read the key and forge a
    // MAC as well.
    unsafe { Component::deserialize_file(engine, &path) }.map_err(|e| format!("{e:#}"))
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component, String> {
    // SAFETY: `artifact` passed the HMAC under this installation's private key,
    // so it is bytes this installation serialised from a compiled component;
    // wasmtime checks the engine compatibility header itself.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The smallest component: a header and nothing else.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn either_way_of_loading_takes_only_what_passes_the_mac() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(&tmp.path().join("cache")).unwrap();
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let artifact = Artifact::Guest(Sha256Digest::of(EMPTY_COMPONENT));
        let component = Component::new(&engine, EMPTY_COMPONENT).unwrap();
        cache.store(&engine, &artifact, &component).unwrap();
        let path = cache.entry_path(&engine, &artifact);
        let good = fs::read(&path).unwrap();
        let damaged: Vec<(&str, Vec<u8>)> = vec![
            ("a byte of the artifact", {
                let mut b = good.clone();
                b[10] ^= 1;
                b
            }),
            ("a byte of the tag", {
                let mut b = good.clone();
                let last = b.len() - 1;
                b[last] ^= 1;
                b
            }),
            ("the format", {
                let mut b = good.clone();
                let at = b.len() - TRAILER_LEN as usize;
                b[at..at + MAGIC.len()].copy_from_slice(b"MGCWASM1");
                b
            }),
            ("cut short", good[..good.len() - 1].to_vec()),
            (
                "shorter than a trailer",
                good[..TRAILER_LEN as usize - 1].to_vec(),
            ),
            ("empty", Vec::new()),
            ("a byte more", [good.as_slice(), &[0]].concat()),
        ];
        // Another entry's valid bytes under this entry's name.
        let other = Artifact::Instrumented(Sha256Digest::of(EMPTY_COMPONENT));
        cache.store(&engine, &other, &component).unwrap();
        let swapped = fs::read(cache.entry_path(&engine, &other)).unwrap();
        for in_place in [true, false] {
            fs::write(&path, &good).unwrap();
            assert!(
                cache
                    .load_as(&engine, &artifact, in_place)
                    .unwrap()
                    .is_some(),
                "in place: {in_place}"
            );
            // Good bytes, but others could change them: not loaded.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
            let err = cache.load_as(&engine, &artifact, in_place).err();
            assert!(
                matches!(err, Some(CacheError::Permissions { .. })),
                "{err:?}"
            );
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let link = tmp.path().join("elsewhere.cwasm");
            fs::hard_link(&path, &link).unwrap();
            let err = cache.load_as(&engine, &artifact, in_place).err();
            assert!(matches!(err, Some(CacheError::Tampered(_))), "{err:?}");
            fs::remove_file(&link).unwrap();
            for (what, bytes) in damaged.iter().chain([&("another entry", swapped.clone())]) {
                fs::write(&path, bytes).unwrap();
                let err = cache.load_as(&engine, &artifact, in_place).err();
                assert!(
                    matches!(err, Some(CacheError::Tampered(_))),
                    "{what}, in place: {in_place}: {err:?}"
                );
            }
        }
    }
}
