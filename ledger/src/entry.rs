//! What the ledger records. Every field is chosen so that no patient data can
//! enter it: no pixels, no file names or paths of inputs, no patient, study or
//! series identifiers. An input is named only by an HMAC-SHA256 of its tensor
//! under a per-deployment secret, so that the same image can be recognised
//! by whoever holds the secret but an image cannot be found by trying
//! candidates without it.

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use medguard_attest::Sha256Digest;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// One ledger entry. Serialised as one JSON object; the leaf hash covers the
/// exact bytes written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Entry {
    /// The ledger was created; names the key that signs its checkpoints.
    LedgerCreated {
        /// When.
        time: Timestamp,
        /// The checkpoint verifier key (C2SP format).
        key: String,
        /// The origin of the ledger this one replaces, when the operator
        /// started a new ledger in a data directory whose ledger had gone
        /// missing (`medguard ledger new`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    },
    /// Opening the ledger found whole entries past the last signed
    /// checkpoint. They were never acknowledged (a crash between writing
    /// them and signing their checkpoint) or were appended by someone else;
    /// the ledger cannot tell which, so it signs none of them: it moves them
    /// into a quarantine file beside the ledger and records that here.
    EntriesQuarantined {
        /// When.
        time: Timestamp,
        /// How many whole entries were moved out.
        count: u64,
        /// The index the first of them would have had (this entry's own).
        first_index: u64,
        /// SHA-256 of the quarantined bytes, exactly as they were in the log.
        sha256: Sha256Digest,
        /// The quarantine file's name in the ledger directory.
        file: String,
        /// How many of them carried a MAC that does not verify: written by
        /// someone without the key, or damaged. Zero when they merely lacked
        /// one (a crash before their MACs reached the disk).
        #[serde(default)]
        forged: u64,
    },
    /// A model passed admission under the trust policy.
    ModelAdmitted {
        /// When.
        time: Timestamp,
        /// Manifest name.
        model: String,
        /// Manifest version.
        version: semver::Version,
        /// SHA-256 of the model file.
        model_sha256: Sha256Digest,
        /// SHA-256 of the signed manifest.
        manifest_sha256: Sha256Digest,
        /// The policy's name for the signing key.
        signer: String,
        /// Its fingerprint.
        signer_fingerprint: Sha256Digest,
        /// Digest of the trust policy it was admitted under
        /// (`TrustPolicy::sha256`: its text and every key it resolved).
        policy_sha256: Sha256Digest,
        /// What the model was made from, as its signed manifest says
        /// (training data, split and script digests, seeds, libraries,
        /// metrics); absent when the manifest does not say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        training: Option<medguard_attest::Training>,
    },
    /// A model was refused.
    ModelRefused {
        /// When.
        time: Timestamp,
        /// The model directory's last path component (never a full path).
        directory: String,
        /// Manifest name, if admission got as far as the signed manifest.
        model: Option<String>,
        /// Manifest version, likewise.
        version: Option<semver::Version>,
        /// The refusal, as printed.
        reason: String,
        /// SHA-256 of the trust policy in force.
        policy_sha256: Sha256Digest,
    },
    /// The trust policy differs from the one in force at the last admission.
    PolicyChanged {
        /// When.
        time: Timestamp,
        /// The previous policy's SHA-256 (none for the first).
        from: Option<Sha256Digest>,
        /// The new one's.
        to: Sha256Digest,
    },
    /// One screened and classified input.
    Inference {
        /// When.
        time: Timestamp,
        /// Manifest name.
        model: String,
        /// Manifest version.
        version: semver::Version,
        /// SHA-256 of the model file.
        model_sha256: Sha256Digest,
        /// SHA-256 of the sandbox guest.
        guest_sha256: Sha256Digest,
        /// HMAC-SHA256 of the input tensor under the deployment's secret.
        input_hmac: String,
        /// The screening verdict.
        verdict: Verdict,
        /// Combined screening p-value, when screened.
        p_value: Option<f64>,
        /// The predicted label; none when withheld.
        label: Option<String>,
        /// The class probabilities returned with the label, by class
        /// label; none when withheld. Recorded so that a receipt
        /// vouches for the numbers a result shows, not only its label.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probabilities: Option<std::collections::BTreeMap<String, f32>>,
        /// Whether a rejected prediction was withheld.
        policy: ScreeningPolicy,
        /// The seed of the guest's noise draws, to reproduce the verdict.
        seed: u64,
        /// Who asked, as the server's token file names them (never the
        /// token): the access record auditors ask for. None for local use.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller: Option<String>,
        /// The robustness certificate (votes, radius, the parameters it was
        /// computed with), for a model certified by randomized smoothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<medguard_certify::Certificate>,
    },
    /// An inference that produced no result: the guest refused the values,
    /// or the sandbox trapped or ran out of time or memory. Only the kind of
    /// failure is recorded (the guest's message can quote input values).
    InferenceFailed {
        /// When.
        time: Timestamp,
        /// Manifest name.
        model: String,
        /// Manifest version.
        version: semver::Version,
        /// SHA-256 of the model file.
        model_sha256: Sha256Digest,
        /// SHA-256 of the sandbox guest.
        guest_sha256: Sha256Digest,
        /// HMAC-SHA256 of the whole input tensor under the deployment's secret.
        input_hmac: String,
        /// Images in the input.
        images: u32,
        /// What went wrong.
        failure: InferenceFailure,
        /// The seed the guest was given.
        seed: u64,
        /// Who asked (the token's name), as for [`Entry::Inference`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller: Option<String>,
    },
    /// A model's flag rate over its recent inputs left what calibration
    /// promised (the server's drift alarm): an attack campaign, or inputs
    /// unlike the calibration images.
    DriftAlarm {
        /// When.
        time: Timestamp,
        /// Manifest name.
        model: String,
        /// Manifest version.
        version: semver::Version,
        /// SHA-256 of the model file.
        model_sha256: Sha256Digest,
        /// Inputs in the window.
        window: u64,
        /// Of them flagged or rejected.
        flagged: u64,
        /// The count at which the alarm goes off.
        threshold: u64,
        /// The flag rate calibration promised.
        expected_flag_rate: f64,
    },
    /// Where a model's recent inputs fall among the calibration images in a
    /// pixel statistic (intensity or contrast) left what chance allows (the
    /// server's drift alarm): a new scanner, a changed preprocessing, inputs
    /// unlike the ones the model was calibrated on.
    InputDriftAlarm {
        /// When.
        time: Timestamp,
        /// Manifest name.
        model: String,
        /// Manifest version.
        version: semver::Version,
        /// SHA-256 of the model file.
        model_sha256: Sha256Digest,
        /// `intensity` or `contrast`.
        statistic: String,
        /// Inputs in the window.
        window: u64,
        /// Their mean rank among the calibration images' values; 0.5 expected.
        mean_rank: f64,
        /// The distance from 0.5 at which the alarm goes off.
        threshold: f64,
    },
}

impl Entry {
    /// One line for people. Text in it comes from the entry as recorded:
    /// escape it before a terminal shows it.
    pub fn describe(&self) -> String {
        match self {
            Entry::LedgerCreated { key, replaces, .. } => match replaces {
                Some(old) => {
                    format!("ledger created, checkpoint key {key}, replacing lost ledger {old}")
                }
                None => format!("ledger created, checkpoint key {key}"),
            },
            Entry::EntriesQuarantined {
                count,
                first_index,
                file,
                ..
            } => format!(
                "{count} unsigned entries found past the last checkpoint (from {first_index}) were moved to {file}"
            ),
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
                caller,
                ..
            } => format!(
                "inference {model} {version}: {verdict}{} -> {} (input {}){}",
                p_value.map(|p| format!(" p {p:.4}")).unwrap_or_default(),
                label.as_deref().unwrap_or("withheld"),
                input_hmac.chars().take(16).collect::<String>(),
                Self::for_caller(caller.as_deref())
            ),
            Entry::InferenceFailed {
                model,
                version,
                failure,
                images,
                input_hmac,
                caller,
                ..
            } => format!(
                "inference {model} {version} failed: {} ({images} images, input {}){}",
                failure.as_str(),
                input_hmac.chars().take(16).collect::<String>(),
                Self::for_caller(caller.as_deref())
            ),
            Entry::DriftAlarm {
                model,
                version,
                window,
                flagged,
                expected_flag_rate,
                ..
            } => format!(
                "drift alarm {model} {version}: {flagged} of the last {window} inputs flagged, {:.1} expected",
                expected_flag_rate * *window as f64
            ),
            Entry::InputDriftAlarm {
                model,
                version,
                statistic,
                window,
                mean_rank,
                threshold,
                ..
            } => format!(
                "input drift alarm {model} {version}: the last {window} inputs' {statistic} ranks {mean_rank:.3} among the calibration images', 0.500 expected, alarm at {threshold:.3} away"
            ),
        }
    }

    /// ` for NAME` when an entry names who asked.
    fn for_caller(caller: Option<&str>) -> String {
        caller.map(|c| format!(" for {c}")).unwrap_or_default()
    }

    /// The kind, as serialised.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::LedgerCreated { .. } => "ledger-created",
            Self::EntriesQuarantined { .. } => "entries-quarantined",
            Self::ModelAdmitted { .. } => "model-admitted",
            Self::ModelRefused { .. } => "model-refused",
            Self::PolicyChanged { .. } => "policy-changed",
            Self::Inference { .. } => "inference",
            Self::InferenceFailed { .. } => "inference-failed",
            Self::DriftAlarm { .. } => "drift-alarm",
            Self::InputDriftAlarm { .. } => "input-drift-alarm",
        }
    }

    /// When it happened.
    pub fn time(&self) -> Timestamp {
        match self {
            Self::LedgerCreated { time, .. }
            | Self::EntriesQuarantined { time, .. }
            | Self::ModelAdmitted { time, .. }
            | Self::ModelRefused { time, .. }
            | Self::PolicyChanged { time, .. }
            | Self::Inference { time, .. }
            | Self::InferenceFailed { time, .. }
            | Self::DriftAlarm { time, .. }
            | Self::InputDriftAlarm { time, .. } => *time,
        }
    }
}

/// Why an inference produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InferenceFailure {
    /// The guest refused the values (shape, range, non-finite).
    InputRefused,
    /// The guest ran past its deadline and was stopped.
    Deadline,
    /// The guest reached its memory cap.
    MemoryCap,
    /// The guest trapped.
    Trap,
    /// Any other sandbox failure.
    Sandbox,
}

impl InferenceFailure {
    /// As serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InputRefused => "input-refused",
            Self::Deadline => "deadline",
            Self::MemoryCap => "memory-cap",
            Self::Trap => "trap",
            Self::Sandbox => "sandbox",
        }
    }
}

/// A screening verdict as recorded: the guest's three, or `unscreened` for a
/// model run without a profile (vendor use, explicitly allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Nothing unusual at the calibrated thresholds.
    Accept,
    /// Unusual enough for a human to look; the prediction is returned.
    Flag,
    /// Too unusual to trust; withheld under `enforce`.
    Reject,
    /// Not screened.
    Unscreened,
}

impl Verdict {
    /// As serialised: `accept`, `flag`, `reject`, `unscreened`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Flag => "flag",
            Self::Reject => "reject",
            Self::Unscreened => "unscreened",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<medguard_screen::Verdict> for Verdict {
    fn from(v: medguard_screen::Verdict) -> Self {
        match v {
            medguard_screen::Verdict::Accept => Self::Accept,
            medguard_screen::Verdict::Flag => Self::Flag,
            medguard_screen::Verdict::Reject => Self::Reject,
        }
    }
}

/// What happens to the prediction of a rejected input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScreeningPolicy {
    /// Withheld: a rejected input gets no prediction.
    Enforce,
    /// Returned with the verdict.
    FlagOnly,
}

/// The per-deployment secret that names inputs in the ledger, shareable
/// with the threads that compute input digests.
#[derive(Clone)]
pub struct InputKey([u8; 32]);

impl std::fmt::Debug for InputKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputKey(..)")
    }
}

impl InputKey {
    pub(crate) fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    /// HMAC-SHA256 of an input tensor's bytes under the secret, hex.
    pub fn hmac(&self, tensor: &[u8]) -> String {
        input_hmac(&self.0, tensor)
    }
}

/// Longest text an entry's free-text field may hold, in bytes.
pub const TEXT_MAX_BYTES: usize = 2048;

/// `text` cut to at most `max` bytes on a character boundary, saying how
/// much was cut: free text from a refusal (file names an attacker chose)
/// must never make its entry too large to record.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(40).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &text[..end], text.len() - end)
}

/// HMAC-SHA256 of an input tensor's bytes under the deployment secret, hex.
pub fn input_hmac(secret: &[u8; 32], tensor: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(tensor);
    hex::encode(mac.finalize().into_bytes())
}
