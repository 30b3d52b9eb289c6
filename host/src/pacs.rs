//! The PACS bridge behind `medguard pacs`: watches a DICOMweb archive and
//! files a structured report with every radiograph the model accepts.
//!
//! ```text
//! QIDO-RS  instances of each modality the signed profile accepts
//!   └─ not seen before ─► WADO-RS the Part 10 bytes (size-capped)
//!        ─► Guard::classify_dicom (decoded and screened in the sandbox,
//!           recorded in the ledger)
//!        ─► the IHE AI Results SR ─► STOW-RS ─► marked seen
//! ```
//!
//! What the bridge remembers, in `pacs-seen` in the data directory, is one
//! keyed HMAC per instance handled (the ledger's input key over the base
//! URL and the SOP Instance UID): no UID or other attribute of the
//! patient's data reaches the data directory. An instance is marked seen
//! once its outcome is final: the report stored, or the instance refused
//! for a reason that would not change on a retry. A report the archive did
//! not take is retried, the same report, on the next polls, up to
//! [`BridgeSettings::store_attempts`]; an instance that could not be
//! retrieved is tried again on the next poll.

pub mod dicomweb;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use medguard_attest::AttestedModel;
use medguard_ledger::entry::Verdict;
use thiserror::Error;

use crate::guard::{ClassifyError, ClassifyOptions, Guard, GuardError, fresh_seed};
use crate::report::structured_report;
use dicomweb::{DicomWebClient, DicomWebError, InstanceRef};

/// The file of instances handled, in the data directory.
pub const SEEN_FILE: &str = "pacs-seen";

/// Why the bridge stopped (as opposed to one instance's outcome).
#[derive(Debug, Error)]
pub enum PacsError {
    /// The archive could not be searched: nothing can be found this poll.
    #[error(transparent)]
    Search(DicomWebError),
    /// The guard failed (the ledger): nothing more can be recorded.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// The model cannot classify at all (unsigned, unscreened, no DICOM profile).
    #[error("{0}")]
    Model(String),
    /// The file of instances handled could not be read or written.
    #[error("the bridge's record of handled instances, {path}: {source}")]
    Seen {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// No seed for the screening noise.
    #[error("drawing a screening seed from the OS: {0}")]
    Seed(getrandom::Error),
}

/// How the bridge searches and classifies.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// QIDO-RS matching beyond the modality (keyword or tag, value), e.g.
    /// `("StudyDate", "20261201-")`.
    pub filters: Vec<(String, String)>,
    /// Instances asked for per QIDO-RS page.
    pub page_size: usize,
    /// At most this many search entries per modality per poll: an archive
    /// that pages forever cannot hold the bridge.
    pub max_scanned: usize,
    /// Screening options; the seed is drawn fresh for every instance
    /// unless `fixed_seed`.
    pub options: ClassifyOptions,
    /// Use `options.seed` for every instance (to reproduce a run).
    pub fixed_seed: bool,
    /// How many times a report is sent before the bridge gives up on it.
    pub store_attempts: u32,
}

/// One instance's outcome. The instance is named by [`InstanceEvent::instance`], a
/// pseudonym; nothing here is patient data.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Classified, recorded, and the report stored in the archive.
    Reported {
        /// The screening verdict.
        verdict: Verdict,
        /// The label, or `None` when withheld.
        label: Option<String>,
        /// The combined p-value.
        p_value: Option<f64>,
        /// The result's ledger index.
        ledger_index: u64,
        /// The report's SOP Instance UID (derived from the ledger entry).
        report: String,
    },
    /// Classified and recorded; the archive did not take the report.
    NotStored {
        /// The screening verdict.
        verdict: Verdict,
        /// The result's ledger index.
        ledger_index: u64,
        /// The report's SOP Instance UID.
        report: String,
        /// Why.
        error: String,
        /// Whether the next poll sends it again.
        will_retry: bool,
    },
    /// The instance got no result: not an image the model accepts, or
    /// refused by the sandbox (the reason says which). Final.
    Refused {
        /// One line.
        reason: String,
    },
    /// The instance could not be retrieved; `will_retry` says whether the
    /// next poll tries again (a transport failure) or not (the instance
    /// itself was the cause: too large, not DICOM, gone).
    NotRetrieved {
        /// One line.
        error: String,
        /// Whether the next poll tries again.
        will_retry: bool,
    },
}

/// Where one instance's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InstanceTimings {
    /// WADO-RS.
    pub retrieve: Duration,
    /// Decode, screen, classify, ledger commit.
    pub classify: Duration,
    /// Writing the report.
    pub report: Duration,
    /// STOW-RS.
    pub store: Duration,
}

impl InstanceTimings {
    /// The round trip: retrieve to stored.
    pub fn total(&self) -> Duration {
        self.retrieve + self.classify + self.report + self.store
    }
}

/// One instance handled.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceEvent {
    /// The instance's pseudonym: the first 16 hex digits of its keyed
    /// HMAC, stable across runs on one data directory.
    pub instance: String,
    /// What happened.
    pub outcome: Outcome,
    /// Where the time went.
    pub timings: InstanceTimings,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Search entries looked at.
    pub scanned: usize,
    /// Entries whose UIDs were missing or malformed (skipped).
    pub invalid: usize,
    /// Instances handled (an event each).
    pub handled: usize,
}

/// A report the archive has not taken yet.
struct PendingReport {
    uid: String,
    bytes: Vec<u8>,
    attempts: u32,
    verdict: Verdict,
    ledger_index: u64,
}

/// The bridge between one archive and one admitted model. See the module
/// documentation.
pub struct Bridge<'a> {
    guard: &'a Guard,
    model: &'a AttestedModel,
    client: &'a DicomWebClient,
    settings: BridgeSettings,
    modalities: Vec<String>,
    seen: SeenLog,
    pending: BTreeMap<String, PendingReport>,
}

impl std::fmt::Debug for Bridge<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bridge({:?}, {})",
            self.client,
            self.model.manifest().name
        )
    }
}

impl<'a> Bridge<'a> {
    /// A bridge filing `model`'s reports in the archive `client` speaks to,
    /// remembering what it handled in `data_dir`. The model must be signed,
    /// screened (unless allowed) and declare a DICOM profile.
    pub fn new(
        guard: &'a Guard,
        model: &'a AttestedModel,
        client: &'a DicomWebClient,
        data_dir: &Path,
        settings: BridgeSettings,
    ) -> Result<Self, PacsError> {
        let manifest = model.manifest();
        let profile = manifest.dicom.as_ref().ok_or_else(|| {
            PacsError::Model(format!(
                "{} {} takes no DICOM: its signed manifest has no dicom section",
                manifest.name, manifest.version
            ))
        })?;
        if guard.program().is_none() {
            return Err(GuardError::NoSandbox.into());
        }
        if manifest.screening.is_none() && !settings.options.allow_unscreened {
            return Err(PacsError::Model(format!(
                "{} has no screening profile; run `medguard calibrate` on it",
                manifest.name
            )));
        }
        Ok(Self {
            guard,
            model,
            client,
            modalities: profile.accepts.modality.clone(),
            settings,
            seen: SeenLog::open(&data_dir.join(SEEN_FILE))?,
            pending: BTreeMap::new(),
        })
    }

    /// One poll: reports not yet stored are sent again, then every
    /// accepted modality is searched and each instance not seen before is
    /// handled, one event each, until `stop` says so.
    pub fn poll(
        &mut self,
        on_event: &mut dyn FnMut(&InstanceEvent),
        stop: &dyn Fn() -> bool,
    ) -> Result<PollSummary, PacsError> {
        let mut summary = PollSummary::default();
        // Once per poll: an archive that lists an instance twice (under
        // two modalities, on two pages) does not get it retried at once.
        let mut attempted = HashSet::new();
        self.retry_pending(on_event)?;
        for modality in self.modalities.clone() {
            let mut offset = 0;
            while offset < self.settings.max_scanned && !stop() {
                let page = self
                    .client
                    .search_instances(
                        &modality,
                        &self.settings.filters,
                        offset,
                        self.settings.page_size,
                    )
                    .map_err(PacsError::Search)?;
                summary.scanned += page.entries;
                summary.invalid += page.invalid;
                for instance in &page.instances {
                    if stop() {
                        return Ok(summary);
                    }
                    let key = self.key(instance);
                    if self.seen.contains(&key)
                        || self.pending.contains_key(&key)
                        || !attempted.insert(key.clone())
                    {
                        continue;
                    }
                    let event = self.handle(instance, key)?;
                    summary.handled += 1;
                    on_event(&event);
                }
                if page.entries < self.settings.page_size {
                    break;
                }
                offset += page.entries;
            }
        }
        Ok(summary)
    }

    /// The instance's keyed HMAC: its name in `pacs-seen`.
    fn key(&self, instance: &InstanceRef) -> String {
        let mut named = b"medguard-pacs-instance\0".to_vec();
        named.extend_from_slice(self.client.base_url().as_bytes());
        named.push(0);
        named.extend_from_slice(instance.instance.as_bytes());
        self.guard.keyed_hash(&named)
    }

    fn handle(&mut self, instance: &InstanceRef, key: String) -> Result<InstanceEvent, PacsError> {
        let mut timings = InstanceTimings::default();
        let pseudonym = key[..16.min(key.len())].to_owned();
        let event = |outcome, timings| InstanceEvent {
            instance: pseudonym.clone(),
            outcome,
            timings,
        };
        let started = Instant::now();
        let retrieved = self.client.retrieve_instance(instance);
        timings.retrieve = started.elapsed();
        let bytes = match retrieved {
            Ok(bytes) => bytes,
            Err(e) => {
                let will_retry = retryable(&e);
                if !will_retry {
                    self.seen.mark(&key)?;
                }
                let outcome = Outcome::NotRetrieved {
                    error: e.to_string(),
                    will_retry,
                };
                return Ok(event(outcome, timings));
            }
        };
        let mut options = self.settings.options;
        if !self.settings.fixed_seed {
            options.seed = fresh_seed().map_err(PacsError::Seed)?;
        }
        let started = Instant::now();
        let classified =
            match self
                .guard
                .classify_dicom(self.model, &bytes, options, Some("pacs bridge"))
            {
                Ok(classified) => classified,
                Err(ClassifyError::Refused(why)) => {
                    timings.classify = started.elapsed();
                    self.seen.mark(&key)?;
                    let reason = why.to_string();
                    return Ok(event(Outcome::Refused { reason }, timings));
                }
                Err(ClassifyError::Guard(e)) => return Err(e.into()),
                Err(e) => return Err(PacsError::Model(e.to_string())),
            };
        timings.classify = started.elapsed();
        let Some(image) = classified.images.first() else {
            return Err(PacsError::Model(
                "the guard returned no result for a one-image input".into(),
            ));
        };
        let guest = self
            .guard
            .program()
            .map(|p| p.digest())
            .ok_or(GuardError::NoSandbox)?;
        let started = Instant::now();
        let report = structured_report(self.model, &guest, &classified, image);
        timings.report = started.elapsed();
        let (uid, sr) = match report {
            Some(Ok(report)) => report,
            // The result stands in the ledger; no report can say it.
            Some(Err(e)) => {
                self.seen.mark(&key)?;
                let reason = format!("no structured report could be written: {e}");
                return Ok(event(Outcome::Refused { reason }, timings));
            }
            None => {
                return Err(PacsError::Model(
                    "a DICOM result without a DICOM profile".into(),
                ));
            }
        };
        let started = Instant::now();
        let stored = self.client.store_instance(&sr, &uid);
        timings.store = started.elapsed();
        let (verdict, ledger_index) = (image.verdict, image.receipt.index);
        let outcome = match stored {
            Ok(()) => {
                self.seen.mark(&key)?;
                Outcome::Reported {
                    verdict,
                    label: image.label.clone(),
                    p_value: image.p_value,
                    ledger_index,
                    report: uid,
                }
            }
            Err(e) => {
                let will_retry = self.settings.store_attempts > 1;
                if will_retry {
                    self.pending.insert(
                        key.clone(),
                        PendingReport {
                            uid: uid.clone(),
                            bytes: sr,
                            attempts: 1,
                            verdict,
                            ledger_index,
                        },
                    );
                } else {
                    self.seen.mark(&key)?;
                }
                Outcome::NotStored {
                    verdict,
                    ledger_index,
                    report: uid,
                    error: e.to_string(),
                    will_retry,
                }
            }
        };
        Ok(event(outcome, timings))
    }

    /// Sends again the reports the archive did not take.
    fn retry_pending(&mut self, on_event: &mut dyn FnMut(&InstanceEvent)) -> Result<(), PacsError> {
        let keys: Vec<String> = self.pending.keys().cloned().collect();
        for key in keys {
            let Some(mut pending) = self.pending.remove(&key) else {
                continue;
            };
            let started = Instant::now();
            let stored = self.client.store_instance(&pending.bytes, &pending.uid);
            let timings = InstanceTimings {
                store: started.elapsed(),
                ..InstanceTimings::default()
            };
            pending.attempts += 1;
            let outcome = match stored {
                Ok(()) => {
                    self.seen.mark(&key)?;
                    Outcome::Reported {
                        verdict: pending.verdict,
                        label: None,
                        p_value: None,
                        ledger_index: pending.ledger_index,
                        report: pending.uid.clone(),
                    }
                }
                Err(e) => {
                    let will_retry = pending.attempts < self.settings.store_attempts;
                    let outcome = Outcome::NotStored {
                        verdict: pending.verdict,
                        ledger_index: pending.ledger_index,
                        report: pending.uid.clone(),
                        error: e.to_string(),
                        will_retry,
                    };
                    if will_retry {
                        self.pending.insert(key.clone(), pending);
                    } else {
                        self.seen.mark(&key)?;
                    }
                    outcome
                }
            };
            on_event(&InstanceEvent {
                instance: key[..16.min(key.len())].to_owned(),
                outcome,
                timings,
            });
        }
        Ok(())
    }
}

/// Whether a failed retrieval may succeed later: the transport or the
/// server failed, not the instance.
fn retryable(e: &DicomWebError) -> bool {
    match e {
        DicomWebError::Unreachable { .. } | DicomWebError::Timeout { .. } => true,
        DicomWebError::Status { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// The append-only record of instances handled: one keyed HMAC per line,
/// each line synced before the instance counts as handled. A torn last
/// line (a crash mid-write) is ignored: that instance is handled again.
struct SeenLog {
    path: PathBuf,
    file: File,
    keys: HashSet<String>,
}

impl SeenLog {
    fn open(path: &Path) -> Result<Self, PacsError> {
        let failed = |source| PacsError::Seen {
            path: path.to_owned(),
            source,
        };
        let mut keys = HashSet::new();
        match File::open(path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line.map_err(failed)?;
                    if line.len() == 64 && line.bytes().all(|b| b.is_ascii_hexdigit()) {
                        keys.insert(line);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(failed)?;
        // Start on a fresh line after a torn one.
        if std::fs::metadata(path).map_err(failed)?.len() > 0 && !ends_with_newline(path) {
            file.write_all(b"\n").map_err(failed)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            keys,
        })
    }

    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    fn mark(&mut self, key: &str) -> Result<(), PacsError> {
        let failed = |source| PacsError::Seen {
            path: self.path.clone(),
            source,
        };
        self.file
            .write_all(format!("{key}\n").as_bytes())
            .map_err(failed)?;
        self.file.sync_data().map_err(failed)?;
        self.keys.insert(key.to_owned());
        Ok(())
    }
}

fn ends_with_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut last = [0u8; 1];
    file.seek(SeekFrom::End(-1)).is_ok() && file.read_exact(&mut last).is_ok() && last[0] == b'\n'
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_seen_log_survives_a_torn_line_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEEN_FILE);
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        {
            let mut log = SeenLog::open(&path).unwrap();
            log.mark(&a).unwrap();
        }
        // A crash mid-write leaves part of a line.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"cccc").unwrap();
        drop(file);
        let mut log = SeenLog::open(&path).unwrap();
        assert!(log.contains(&a));
        assert!(!log.contains("cccc"));
        log.mark(&b).unwrap();
        let log = SeenLog::open(&path).unwrap();
        assert!(log.contains(&a) && log.contains(&b));
    }

    #[test]
    fn only_transport_and_server_failures_are_retried() {
        let what = "WADO-RS retrieve";
        assert!(retryable(&DicomWebError::Timeout { what, seconds: 1 }));
        assert!(retryable(&DicomWebError::Status { what, status: 503 }));
        assert!(!retryable(&DicomWebError::Status { what, status: 404 }));
        assert!(!retryable(&DicomWebError::TooLarge { what, limit: 1 }));
    }
}
