//! `medguard predict`: flags to [`Guard::classify`] calls, results to lines.

use std::path::{Path, PathBuf};

use anyhow::Context;

use clap::{Args, ValueEnum};
use medguard_attest::AttestedModel;
use medguard_certify::Certificate;
use medguard_ledger::entry::{ScreeningPolicy, Verdict};
use serde::Serialize;

use super::{Exit, SandboxArgs, StateArgs, TrustArgs};
use crate::guard::{ClassifyError, ClassifyOptions, Guard, fresh_seed};
use crate::input::INPUT_MAX_BYTES;
use crate::model_dir::read_capped;
use crate::prediction::{ModelRef, Prediction};
use crate::report::structured_report;

/// Admit a signed model under the trust policy, then screen and classify images with it in the sandbox.
#[derive(Debug, Args)]
pub struct PredictCmd {
    /// Signed model directory: model.sig, manifest.json and the model file.
    model_dir: PathBuf,
    /// PNG images (8- or 16-bit, gray or RGB), .npy arrays ([H,W], [N,H,W] or [N,C,H,W], N up to the model's max_batch), or DICOM Part 10 files (decoded in the sandbox as the model's manifest says).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Print one JSON object per image per line.
    #[arg(long)]
    json: bool,
    /// Write a DICOM structured report (IHE AI Results) for every DICOM
    /// input into this directory, named by the report's SOP Instance UID.
    #[arg(long, value_name = "DIR")]
    sr_dir: Option<PathBuf>,
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
    /// Whether `--seed` fixed the seed (else each input may draw its own).
    pub(super) fn seed_is_fixed(&self) -> bool {
        self.seed.is_some()
    }

    /// The options every input of this run is screened with.
    pub(super) fn options(&self) -> anyhow::Result<ClassifyOptions> {
        let seed = match self.seed {
            Some(seed) => seed,
            None => fresh_seed()
                .map_err(|e| anyhow::anyhow!("drawing a screening seed from the OS: {e}"))?,
        };
        Ok(ClassifyOptions {
            seed,
            policy: match self.policy {
                Policy::Enforce => ScreeningPolicy::Enforce,
                Policy::FlagOnly => ScreeningPolicy::FlagOnly,
            },
            allow_unscreened: self.allow_unscreened,
        })
    }
}

/// The demo's options: enforce, a fixed seed so the demo reads the same
/// every time.
pub(super) const DEMO_OPTIONS: ClassifyOptions = ClassifyOptions {
    seed: 20261128,
    policy: ScreeningPolicy::Enforce,
    allow_unscreened: false,
};

impl PredictCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs, state: &StateArgs) -> anyhow::Result<Exit> {
        let options = self.screening.options()?;
        let Some((guard, model)) = ready_guard(
            &self.trust,
            sandbox,
            &state.dir()?,
            &self.model_dir,
            options,
        )?
        else {
            return Ok(Exit::Refused);
        };
        let format = if self.json {
            Format::Json
        } else {
            Format::Human
        };
        let output = Output {
            format,
            sr_dir: self.sr_dir.as_deref(),
        };
        predict_files(&guard, &model, &self.inputs, output, options)
    }
}

/// Where results go.
#[derive(Debug, Clone, Copy)]
pub(super) struct Output<'a> {
    /// How they are printed.
    pub format: Format,
    /// Where DICOM inputs' structured reports are written, if anywhere.
    pub sr_dir: Option<&'a Path>,
}

impl From<Format> for Output<'_> {
    fn from(format: Format) -> Self {
        Self {
            format,
            sr_dir: None,
        }
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

#[derive(Debug, Serialize)]
struct Rejection<'a> {
    input: &'a str,
    error: String,
}

/// Admits `model_dir` under the policy first (a refused model never meets
/// the guest, nor any input or archive), then starts the sandbox and checks
/// the model runs in it. `None`: refused, the reason printed.
pub(super) fn ready_guard(
    trust: &TrustArgs,
    sandbox: &SandboxArgs,
    data_dir: &Path,
    model_dir: &Path,
    options: ClassifyOptions,
) -> anyhow::Result<Option<(Guard, AttestedModel)>> {
    let Some((guard, model, _)) = trust.admitted_or_refused(data_dir, model_dir, None)? else {
        return Ok(None);
    };
    let (program, _) = sandbox.start(None)?;
    let guard = guard.with_sandbox(program);
    if !model_runs(&guard, &model, options)? {
        return Ok(None);
    }
    Ok(Some((guard, model)))
}

/// Loads the attested model into a sandbox once, before any input is read.
/// The guest refusing the model, or a model without a screening profile
/// when unscreened operation was not allowed, is a refusal: the reason is
/// printed and `false` returned.
pub(super) fn model_runs(
    guard: &Guard,
    model: &AttestedModel,
    options: ClassifyOptions,
) -> anyhow::Result<bool> {
    if model.manifest().screening.is_none() && !options.allow_unscreened {
        eprintln!(
            "medguard: refused: {} has no screening profile; run `medguard calibrate` on it (or pass --allow-unscreened to run it unguarded)",
            model.manifest().name
        );
        return Ok(false);
    }
    match guard.check_model_runs(model)? {
        Ok(()) => Ok(true),
        Err(why) => {
            eprintln!("medguard: refused: {why}");
            Ok(false)
        }
    }
}

/// Screens and classifies every file through the guard: each in a sandbox
/// session of its own, each result durable in the ledger before it is
/// printed. A refused input, or one whose sandbox trapped, is reported and
/// the next input goes on; a ledger failure stops the run.
pub(super) fn predict_files<'o>(
    guard: &Guard,
    model: &AttestedModel,
    files: &[PathBuf],
    output: impl Into<Output<'o>>,
    options: ClassifyOptions,
) -> anyhow::Result<Exit> {
    let Output { format, sr_dir } = output.into();
    let model_ref = ModelRef::of(model);
    let guest_sha256 = guard
        .program()
        .map(|p| p.digest().to_string())
        .unwrap_or_default();
    let width = files
        .iter()
        .map(|f| f.display().to_string().len())
        .max()
        .unwrap_or(0);
    let mut exit = Exit::Ok;
    let refuse = |name: &str, why: String| -> anyhow::Result<()> {
        match format {
            Format::Json => println!(
                "{}",
                serde_json::to_string(&Rejection {
                    input: name,
                    error: why
                })?
            ),
            Format::Human => eprintln!("medguard: rejected {name}: {why}"),
        }
        Ok(())
    };
    for file in files {
        let name = file.display().to_string();
        let bytes = match read_capped(file, INPUT_MAX_BYTES) {
            Ok(bytes) => bytes,
            Err(e) => {
                exit = Exit::Refused;
                refuse(&name, e.to_string())?;
                continue;
            }
        };
        let classified = match guard.classify(model, &bytes, options) {
            Ok(c) => c,
            Err(ClassifyError::Refused(why)) => {
                exit = Exit::Refused;
                refuse(&name, why.to_string())?;
                continue;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("classifying {name}"))),
        };
        let many = classified.images.len() > 1;
        for (i, image) in classified.images.iter().enumerate() {
            let input = if many {
                format!("{name}[{i}]")
            } else {
                name.clone()
            };
            let mut p = Prediction::new(
                Some(input),
                image,
                &classified,
                model_ref.clone(),
                &guest_sha256,
            );
            if let (Some(dir), Some(program)) = (sr_dir, guard.program()) {
                match structured_report(model, &program.digest(), &classified, image) {
                    None => {}
                    Some(Ok((uid, bytes))) => {
                        let path = dir.join(format!("{uid}.dcm"));
                        write_atomically(&path, &bytes)
                            .with_context(|| format!("writing {}", path.display()))?;
                        p.structured_report = Some(path.display().to_string());
                    }
                    Some(Err(e)) => {
                        // The result stands (it is in the ledger); the
                        // report could not be made, and the run says so.
                        exit = Exit::Refused;
                        p.structured_report_error = Some(e.to_string());
                    }
                }
            }
            // Rejected, or withheld for want of a certificate: no label.
            if image.verdict == Verdict::Reject || image.label.is_none() {
                exit = Exit::Refused;
            }
            match format {
                Format::Json => println!("{}", serde_json::to_string(&p)?),
                Format::Human => println!("{}", human_line(&p, width)),
            }
        }
    }
    Ok(exit)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames
/// it into place: a report is either whole or absent.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

fn human_line(p: &Prediction<'_>, width: usize) -> String {
    let what = match (&p.result.label, &p.result.probabilities) {
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
        .result
        .statistics
        .iter()
        .map(|(name, s)| format!("{name} {:.3} p {:.3}", s.value, s.p_value))
        .collect();
    let screening = match p.result.p_value {
        Some(pv) => format!(
            "{} (p = {pv:.4}; {})",
            p.result.verdict,
            evidence.join(", ")
        ),
        None => p.result.verdict.to_string(),
    };
    let off_grid = if p.result.integrity.off_grid > 0 {
        format!(
            "; {} value(s) off the {}-bit grid",
            p.result.integrity.off_grid, p.result.integrity.source_bits
        )
    } else {
        String::new()
    };
    let certificate = match &p.result.certificate {
        None => String::new(),
        Some(Certificate::RandomizedSmoothing(c)) => {
            // A withheld label's certificate carries no votes.
            let votes = match (&c.votes, c.class) {
                (Some(v), Some(class)) => format!(
                    " ({}/{} votes)",
                    v.get(class).copied().unwrap_or(0),
                    c.samples
                ),
                _ => String::new(),
            };
            match c.radius_l2 {
                Some(r) if c.certified => format!("; certified to L2 {r:.3}{votes}"),
                Some(r) => format!(
                    "; certified only to L2 {r:.3}, below the required {}{votes}",
                    c.required_radius_l2
                ),
                None => format!("; not certified: the noised copies disagree{votes}"),
            }
        }
        Some(Certificate::IntervalBoundPropagation(c)) => match c.radius_linf {
            // In grey levels of an 8-bit image for unit-interval inputs,
            // the unit people read them in; exact values are in --json.
            Some(r) if c.certified => format!("; certified to L-inf {}", linf(r)),
            Some(r) => format!(
                "; certified only to L-inf {}, below the required {}",
                linf(r),
                linf(c.required_radius_linf)
            ),
            None => format!(
                "; not certified: the interval bounds overlap at any radius (required {})",
                linf(c.required_radius_linf)
            ),
        },
    };
    let report = match (&p.structured_report, &p.structured_report_error) {
        (Some(path), _) => format!("  report: {path}"),
        (None, Some(why)) => format!("  no report: {why}"),
        (None, None) => String::new(),
    };
    format!(
        "{:<width$}  {what:<46} {screening}{certificate}{off_grid}  [ledger #{}]{report}",
        p.result.input.as_deref().unwrap_or_default(),
        p.receipt.index
    )
}

/// An L-infinity radius in input units, with its 8-bit grey levels.
fn linf(r: f64) -> String {
    format!("{r:.5} ({:.2}/255)", r * 255.0)
}
