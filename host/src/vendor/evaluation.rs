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
use medguard_certify::{Certificate, Certifier, Norm};

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
    /// For an attack set: the clean test image each image was made from (an
    /// index into the clean images). With it, a certifiable model's report
    /// counts silent flips against the clean image's label and certificate.
    pub source_index: Option<Vec<usize>>,
    /// The class the attacked model gave each source image when the set was
    /// made, if recorded: checked against the guard's, so a set paired with
    /// the wrong clean archive is an error, not a report.
    pub clean_pred: Option<Vec<usize>>,
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
    /// The manifest's smoothing parameters, for a smoothed model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoothing: Option<medguard_certify::Smoothing>,
    /// The manifest's interval-bound parameters, for an interval-certified
    /// model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_bounds: Option<medguard_certify::IntervalBounds>,
    /// Images certified.
    pub images: usize,
    /// Fraction with no radius at all: the smoothed classifier abstained,
    /// or the interval bounds overlap even at the smallest radius.
    pub abstained: f64,
    /// Fraction whose certificate reaches the manifest's required radius
    /// (the others are flagged, their labels withheld under enforce).
    pub certified_at_requirement: f64,
    /// At radius 0 (the certified classifier's clean accuracy), then L2
    /// 0.125, 0.25 and 0.5 for smoothing, L-infinity 1/255, 2/255 and
    /// 4/255 for intervals, and the manifest's requirement.
    pub at: Vec<CertifiedAccuracy>,
    /// The curve: certified balanced accuracy every 0.01 of L2 radius up to
    /// the largest certifiable one, or every quarter grey level (1/1020) of
    /// L-infinity radius up to the largest radius the bounds are taken at.
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
    /// The L2 radius, for smoothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radius_l2: Option<f64>,
    /// The L-infinity radius, for intervals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radius_linf: Option<f64>,
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
    /// For a certifiable model and a set that names its source images: the
    /// whole guard (screening and certificate) on every attempted image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guarded: Option<GuardedReport>,
}

#[derive(Debug, Serialize)]
/// The whole certified guard against one attack set, on every attempted
/// image (flipped or not). An image is accepted when screening accepts it and
/// its certificate covers the model's label; a *silent flip* is an accepted
/// image whose label differs from the label of the clean image it was made
/// from: the failure a radiologist would not see.
pub struct GuardedReport {
    /// Images attempted.
    pub attempted: usize,
    /// Median L2 distance to the clean image (pixels in [0, 1]).
    pub median_l2: f64,
    /// Accepted (with any label).
    pub accepted: Estimate,
    /// Accepted with the clean image's label: the attack failed and the
    /// answer stands.
    pub accepted_clean_label: Estimate,
    /// Images whose smoothed class (the certificate's, whatever its radius)
    /// is not the clean image's label.
    pub smoothed_flipped: Estimate,
    /// Silent flips over all attempted images.
    pub silent_flips: Estimate,
    /// Images within the radius the clean image's label was certified to:
    /// there the smoothed class cannot change (up to alpha), so silent flips
    /// must be none.
    pub inside_radius: FlipCount,
    /// The rest: the clean label was not certified, or the perturbation is
    /// larger than its radius. No promise is made there.
    pub outside_radius: FlipCount,
}

#[derive(Debug, Serialize)]
/// Silent flips among some of the images.
pub struct FlipCount {
    /// Images in this group.
    pub images: usize,
    /// Silent flips among them.
    pub silent_flips: usize,
    /// Their rate, with its Wilson interval.
    pub rate: Estimate,
    /// Images whose certified class differs from the clean image's,
    /// whatever screening decided: inside the radius each is a certificate
    /// proven wrong (interval bounds) or the alpha-rare miss (smoothing),
    /// even where screening happened to hide it.
    pub class_changed: usize,
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
    // Pairing errors are found before hours of certification, not after.
    // Only a certifiable model pairs attacked images with clean ones.
    let pairs = model.radius_table().is_some();
    for set in sets.iter().filter(|_| pairs) {
        if let Some(source) = &set.source_index {
            check_pairing(&set.name, source, set.images.len(), clean_images.len())?;
            if set
                .clean_pred
                .as_ref()
                .is_some_and(|c| c.len() != source.len())
            {
                return Err(VendorError::Data(format!(
                    "{}: `clean_pred` and `source_index` differ in length",
                    set.name
                )));
            }
        }
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
    let (certified, clean_certificates) = certified_report(
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
        // Each set's chunks take seeds 2^32 apart from the others', so no
        // two sets (or a set and the clean images) ever share noise.
        let seed = options.seed.wrapping_add((k as u64 + 1) << 32);
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
        let mut guarded = None;
        let judged = match (&clean_certificates, &set.source_index) {
            (Some(clean_certificates), Some(source)) => {
                // The whole guard sees every attempted image; the detection
                // figures below keep to the flipped ones, as for any model.
                let all = run(images, &set.name, seed)?;
                let certificates = certify_all(
                    program,
                    model,
                    images,
                    Run {
                        seed,
                        threads: options.threads,
                        progress,
                    },
                    &set.name,
                )?;
                let clean_side = CleanSide {
                    images: clean_images,
                    judged: &clean,
                    certificates: clean_certificates,
                };
                let attacked = Attacked {
                    images,
                    source,
                    clean_pred: set.clean_pred.as_deref(),
                    judged: &all,
                    certificates: &certificates,
                };
                guarded = Some(guarded_report(
                    &model.manifest().output.labels,
                    &set.name,
                    &attacked,
                    &clean_side,
                )?);
                let mut all: Vec<Option<Judged>> = all.into_iter().map(Some).collect();
                indices
                    .iter()
                    .map(|&i| all[i].take().ok_or(VendorError::Missing("screened image")))
                    .collect::<Result<Vec<_>, _>>()?
            }
            _ => {
                let kept = images
                    .select(&indices)
                    .ok_or_else(|| VendorError::Data(format!("{}: bad `flipped`", set.name)))?;
                run(&kept, &set.name, seed)?
            }
        };
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
            guarded,
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

impl CertifiedReport {
    /// The method and its parameters, for titles.
    pub fn method(&self) -> String {
        match (&self.smoothing, &self.interval_bounds) {
            (Some(s), _) => format!("sigma {}, n {}, alpha {}", s.sigma, s.samples, s.alpha),
            (None, Some(_)) => "interval bound propagation".into(),
            (None, None) => "no method".into(),
        }
    }

    /// The manifest's required radius, with its norm.
    pub fn requirement(&self) -> String {
        match (&self.smoothing, &self.interval_bounds) {
            (Some(s), _) => format!("L2 {}", s.required_radius_l2),
            (None, Some(i)) => format!("L-inf {:.2}/255", i.required_radius_linf * 255.0),
            (None, None) => "radius".into(),
        }
    }

    /// The norm its radii are in.
    pub fn norm(&self) -> Norm {
        if self.interval_bounds.is_some() {
            Norm::LInf
        } else {
            Norm::L2
        }
    }
}

impl CertifiedAccuracy {
    /// The radius, in whichever norm it has.
    pub fn radius(&self) -> f64 {
        self.radius_l2.or(self.radius_linf).unwrap_or(0.0)
    }
}

/// Certified accuracy of `certificates` against the true `labels` at
/// `radius` in `norm` (the certificates').
pub fn certified_accuracy(
    certificates: &[Certificate],
    labels: &[u8],
    names: &[String],
    norm: Norm,
    radius: f64,
) -> CertifiedAccuracy {
    let hit = |c: &Certificate, label: u8| {
        c.class() == Some(label as usize) && c.radius().is_some_and(|r| r >= radius)
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
        radius_l2: (norm == Norm::L2).then_some(radius),
        radius_linf: (norm == Norm::LInf).then_some(radius),
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

/// Certifies the clean images and reports certified accuracy by radius;
/// also returns the certificates, which attack sets are judged against.
fn certified_report(
    program: &GuestProgram,
    model: &AttestedModel,
    clean_images: &Batch,
    labels: &[u8],
    run: Run<'_>,
) -> Result<(Option<CertifiedReport>, Option<Vec<Certificate>>), VendorError> {
    let Some(certifier) = model.certifier() else {
        return Ok((None, None));
    };
    let started = std::time::Instant::now();
    let certificates = certify_all(program, model, clean_images, run, "clean test")?;
    let elapsed = started.elapsed();
    let names = &model.manifest().output.labels;
    let n = certificates.len().max(1) as f64;
    // The radii to report at, and the curve's step and end.
    let (norm, mut radii, step, largest) = match certifier {
        Certifier::Smoothing(table) => {
            let s = table.smoothing();
            let largest = table.radius(s.samples).unwrap_or(0.0);
            let at = vec![0.0, 0.125, 0.25, 0.5, s.required_radius_l2];
            (Norm::L2, at, 0.01, largest)
        }
        Certifier::IntervalBounds(i) => {
            let grid = i.radii();
            let largest = grid.last().copied().map_or(0.0, f64::from);
            let at = vec![
                0.0,
                1.0 / 255.0,
                2.0 / 255.0,
                4.0 / 255.0,
                i.required_radius_linf,
            ];
            (Norm::LInf, at, 1.0 / 1020.0, largest)
        }
    };
    radii.sort_by(f64::total_cmp);
    radii.dedup();
    // At most 2,000 points: a radius the manifest allows can be far past
    // what any image reaches.
    let steps = ((largest / step + 1e-9).floor() as usize).min(2_000);
    let report = CertifiedReport {
        smoothing: match certifier {
            Certifier::Smoothing(table) => Some(*table.smoothing()),
            Certifier::IntervalBounds(_) => None,
        },
        interval_bounds: match certifier {
            Certifier::IntervalBounds(i) => Some(*i),
            Certifier::Smoothing(_) => None,
        },
        images: certificates.len(),
        abstained: certificates.iter().filter(|c| c.radius().is_none()).count() as f64 / n,
        certified_at_requirement: certificates.iter().filter(|c| c.certified()).count() as f64 / n,
        at: radii
            .iter()
            .map(|&r| certified_accuracy(&certificates, labels, names, norm, r))
            .collect(),
        curve: (0..=steps)
            .map(|i| certified_accuracy(&certificates, labels, names, norm, i as f64 * step))
            .collect(),
        ms_per_image: elapsed.as_secs_f64() * 1000.0 / n * run.threads.max(1) as f64,
        threads: run.threads.max(1),
    };
    Ok((Some(report), Some(certificates)))
}

/// The clean side of a guarded comparison: the images, how screening judged
/// them and their certificates.
struct CleanSide<'a> {
    images: &'a Batch,
    judged: &'a [Judged],
    certificates: &'a [Certificate],
}

/// An attack set as the guard judged it, with the clean images it names.
struct Attacked<'a> {
    images: &'a Batch,
    source: &'a [usize],
    clean_pred: Option<&'a [usize]>,
    judged: &'a [Judged],
    certificates: &'a [Certificate],
}

/// A set's `source_index` must name one clean image per attacked image.
fn check_pairing(
    name: &str,
    source: &[usize],
    images: usize,
    clean: usize,
) -> Result<(), VendorError> {
    if source.len() != images {
        return Err(VendorError::Data(format!(
            "{name}: `source_index` has {} entries for {images} images",
            source.len()
        )));
    }
    if let Some(&j) = source.iter().find(|&&j| j >= clean) {
        return Err(VendorError::Data(format!(
            "{name}: `source_index` {j} is past the {clean} clean images; is --clean \
             the archive (and array) the set was made from?"
        )));
    }
    Ok(())
}

/// The whole guard on one attack set, image by image against the clean
/// image it came from (see [`GuardedReport`]).
fn guarded_report(
    labels: &[String],
    name: &str,
    attacked: &Attacked<'_>,
    clean: &CleanSide<'_>,
) -> Result<GuardedReport, VendorError> {
    let Attacked {
        images,
        source,
        clean_pred,
        judged,
        certificates,
    } = *attacked;
    let n = images.len();
    check_pairing(name, source, n, clean.judged.len())?;
    if judged.len() != n || certificates.len() != n {
        return Err(VendorError::Data(format!(
            "{name}: {} verdicts and {} certificates for {n} images",
            judged.len(),
            certificates.len()
        )));
    }
    if let Some(recorded) = clean_pred {
        let differ = (0..n)
            .filter(|&i| recorded.get(i) != Some(&clean.judged[source[i]].class))
            .count();
        if differ > 0 {
            return Err(VendorError::Data(format!(
                "{name}: for {differ} of {n} images the clean image `source_index` names is \
                 not classified as `clean_pred` records; is --clean the archive (and \
                 array) the set was made from, and was the set made against this model?"
            )));
        }
    }
    if images.shape[1..] != clean.images.shape[1..] {
        return Err(VendorError::Data(format!(
            "{name}: images are {:?}, the clean images {:?}",
            &images.shape[1..],
            &clean.images.shape[1..]
        )));
    }
    let per_image = images.data.len() / n.max(1);
    let mut l2 = Vec::with_capacity(n);
    let (mut accepted, mut kept) = (0, 0);
    let (mut inside, mut outside) = ((0, 0, 0), (0, 0, 0));
    for i in 0..n {
        let j = source[i];
        let (Some(clean_judged), Some(clean_certificate)) =
            (clean.judged.get(j), clean.certificates.get(j))
        else {
            return Err(VendorError::Data(format!(
                "{name}: `source_index` {j} is past the {} clean images",
                clean.judged.len()
            )));
        };
        let attacked_image = &images.data[i * per_image..(i + 1) * per_image];
        let clean_image = &clean.images.data[j * per_image..(j + 1) * per_image];
        l2.push(Norm::L2.distance(attacked_image, clean_image));
        let clean_label = clean_judged.class;
        let label = labels.get(judged[i].class);
        let is_accepted = judged[i].verdict == Verdict::Accept
            && label.is_some()
            && certificates[i].covers(labels, label);
        let flipped = is_accepted && judged[i].class != clean_label;
        accepted += usize::from(is_accepted);
        kept += usize::from(is_accepted && !flipped);
        // The certificate's guarantee: its class is constant on the region
        // of its radius around the clean image.
        let within = clean_certificate.class() == Some(clean_label)
            && clean_certificate.holds_at(clean_image, attacked_image);
        let group = if within { &mut inside } else { &mut outside };
        group.0 += 1;
        group.1 += usize::from(flipped);
        group.2 += usize::from(certificates[i].class() != Some(clean_label));
    }
    l2.sort_by(f64::total_cmp);
    let count = |(images, silent_flips, class_changed): (usize, usize, usize)| FlipCount {
        images,
        silent_flips,
        rate: proportion(silent_flips, images),
        class_changed,
    };
    Ok(GuardedReport {
        attempted: n,
        median_l2: l2.get(n / 2).copied().unwrap_or(f64::NAN),
        accepted: proportion(accepted, n),
        accepted_clean_label: proportion(kept, n),
        smoothed_flipped: proportion(inside.2 + outside.2, n),
        silent_flips: proportion(inside.1 + outside.1, n),
        inside_radius: count(inside),
        outside_radius: count(outside),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use medguard_certify::{Noise, SmoothedCertificate};

    fn certificate(class: usize, radius: Option<f64>) -> Certificate {
        Certificate::RandomizedSmoothing(SmoothedCertificate {
            class: Some(class),
            radius_l2: radius,
            certified: radius.is_some_and(|r| r >= 0.25),
            required_radius_l2: 0.25,
            samples: 400,
            sigma: 0.375,
            alpha: 0.001,
            votes: None,
            noise: Noise { seed: 1, stream: 0 },
        })
    }

    fn judged(class: usize, verdict: Verdict) -> Judged {
        Judged {
            class,
            verdict,
            p_value: 0.5,
            statistic_p: Vec::new(),
        }
    }

    fn one_pixel_images(values: &[f32]) -> Batch {
        Batch {
            shape: [values.len() as u32, 1, 1, 1],
            data: values.to_vec(),
            source_bits: 8,
        }
    }

    #[test]
    fn silent_flips_are_split_by_the_clean_images_certified_radius() {
        let labels = vec!["normal".to_string(), "pneumonia".to_string()];
        // Clean image 0 is "normal", certified to 0.5; clean image 1 is
        // "pneumonia", but its certificate is for the other class.
        let clean_images = one_pixel_images(&[0.0, 0.0]);
        let clean_judged = [judged(0, Verdict::Accept), judged(1, Verdict::Accept)];
        let clean_certificates = [certificate(0, Some(0.5)), certificate(0, Some(0.5))];
        let clean = CleanSide {
            images: &clean_images,
            judged: &clean_judged,
            certificates: &clean_certificates,
        };
        // 0: moved 0.3 from clean 0, accepted as "pneumonia": a silent flip
        //    inside the radius (the bound was lucky, or broken).
        // 1: moved 0.7 from clean 0, accepted flipped: outside.
        // 2: moved 0.1 from clean 0, flagged by screening: not silent.
        // 3: moved 0.1 from clean 0, accepted but uncertified: flagged.
        // 4: moved 0.1 from clean 1 (whose label is not certified), accepted
        //    flipped: outside.
        // 5: moved 0.1 from clean 0, accepted with the clean label.
        let images = one_pixel_images(&[0.3, 0.7, 0.1, 0.1, 0.1, 0.1]);
        let source = [0, 0, 0, 0, 1, 0];
        let judged_set = [
            judged(1, Verdict::Accept),
            judged(1, Verdict::Accept),
            judged(1, Verdict::Flag),
            judged(1, Verdict::Accept),
            judged(0, Verdict::Accept),
            judged(0, Verdict::Accept),
        ];
        let certificates = [
            certificate(1, Some(0.3)),
            certificate(1, Some(0.3)),
            certificate(1, Some(0.3)),
            certificate(1, Some(0.1)),
            certificate(0, Some(0.3)),
            certificate(0, Some(0.3)),
        ];
        let attacked = Attacked {
            images: &images,
            source: &source,
            clean_pred: Some(&[0, 0, 0, 0, 1, 0]),
            judged: &judged_set,
            certificates: &certificates,
        };
        let report = guarded_report(&labels, "t", &attacked, &clean).unwrap();
        assert_eq!(report.attempted, 6);
        assert_eq!(
            (
                report.inside_radius.images,
                report.inside_radius.silent_flips
            ),
            (4, 1)
        );
        assert_eq!(
            (
                report.outside_radius.images,
                report.outside_radius.silent_flips
            ),
            (2, 2)
        );
        assert!((report.silent_flips.value - 3.0 / 6.0).abs() < 1e-12);
        assert!((report.accepted.value - 4.0 / 6.0).abs() < 1e-12);
        assert!((report.accepted_clean_label.value - 1.0 / 6.0).abs() < 1e-12);
        // Certificates for "pneumonia" (4 of them) or, for image 4, "normal"
        // against the clean "pneumonia".
        assert!((report.smoothed_flipped.value - 5.0 / 6.0).abs() < 1e-12);
        assert!((report.median_l2 - 0.1).abs() < 1e-6);
    }

    #[test]
    fn a_set_paired_with_the_wrong_clean_images_is_an_error_not_a_panic() {
        let labels = vec!["normal".to_string(), "pneumonia".to_string()];
        let clean_images = one_pixel_images(&[0.0]);
        let clean_judged = [judged(0, Verdict::Accept)];
        let clean_certificates = [certificate(0, Some(0.5))];
        let clean = CleanSide {
            images: &clean_images,
            judged: &clean_judged,
            certificates: &clean_certificates,
        };
        let images = one_pixel_images(&[0.1]);
        let verdicts = [judged(0, Verdict::Accept)];
        let certificates = [certificate(0, Some(0.3))];
        let error = |source: &[usize], clean_pred: Option<&[usize]>| {
            let attacked = Attacked {
                images: &images,
                source,
                clean_pred,
                judged: &verdicts,
                certificates: &certificates,
            };
            guarded_report(&labels, "t", &attacked, &clean).map(|_| ())
        };
        let past = error(&[7], None).unwrap_err().to_string();
        assert!(past.contains("source_index` 7"), "{past}");
        let short = error(&[], None).unwrap_err().to_string();
        assert!(short.contains("0 entries for 1 images"), "{short}");
        // Paired with the wrong clean archive: the recorded clean class is
        // not the guard's.
        let wrong = error(&[0], Some(&[1])).unwrap_err().to_string();
        assert!(wrong.contains("not classified as `clean_pred`"), "{wrong}");
        assert!(error(&[0], Some(&[0])).is_ok());
    }
}
