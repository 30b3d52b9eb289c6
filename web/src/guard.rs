//! The browser's guard, in plain Rust so that it is tested natively too:
//! admission under a trust policy ([`Model::admit`]), screening and
//! classification ([`Model::classify`]) and the check of a server's receipt
//! ([`verify_result`]). Everything is a crate the CLI uses; this module only
//! wires them together without files, clock or sandbox of its own.

use std::collections::BTreeMap;

use jiff::Timestamp;
use medguard_attest::{
    AdmitError, AttestedModel, PolicyError, Provenance, Sha256Digest, TrustPolicy, admit_files,
};
use medguard_certify::{Certificate, Certifier, Noise};
use medguard_dicom::DicomError;
use medguard_guest_core::{
    Classifier, Detector, GuestError, InputBatch, ModelSpec, ScreenOptions, SmoothOptions,
};
use medguard_input::{Batch, InputError};
use medguard_ledger::entry::Verdict;
use medguard_ledger::result::{DicomJson, Integrity, ModelRef, ResultFields};
use medguard_ledger::text::printable;
use medguard_ledger::{CheckedLine, LineError, NoteVerifier, check_line};
use medguard_screen::Statistic;
use serde::Serialize;
use thiserror::Error;

/// Why the page's request was refused. Each message says what failed.
#[derive(Debug, Error)]
pub enum WebError {
    /// The trust policy is not valid.
    #[error("trust policy: {0}")]
    Policy(#[from] PolicyError),
    /// The model directory was refused.
    #[error("model refused: {0}")]
    Refused(Box<AdmitError>),
    /// The model passed admission but the inference core cannot run it.
    #[error("model refused by the inference core: {0}")]
    Unloadable(GuestError),
    /// The model has no calibrated screening profile: medguard does not
    /// classify unscreened in a viewer.
    #[error(
        "{model} has no screening profile in its signed manifest; medguard classifies only screened models"
    )]
    Unscreened {
        /// The model's name.
        model: String,
    },
    /// No randomness for a smoothed model's noise: the page's Web Crypto
    /// API failed. Nothing is labelled without it.
    #[error("no randomness for the smoothing noise: {0}")]
    Entropy(String),
    /// The inference core's certificate evidence did not check out.
    #[error("certificate refused: {0}")]
    Certificate(String),
    /// The file is not an image the model takes.
    #[error("input refused: {0}")]
    Input(#[from] InputError),
    /// The DICOM file gave no image.
    #[error("DICOM input refused: {0}")]
    Dicom(#[from] DicomError),
    /// The values were refused, or inference failed.
    #[error("inference refused: {0}")]
    Inference(GuestError),
    /// The ledger key is not a key.
    #[error("ledger key: {0}")]
    LedgerKey(String),
    /// The result and its receipt do not check out.
    #[error(transparent)]
    Receipt(#[from] LineError),
}

impl From<AdmitError> for WebError {
    fn from(e: AdmitError) -> Self {
        Self::Refused(Box::new(e))
    }
}

/// A trust policy and its digest (the one the ledger would record).
#[derive(Debug)]
pub struct Policy {
    policy: TrustPolicy,
    sha256: Sha256Digest,
}

impl Policy {
    /// Parses policy TOML; `key_file` returns the text of a
    /// `public_key_file` the policy names (the page fetched it beside the
    /// policy), or why it cannot.
    pub fn parse(
        text: &str,
        key_file: impl FnMut(&str) -> Result<String, String>,
    ) -> Result<Self, WebError> {
        let policy = TrustPolicy::parse(text, key_file)?;
        let sha256 = policy.sha256();
        Ok(Self { policy, sha256 })
    }

    /// [`TrustPolicy::sha256`].
    pub fn sha256(&self) -> Sha256Digest {
        self.sha256
    }
}

/// What was admitted, for the page to show.
#[derive(Debug, Clone, Serialize)]
pub struct Attestation {
    /// The manifest's model name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The policy's name for the key that signed it.
    pub signer: String,
    /// SHA-256 fingerprint of that key.
    pub key_fingerprint: String,
    /// SHA-256 of the model file, as admitted.
    pub model_sha256: String,
    /// SHA-256 of the signed manifest.
    pub manifest_sha256: String,
    /// Digest of the policy it was admitted under.
    pub policy_sha256: String,
    /// When the signed manifest expires, if it does.
    pub expires: Option<String>,
    /// The output labels, in output order.
    pub labels: Vec<String>,
    /// Input height and width in pixels.
    pub height: u32,
    /// See `height`.
    pub width: u32,
    /// Whether the manifest takes DICOM files.
    pub takes_dicom: bool,
    /// The screening statistics, by name.
    pub statistics: Vec<String>,
}

/// An admitted model, loaded into the inference core with its detector.
pub struct Model {
    attested: AttestedModel,
    attestation: Attestation,
    classifier: Classifier,
    detector: Option<Detector>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("attestation", &self.attestation)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Admits the model directory `files` (relative path to bytes, as
    /// fetched) under `policy` at `now`, then parses and checks the model
    /// and its detector. A browser has no ledger: rollback protection is the
    /// policy's `min_version` and the server's, not this page's.
    pub fn admit(
        policy: &Policy,
        files: &BTreeMap<String, Vec<u8>>,
        now: Timestamp,
    ) -> Result<Self, WebError> {
        let attested = admit_files(&policy.policy, files, |_| None, now)?;
        let manifest = attested.manifest();
        let classifier = match attested.certifier() {
            Some(Certifier::IntervalBounds(_)) => {
                Classifier::load_with_bounds(attested.model_bytes(), spec(&attested))
            }
            _ => Classifier::load(attested.model_bytes(), spec(&attested)),
        }
        .map_err(WebError::Unloadable)?;
        let detector = manifest
            .screening
            .as_ref()
            .map(|s| Detector::Calibrated(s.profile.clone()));
        if let Some(d) = &detector {
            classifier.check_detector(d).map_err(WebError::Unloadable)?;
        }
        let (signer, key_fingerprint, manifest_sha256) = match attested.provenance() {
            Provenance::Signed {
                signer,
                manifest_sha256,
            } => (
                signer.name.clone(),
                signer.fingerprint.to_string(),
                manifest_sha256.to_string(),
            ),
            // admit_files builds only signed models.
            Provenance::Vouched => ("(vouched)".into(), String::new(), String::new()),
        };
        let attestation = Attestation {
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
            signer,
            key_fingerprint,
            model_sha256: attested.model_digest().to_string(),
            manifest_sha256,
            policy_sha256: policy.sha256.to_string(),
            expires: manifest.expires.map(|t| t.to_string()),
            labels: manifest.output.labels.clone(),
            height: manifest.input.shape.height,
            width: manifest.input.shape.width,
            takes_dicom: manifest.dicom.is_some(),
            statistics: detector
                .as_ref()
                .map(|d| d.statistics().iter().map(Statistic::name).collect())
                .unwrap_or_default(),
        };
        Ok(Self {
            attested,
            attestation,
            classifier,
            detector,
        })
    }

    /// What was admitted.
    pub fn attestation(&self) -> &Attestation {
        &self.attestation
    }

    /// Decodes `bytes` (PNG, `.npy` or DICOM, sniffed from the content as
    /// the CLI does), screens and classifies every image in it with noise
    /// seed `seed`, under the enforce policy: a rejected image gets no
    /// label. `input` names the file in the results.
    pub fn classify(
        &self,
        input: Option<&str>,
        bytes: &[u8],
        seed: u64,
        guest_sha256: &str,
    ) -> Result<Vec<Prediction>, WebError> {
        let manifest = self.attested.manifest();
        let detector = self.detector.as_ref().ok_or_else(|| WebError::Unscreened {
            model: manifest.name.clone(),
        })?;
        let (batch, dicom) = self.decode(bytes)?;
        let source_bits = batch.source_bits;
        let batch = InputBatch {
            shape: batch.shape.to_vec(),
            data: batch.data,
        };
        let screened = self
            .classifier
            .screen(
                &batch,
                detector,
                ScreenOptions {
                    seed,
                    source_bits,
                    withhold_rejected: true,
                },
            )
            .map_err(WebError::Inference)?;
        let certificates = self.certify(&batch)?;
        if self.attested.certifier().is_some() && certificates.len() != screened.len() {
            return Err(WebError::Certificate(format!(
                "{} certificates for {} images",
                certificates.len(),
                screened.len()
            )));
        }
        let mut certificates = certificates.into_iter();
        let labels = &manifest.output.labels;
        let many = screened.len() > 1;
        Ok(screened
            .into_iter()
            .enumerate()
            .map(|(i, image)| {
                let (label, probabilities) = image.labelled(labels);
                let (verdict, p_value, statistics) = match &image.screening {
                    None => (Verdict::Unscreened, None, BTreeMap::new()),
                    Some(s) => (
                        s.verdict.into(),
                        Some(s.p_value),
                        ResultFields::statistics_by_name(&s.statistics),
                    ),
                };
                let mut prediction = Prediction {
                    input: input.map(|name| {
                        if many {
                            format!("{name}[{i}]")
                        } else {
                            name.to_owned()
                        }
                    }),
                    label,
                    probabilities,
                    verdict,
                    p_value,
                    statistics,
                    integrity: Integrity {
                        source_bits,
                        off_grid: image.off_grid,
                    },
                    seed,
                    model: ModelRef::of(&self.attested),
                    guest_sha256: guest_sha256.to_owned(),
                    dicom: dicom.clone(),
                    certificate: None,
                };
                if let Some(certificate) = certificates.next() {
                    cover(&mut prediction, certificate, labels);
                }
                prediction
            })
            .collect())
    }

    /// Each image's certificate, for a certified model (none otherwise):
    /// the votes of noised copies under a seed drawn here, never the
    /// page's (noise a caller knows can be optimised against), or the
    /// interval bounds. The same crates and checks as the host's guard.
    fn certify(&self, batch: &InputBatch) -> Result<Vec<Certificate>, WebError> {
        let refused = |e: &dyn std::fmt::Display| WebError::Certificate(e.to_string());
        match self.attested.certifier() {
            None => Ok(Vec::new()),
            Some(Certifier::Smoothing(table)) => {
                let mut bytes = [0u8; 8];
                getrandom_02::getrandom(&mut bytes)
                    .map_err(|e| WebError::Entropy(e.to_string()))?;
                let seed = u64::from_le_bytes(bytes);
                let s = table.smoothing();
                let options = SmoothOptions {
                    sigma: s.noise_sigma(),
                    samples: s.samples,
                    seed,
                    first_stream: 0,
                };
                let votes = self
                    .classifier
                    .smooth(batch, options)
                    .map_err(WebError::Inference)?;
                votes
                    .iter()
                    .enumerate()
                    .map(|(i, votes)| {
                        let noise = Noise {
                            seed,
                            stream: i as u64,
                        };
                        table.certify(votes, noise).map_err(|e| refused(&e))
                    })
                    .collect()
            }
            Some(Certifier::IntervalBounds(intervals)) => {
                let classes = self.attested.manifest().output.labels.len();
                let bounds = self
                    .classifier
                    .bound(batch, &intervals.radii())
                    .map_err(WebError::Inference)?;
                bounds
                    .into_iter()
                    .map(|image| intervals.certify(&image, classes).map_err(|e| refused(&e)))
                    .collect()
            }
        }
    }

    /// The first image of `bytes` as the model sees it, and its
    /// median-squeezed copy (the window of the manifest's squeeze
    /// statistic, 2 without one): `height * width` values each, channel 0.
    pub fn squeezed(&self, bytes: &[u8]) -> Result<Squeezed, WebError> {
        let (batch, _) = self.decode(bytes)?;
        let spec = spec(&self.attested);
        let [_, channels, height, width] = batch.shape;
        let plane = (height * width) as usize;
        let image: Vec<f32> = batch.data[..plane * channels as usize].to_vec();
        let window = self
            .detector
            .as_ref()
            .and_then(|d| {
                d.statistics().iter().find_map(|s| match s {
                    Statistic::SqueezeMedian { window } => Some(*window),
                    _ => None,
                })
            })
            .unwrap_or(2);
        let squeezed = medguard_guest_core::median_squeeze(&image, &spec, window);
        Ok(Squeezed {
            height,
            width,
            window,
            image: image[..plane].to_vec(),
            squeezed: squeezed[..plane].to_vec(),
        })
    }

    /// Sniffs and decodes `bytes` as the CLI does: PNG and `.npy` by their
    /// magic first (a `.npy` whose pixels spell "DICM" at offset 128 is a
    /// `.npy`), then DICOM Part 10.
    fn decode(&self, bytes: &[u8]) -> Result<(Batch, Option<DicomJson>), WebError> {
        let manifest = self.attested.manifest();
        if medguard_input::has_image_magic(bytes) || !medguard_dicom::is_part10(bytes) {
            let batch = medguard_input::decode(bytes, &manifest.input, manifest.max_batch)?;
            return Ok((batch, None));
        }
        if bytes.len() as u64 > medguard_input::INPUT_MAX_BYTES {
            return Err(InputError::TooLarge.into());
        }
        let profile = manifest.dicom_input()?;
        let shape = manifest.input.shape;
        let radiograph = medguard_dicom::decode(
            bytes,
            &profile.accepts,
            &profile.preprocessing,
            shape.height,
            shape.width,
        )?;
        let s = radiograph.source;
        Ok((
            Batch {
                shape: [1, 1, shape.height, shape.width],
                data: radiograph.pixels,
                // Resampled and windowed: no integer grid to check against.
                source_bits: 0,
            },
            Some(DicomJson::from(&s)),
        ))
    }
}

/// Adds `certificate` to `prediction` as the host's guard does under the
/// enforce policy (the browser's only one): a label the certificate does
/// not cover makes an accepted image a flag and is not shown, nor is the
/// screening evidence that would rebuild it (the statistics are calibrated
/// per predicted class, as the server withholds them); a withheld label's
/// certificate is redacted, since its class, votes or margin would give the
/// label away.
fn cover(prediction: &mut Prediction, certificate: Certificate, labels: &[String]) {
    if !certificate.covers(labels, prediction.label.as_ref()) {
        if prediction.verdict == Verdict::Accept {
            prediction.verdict = Verdict::Flag;
        }
        prediction.label = None;
        prediction.probabilities = None;
        prediction.p_value = None;
        prediction.statistics.clear();
    }
    prediction.certificate = Some(if prediction.probabilities.is_none() {
        certificate.redacted()
    } else {
        certificate
    });
}

/// The manifest's input and output, as the inference core checks them.
fn spec(model: &AttestedModel) -> ModelSpec {
    let m = model.manifest();
    ModelSpec {
        input_name: m.input.tensor.clone(),
        output_name: m.output.tensor.clone(),
        channels: m.input.shape.channels,
        height: m.input.shape.height,
        width: m.input.shape.width,
        min_value: m.input.range.min,
        max_value: m.input.range.max,
        classes: m.output.labels.len() as u32,
        max_batch: m.max_batch,
    }
}

/// An image beside its median-squeezed copy, for the page to draw.
#[derive(Debug, Clone, Serialize)]
pub struct Squeezed {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// The median filter's window.
    pub window: u32,
    /// The image as the model sees it, row-major.
    pub image: Vec<f32>,
    /// Its squeezed copy.
    pub squeezed: Vec<f32>,
}

/// One image's result: the fields of `medguard predict --json`, with the
/// same names, meaning and serialisation (one type), but no receipt (the
/// page has no ledger). `guest_sha256` is the wasm module's digest.
pub type Prediction = ResultFields;

/// A server's result whose receipt verified with the ledger's key.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedResult {
    /// The entry's leaf index.
    pub index: u64,
    /// The entry's kind (`inference`, ...).
    pub kind: &'static str,
    /// The ledger's name (the checkpoint's origin).
    pub origin: String,
    /// The tree size the checkpoint signs.
    pub tree_size: u64,
    /// Its root hash.
    pub root: String,
    /// The entry in one line.
    pub description: String,
    /// The line's fields that the receipt does not cover (`statistics`,
    /// `input`, ...): unverified.
    pub unsigned: Vec<String>,
}

/// Checks `line` (a result with its `receipt`, as `predict --json` or a
/// medguard server returns it, or a bare receipt) with the ledger's public
/// key `ledger_key` (as `medguard ledger key` prints it): the same check as
/// `medguard ledger verify-receipt`.
pub fn verify_result(line: &[u8], ledger_key: &str) -> Result<VerifiedResult, WebError> {
    let key: NoteVerifier = ledger_key
        .trim()
        .parse()
        .map_err(|e: medguard_ledger::note::NoteError| WebError::LedgerKey(e.to_string()))?;
    let CheckedLine {
        receipt,
        checkpoint,
        entry,
        unsigned,
    } = check_line(line, &key)?;
    Ok(VerifiedResult {
        index: receipt.index,
        kind: entry.kind(),
        origin: printable(&checkpoint.origin),
        tree_size: checkpoint.size,
        root: checkpoint.root.to_string(),
        // Entry text is whoever wrote the entry's: no bidi override or
        // control character reaches the page as such.
        description: printable(&entry.describe()),
        unsigned,
    })
}
