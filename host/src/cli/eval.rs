//! `medguard eval`: runs the real guard over clean, attacked and corrupted
//! images and reports detection and accuracy with bootstrap intervals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use medguard_attest::AttestedModel;
use medguard_screen::Verdict;
use serde::Serialize;

use super::screening::{Mode, predicted_class, screen_all};
use super::{Exit, SandboxArgs, unsigned_or_refused};
use crate::eval::{self, Estimate, bootstrap, plot, proportion, roc_auc, tpr_at_fpr};
use crate::input::{self, Batch};
use crate::model_dir::read_capped;
use crate::sandbox::{GuestProgram, ScreenedImage};

/// Measure the guard: run the real guest over clean test images, attack sets
/// and benign corruptions; write a JSON report and a ROC plot.
#[derive(Debug, Args)]
pub struct EvalCmd {
    /// A calibrated model directory.
    model_dir: PathBuf,
    /// .npz archive with the clean test images and labels.
    #[arg(long, value_name = "NPZ")]
    clean: PathBuf,
    /// Array of clean uint8 images [N, H, W] in the archive.
    #[arg(long, default_value = "test_images")]
    clean_array: String,
    /// Array of integer labels in the archive.
    #[arg(long, default_value = "test_labels")]
    labels_array: String,
    /// Directory of attack and corruption sets (tests/adversarial/sets):
    /// `corruption-*.npz` hold `images`; every other .npz holds `images` and
    /// `flipped` (only flipped images count as attacks).
    #[arg(long, value_name = "DIR")]
    sets: PathBuf,
    /// Where to write the JSON report.
    #[arg(long, value_name = "JSON")]
    out: PathBuf,
    /// Where to write the ROC plot (SVG).
    #[arg(long, value_name = "SVG")]
    plot: Option<PathBuf>,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the guest's noise draws and of the bootstrap.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sandboxes to run in parallel.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report {
    model: String,
    guest_sha256: String,
    thresholds: Thresholds,
    clean: CleanReport,
    attacks: Vec<AttackReport>,
    corruptions: Vec<CorruptionReport>,
    bootstrap_rounds: usize,
    seed: u64,
}

#[derive(Debug, Serialize)]
struct Thresholds {
    flag: f64,
    reject: f64,
    flag_target_fpr: f64,
    reject_target_fpr: f64,
}

#[derive(Debug, Serialize)]
struct CleanReport {
    images: usize,
    /// Realised false-positive rate at the deployed flag threshold (flag or reject).
    flagged: Estimate,
    /// Realised false-positive rate at the deployed reject threshold.
    rejected: Estimate,
    accuracy_all: f64,
    accuracy_accepted: f64,
    accepted: f64,
    accuracy_not_rejected: f64,
}

#[derive(Debug, Serialize)]
struct AttackReport {
    name: String,
    /// Images attacked.
    attempted: usize,
    /// Attacks that flipped the bare model's prediction; the positives below.
    flipped: usize,
    roc_auc: Estimate,
    tpr_at_1pct_fpr: Estimate,
    tpr_at_5pct_fpr: Estimate,
    /// Detection at the deployed thresholds.
    detected_flag: f64,
    detected_reject: f64,
    /// Attack success against the bare model, and what remains once the guard
    /// rejects (enforce policy) or flags.
    success_bare: f64,
    success_past_reject: f64,
    success_past_flag: f64,
    /// ROC-AUC of each statistic's own p-value.
    statistic_auc: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct CorruptionReport {
    name: String,
    images: usize,
    flagged: Estimate,
    rejected: Estimate,
}

impl EvalCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs) -> anyhow::Result<Exit> {
        let Some(model) = unsigned_or_refused(&self.model_dir) else {
            return Ok(Exit::Refused);
        };
        let Some(screening) = &model.manifest().screening else {
            eprintln!(
                "medguard: refused: {} has no screening profile; run `medguard calibrate` first",
                model.manifest().name
            );
            return Ok(Exit::Refused);
        };
        let profile = &screening.profile;
        let bytes = read_capped(&self.clean, input::ARCHIVE_MAX_BYTES)?;
        let clean_images = input::read_npz_images(&bytes, &self.clean_array)
            .with_context(|| format!("reading {}", self.clean.display()))?;
        let (_, labels) = input::read_npz_array::<u8>(&bytes, &self.labels_array)
            .with_context(|| format!("reading labels from {}", self.clean.display()))?;
        if labels.len() != clean_images.len() {
            bail!(
                "{} labels for {} clean images",
                labels.len(),
                clean_images.len()
            );
        }
        let sets = list_sets(&self.sets)?;
        let (program, _) = sandbox.start()?;
        let run = |batch: &Batch, label: &str, seed: u64| {
            screen(&program, &model, batch, label, seed, self.threads)
        };

        let clean = run(&clean_images, "clean test", self.seed)?;
        let clean_p: Vec<f64> = clean.iter().map(|s| s.p_value).collect();
        let n = clean.len();
        let correct = |s: &Judged, i: usize| s.class == labels[i] as usize;
        let accepted: Vec<usize> = (0..n)
            .filter(|&i| clean[i].verdict == Verdict::Accept)
            .collect();
        let not_rejected: Vec<usize> = (0..n)
            .filter(|&i| clean[i].verdict != Verdict::Reject)
            .collect();
        let accuracy = |idx: &[usize]| {
            idx.iter().filter(|&&i| correct(&clean[i], i)).count() as f64 / idx.len().max(1) as f64
        };
        let all: Vec<usize> = (0..n).collect();
        let clean_report = CleanReport {
            images: n,
            flagged: proportion(n - accepted.len(), n),
            rejected: proportion(n - not_rejected.len(), n),
            accuracy_all: accuracy(&all),
            accuracy_accepted: accuracy(&accepted),
            accepted: accepted.len() as f64 / n as f64,
            accuracy_not_rejected: accuracy(&not_rejected),
        };

        let mut attacks = Vec::new();
        let mut corruptions = Vec::new();
        let mut curves = Vec::new();
        for (k, set) in sets.iter().enumerate() {
            let bytes = read_capped(&set.path, input::ARCHIVE_MAX_BYTES)?;
            let images = input::read_npz_images(&bytes, "images")
                .with_context(|| format!("reading {}", set.path.display()))?;
            let seed = self.seed.wrapping_add(1000 * (k as u64 + 1));
            if set.corruption {
                let judged = run(&images, &set.name, seed)?;
                let flagged = judged
                    .iter()
                    .filter(|s| s.verdict != Verdict::Accept)
                    .count();
                let rejected = judged
                    .iter()
                    .filter(|s| s.verdict == Verdict::Reject)
                    .count();
                corruptions.push(CorruptionReport {
                    name: set.name.clone(),
                    images: judged.len(),
                    flagged: proportion(flagged, judged.len()),
                    rejected: proportion(rejected, judged.len()),
                });
                continue;
            }
            let (_, flipped) = input::read_npz_array::<bool>(&bytes, "flipped")
                .with_context(|| format!("reading `flipped` from {}", set.path.display()))?;
            if flipped.len() != images.len() {
                bail!("{}: `flipped` does not match `images`", set.path.display());
            }
            let indices: Vec<usize> = (0..flipped.len()).filter(|&i| flipped[i]).collect();
            let kept = images
                .select(&indices)
                .context("`flipped` is longer than `images`")?;
            let judged = run(&kept, &set.name, seed)?;
            let attack_p: Vec<f64> = judged.iter().map(|s| s.p_value).collect();
            let boot = |metric: &dyn Fn(&[f64], &[f64]) -> f64| {
                bootstrap(
                    &clean_p,
                    &attack_p,
                    self.bootstrap,
                    self.seed ^ k as u64,
                    metric,
                )
            };
            let attempted = images.len();
            let passed = |v: &dyn Fn(Verdict) -> bool| {
                judged.iter().filter(|s| v(s.verdict)).count() as f64 / attempted as f64
            };
            let statistic_auc = profile
                .statistics
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    let c: Vec<f64> = clean.iter().map(|x| x.statistic_p[j]).collect();
                    let a: Vec<f64> = judged.iter().map(|x| x.statistic_p[j]).collect();
                    (s.name(), roc_auc(&c, &a))
                })
                .collect();
            let report = AttackReport {
                name: set.name.clone(),
                attempted,
                flipped: judged.len(),
                roc_auc: boot(&roc_auc),
                tpr_at_1pct_fpr: boot(&|c, a| tpr_at_fpr(c, a, 0.01)),
                tpr_at_5pct_fpr: boot(&|c, a| tpr_at_fpr(c, a, 0.05)),
                detected_flag: judged
                    .iter()
                    .filter(|s| s.verdict != Verdict::Accept)
                    .count() as f64
                    / judged.len().max(1) as f64,
                detected_reject: judged
                    .iter()
                    .filter(|s| s.verdict == Verdict::Reject)
                    .count() as f64
                    / judged.len().max(1) as f64,
                success_bare: judged.len() as f64 / attempted as f64,
                success_past_reject: passed(&|v| v != Verdict::Reject),
                success_past_flag: passed(&|v| v == Verdict::Accept),
                statistic_auc,
            };
            curves.push(plot::Curve {
                label: format!("{} (AUC {:.3})", set.name, report.roc_auc.value),
                points: eval::roc_curve(&clean_p, &attack_p),
            });
            attacks.push(report);
        }

        let report = Report {
            model: format!("{} {}", model.manifest().name, model.manifest().version),
            guest_sha256: program.digest().to_string(),
            thresholds: Thresholds {
                flag: profile.thresholds.flag,
                reject: profile.thresholds.reject,
                flag_target_fpr: profile.targets.flag_fpr,
                reject_target_fpr: profile.targets.reject_fpr,
            },
            clean: clean_report,
            attacks,
            corruptions,
            bootstrap_rounds: self.bootstrap,
            seed: self.seed,
        };
        let mut text = serde_json::to_vec_pretty(&report)?;
        text.push(b'\n');
        std::fs::write(&self.out, text)
            .with_context(|| format!("writing {}", self.out.display()))?;
        if let Some(path) = &self.plot {
            plot::roc_svg(
                path,
                &format!("medguard screening, {}", report.model),
                &curves,
            )?;
        }
        print_summary(&report);
        Ok(Exit::Ok)
    }
}

/// What evaluation keeps of one screened image.
struct Judged {
    class: usize,
    verdict: Verdict,
    p_value: f64,
    statistic_p: Vec<f64>,
}

fn screen(
    program: &GuestProgram,
    model: &AttestedModel,
    batch: &Batch,
    label: &str,
    seed: u64,
    threads: usize,
) -> anyhow::Result<Vec<Judged>> {
    let screened = screen_all(program, model, Mode::Judge, batch, seed, threads, label)?;
    screened
        .into_iter()
        .map(|s: ScreenedImage| {
            let screening = s.screening.context("the guest returned no verdict")?;
            let probabilities = s.probabilities.context("the guest withheld a prediction")?;
            Ok(Judged {
                class: predicted_class(&probabilities),
                verdict: screening.verdict,
                p_value: screening.p_value,
                statistic_p: screening.statistics.iter().map(|r| r.p_value).collect(),
            })
        })
        .collect()
}

struct SetFile {
    name: String,
    path: PathBuf,
    corruption: bool,
}

fn list_sets(dir: &Path) -> anyhow::Result<Vec<SetFile>> {
    let mut sets: Vec<SetFile> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npz"))
        .filter_map(|path| {
            let name = path.file_stem()?.to_string_lossy().into_owned();
            Some(SetFile {
                corruption: name.starts_with("corruption-"),
                name,
                path,
            })
        })
        .collect();
    if sets.is_empty() {
        bail!("{} holds no .npz sets", dir.display());
    }
    // Attacks by family then strength, as a reader scans the table.
    sets.sort_by_key(|s| {
        let (family, strength) = s.name.rsplit_once('-').unwrap_or((&s.name, ""));
        (
            s.corruption,
            family.to_owned(),
            strength.parse::<f64>().map_or(0, |v| (v * 100.0) as u64),
            s.name.clone(),
        )
    });
    Ok(sets)
}

fn print_summary(r: &Report) {
    let pct = |e: &Estimate| {
        format!(
            "{:5.1}% [{:.1}, {:.1}]",
            e.value * 100.0,
            e.ci_low * 100.0,
            e.ci_high * 100.0
        )
    };
    println!(
        "clean test: {} images; flagged {} (target {}%), rejected {} (target {}%); accuracy {:.3}, of accepted {:.3}",
        r.clean.images,
        pct(&r.clean.flagged),
        r.thresholds.flag_target_fpr * 100.0,
        pct(&r.clean.rejected),
        r.thresholds.reject_target_fpr * 100.0,
        r.clean.accuracy_all,
        r.clean.accuracy_accepted
    );
    println!(
        "\n{:<10} {:>7} {:>22} {:>24} {:>24} {:>8} {:>8}",
        "attack", "flipped", "ROC-AUC [95% CI]", "TPR@1%FPR", "TPR@5%FPR", "past rej", "past flg"
    );
    for a in &r.attacks {
        println!(
            "{:<10} {:>7} {:>22} {:>24} {:>24} {:>7.1}% {:>7.1}%",
            a.name,
            a.flipped,
            format!(
                "{:.3} [{:.3}, {:.3}]",
                a.roc_auc.value, a.roc_auc.ci_low, a.roc_auc.ci_high
            ),
            pct(&a.tpr_at_1pct_fpr),
            pct(&a.tpr_at_5pct_fpr),
            a.success_past_reject * 100.0,
            a.success_past_flag * 100.0,
        );
    }
    println!(
        "\n{:<28} {:>24} {:>24}",
        "benign corruption", "flagged", "rejected"
    );
    for c in &r.corruptions {
        println!(
            "{:<28} {:>24} {:>24}",
            c.name,
            pct(&c.flagged),
            pct(&c.rejected)
        );
    }
}
