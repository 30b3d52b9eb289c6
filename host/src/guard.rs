//! The guard: the one pipeline every front end (CLI, server, PACS bridge,
//! embedding) runs: admit a signed model under the trust policy, screen and
//! classify an input in a fresh sandbox, record the outcome in the ledger,
//! return it with its receipt.
//!
//! ```text
//! model dir ──admit──► Admitted (AttestedModel + ledger entry)
//! input bytes ──decode (header dims vs manifest)──► Batch
//!            ──fresh Session (store + instance)──► screened images
//!            ──verdict, withheld prediction──► ledger entries (one group commit)
//!            ──► Classified { results with receipts }
//! ```
//!
//! A [`Guard`] is `Send + Sync`: share one per process (an `Arc` in a
//! server). Every `classify` gets its own sandbox session; the ledger is one
//! [`GroupCommit`], so concurrent requests share fsyncs. Admission takes the
//! ledger exclusively while it checks the rollback marks and records the
//! outcome, so two admissions cannot race past each other's marks.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use medguard_attest::{AttestedModel, Provenance, Sha256Digest, TrustPolicy};
use medguard_certify::{Certificate, Certifier};
use medguard_ledger::entry::{InferenceFailure, InputKey, TEXT_MAX_BYTES, bounded};
pub use medguard_ledger::entry::{ScreeningPolicy, Verdict};
use medguard_ledger::{Entry, GroupCommit, Ledger, LedgerError};
pub use medguard_ledger::{NoteVerifier, Receipt};
use medguard_screen::{PixelStatistics, StatisticReport};
use thiserror::Error;

use crate::admission::{AdmissionError, admit_directory};
use crate::input::{self, InputError};
use crate::sandbox::{
    GuestFailure, GuestProgram, Preparation, SandboxError, ScreenOptions, ScreenedImage,
};

/// A trust policy as loaded, with its digest (text and keys) and a name for
/// messages (its path, or "the built-in demo policy").
#[derive(Debug, Clone)]
pub struct NamedPolicy {
    /// The parsed policy.
    pub policy: TrustPolicy,
    /// [`TrustPolicy::sha256`], what the ledger records.
    pub sha256: Sha256Digest,
    /// How to name it to a person.
    pub name: String,
}

/// Why the guard could not do its work at all (as opposed to refusing a
/// model or an input, which are answers).
#[derive(Debug, Error)]
pub enum GuardError {
    /// The ledger failed; nothing more can be recorded, so nothing more is done.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The trust policy pins another ledger than the one in the data directory.
    #[error(
        "the trust policy pins the ledger {pinned}, but the data directory holds {actual}: the ledger was replaced or recreated. Restore the pinned ledger, or change ledger_key in the policy on purpose"
    )]
    LedgerKey {
        /// The key the policy names.
        pinned: String,
        /// The key of the ledger found.
        actual: String,
    },
    /// The guard was opened for admission only and has no sandbox.
    #[error("this guard was opened without a sandbox; it can admit models but not classify")]
    NoSandbox,
    /// The operating system gave no randomness for a certified model's
    /// smoothing noise.
    #[error("no randomness from the operating system for the smoothing noise: {0}")]
    Entropy(String),
    /// The sandbox failed in a way that is not about one input (the model
    /// cannot be loaded at all).
    #[error("loading the model in the sandbox")]
    Sandbox(#[source] SandboxError),
}

/// The outcome of admitting a model directory: both are answers, recorded.
#[derive(Debug)]
pub enum Admission {
    /// Admitted under the policy: the model and the entry that records it.
    Admitted {
        /// The model, ready for the sandbox.
        model: Box<AttestedModel>,
        /// Its `model-admitted` entry's receipt.
        receipt: Receipt,
    },
    /// Refused: the reason (one line) and the `model-refused` entry's receipt.
    Refused {
        /// The error, with its full source chain.
        error: Box<AdmissionError>,
        /// The entry's receipt.
        receipt: Receipt,
    },
}

/// Why one input got no result. Every case is about this input only; the
/// next one is unaffected.
#[derive(Debug, Error)]
pub enum InputRefusal {
    /// The bytes are not an image the model takes (format, dimensions, size).
    #[error(transparent)]
    Decode(#[from] InputError),
    /// The guest refused the values (shape, range, non-finite).
    #[error("{0}")]
    Guest(String),
    /// The sandbox trapped, ran out of time or memory; its session ended.
    #[error(transparent)]
    Sandbox(SandboxError),
    /// The DICOM file gave no image the model takes (decoded in the
    /// sandbox): not DICOM, an unsupported transfer syntax, an image the
    /// manifest does not accept, or malformed.
    #[error(transparent)]
    Dicom(#[from] medguard_dicom::DicomError),
}

/// Why `classify` produced no result.
#[derive(Debug, Error)]
pub enum ClassifyError {
    /// This input was refused; the guard goes on.
    #[error(transparent)]
    Refused(#[from] InputRefusal),
    /// The model was not admitted under a trust policy (a manifest someone
    /// vouched for, as the vendor tools load them): the guard runs only
    /// signed models.
    #[error("{model} was not admitted under the trust policy; the guard runs only signed models")]
    Unsigned {
        /// The model's name.
        model: String,
    },
    /// The model has no screening profile and unscreened use was not allowed.
    #[error(
        "{model} has no screening profile; run `medguard calibrate` on it (or allow unscreened use explicitly)"
    )]
    Unscreened {
        /// The model's name.
        model: String,
    },
    /// The guard itself failed (the ledger): stop.
    #[error(transparent)]
    Guard(#[from] GuardError),
}

/// How one classification runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyOptions {
    /// The seed of the guest's noise draws; callers draw it fresh per
    /// request ([`fresh_seed`]) and pass it to reproduce a verdict.
    pub seed: u64,
    /// Withhold rejected predictions, or return them with the verdict.
    pub policy: ScreeningPolicy,
    /// Run a model without a screening profile (vendor use only).
    pub allow_unscreened: bool,
}

/// A seed from the OS for one request's noise draws.
pub fn fresh_seed() -> Result<u64, getrandom::Error> {
    getrandom::u64()
}

/// One image's result, recorded.
#[derive(Debug, Clone)]
pub struct ImageResult {
    /// The verdict: screening's, made a flag when a certificate does not
    /// cover the label.
    pub verdict: Verdict,
    /// Screening's own verdict, before any certificate: what the server's
    /// drift alarm counts (its flag rate is calibrated for screening alone).
    pub screening_verdict: Verdict,
    /// Combined p-value; none when unscreened.
    pub p_value: Option<f64>,
    /// Each statistic's value and p-value; empty when unscreened.
    pub statistics: Vec<StatisticReport>,
    /// The predicted label; none when withheld.
    pub label: Option<String>,
    /// Probabilities by label; none when withheld.
    pub probabilities: Option<BTreeMap<String, f32>>,
    /// The model's logits in label order; none when withheld or when the
    /// model runs unscreened (vendor use). Not recorded in the ledger.
    pub logits: Option<Vec<f32>>,
    /// Values off the source's integer grid (format integrity, reported only).
    pub off_grid: u32,
    /// The robustness certificate, for a model whose manifest asks for
    /// certified predictions.
    pub certificate: Option<Certificate>,
    /// The intensity and contrast of the values the guest screened, for the
    /// server's drift alarm (never part of the verdict, never recorded).
    pub pixels: PixelStatistics,
    /// The entry as recorded, and its receipt.
    pub receipt: Receipt,
}

/// The results for one input (one image, or a batch of them).
#[derive(Debug, Clone)]
pub struct Classified {
    /// One per image, in order.
    pub images: Vec<ImageResult>,
    /// The bit depth the values came from (0 for floats or colour).
    pub source_bits: u8,
    /// The seed the guest used.
    pub seed: u64,
    /// Where the time went.
    pub timings: Timings,
    /// For a DICOM input: what the sandbox decoded, with the identity the
    /// structured report needs (patient data: never recorded or logged).
    pub dicom: Option<DicomSource>,
}

/// What a DICOM input was, as the sandbox decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomSource {
    /// Image facts (no patient data).
    pub image: medguard_dicom::SourceImage,
    /// Identity attributes for the report (patient data).
    pub identity: medguard_dicom::SourceIdentity,
}

/// Where one classification's time went (for `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Instantiating the fresh sandbox and loading the model into it.
    pub sandbox_start: std::time::Duration,
    /// Screening and inference in the guest.
    pub compute: std::time::Duration,
    /// Appending the entries to the ledger (durably) and getting receipts.
    pub ledger_commit: std::time::Duration,
}

/// How a model's sessions start, once [`Guard::prepare`] readied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// From its prepared snapshot, with the model already loaded.
    Prepared(Preparation),
    /// By loading the model; the snapshot could not be taken, for this reason.
    LoadedPerSession(String),
}

/// The pipeline. See the module documentation.
pub struct Guard {
    program: Option<GuestProgram>,
    ledger: GroupCommit,
    input_key: InputKey,
    policy: NamedPolicy,
    origin: String,
    verifier: NoteVerifier,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Guard({}, policy {})", self.origin, self.policy.name)
    }
}

impl Guard {
    /// Opens the guard on the data directory `data_dir` (its ledger is
    /// created on first use) under `policy`. It admits models at once; it
    /// classifies once a sandbox is attached ([`Guard::with_sandbox`]), so a
    /// caller can refuse a model before any guest is started.
    pub fn open(data_dir: &Path, policy: NamedPolicy) -> Result<Self, GuardError> {
        let ledger = Ledger::open(data_dir)?;
        if let Some(pinned) = policy.policy.ledger_key() {
            let actual = ledger.verifier().to_string();
            if pinned != actual {
                return Err(GuardError::LedgerKey {
                    pinned: pinned.to_owned(),
                    actual,
                });
            }
        }
        Ok(Self {
            program: None,
            input_key: ledger.input_key(),
            origin: ledger.origin().to_owned(),
            verifier: ledger.verifier(),
            ledger: GroupCommit::new(ledger),
            policy,
        })
    }

    /// The guard running inputs in `program`.
    pub fn with_sandbox(mut self, program: GuestProgram) -> Self {
        self.program = Some(program);
        self
    }

    /// The policy models are admitted under.
    pub fn policy(&self) -> &NamedPolicy {
        &self.policy
    }

    /// The sandbox, if this guard has one.
    pub fn program(&self) -> Option<&GuestProgram> {
        self.program.as_ref()
    }

    /// Records a drift alarm for `model` (the server's monitor raised it);
    /// its receipt.
    pub fn record_drift(
        &self,
        model: &AttestedModel,
        alarm: &crate::drift::DriftAlarm,
    ) -> Result<Receipt, GuardError> {
        let m = model.manifest();
        let entry = Entry::DriftAlarm {
            time: Timestamp::now(),
            model: m.name.clone(),
            version: m.version.clone(),
            model_sha256: model.model_digest(),
            window: alarm.window as u64,
            flagged: alarm.flagged as u64,
            threshold: alarm.threshold as u64,
            expected_flag_rate: alarm.expected_rate,
        };
        self.record_one(entry)
    }

    /// Records an input drift alarm for `model` (the server's pixel monitor
    /// raised it); its receipt.
    pub fn record_input_drift(
        &self,
        model: &AttestedModel,
        alarm: &crate::drift::PixelDriftAlarm,
    ) -> Result<Receipt, GuardError> {
        let m = model.manifest();
        self.record_one(Entry::InputDriftAlarm {
            time: Timestamp::now(),
            model: m.name.clone(),
            version: m.version.clone(),
            model_sha256: model.model_digest(),
            statistic: alarm.statistic.name().into(),
            window: alarm.window as u64,
            mean_rank: alarm.mean_rank,
            threshold: alarm.threshold,
        })
    }

    fn record_one(&self, entry: Entry) -> Result<Receipt, GuardError> {
        let mut receipts = self.ledger.append_all(vec![entry])?;
        receipts.pop().ok_or_else(|| {
            GuardError::Ledger(LedgerError::Corrupt(
                "no receipt for an appended entry".into(),
            ))
        })
    }

    /// The ledger's entry at `index`, as recorded.
    pub fn entry(&self, index: u64) -> Result<Entry, GuardError> {
        let bytes = self.ledger.exclusive(|l| l.read_entry(index))??;
        serde_json::from_slice(&bytes).map_err(|e| {
            GuardError::Ledger(LedgerError::Corrupt(format!(
                "entry {index} is not a ledger entry: {e}"
            )))
        })
    }

    /// The ledger's latest checkpoint: (size, signed note).
    pub fn checkpoint(&self) -> Result<(u64, String), GuardError> {
        Ok(self.ledger.exclusive(|l| {
            let (cp, note) = l.checkpoint();
            (cp.size, note.to_owned())
        })?)
    }

    /// The ledger's origin (its name in checkpoints).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The keyed HMAC-SHA256 (hex) of `data` under the ledger's input key,
    /// the way the ledger names inputs: a stable name for patient data that
    /// reveals nothing without the deployment's secret.
    pub fn keyed_hash(&self, data: &[u8]) -> String {
        self.input_key.hmac(data)
    }

    /// The key that verifies the ledger's checkpoints and so every receipt.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// Admits the signed model directory `dir`, in this order:
    /// 1. the directory is admitted under the policy and a snapshot of the
    ///    rollback marks (`admission.rs`: signature, manifest, names,
    ///    bytes), without holding the ledger: reading a large or slow model
    ///    must not stall every other request's commit;
    /// 2. the ledger is taken exclusively; if this model's mark moved since
    ///    the snapshot (another admission in between), step 1 is redone
    ///    under the lock, so no two admissions race past each other's marks
    ///    (marks only rise, so a refusal stays one);
    /// 3. a policy other than the one in force is recorded as a change;
    /// 4. the admission or the refusal is recorded, with the reason bounded
    ///    and no host path in it;
    /// 5. the answer carries the entry's receipt.
    pub fn admit(&self, dir: &Path) -> Result<Admission, GuardError> {
        let policy = &self.policy;
        let snapshot = self.ledger.exclusive(|ledger| ledger.view().clone())?;
        let time = Timestamp::now();
        let first = admit_directory(
            dir,
            &policy.policy,
            |name| snapshot.high_water.get(name).cloned(),
            time,
        );
        let outcome = self.ledger.exclusive(|ledger| {
            let view = ledger.view().clone();
            let mut entries = Vec::new();
            if view.policy != Some(policy.sha256) {
                entries.push(Entry::PolicyChanged {
                    time,
                    from: view.policy,
                    to: policy.sha256,
                });
            }
            let moved = first.as_ref().is_ok_and(|m| {
                let name = &m.manifest().name;
                view.high_water.get(name) != snapshot.high_water.get(name)
            });
            let outcome = if moved {
                admit_directory(
                    dir,
                    &policy.policy,
                    |name| view.high_water.get(name).cloned(),
                    time,
                )
            } else {
                first
            };
            entries.push(match &outcome {
                Ok(model) => admitted_entry(model, policy.sha256, time),
                Err(e) => refused_entry(dir, e, policy.sha256, time),
            });
            let receipt = ledger.append(&entries)?.pop();
            Ok::<_, LedgerError>((outcome, receipt))
        })??;
        let (outcome, receipt) = outcome;
        let receipt = receipt.ok_or_else(|| {
            GuardError::Ledger(LedgerError::Entry("no receipt for the admission".into()))
        })?;
        Ok(match outcome {
            Ok(model) => Admission::Admitted {
                model: Box::new(model),
                receipt,
            },
            Err(error) => Admission::Refused {
                error: Box::new(error),
                receipt,
            },
        })
    }

    /// Loads `model` in a sandbox once, before any input: the guest refusing
    /// the model (its tensors contradict the manifest) is `Ok(Err(reason))`,
    /// a refusal; anything else that stops it is an error.
    pub fn check_model_runs(
        &self,
        model: &AttestedModel,
    ) -> Result<Result<(), String>, GuardError> {
        let program = self.program.as_ref().ok_or(GuardError::NoSandbox)?;
        match program.session(model) {
            Ok(_) => Ok(Ok(())),
            Err(SandboxError::Guest(GuestFailure::InvalidModel(why))) => Ok(Err(format!(
                "the guest cannot run the attested model: {why}"
            ))),
            Err(e) => Err(GuardError::Sandbox(e)),
        }
    }

    /// Readies `model` for requests: [`Guard::check_model_runs`], and the
    /// loaded state kept as the snapshot every later session of the model
    /// starts from ([`GuestProgram::prepare`]). A snapshot that cannot be
    /// taken is not a refusal: the model is then loaded in each session.
    pub fn prepare(&self, model: &AttestedModel) -> Result<Result<Readiness, String>, GuardError> {
        let program = self.program.as_ref().ok_or(GuardError::NoSandbox)?;
        match program.prepare(model) {
            Ok(preparation) => Ok(Ok(Readiness::Prepared(preparation))),
            Err(SandboxError::Guest(GuestFailure::InvalidModel(why))) => Ok(Err(format!(
                "the guest cannot run the attested model: {why}"
            ))),
            Err(SandboxError::Snapshot(why)) => Ok(self
                .check_model_runs(model)?
                .map(|()| Readiness::LoadedPerSession(format!("{why}")))),
            Err(e) => Err(GuardError::Sandbox(e)),
        }
    }

    /// Screens and classifies one input (PNG or `.npy` bytes, one to
    /// `max_batch` images) with `model`, in a sandbox session of its own,
    /// and records every image's outcome before returning it:
    /// 1. a model not admitted under the policy is refused, and one without
    ///    a screening profile unless unscreened use is allowed;
    /// 2. the header's dimensions are checked against the manifest before
    ///    any pixel is allocated, then the pixels decoded;
    /// 3. a fresh session (store, instance, memory) screens and classifies
    ///    them in one guest call; under `enforce` the guest withholds a
    ///    rejected prediction;
    /// 4. each image's entry names the input only by its keyed HMAC;
    /// 5. all entries go to the ledger in one group commit, and only then
    ///    are results returned, each with its receipt.
    pub fn classify(
        &self,
        model: &AttestedModel,
        bytes: &[u8],
        options: ClassifyOptions,
    ) -> Result<Classified, ClassifyError> {
        self.check_classifiable(model, options)?;
        // 2.
        let manifest = model.manifest();
        if !input::has_image_magic(bytes) && medguard_dicom::is_part10(bytes) {
            let (batch, source) = self.decode_dicom(model, bytes, options, None)?;
            let mut classified = self.screen_and_record(model, &batch, options, None)?;
            classified.dicom = Some(source);
            return Ok(classified);
        }
        let batch = input::decode(bytes, &manifest.input, manifest.max_batch)
            .map_err(InputRefusal::Decode)?;
        self.screen_and_record(model, &batch, options, None)
    }

    /// [`Guard::classify`] for a DICOM Part 10 file, on behalf of `caller`:
    /// decoded in a sandbox of its own ([`Guard::decode_dicom`]), then
    /// screened and classified like any image. The result carries what was
    /// decoded, for the structured report.
    pub fn classify_dicom(
        &self,
        model: &AttestedModel,
        bytes: &[u8],
        options: ClassifyOptions,
        caller: Option<&str>,
    ) -> Result<Classified, ClassifyError> {
        self.check_classifiable(model, options)?;
        let (batch, source) = self.decode_dicom(model, bytes, options, caller)?;
        let mut classified = self.screen_and_record(model, &batch, options, caller)?;
        classified.dicom = Some(source);
        Ok(classified)
    }

    /// Decodes a DICOM file in a sandbox of its own, as the manifest's DICOM
    /// profile says, into a one-image batch. A file that stops the sandbox
    /// (a decoder panic, the memory cap, the deadline) is refused and, like
    /// any inference that produced nothing, recorded with its keyed hash,
    /// `options.seed` and `caller`.
    fn decode_dicom(
        &self,
        model: &AttestedModel,
        bytes: &[u8],
        options: ClassifyOptions,
        caller: Option<&str>,
    ) -> Result<(input::Batch, DicomSource), ClassifyError> {
        use medguard_dicom::DicomError;
        let manifest = model.manifest();
        if bytes.len() as u64 > input::INPUT_MAX_BYTES {
            return Err(InputRefusal::Decode(input::InputError::TooLarge).into());
        }
        let profile = manifest.dicom_input().map_err(InputRefusal::Dicom)?;
        let shape = manifest.input.shape;
        let program = self.program.as_ref().ok_or(GuardError::NoSandbox)?;
        let radiograph = match program.decode_dicom(bytes, profile, shape.height, shape.width) {
            Ok(radiograph) => radiograph,
            Err(SandboxError::Guest(GuestFailure::Dicom(e))) => {
                return Err(InputRefusal::Dicom(e).into());
            }
            // The sandbox did its job; the file was the cause. On the
            // record, and the sender learns why.
            Err(
                e @ (SandboxError::MemoryCap { .. }
                | SandboxError::Trap { .. }
                | SandboxError::StackOverflow
                | SandboxError::Deadline(_)
                | SandboxError::Budget(_)),
            ) => {
                let (failure, refusal) = match e {
                    SandboxError::MemoryCap { cap, .. } => (
                        InferenceFailure::MemoryCap,
                        InputRefusal::Dicom(DicomError::Unsupported(format!(
                            "decoding it needed more than the sandbox's {} MiB memory cap: a declared \
                             length is larger than the file, or the image is larger than medguard decodes",
                            cap >> 20
                        ))),
                    ),
                    e @ (SandboxError::Deadline(_) | SandboxError::Budget(_)) => {
                        (InferenceFailure::Deadline, InputRefusal::Sandbox(e))
                    }
                    // A panic in the decoder (dicom-rs indexes out of bounds
                    // on some damaged RLE data) ends that sandbox only.
                    _ => (
                        InferenceFailure::Trap,
                        InputRefusal::Dicom(DicomError::Malformed(
                            "the decoder stopped on damaged data in this file; the sandbox contained it"
                                .into(),
                        )),
                    ),
                };
                self.record_failure(model, program, bytes, 1, failure, options, caller)?;
                return Err(refusal.into());
            }
            // Anything else is the host's or a compromised guest's failure,
            // not the sender's: 500 and the operator's log.
            Err(other) => return Err(GuardError::Sandbox(other).into()),
        };
        Ok((
            input::Batch {
                shape: [1, 1, shape.height, shape.width],
                data: radiograph.pixels,
                // Resampled and windowed: no integer grid to check against.
                source_bits: 0,
            },
            DicomSource {
                image: radiograph.source,
                identity: radiograph.identity,
            },
        ))
    }

    /// [`Guard::classify`] for a tensor that arrived decoded (the server's
    /// Open Inference Protocol requests), on behalf of `caller` (a name the
    /// ledger records; never a credential). The guest checks the values
    /// against the manifest as it does for decoded files.
    pub fn classify_batch(
        &self,
        model: &AttestedModel,
        batch: &input::Batch,
        options: ClassifyOptions,
        caller: Option<&str>,
    ) -> Result<Classified, ClassifyError> {
        self.check_classifiable(model, options)?;
        self.screen_and_record(model, batch, options, caller)
    }
}

impl Guard {
    /// Steps 3 to 5 of [`Guard::classify`], for a caller that did step 1.
    fn screen_and_record(
        &self,
        model: &AttestedModel,
        batch: &input::Batch,
        options: ClassifyOptions,
        caller: Option<&str>,
    ) -> Result<Classified, ClassifyError> {
        let program = self.program.as_ref().ok_or(GuardError::NoSandbox)?;
        let manifest = model.manifest();
        // 3.
        // A smoothed model's noise seed, drawn before the session: a
        // machine without randomness is the host's failure, not the input's.
        let certifier = model
            .certifier()
            .map(|certifier| match certifier {
                Certifier::Smoothing(_) => fresh_seed().map(|seed| (certifier, seed)),
                Certifier::IntervalBounds(_) => Ok((certifier, 0)),
            })
            .transpose()
            .map_err(|e| GuardError::Entropy(e.to_string()))?;
        let started = std::time::Instant::now();
        let mut session = program.session(model).map_err(GuardError::Sandbox)?;
        let sandbox_start = started.elapsed();
        let screened = if manifest.screening.is_some() {
            session.screen(
                &batch.shape,
                &batch.data,
                ScreenOptions {
                    seed: options.seed,
                    source_bits: batch.source_bits,
                    withhold_rejected: options.policy == ScreeningPolicy::Enforce,
                },
            )
        } else {
            session.classify(&batch.shape, &batch.data).map(|rows| {
                rows.into_iter()
                    .map(|p| ScreenedImage {
                        probabilities: Some(p),
                        // `classify` answers probabilities only.
                        logits: None,
                        statistics: Vec::new(),
                        screening: None,
                        off_grid: 0,
                    })
                    .collect()
            })
        };
        // 3b. Certified models, in the same sandbox: the votes of the noised
        // copies, or the interval bounds. The noise's seed is the operating
        // system's, never the caller's (`options.seed` reproduces
        // screening): noise known in advance can be optimised against, and
        // the certificate would mean nothing.
        let screened = screened.and_then(|images| match certifier {
            None => Ok(images.into_iter().map(|i| (i, None)).collect::<Vec<_>>()),
            Some((certifier, seed)) => {
                let certificates = session.certify(&batch.shape, &batch.data, certifier, seed)?;
                Ok(images
                    .into_iter()
                    .zip(certificates.into_iter().map(Some))
                    .collect())
            }
        });
        drop(session);
        let compute = started.elapsed().saturating_sub(sandbox_start);
        let screened = match screened {
            Ok(screened) => screened,
            Err(e) => {
                let (failure, refusal) = match e {
                    SandboxError::Guest(GuestFailure::InvalidInput(why)) => {
                        (InferenceFailure::InputRefused, InputRefusal::Guest(why))
                    }
                    e @ (SandboxError::Deadline(_) | SandboxError::Budget(_)) => {
                        (InferenceFailure::Deadline, InputRefusal::Sandbox(e))
                    }
                    other => {
                        let kind = match other {
                            SandboxError::MemoryCap { .. } => InferenceFailure::MemoryCap,
                            SandboxError::Trap { .. } | SandboxError::StackOverflow => {
                                InferenceFailure::Trap
                            }
                            _ => InferenceFailure::Sandbox,
                        };
                        (kind, InputRefusal::Sandbox(other))
                    }
                };
                // A request that produced nothing is on the record too: the
                // access log an auditor reads has no gaps.
                let tensor: Vec<u8> = batch.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                let images = batch.shape[0];
                self.record_failure(model, program, &tensor, images, failure, options, caller)?;
                return Err(refusal.into());
            }
        };
        // 4.
        let per_image = batch.data.len() / batch.len().max(1);
        let time = Timestamp::now();
        let labels = &manifest.output.labels;
        let mut images: Vec<Unrecorded> = Vec::with_capacity(screened.len());
        let mut pixels = Vec::with_capacity(screened.len());
        let mut entries = Vec::with_capacity(screened.len());
        for ((image, certificate), values) in screened
            .into_iter()
            .zip(batch.data.chunks(per_image.max(1)))
        {
            // The keyed digest of the exact tensor the guest screened.
            let tensor: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut result = unrecorded(image, labels);
            if let Some(certificate) = certificate {
                result.certify(certificate, options.policy, labels);
            }
            pixels.push(PixelStatistics::of(values));
            entries.push(Entry::Inference {
                time,
                model: manifest.name.clone(),
                version: manifest.version.clone(),
                model_sha256: model.model_digest(),
                guest_sha256: program.digest(),
                input_hmac: self.input_key.hmac(&tensor),
                verdict: result.verdict,
                p_value: result.p_value,
                label: result.label.clone(),
                probabilities: result.probabilities.clone(),
                policy: options.policy,
                seed: options.seed,
                caller: caller.map(|c| bounded(c, TEXT_MAX_BYTES)),
                certificate: result.certificate.clone(),
            });
            images.push(result);
        }
        // 5.
        let committing = std::time::Instant::now();
        let receipts = self
            .ledger
            .append_all(entries)
            .map_err(|e| ClassifyError::Guard(GuardError::Ledger(e)))?;
        Ok(Classified {
            images: images
                .into_iter()
                .zip(receipts)
                .zip(pixels)
                .map(|((u, receipt), pixels)| ImageResult {
                    verdict: u.verdict,
                    screening_verdict: u.screening_verdict,
                    p_value: u.p_value,
                    statistics: u.statistics,
                    label: u.label,
                    probabilities: u.probabilities,
                    logits: u.logits,
                    off_grid: u.off_grid,
                    certificate: u.certificate,
                    pixels,
                    receipt,
                })
                .collect(),
            source_bits: batch.source_bits,
            seed: options.seed,
            dicom: None,
            timings: Timings {
                sandbox_start,
                compute,
                ledger_commit: committing.elapsed(),
            },
        })
    }

    /// Records an inference that produced nothing (the guest refused the
    /// values, or its sandbox stopped): the access log an auditor reads has
    /// no gaps. The input is named only by the keyed hash of `input`.
    #[allow(clippy::too_many_arguments)]
    fn record_failure(
        &self,
        model: &AttestedModel,
        program: &GuestProgram,
        input: &[u8],
        images: u32,
        failure: InferenceFailure,
        options: ClassifyOptions,
        caller: Option<&str>,
    ) -> Result<(), ClassifyError> {
        let manifest = model.manifest();
        self.ledger
            .append_all(vec![Entry::InferenceFailed {
                time: Timestamp::now(),
                model: manifest.name.clone(),
                version: manifest.version.clone(),
                model_sha256: model.model_digest(),
                guest_sha256: program.digest(),
                input_hmac: self.input_key.hmac(input),
                images,
                failure,
                seed: options.seed,
                caller: caller.map(|c| bounded(c, TEXT_MAX_BYTES)),
            }])
            .map_err(|e| ClassifyError::Guard(GuardError::Ledger(e)))?;
        Ok(())
    }

    /// Step 1: only signed models, and screened ones unless allowed.
    fn check_classifiable(
        &self,
        model: &AttestedModel,
        options: ClassifyOptions,
    ) -> Result<(), ClassifyError> {
        let manifest = model.manifest();
        if !matches!(model.provenance(), Provenance::Signed { .. }) {
            return Err(ClassifyError::Unsigned {
                model: manifest.name.clone(),
            });
        }
        if manifest.screening.is_none() && !options.allow_unscreened {
            return Err(ClassifyError::Unscreened {
                model: manifest.name.clone(),
            });
        }
        Ok(())
    }
}

/// One image's result before the ledger recorded it.
struct Unrecorded {
    verdict: Verdict,
    screening_verdict: Verdict,
    p_value: Option<f64>,
    statistics: Vec<StatisticReport>,
    label: Option<String>,
    probabilities: Option<BTreeMap<String, f32>>,
    logits: Option<Vec<f32>>,
    off_grid: u32,
    certificate: Option<Certificate>,
}

impl Unrecorded {
    /// Adds the image's certificate to the evidence. A label the
    /// certificate does not cover (an abstention, a radius below the
    /// manifest's requirement, or a smoothed class other than the model's
    /// own answer) makes an accepted image a flag, and under the enforce
    /// policy is not returned: an adaptive attacker can talk the screening
    /// round, not the certificate.
    fn certify(&mut self, certificate: Certificate, policy: ScreeningPolicy, labels: &[String]) {
        if !certificate.covers(labels, self.label.as_ref()) {
            if self.verdict == Verdict::Accept {
                self.verdict = Verdict::Flag;
            }
            if policy == ScreeningPolicy::Enforce {
                self.label = None;
                self.probabilities = None;
                self.logits = None;
            }
        }
        // A withheld label (for want of a certificate, or rejected by
        // screening) keeps its votes to itself: they are the answer.
        self.certificate = Some(if self.probabilities.is_none() {
            certificate.redacted()
        } else {
            certificate
        });
    }
}

/// The guest's answer for one image as the caller sees it.
fn unrecorded(image: ScreenedImage, labels: &[String]) -> Unrecorded {
    let (label, probabilities) = image.labelled(labels);
    let (verdict, p_value, statistics) = match image.screening {
        None => (Verdict::Unscreened, None, Vec::new()),
        Some(s) => (s.verdict.into(), Some(s.p_value), s.statistics),
    };
    Unrecorded {
        verdict,
        screening_verdict: verdict,
        p_value,
        statistics,
        label,
        probabilities,
        logits: image.logits,
        off_grid: image.off_grid,
        certificate: None,
    }
}

fn admitted_entry(model: &AttestedModel, policy_sha256: Sha256Digest, time: Timestamp) -> Entry {
    let m = model.manifest();
    let (signer, signer_fingerprint, manifest_sha256) = match model.provenance() {
        Provenance::Signed {
            signer,
            manifest_sha256,
        } => (signer.name.clone(), signer.fingerprint, *manifest_sha256),
        // admit_directory builds only signed models; a vouched one would
        // say so here rather than pass for signed.
        Provenance::Vouched => (
            "(vouched)".into(),
            Sha256Digest::of(b""),
            Sha256Digest::of(b""),
        ),
    };
    Entry::ModelAdmitted {
        time,
        model: m.name.clone(),
        version: m.version.clone(),
        model_sha256: model.model_digest(),
        manifest_sha256,
        signer,
        signer_fingerprint,
        policy_sha256,
        training: m.training.clone(),
    }
}

/// The refusal entry: the directory's own name only (a full path says
/// nothing more about the model and may say things about the host), the
/// reason with that path taken out and bounded.
fn refused_entry(
    dir: &Path,
    error: &AdmissionError,
    policy_sha256: Sha256Digest,
    time: Timestamp,
) -> Entry {
    let full = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let reason = match error {
        AdmissionError::Refused { source, .. } => source.to_string(),
        other => {
            // Host paths out: the directory as given and as resolved, but
            // never a string so short ("." or "/") that it would eat the text.
            let mut text = other.to_string();
            for prefix in [full.display().to_string(), dir.display().to_string()] {
                if prefix.len() > 1 {
                    text = text.replace(&prefix, &name);
                }
            }
            text
        }
    };
    Entry::ModelRefused {
        time,
        directory: bounded(&name, 255),
        model: None,
        version: None,
        reason: bounded(&reason, TEXT_MAX_BYTES),
        policy_sha256,
    }
}
