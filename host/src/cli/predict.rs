use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use medguard_attest::{AttestedModel, Sha256Digest};
use medguard_ledger::{Entry, Ledger, Receipt};
use medguard_screen::Verdict;
use serde::Serialize;

use super::screening::predicted_class;
use super::{Exit, SandboxArgs, StateArgs, TrustArgs};
use crate::input::{self, INPUT_MAX_BYTES};
use crate::model_dir::read_capped;
use crate::sandbox::{
    GuestFailure, GuestProgram, SandboxError, ScreenOptions, ScreenedImage, Session,
};

/// Admit a signed model under the trust policy, then screen and classify images with it in the sandbox.
#[derive(Debug, Args)]
pub struct PredictCmd {
    /// Signed model directory: model.sig, manifest.json and the model file.
    model_dir: PathBuf,
    /// PNG images (8- or 16-bit, gray or RGB) or .npy arrays ([H,W], [N,H,W] or [N,C,H,W]).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Print one JSON object per image per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    screening: ScreeningArgs,
    #[command(flatten)]
    trust: TrustArgs,
}

/// How screening verdicts are enforced.
#[derive(Debug, Args)]
pub(super) struct ScreeningArgs {
    /// enforce: a rejected input gets no prediction (exit 1); flag-only: every
    /// input gets its prediction and verdict, rejections still exit 1.
    #[arg(long, value_enum, default_value_t = Policy::Enforce)]
    policy: Policy,
    /// Seed of the guest's noise draws, to reproduce an earlier verdict
    /// [default: fresh from the OS for every run, printed with each result].
    #[arg(long)]
    seed: Option<u64>,
    /// Run a model whose manifest has no screening profile, without screening.
    /// Only for models that were never calibrated; the output says "unscreened".
    #[arg(long)]
    allow_unscreened: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Policy {
    Enforce,
    FlagOnly,
}

impl ScreeningArgs {
    /// The settings every input of this run is screened with.
    pub(super) fn settings(&self) -> anyhow::Result<Settings> {
        let seed = match self.seed {
            Some(seed) => seed,
            None => getrandom::u64()
                .map_err(|e| anyhow::anyhow!("drawing a screening seed from the OS: {e}"))?,
        };
        Ok(Settings {
            seed,
            withhold_rejected: self.policy == Policy::Enforce,
            allow_unscreened: self.allow_unscreened,
        })
    }
}

/// Resolved screening settings of one run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    seed: u64,
    withhold_rejected: bool,
    allow_unscreened: bool,
}

impl Default for Settings {
    /// The demo's settings: enforce, a fixed seed so the demo reads the same
    /// every time.
    fn default() -> Self {
        Self {
            seed: 20261128,
            withhold_rejected: true,
            allow_unscreened: false,
        }
    }
}

impl PredictCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs, state: &StateArgs) -> anyhow::Result<Exit> {
        // Admission comes first: a refused model never meets the guest.
        let Some(admitted) =
            self.trust
                .admitted_or_refused(&state.dir()?, &self.model_dir, None)?
        else {
            return Ok(Exit::Refused);
        };
        let (model, mut ledger) = (admitted.model, admitted.ledger);
        let settings = self.screening.settings()?;
        let (program, _) = sandbox.start()?;
        if !model_runs(&program, &model, settings)? {
            return Ok(Exit::Refused);
        }
        let format = if self.json {
            Format::Json
        } else {
            Format::Human
        };
        predict_files(
            &program,
            &model,
            &self.inputs,
            format,
            settings,
            &mut ledger,
        )
    }
}

/// How predictions are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// One JSON object per image per line.
    Json,
    /// An aligned line per image.
    Human,
}

/// One image's result, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Prediction<'a> {
    input: String,
    /// `None` when the input was rejected and the policy withholds predictions.
    label: Option<&'a str>,
    probabilities: Option<BTreeMap<&'a str, f32>>,
    /// accept, flag, reject, or unscreened (uncalibrated model, explicitly allowed).
    verdict: &'static str,
    /// Combined p-value in [0, 1], lower is more suspicious; `None` when unscreened.
    p_value: Option<f64>,
    statistics: BTreeMap<String, StatisticJson>,
    integrity: Integrity,
    seed: u64,
    model: ModelRef<'a>,
    guest_sha256: &'a str,
    /// The ledger entry of this result with its inclusion proof and signed
    /// checkpoint: `medguard ledger verify-receipt` checks it offline.
    receipt: Option<Receipt>,
}

#[derive(Debug, Serialize)]
struct StatisticJson {
    value: f64,
    p_value: f64,
}

/// Format integrity: reported, not counted as detection.
#[derive(Debug, Serialize)]
struct Integrity {
    source_bits: u8,
    off_grid: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct ModelRef<'a> {
    name: &'a str,
    version: &'a str,
    sha256: &'a str,
}

#[derive(Debug, Serialize)]
struct Rejection<'a> {
    input: &'a str,
    error: String,
}

/// Loads the attested model into a sandbox once, before any input is read.
/// The guest refusing the model (its tensors or shapes contradict the
/// manifest), or a model without a screening profile when unscreened
/// operation was not allowed, is a refusal: the reason is printed and
/// `false` returned.
pub(super) fn model_runs(
    program: &GuestProgram,
    model: &AttestedModel,
    settings: Settings,
) -> anyhow::Result<bool> {
    if model.manifest().screening.is_none() && !settings.allow_unscreened {
        eprintln!(
            "medguard: refused: {} has no screening profile; run `medguard calibrate` on it (or pass --allow-unscreened to run it unguarded)",
            model.manifest().name
        );
        return Ok(false);
    }
    match program.session(model) {
        Ok(_) => Ok(true),
        Err(SandboxError::Guest(GuestFailure::InvalidModel(why))) => {
            eprintln!("medguard: refused: the guest cannot run the attested model: {why}");
            Ok(false)
        }
        Err(e) => Err(anyhow::Error::new(e).context("loading the model in the sandbox")),
    }
}

/// Screens and classifies every file, each in a fresh sandbox session (a
/// new store, instance and memory), so that nothing of one input survives
/// into the next. A refused input, or one whose sandbox trapped, is
/// reported and the next input goes on.
pub(super) fn predict_files(
    program: &GuestProgram,
    model: &AttestedModel,
    files: &[PathBuf],
    format: Format,
    settings: Settings,
    ledger: &mut Ledger,
) -> anyhow::Result<Exit> {
    let labels = &model.manifest().output.labels;
    let (version, sha256) = (
        model.manifest().version.to_string(),
        model.model_digest().to_string(),
    );
    let guest_sha256 = program.digest().to_string();
    let model_ref = ModelRef {
        name: &model.manifest().name,
        version: &version,
        sha256: &sha256,
    };
    let width = files
        .iter()
        .map(|f| f.display().to_string().len())
        .max()
        .unwrap_or(0);
    let context = Context {
        labels,
        model: model_ref,
        guest_sha256: &guest_sha256,
        guest_digest: program.digest(),
        seed: settings.seed,
    };
    let mut exit = Exit::Ok;
    for file in files {
        let name = file.display().to_string();
        let digest = |tensor: &[u8]| ledger.input_hmac(tensor);
        match screen_file(program, model, file, settings, &digest) {
            Ok((rows, source_bits, hmacs)) => {
                let many = rows.len() > 1;
                let predictions: Vec<Prediction<'_>> = rows
                    .into_iter()
                    .enumerate()
                    .map(|(i, row)| {
                        let input = if many {
                            format!("{name}[{i}]")
                        } else {
                            name.clone()
                        };
                        context.prediction(input, row, source_bits)
                    })
                    .collect();
                // One group commit per file: every result is durable in the
                // ledger before it is shown.
                let time = jiff::Timestamp::now();
                let entries: Vec<Entry> = predictions
                    .iter()
                    .zip(hmacs)
                    .map(|(p, input_hmac)| context.entry(p, input_hmac, time, model, settings))
                    .collect();
                let receipts = ledger
                    .append(&entries)
                    .context("recording the results in the ledger")?;
                for (mut p, receipt) in predictions.into_iter().zip(receipts) {
                    p.receipt = Some(receipt);
                    if p.verdict == "reject" {
                        exit = Exit::Refused;
                    }
                    match format {
                        Format::Json => println!("{}", serde_json::to_string(&p)?),
                        Format::Human => println!("{}", human_line(&p, width)),
                    }
                }
            }
            Err(Failure::Rejected(why)) => {
                exit = Exit::Refused;
                match format {
                    Format::Json => println!(
                        "{}",
                        serde_json::to_string(&Rejection {
                            input: &name,
                            error: why.clone()
                        })?
                    ),
                    Format::Human => eprintln!("medguard: rejected {name}: {why}"),
                }
            }
            Err(Failure::Internal(e)) => return Err(e.context(format!("classifying {name}"))),
        }
    }
    Ok(exit)
}

/// What every result of one run shares.
struct Context<'a> {
    labels: &'a [String],
    model: ModelRef<'a>,
    guest_sha256: &'a str,
    guest_digest: Sha256Digest,
    seed: u64,
}

impl<'a> Context<'a> {
    fn prediction(&self, input: String, row: ScreenedImage, source_bits: u8) -> Prediction<'a> {
        let labels = self.labels;
        let label = row
            .probabilities
            .as_deref()
            .map(|p| labels[predicted_class(p)].as_str());
        let (verdict, p_value, statistics) = match &row.screening {
            None => ("unscreened", None, BTreeMap::new()),
            Some(s) => (
                match s.verdict {
                    Verdict::Accept => "accept",
                    Verdict::Flag => "flag",
                    Verdict::Reject => "reject",
                },
                Some(s.p_value),
                s.statistics
                    .iter()
                    .map(|r| {
                        (
                            r.statistic.name(),
                            StatisticJson {
                                value: r.value,
                                p_value: r.p_value,
                            },
                        )
                    })
                    .collect(),
            ),
        };
        Prediction {
            input,
            label,
            probabilities: row
                .probabilities
                .map(|p| labels.iter().map(String::as_str).zip(p).collect()),
            verdict,
            p_value,
            statistics,
            integrity: Integrity {
                source_bits,
                off_grid: row.off_grid,
            },
            seed: self.seed,
            model: self.model,
            guest_sha256: self.guest_sha256,
            receipt: None,
        }
    }

    /// The ledger entry of one result: digests and the verdict, never the
    /// input's name or pixels.
    fn entry(
        &self,
        p: &Prediction<'_>,
        input_hmac: String,
        time: jiff::Timestamp,
        model: &AttestedModel,
        settings: Settings,
    ) -> Entry {
        Entry::Inference {
            time,
            model: model.manifest().name.clone(),
            version: model.manifest().version.clone(),
            model_sha256: model.model_digest(),
            guest_sha256: self.guest_digest,
            input_hmac,
            verdict: p.verdict.to_owned(),
            p_value: p.p_value,
            label: p.label.map(str::to_owned),
            probabilities: p.probabilities.as_ref().map(|probs| {
                probs
                    .iter()
                    .map(|(label, v)| ((*label).to_owned(), *v))
                    .collect()
            }),
            policy: if settings.withhold_rejected {
                "enforce"
            } else {
                "flag-only"
            }
            .to_owned(),
            seed: self.seed,
        }
    }
}

fn human_line(p: &Prediction<'_>, width: usize) -> String {
    let what = match (&p.label, &p.probabilities) {
        (Some(label), Some(probabilities)) => {
            let probs: Vec<String> = probabilities
                .iter()
                .map(|(l, v)| format!("{l} {v:.3}"))
                .collect();
            format!("{label:<12} ({})", probs.join(", "))
        }
        _ => "prediction withheld".to_owned(),
    };
    let evidence: Vec<String> = p
        .statistics
        .iter()
        .map(|(name, s)| format!("{name} {:.3} p {:.3}", s.value, s.p_value))
        .collect();
    let screening = match p.p_value {
        Some(pv) => format!("{} (p = {pv:.4}; {})", p.verdict, evidence.join(", ")),
        None => p.verdict.to_owned(),
    };
    let off_grid = if p.integrity.off_grid > 0 {
        format!(
            "; {} value(s) off the {}-bit grid",
            p.integrity.off_grid, p.integrity.source_bits
        )
    } else {
        String::new()
    };
    let ledger = p
        .receipt
        .as_ref()
        .map(|r| format!("  [ledger #{}]", r.index))
        .unwrap_or_default();
    format!(
        "{:<width$}  {what:<46} {screening}{off_grid}{ledger}",
        p.input
    )
}

enum Failure {
    /// The input was refused; other inputs go on.
    Rejected(String),
    /// The sandbox or host failed; stop.
    Internal(anyhow::Error),
}

fn screen_file(
    program: &GuestProgram,
    model: &AttestedModel,
    file: &Path,
    settings: Settings,
    digest: &dyn Fn(&[u8]) -> String,
) -> Result<(Vec<ScreenedImage>, u8, Vec<String>), Failure> {
    let bytes = read_capped(file, INPUT_MAX_BYTES).map_err(|e| Failure::Rejected(e.to_string()))?;
    let batch = input::decode(&bytes, &model.manifest().input, model.manifest().max_batch)
        .map_err(|e| Failure::Rejected(e.to_string()))?;
    // The ledger names each image by a keyed digest of the exact tensor the
    // guest screens, little-endian f32.
    let per_image = batch.data.len() / batch.len().max(1);
    let hmacs = batch
        .data
        .chunks(per_image.max(1))
        .map(|image| {
            let bytes: Vec<u8> = image.iter().flat_map(|v| v.to_le_bytes()).collect();
            digest(&bytes)
        })
        .collect();
    // This input's own sandbox; it ends with this function.
    let mut session = program
        .session(model)
        .context("starting a sandbox session")
        .map_err(Failure::Internal)?;
    let mut rows = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(model.manifest().max_batch as usize) {
        let s = &mut session;
        let result = if model.manifest().screening.is_some() {
            s.screen(
                &chunk.shape,
                &chunk.data,
                ScreenOptions {
                    seed: settings.seed,
                    source_bits: chunk.source_bits,
                    withhold_rejected: settings.withhold_rejected,
                },
            )
        } else {
            // Only reachable with --allow-unscreened (see open_session).
            s.classify(&chunk.shape, &chunk.data).map(|rows| {
                rows.into_iter()
                    .map(|p| ScreenedImage {
                        probabilities: Some(p),
                        statistics: Vec::new(),
                        screening: None,
                        off_grid: 0,
                    })
                    .collect()
            })
        };
        match result {
            Ok(r) => rows.extend(r),
            Err(SandboxError::Guest(GuestFailure::InvalidInput(why))) => {
                return Err(Failure::Rejected(why));
            }
            // A trap, deadline or memory-cap hit ends this input's session
            // only; the next input gets a fresh one.
            Err(e) => return Err(Failure::Rejected(e.to_string())),
        }
    }
    Ok((rows, batch.source_bits, hmacs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sandbox::{CompiledCache, Limits, Runtime};

    /// Issue 10, item 4: one `predict` call used to run every input through
    /// one instance. Each input now gets a session of its own.
    #[test]
    fn every_input_gets_a_fresh_sandbox_session() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let model = crate::model_dir::load(&root.join("models/pneumonia")).unwrap();
        let cache = CompiledCache::open(&root.join("target/test-guest-cache")).unwrap();
        let (program, _) = Runtime::new(Limits::default())
            .unwrap()
            .load_guest(&crate::guest::bundled().unwrap(), Some(&cache))
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(data.path()).unwrap();
        let files: Vec<PathBuf> = ["normal-1", "pneumonia-1", "normal-2"]
            .iter()
            .map(|f| root.join(format!("models/pneumonia/samples/{f}.png")))
            .collect();
        let before = program.sessions_started();
        let exit = predict_files(
            &program,
            &model,
            &files,
            Format::Json,
            Settings::default(),
            &mut ledger,
        )
        .unwrap();
        assert_eq!(exit, Exit::Ok);
        assert_eq!(program.sessions_started() - before, 3);
        assert_eq!(ledger.size(), 4);
    }
}
