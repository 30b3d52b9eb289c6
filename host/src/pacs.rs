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
//! URL and the instance's three UIDs): no UID or other attribute of the
//! patient's data reaches the data directory. An instance is marked seen
//! once its outcome is final: the report stored, or the instance refused
//! for a reason that would not change on a retry. Before a report is sent,
//! an intent line names it (the report's own derived UID, no patient data):
//! after a crash between the store and the mark, the next start asks the
//! archive for that report instead of filing a second one. A failure that
//! may pass (the transport, the server, the sandbox) is retried on the next
//! polls, up to [`BridgeSettings::attempts`]; a report the archive did not
//! take is sent again, the same bytes. The archive refusing the bridge's
//! credentials stops the poll without marking anything.

pub mod dicomweb;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
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
    /// The archive refused the bridge's credentials: the poll stopped, and
    /// nothing was marked handled.
    #[error("the archive refused medguard's credentials (check --token-file): {0}")]
    Unauthorized(DicomWebError),
    /// The archive is down or overloaded (unreachable, a timeout, a server
    /// error): the poll stopped, and no instance was charged an attempt.
    #[error("the archive is not answering; the poll stopped and resumes next time: {0}")]
    Unavailable(DicomWebError),
    /// The sandbox cannot run the model at all: the poll stopped, and no
    /// instance was charged an attempt.
    #[error("the sandbox cannot run the model; the poll stopped: {0}")]
    Sandbox(String),
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
    /// In how many polls an instance (or its report) is tried before the
    /// bridge gives up on it, when the failure may pass.
    pub attempts: u32,
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
    /// next poll tries again (a failure that may pass) or not (gone, too
    /// large, or tried in [`BridgeSettings::attempts`] polls).
    NotRetrieved {
        /// One line.
        error: String,
        /// Whether the next poll tries again.
        will_retry: bool,
    },
    /// The sandbox failed on the instance in a way that is not a refusal
    /// of the input (it answered out of bounds) while it runs the model.
    NotClassified {
        /// One line.
        error: String,
        /// Whether the next poll tries again.
        will_retry: bool,
    },
    /// The report sent before a restart is not in the archive, or cannot be
    /// looked up, and the instance's attempts are spent. Final.
    GivenUp {
        /// One line.
        reason: String,
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
    verdict: Verdict,
    label: Option<String>,
    p_value: Option<f64>,
    ledger_index: u64,
}

/// What to do after a failed DICOMweb call about one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// It may be the instance's, and may pass: try again next poll, up to
    /// the attempts.
    Retry,
    /// The instance is the cause (too large): final.
    Final,
    /// The archive is down or overloaded: stop the poll, charge nothing.
    Outage,
    /// The credentials were refused: stop the poll, charge nothing.
    Unauthorized,
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
        if let Some(why) = Self::unusable(guard, model, &settings) {
            return Err(PacsError::Model(why));
        }
        let modalities = match &model.manifest().dicom {
            Some(profile) => profile.accepts.modality.clone(),
            None => Vec::new(),
        };
        Ok(Self {
            guard,
            model,
            client,
            modalities,
            settings,
            seen: SeenLog::open(&data_dir.join(SEEN_FILE))?,
            pending: BTreeMap::new(),
        })
    }

    /// Why `model` cannot feed a bridge, if it cannot: no DICOM profile, no
    /// sandbox, or no screening profile where screening is required.
    pub fn unusable(
        guard: &Guard,
        model: &AttestedModel,
        settings: &BridgeSettings,
    ) -> Option<String> {
        let manifest = model.manifest();
        if manifest.dicom.is_none() {
            return Some(format!(
                "{} {} takes no DICOM: its signed manifest has no dicom section",
                manifest.name, manifest.version
            ));
        }
        if guard.program().is_none() {
            return Some(GuardError::NoSandbox.to_string());
        }
        if manifest.screening.is_none() && !settings.options.allow_unscreened {
            return Some(format!(
                "{} has no screening profile; run `medguard calibrate` on it",
                manifest.name
            ));
        }
        None
    }

    /// One poll: reports sent before a crash are looked up, reports not yet
    /// stored are sent again, then every accepted modality is searched,
    /// page by page, and each instance not handled before is handled, one
    /// event each, until `stop` says so. A search that fails skips its
    /// modality for this poll (the first such error is returned at the end);
    /// refused credentials stop the poll at once.
    pub fn poll(
        &mut self,
        on_event: &mut dyn FnMut(&InstanceEvent),
        stop: &dyn Fn() -> bool,
    ) -> Result<PollSummary, PacsError> {
        let mut summary = PollSummary::default();
        // Once per poll: an archive that lists an instance twice (under
        // two modalities, on two pages) does not get it retried at once.
        let mut attempted = HashSet::new();
        self.resolve_intents(&mut attempted, on_event)?;
        self.retry_pending(on_event, stop)?;
        let mut failed = None;
        for modality in self.modalities.clone() {
            let mut offset = 0;
            // Until an empty page: an archive may cap a page below the
            // limit asked for.
            while offset < self.settings.max_scanned && !stop() {
                let page = match self.client.search_instances(
                    &modality,
                    &self.settings.filters,
                    offset,
                    self.settings.page_size,
                ) {
                    Ok(page) => page,
                    Err(e) if disposition(&e) == Disposition::Unauthorized => {
                        return Err(PacsError::Unauthorized(e));
                    }
                    Err(e) => {
                        failed.get_or_insert(PacsError::Search(e));
                        break;
                    }
                };
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
                if page.entries == 0 {
                    break;
                }
                offset += page.entries;
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    /// The instance's keyed HMAC: its name in `pacs-seen`.
    fn key(&self, instance: &InstanceRef) -> String {
        let mut named = b"medguard-pacs-instance\0".to_vec();
        for part in [
            self.client.base_url(),
            &instance.study,
            &instance.series,
            &instance.instance,
        ] {
            named.extend_from_slice(part.as_bytes());
            named.push(0);
        }
        self.guard.keyed_hash(&named)
    }

    /// Reports whose store was intended but not confirmed (a crash, or a
    /// stop, between the store and the mark): held by the archive, the
    /// instance is marked handled; not held, it is handled again (a failed
    /// store was charged when it failed); not known (the lookup failed, or
    /// the archive ignores the UID filter), it waits, an attempt charged.
    /// When the attempts are spent the instance is given up, with an event.
    fn resolve_intents(
        &mut self,
        attempted: &mut HashSet<String>,
        on_event: &mut dyn FnMut(&InstanceEvent),
    ) -> Result<(), PacsError> {
        for (key, uid) in self.seen.open_intents() {
            if self.pending.contains_key(&key) {
                continue;
            }
            let reason = match self.client.holds_instance("SR", &uid) {
                Ok(Some(true)) => {
                    self.seen.mark(&key)?;
                    continue;
                }
                Ok(Some(false)) if self.seen.failures(&key) < self.settings.attempts => {
                    self.seen.drop_intent(&key);
                    continue;
                }
                Ok(Some(false)) => format!(
                    "its report was not in the archive after {} attempts; given up",
                    self.settings.attempts
                ),
                Err(e) => match disposition(&e) {
                    Disposition::Unauthorized => return Err(PacsError::Unauthorized(e)),
                    Disposition::Outage => return Err(PacsError::Unavailable(e)),
                    _ => {
                        attempted.insert(key.clone());
                        if self.failed_once(&key)? {
                            continue;
                        }
                        format!(
                            "whether the archive holds its report could not be learnt: {e}; given up"
                        )
                    }
                },
                Ok(None) => {
                    attempted.insert(key.clone());
                    if self.failed_once(&key)? {
                        continue;
                    }
                    "the archive ignores a search by SOP Instance UID, so whether it holds the report is unknown; given up".to_owned()
                }
            };
            self.seen.mark(&key)?;
            on_event(&InstanceEvent {
                instance: key[..16.min(key.len())].to_owned(),
                outcome: Outcome::GivenUp { reason },
                timings: InstanceTimings::default(),
            });
        }
        Ok(())
    }

    /// Charges a failure that may pass (recorded, so a restart or the next
    /// `--once` run counts it too); whether the instance gets another poll
    /// (if not, it is marked handled).
    fn failed_once(&mut self, key: &str) -> Result<bool, PacsError> {
        if self.seen.fail(key)? < self.settings.attempts {
            return Ok(true);
        }
        self.seen.mark(key)?;
        Ok(false)
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
                let will_retry = match disposition(&e) {
                    Disposition::Unauthorized => return Err(PacsError::Unauthorized(e)),
                    Disposition::Outage => return Err(PacsError::Unavailable(e)),
                    Disposition::Retry => self.failed_once(&key)?,
                    Disposition::Final => {
                        self.seen.mark(&key)?;
                        false
                    }
                };
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
                // This instance's problem if the sandbox still runs the
                // model (retried, then given up); else every instance's:
                // the poll stops, charging nobody.
                Err(ClassifyError::Guard(GuardError::Sandbox(e))) => {
                    timings.classify = started.elapsed();
                    if let Err(why) = self.guard.check_model_runs(self.model)? {
                        return Err(PacsError::Sandbox(why));
                    }
                    let will_retry = self.failed_once(&key)?;
                    let error = format!("the sandbox failed on this instance: {e}");
                    return Ok(event(Outcome::NotClassified { error, will_retry }, timings));
                }
                Err(ClassifyError::Guard(e)) => return Err(e.into()),
                Err(e) => return Err(PacsError::Model(e.to_string())),
            };
        timings.classify = started.elapsed();
        // The archive sent what was asked for, or the report would describe
        // another image under this one's name.
        let sent = classified.dicom.as_ref().map(|d| &d.identity);
        if sent.is_none_or(|id| {
            (
                id.study_instance_uid.as_str(),
                id.series_instance_uid.as_str(),
                id.sop_instance_uid.as_str(),
            ) != (
                instance.study.as_str(),
                instance.series.as_str(),
                instance.instance.as_str(),
            )
        }) {
            // Counted, not final: a proxy's cache may have mixed them up.
            let will_retry = self.failed_once(&key)?;
            let error = "the archive sent another instance than the one asked for (its UIDs differ); no report filed".to_owned();
            return Ok(event(Outcome::NotRetrieved { error, will_retry }, timings));
        }
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
        self.seen.intend(&key, &uid)?;
        let pending = PendingReport {
            uid,
            bytes: sr,
            verdict: image.verdict,
            label: image.label.clone(),
            p_value: image.p_value,
            ledger_index: image.receipt.index,
        };
        let (outcome, store) = self.store(&key, pending)?;
        timings.store = store;
        Ok(event(outcome, timings))
    }

    /// Sends a report (again); marks the instance handled when the archive
    /// took it or the attempts are spent, else keeps it pending.
    fn store(
        &mut self,
        key: &str,
        pending: PendingReport,
    ) -> Result<(Outcome, Duration), PacsError> {
        let started = Instant::now();
        let stored = self.client.store_instance(&pending.bytes, &pending.uid);
        let took = started.elapsed();
        let outcome = match stored {
            Ok(()) => {
                self.seen.mark(key)?;
                Outcome::Reported {
                    verdict: pending.verdict,
                    label: pending.label,
                    p_value: pending.p_value,
                    ledger_index: pending.ledger_index,
                    report: pending.uid,
                }
            }
            Err(e) if disposition(&e) == Disposition::Unauthorized => {
                // Not an attempt: the report waits for working credentials.
                self.pending.insert(key.to_owned(), pending);
                return Err(PacsError::Unauthorized(e));
            }
            Err(e) if disposition(&e) == Disposition::Outage => {
                // Nor this: the archive may have stored it; the resend (or
                // the intent's lookup after a restart) settles it.
                self.pending.insert(key.to_owned(), pending);
                return Err(PacsError::Unavailable(e));
            }
            Err(e) => {
                let will_retry = self.seen.fail(key)? < self.settings.attempts;
                let outcome = Outcome::NotStored {
                    verdict: pending.verdict,
                    ledger_index: pending.ledger_index,
                    report: pending.uid.clone(),
                    error: e.to_string(),
                    will_retry,
                };
                if will_retry {
                    self.pending.insert(key.to_owned(), pending);
                } else {
                    self.seen.mark(key)?;
                }
                outcome
            }
        };
        Ok((outcome, took))
    }

    /// Sends again the reports the archive did not take.
    fn retry_pending(
        &mut self,
        on_event: &mut dyn FnMut(&InstanceEvent),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), PacsError> {
        let keys: Vec<String> = self.pending.keys().cloned().collect();
        for key in keys {
            if stop() {
                break;
            }
            let Some(pending) = self.pending.remove(&key) else {
                continue;
            };
            let (outcome, store) = self.store(&key, pending)?;
            on_event(&InstanceEvent {
                instance: key[..16.min(key.len())].to_owned(),
                outcome,
                timings: InstanceTimings {
                    store,
                    ..InstanceTimings::default()
                },
            });
        }
        Ok(())
    }
}

/// What a failed call means: refused credentials (401, 407) and an archive
/// that is down or overloaded (unreachable, a timeout, 408, 429, 5xx) stop
/// the poll and charge nobody; an instance over the input cap is final;
/// anything else (403 on one study, 404, a redirect, an answer that is not
/// DICOM, which may be a proxy's page, a store the archive declined) is
/// charged to the instance and tried again, up to the attempts.
fn disposition(e: &DicomWebError) -> Disposition {
    match e {
        DicomWebError::Status {
            status: 401 | 407, ..
        } => Disposition::Unauthorized,
        DicomWebError::Status {
            status: 408 | 429 | 500..,
            ..
        }
        | DicomWebError::Unreachable { .. }
        | DicomWebError::Timeout { .. } => Disposition::Outage,
        DicomWebError::TooLarge { .. } => Disposition::Final,
        _ => Disposition::Retry,
    }
}

/// The largest `pacs-seen` read: about 1.5 million reported instances
/// (an intent and a key line each).
const SEEN_MAX_BYTES: u64 = 256 << 20;

/// The append-only record of instances handled: one keyed HMAC per line
/// (`KEY`); before a report is sent an intent (`? KEY REPORT-UID`); for a
/// failure charged to an instance `! KEY`. Each line is synced before it
/// counts; a torn last line (a crash mid-write) is ignored. Mode 0600, never
/// opened through a symbolic link.
struct SeenLog {
    path: PathBuf,
    file: File,
    keys: HashSet<String>,
    /// Intended reports not yet confirmed: key to report UID.
    intents: BTreeMap<String, String>,
    /// Attempts charged to instances not yet handled.
    failures: HashMap<String, u32>,
}

impl SeenLog {
    fn open(path: &Path) -> Result<Self, PacsError> {
        use rustix::fs::{Mode, OFlags};
        let failed = |source| PacsError::Seen {
            path: path.to_owned(),
            source,
        };
        let flags = OFlags::RDWR
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NONBLOCK;
        let mut file = File::from(
            rustix::fs::open(path, flags, Mode::from_raw_mode(0o600))
                .map_err(|e| failed(std::io::Error::from(e)))?,
        );
        // An older file keeps no looser mode than a new one.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600))
            .map_err(|e| failed(std::io::Error::from(e)))?;
        let metadata = file.metadata().map_err(failed)?;
        if !metadata.is_file() {
            return Err(failed(std::io::Error::other("not a regular file")));
        }
        if metadata.len() > SEEN_MAX_BYTES {
            return Err(failed(std::io::Error::other(format!(
                "larger than {} MiB; move it aside to start a new record (instances would be reported again)",
                SEEN_MAX_BYTES >> 20
            ))));
        }
        let mut text = Vec::new();
        (&file)
            .take(SEEN_MAX_BYTES)
            .read_to_end(&mut text)
            .map_err(failed)?;
        let (mut keys, mut intents) = (HashSet::new(), BTreeMap::new());
        let mut failures: HashMap<String, u32> = HashMap::new();
        let hex = |k: &str| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit());
        for line in text.split(|&b| b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            match line.split(' ').collect::<Vec<_>>()[..] {
                [key] if hex(key) => {
                    intents.remove(key);
                    failures.remove(key);
                    keys.insert(key.to_owned());
                }
                ["!", key] if hex(key) && !keys.contains(key) => {
                    *failures.entry(key.to_owned()).or_default() += 1;
                }
                ["?", key, uid]
                    if hex(key) && medguard_dicom::sr::is_valid_uid(uid) && !keys.contains(key) =>
                {
                    intents.insert(key.to_owned(), uid.to_owned());
                }
                _ => {}
            }
        }
        // Start on a fresh line after a torn one.
        if text.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n").map_err(failed)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            keys,
            intents,
            failures,
        })
    }

    /// Attempts charged to `key` so far.
    fn failures(&self, key: &str) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }

    /// Charges `key` one attempt; the attempts charged so far.
    fn fail(&mut self, key: &str) -> Result<u32, PacsError> {
        self.append(&format!("! {key}\n"))?;
        let count = self.failures.entry(key.to_owned()).or_default();
        *count += 1;
        Ok(*count)
    }

    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key) || self.intents.contains_key(key)
    }

    /// The intents not yet confirmed: (key, report UID).
    fn open_intents(&self) -> Vec<(String, String)> {
        self.intents
            .iter()
            .map(|(k, u)| (k.clone(), u.clone()))
            .collect()
    }

    /// Forgets an intent whose report the archive does not hold: the
    /// instance is handled again.
    fn drop_intent(&mut self, key: &str) {
        self.intents.remove(key);
    }

    fn append(&mut self, line: &str) -> Result<(), PacsError> {
        let failed = |source| PacsError::Seen {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line.as_bytes()).map_err(failed)?;
        self.file.sync_data().map_err(failed)
    }

    /// Records that the report `uid` is about to be sent for `key`.
    fn intend(&mut self, key: &str, uid: &str) -> Result<(), PacsError> {
        self.append(&format!("? {key} {uid}\n"))?;
        self.intents.insert(key.to_owned(), uid.to_owned());
        Ok(())
    }

    /// Records `key` as handled.
    fn mark(&mut self, key: &str) -> Result<(), PacsError> {
        self.append(&format!("{key}\n"))?;
        self.intents.remove(key);
        self.failures.remove(key);
        self.keys.insert(key.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_seen_log_survives_a_torn_line_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEEN_FILE);
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        {
            let mut log = SeenLog::open(&path).unwrap();
            log.mark(&a).unwrap();
            log.intend(&b, "2.25.1").unwrap();
            log.intend(&c, "2.25.2").unwrap();
            log.mark(&c).unwrap();
        }
        // A crash mid-write leaves part of a line.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"dddd").unwrap();
        drop(file);
        let mut log = SeenLog::open(&path).unwrap();
        assert!(log.contains(&a) && log.contains(&c));
        assert!(!log.contains("dddd"));
        // b's report may or may not be in the archive: it is an open intent.
        assert_eq!(log.open_intents(), [(b.clone(), "2.25.1".to_owned())]);
        log.mark(&b).unwrap();
        let log = SeenLog::open(&path).unwrap();
        assert!(log.contains(&a) && log.contains(&b));
        assert!(log.open_intents().is_empty());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_seen_log_is_never_opened_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        let path = dir.path().join(SEEN_FILE);
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(SeenLog::open(&path).is_err());
    }

    #[test]
    fn credentials_and_outages_stop_the_poll_the_rest_is_charged_to_the_instance() {
        let what = "WADO-RS retrieve";
        let status = |status| disposition(&DicomWebError::Status { what, status });
        assert_eq!(status(401), Disposition::Unauthorized);
        assert_eq!(status(407), Disposition::Unauthorized);
        assert_eq!(status(403), Disposition::Retry);
        assert_eq!(status(404), Disposition::Retry);
        assert_eq!(status(503), Disposition::Outage);
        assert_eq!(status(429), Disposition::Outage);
        assert_eq!(status(302), Disposition::Retry);
        assert_eq!(
            disposition(&DicomWebError::Timeout { what, seconds: 1 }),
            Disposition::Outage
        );
        assert_eq!(
            disposition(&DicomWebError::TooLarge { what, limit: 1 }),
            Disposition::Final
        );
    }
}
