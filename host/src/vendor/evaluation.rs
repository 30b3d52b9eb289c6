//! Evaluation: the real guard over clean test images, attack sets and
//! benign corruptions, with detection and accuracy and their bootstrap
//! intervals (the metrics are in [`crate::eval`]).

use std::collections::BTreeMap;

use medguard_attest::AttestedModel;
use medguard_screen::{Verdict, predicted_class};
use serde::Serialize;

use super::VendorError;
use super::bulk::{Mode, Run, certify_all, screen_all};
use crate::eval::{Estimate, bootstrap, plot, proportion, roc_auc, roc_curve, tpr_at_fpr};
use crate::input::Batch;
use crate::sandbox::{GuestProgram, ScreenedImage};
use medguard_certify::Certificate;

/// A set of images to judge besides the clean test set.
#[derive(Debug)]
pub struct EvalSet {
    /// Its name in the report.
    pub name: String,
    /// The images.
    pub images: Batch,
    /// For an attack set, which attacks flipped the bare model (only those
    /// count); `None` for a benign corruption set.
    pub flipped: Option<Vec<bool>>,
}

/// How to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Bootstrap resamples for the confidence intervals.
    pub bootstrap: usize,
    /// Seed of the guest's noise draws and of the bootstrap.
    pub seed: u64,
    /// Sandboxes in parallel.
    pub threads: usize,
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Model name and version.
    pub model: String,
    /// The guest that screened.
    pub guest_sha256: String,
    /// The profile's thresholds and their targets.
    pub thresholds: Thresholds,
    /// The clean test set.
    pub clean: CleanReport,
    /// Each attack set.
    pub attacks: Vec<AttackReport>,
    /// Each benign corruption set.
    pub corruptions: Vec<CorruptionReport>,
    /// Bootstrap resamples behind every interval.
    pub bootstrap_rounds: usize,
    /// Seed of the noise draws and of the bootstrap.
    pub seed: u64,
    /// For a model whose manifest asks for certified predictions: the
    /// smoothed classifier on the clean test images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certified: Option<CertifiedReport>,
}

#[derive(Debug, Serialize)]
/// Randomized smoothing on the clean test images: how often a label is
/// certified correct, by radius. Per class, because a model that always
/// answers the majority class would be "certified" at every radius.
pub struct CertifiedReport {
    /// The manifest's parameters.
    pub smoothing: medguard_certify::Smoothing,
    /// Images certified.
    pub images: usize,
    /// Fraction the smoothed classifier abstained on (no radius at all).
    pub abstained: f64,
    /// Fraction whose certificate reaches the manifest's required radius
    /// (the others are flagged, their labels withheld under enforce).
    pub certified_at_requirement: f64,
    /// At radius 0 (the smoothed classifier's clean accuracy), 0.125, 0.25,
    /// 0.5 and the manifest's requirement.
    pub at: Vec<CertifiedAccuracy>,
    /// The curve: certified balanced accuracy every 0.01 of radius up to
    /// the largest certifiable one.
    pub curve: Vec<CertifiedAccuracy>,
    /// Wall time of the certification per image, with the sandboxes in
    /// parallel (`threads` of them): time / images * threads.
    pub ms_per_image: f64,
    /// Sandboxes that ran in parallel.
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize)]
/// Certified accuracy at one radius: an image counts when its certified
/// class is its true class with a radius at least this.
pub struct CertifiedAccuracy {
    /// The L2 radius.
    pub radius_l2: f64,
    /// Over all images.
    pub accuracy: f64,
    /// The mean of the per-class rates.
    pub balanced_accuracy: f64,
    /// Per true class: for the positive class its sensitivity, for the
    /// negative one its specificity.
    pub per_class: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
/// The profile's thresholds and the false-positive rates they target.
pub struct Thresholds {
    /// Flag at a combined p-value at or below this.
    pub flag: f64,
    /// Reject at or below this.
    pub reject: f64,
    /// The flag threshold's target rate on clean inputs.
    pub flag_target_fpr: f64,
    /// The reject threshold's.
    pub reject_target_fpr: f64,
}

#[derive(Debug, Serialize)]
/// The clean test set.
pub struct CleanReport {
    /// Images.
    pub images: usize,
    /// Realised false-positive rate at the deployed flag threshold (flag or reject).
    pub flagged: Estimate,
    /// Realised false-positive rate at the deployed reject threshold.
    pub rejected: Estimate,
    /// Accuracy on every image.
    pub accuracy_all: f64,
    /// Accuracy on the accepted images.
    pub accuracy_accepted: f64,
    /// Fraction accepted.
    pub accepted: f64,
    /// Accuracy on the images not rejected.
    pub accuracy_not_rejected: f64,
}

#[derive(Debug, Serialize)]
/// One attack set.
pub struct AttackReport {
    /// The set's name.
    pub name: String,
    /// Images attacked.
    pub attempted: usize,
    /// Attacks that flipped the bare model's prediction; the positives below.
    pub flipped: usize,
    /// ROC-AUC of the combined p-value, flipped attacks against clean.
    pub roc_auc: Estimate,
    /// Detection at a 1% clean false-positive rate.
    pub tpr_at_1pct_fpr: Estimate,
    /// At 5%.
    pub tpr_at_5pct_fpr: Estimate,
    /// Detection at the deployed flag threshold.
    pub detected_flag: f64,
    /// At the deployed reject threshold.
    pub detected_reject: f64,
    /// Attack success against the bare model.
    pub success_bare: f64,
    /// What remains once the guard rejects (enforce policy).
    pub success_past_reject: f64,
    /// What remains once it flags.
    pub success_past_flag: f64,
    /// ROC-AUC of each statistic's own p-value.
    pub statistic_auc: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
/// One benign corruption set: what the guard costs on inputs that are odd
/// but not attacks.
pub struct CorruptionReport {
    /// The set's name.
    pub name: String,
    /// Images.
    pub images: usize,
    /// Fraction flagged (or rejected).
    pub flagged: Estimate,
    /// Fraction rejected.
    pub rejected: Estimate,
}

/// Judges the clean images (whose true classes are `labels`) and every set
/// with the model's calibrated profile, and reports; also the ROC curve of
/// each attack set. `progress` is told of every chunk of images done.
pub fn evaluate(
    program: &GuestProgram,
    model: &AttestedModel,
    clean_images: &Batch,
    labels: &[u8],
    sets: &[EvalSet],
    options: Options,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(Report, Vec<plot::Curve>), VendorError> {
    let Some(screening) = &model.manifest().screening else {
        return Err(VendorError::Data(format!(
            "{} has no screening profile; run `medguard calibrate` first",
            model.manifest().name
        )));
    };
    let profile = &screening.profile;
    if labels.len() != clean_images.len() {
        return Err(VendorError::Data(format!(
            "{} labels for {} clean images",
            labels.len(),
            clean_images.len()
        )));
    }
    let run = |batch: &Batch, label: &str, seed: u64| {
        let run = Run {
            seed,
            threads: options.threads,
            progress,
        };
        screen(program, model, batch, label, run)
    };

    let clean = run(clean_images, "clean test", options.seed)?;
    let certified = certified_report(
        program,
        model,
        clean_images,
        labels,
        Run {
            seed: options.seed,
            threads: options.threads,
            progress,
        },
    )?;
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
        let images = &set.images;
        let seed = options.seed.wrapping_add(1000 * (k as u64 + 1));
        let Some(flipped) = &set.flipped else {
            let judged = run(images, &set.name, seed)?;
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
        };
        if flipped.len() != images.len() {
            return Err(VendorError::Data(format!(
                "{}: `flipped` has {} entries for {} images",
                set.name,
                flipped.len(),
                images.len()
            )));
        }
        let indices: Vec<usize> = (0..flipped.len()).filter(|&i| flipped[i]).collect();
        let kept = images
            .select(&indices)
            .ok_or_else(|| VendorError::Data(format!("{}: bad `flipped`", set.name)))?;
        let judged = run(&kept, &set.name, seed)?;
        let attack_p: Vec<f64> = judged.iter().map(|s| s.p_value).collect();
        let boot = |metric: &dyn Fn(&[f64], &[f64]) -> f64| {
            bootstrap(
                &clean_p,
                &attack_p,
                options.bootstrap,
                options.seed ^ k as u64,
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
            points: roc_curve(&clean_p, &attack_p),
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
        bootstrap_rounds: options.bootstrap,
        seed: options.seed,
        certified,
    };
    Ok((report, curves))
}

/// Certified accuracy of `certificates` against the true `labels` at `radius`.
pub fn certified_accuracy(
    certificates: &[Certificate],
    labels: &[u8],
    names: &[String],
    radius: f64,
) -> CertifiedAccuracy {
    let hit = |c: &Certificate, label: u8| {
        c.class == Some(label as usize) && c.radius_l2.is_some_and(|r| r >= radius)
    };
    let per_class: BTreeMap<String, f64> = names
        .iter()
        .enumerate()
        .filter_map(|(class, name)| {
            let of: Vec<_> = certificates
                .iter()
                .zip(labels)
                .filter(|&(_, &l)| l as usize == class)
                .collect();
            (!of.is_empty()).then(|| {
                let rate = of.iter().filter(|(c, l)| hit(c, **l)).count() as f64 / of.len() as f64;
                (name.clone(), rate)
            })
        })
        .collect();
    CertifiedAccuracy {
        radius_l2: radius,
        accuracy: certificates
            .iter()
            .zip(labels)
            .filter(|&(c, &l)| hit(c, l))
            .count() as f64
            / certificates.len().max(1) as f64,
        balanced_accuracy: per_class.values().sum::<f64>() / per_class.len().max(1) as f64,
        per_class,
    }
}

/// Certifies the clean images and reports certified accuracy by radius.
fn certified_report(
    program: &GuestProgram,
    model: &AttestedModel,
    clean_images: &Batch,
    labels: &[u8],
    run: Run<'_>,
) -> Result<Option<CertifiedReport>, VendorError> {
    let Some(table) = model.radius_table() else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let certificates = certify_all(program, model, clean_images, run, "clean test")?;
    let elapsed = started.elapsed();
    let names = &model.manifest().output.labels;
    let smoothing = *table.smoothing();
    let n = certificates.len().max(1) as f64;
    let mut radii = vec![0.0, 0.125, 0.25, 0.5];
    if !radii.contains(&smoothing.required_radius_l2) {
        radii.push(smoothing.required_radius_l2);
        radii.sort_by(f64::total_cmp);
    }
    let largest = table.radius(smoothing.samples).unwrap_or(0.0);
    let steps = (largest / 0.01).floor() as usize;
    Ok(Some(CertifiedReport {
        smoothing,
        images: certificates.len(),
        abstained: certificates
            .iter()
            .filter(|c| c.radius_l2.is_none())
            .count() as f64
            / n,
        certified_at_requirement: certificates.iter().filter(|c| c.certified).count() as f64 / n,
        at: radii
            .iter()
            .map(|&r| certified_accuracy(&certificates, labels, names, r))
            .collect(),
        curve: (0..=steps)
            .map(|i| certified_accuracy(&certificates, labels, names, i as f64 * 0.01))
            .collect(),
        ms_per_image: elapsed.as_secs_f64() * 1000.0 / n * run.threads.max(1) as f64,
        threads: run.threads.max(1),
    }))
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
    run: Run<'_>,
) -> Result<Vec<Judged>, VendorError> {
    let screened = screen_all(program, model, Mode::Judge, batch, run, label)?;
    screened
        .into_iter()
        .map(|s: ScreenedImage| {
            let screening = s.screening.ok_or(VendorError::Missing("verdict"))?;
            let probabilities = s.probabilities.ok_or(VendorError::Missing("prediction"))?;
            Ok(Judged {
                class: predicted_class(&probabilities),
                verdict: screening.verdict,
                p_value: screening.p_value,
                statistic_p: screening.statistics.iter().map(|r| r.p_value).collect(),
            })
        })
        .collect()
}
