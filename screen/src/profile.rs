//! The calibration profile (per-class clean references and thresholds),
//! `fit()` that writes it and `judge()` that turns statistics into a verdict.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{Statistic, cauchy_combine, conformal_p};

/// The calibration profile stored in a model's manifest: which statistics to
/// compute, clean reference values per predicted class, and the thresholds
/// on the combined p-value that calibration derived from clean data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The statistics, in the order of every `reference` row.
    pub statistics: Vec<Statistic>,
    /// One entry per output class, in output order.
    pub classes: Vec<ClassReference>,
    /// Verdict cut-offs on the combined p-value.
    pub thresholds: Thresholds,
    /// The clean false-positive rates the thresholds were chosen for.
    pub targets: Targets,
}

/// Clean reference values of the images the model assigned to one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassReference {
    /// One sorted (ascending) list of clean values per statistic.
    pub reference: Vec<Vec<f64>>,
}

/// Cut-offs on the combined p-value: at or below `reject` rejects, at or below
/// `flag` flags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Flag at or below this combined p-value.
    pub flag: f64,
    /// Reject at or below this combined p-value.
    pub reject: f64,
}

/// Target clean false-positive rates for flag and reject.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Fraction of clean inputs that may be flagged (or rejected), e.g. 0.05.
    pub flag_fpr: f64,
    /// Fraction of clean inputs that may be rejected, e.g. 0.01.
    pub reject_fpr: f64,
}

/// What the guard concluded about one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Nothing unusual at the calibrated thresholds.
    Accept,
    /// Unusual enough that a human should look; the prediction is returned.
    Flag,
    /// Too unusual to trust; no prediction is returned unless policy says flag-only.
    Reject,
}

/// One statistic's value and p-value for one input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatisticReport {
    /// The statistic.
    pub statistic: Statistic,
    /// Its value on the input.
    pub value: f64,
    /// Its conformal p-value against clean images of the predicted class.
    pub p_value: f64,
}

/// The evidence and verdict for one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Screening {
    /// The verdict at the profile's thresholds.
    pub verdict: Verdict,
    /// Combined p-value in `[0, 1]`; lower is more suspicious.
    pub p_value: f64,
    /// Per-statistic evidence, in profile order.
    pub statistics: Vec<StatisticReport>,
}

/// Why a profile is unusable.
#[derive(Debug, Error, PartialEq)]
pub enum ProfileError {
    /// The profile contradicts itself or the model.
    #[error("screening profile is not valid: {0}")]
    Invalid(String),
}

impl Profile {
    /// Checks that the profile fits a model with `classes` outputs and that
    /// every reference list is usable (finite, sorted, non-empty).
    pub fn validate(&self, classes: usize) -> Result<(), ProfileError> {
        let invalid = |why: String| Err(ProfileError::Invalid(why));
        if self.statistics.is_empty() {
            return invalid("it lists no statistics".into());
        }
        for s in &self.statistics {
            s.validate().map_err(ProfileError::Invalid)?;
        }
        if self.classes.len() != classes {
            return invalid(format!(
                "it has references for {} classes, the model has {classes}",
                self.classes.len()
            ));
        }
        for (c, class) in self.classes.iter().enumerate() {
            if class.reference.len() != self.statistics.len() {
                return invalid(format!(
                    "class {c} has {} reference lists for {} statistics",
                    class.reference.len(),
                    self.statistics.len()
                ));
            }
            for (s, values) in class.reference.iter().enumerate() {
                let sorted = values.windows(2).all(|w| w[0] <= w[1]);
                if values.is_empty() || !sorted || values.iter().any(|v| !v.is_finite()) {
                    return invalid(format!(
                        "class {c}, statistic {s}: reference values must be finite, sorted and non-empty"
                    ));
                }
            }
        }
        let t = self.thresholds;
        let unit = |p: f64| (0.0..=1.0).contains(&p);
        if !(unit(t.reject) && unit(t.flag) && t.reject <= t.flag) {
            return invalid(format!(
                "thresholds must satisfy 0 <= reject ({}) <= flag ({}) <= 1",
                t.reject, t.flag
            ));
        }
        Ok(())
    }

    /// The number of model inputs screening needs per image, the image included.
    pub fn inferences_per_image(&self) -> u32 {
        1 + self
            .statistics
            .iter()
            .map(Statistic::extra_inferences)
            .sum::<u32>()
    }

    /// Judges one input that the model assigned to `class`, given its statistic
    /// values in profile order.
    ///
    /// 1. Each value gets a conformal p-value against the clean references of
    ///    the same predicted class, on the statistic's suspicious side.
    /// 2. The p-values are combined with the Cauchy combination test.
    /// 3. The combined p-value is compared with the calibrated thresholds.
    ///
    /// An unknown class or a wrong number of values is judged as maximally
    /// suspicious (p = 0, reject): the guard never accepts what it cannot score.
    pub fn judge(&self, class: usize, values: &[f64]) -> Screening {
        let reference = self
            .classes
            .get(class)
            .filter(|_| values.len() == self.statistics.len())
            .filter(|_| values.iter().all(|v| v.is_finite()));
        let statistics: Vec<StatisticReport> = self
            .statistics
            .iter()
            .zip(values)
            .enumerate()
            .map(|(i, (&statistic, &value))| StatisticReport {
                statistic,
                value,
                p_value: reference.map_or(0.0, |r| {
                    conformal_p(&r.reference[i], value, statistic.side())
                }),
            })
            .collect();
        let p_value = if reference.is_some() {
            cauchy_combine(&statistics.iter().map(|s| s.p_value).collect::<Vec<_>>())
        } else {
            0.0
        };
        Screening {
            verdict: self.thresholds.verdict(p_value),
            p_value,
            statistics,
        }
    }
}

impl Thresholds {
    /// The verdict for a combined p-value.
    pub fn verdict(&self, p_value: f64) -> Verdict {
        if p_value.is_nan() || p_value <= self.reject {
            Verdict::Reject
        } else if p_value <= self.flag {
            Verdict::Flag
        } else {
            Verdict::Accept
        }
    }
}

/// Why calibration could not produce a profile.
#[derive(Debug, Error, PartialEq)]
pub enum FitError {
    /// Too few clean images overall or for one class to reach a target.
    #[error(
        "{what} has {have} calibration image(s); at least {need} are needed for a false-positive target of {target}"
    )]
    TooFew {
        /// Which population was too small.
        what: String,
        /// How many images it had.
        have: usize,
        /// How many it needs.
        need: usize,
        /// The target that needs them.
        target: f64,
    },
    /// Targets outside `0 < reject <= flag < 1`.
    #[error("false-positive targets must satisfy 0 < reject ({reject}) <= flag ({flag}) < 1")]
    Targets {
        /// Requested flag target.
        flag: f64,
        /// Requested reject target.
        reject: f64,
    },
    /// A calibration image had a non-finite statistic or the wrong number of them.
    #[error("calibration image {index}: {why}")]
    BadSample {
        /// Position of the image in the calibration set.
        index: usize,
        /// What was wrong.
        why: String,
    },
}

/// Builds a profile from clean calibration samples `(predicted class, values)`.
///
/// References are the samples' values per class. Thresholds come from the
/// combined p-values of the calibration images themselves, each scored
/// leave-one-out (against its class without itself) so that it is scored
/// exactly as a new image would be: the flag threshold is the k-th smallest
/// with `k = floor(target * (n + 1))`, the conformal choice that keeps the
/// clean false-positive rate at or below the target.
pub fn fit(
    statistics: Vec<Statistic>,
    classes: usize,
    samples: &[(usize, Vec<f64>)],
    targets: Targets,
) -> Result<Profile, FitError> {
    if !(targets.reject_fpr > 0.0
        && targets.reject_fpr <= targets.flag_fpr
        && targets.flag_fpr < 1.0)
    {
        return Err(FitError::Targets {
            flag: targets.flag_fpr,
            reject: targets.reject_fpr,
        });
    }
    for (index, (class, values)) in samples.iter().enumerate() {
        let why = if *class >= classes {
            Some(format!("class {class} is not one of the model's {classes}"))
        } else if values.len() != statistics.len() {
            Some(format!(
                "{} values for {} statistics",
                values.len(),
                statistics.len()
            ))
        } else if values.iter().any(|v| !v.is_finite()) {
            Some("a statistic is not finite".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(FitError::BadSample { index, why });
        }
    }
    // With n reference values the smallest conformal p-value is 1/(n+1); a
    // class needs enough images that a single statistic can reach the reject
    // target on its own.
    let need = (1.0 / targets.reject_fpr).ceil() as usize;
    let mut per_class: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); statistics.len()]; classes];
    for (class, values) in samples {
        for (s, &v) in values.iter().enumerate() {
            per_class[*class][s].push(v);
        }
    }
    for (c, lists) in per_class.iter_mut().enumerate() {
        let have = lists.first().map_or(0, Vec::len);
        if have < need {
            return Err(FitError::TooFew {
                what: format!("class {c}"),
                have,
                need,
                target: targets.reject_fpr,
            });
        }
        for list in lists.iter_mut() {
            list.sort_by(f64::total_cmp);
        }
    }
    let mut combined: Vec<f64> = samples
        .iter()
        .map(|(class, values)| {
            let p: Vec<f64> = statistics
                .iter()
                .zip(values)
                .zip(&per_class[*class])
                .map(|((statistic, &v), reference)| leave_one_out_p(reference, v, statistic.side()))
                .collect();
            cauchy_combine(&p)
        })
        .collect();
    combined.sort_by(f64::total_cmp);
    let cut = |target: f64| {
        let k = (target * (combined.len() + 1) as f64).floor() as usize;
        if k == 0 {
            Err(FitError::TooFew {
                what: "the calibration set".into(),
                have: combined.len(),
                need: (1.0 / target).ceil() as usize,
                target,
            })
        } else {
            Ok(combined[k - 1])
        }
    };
    let thresholds = Thresholds {
        flag: cut(targets.flag_fpr)?,
        reject: cut(targets.reject_fpr)?,
    };
    Ok(Profile {
        statistics,
        classes: per_class
            .into_iter()
            .map(|reference| ClassReference { reference })
            .collect(),
        thresholds,
        targets,
    })
}

/// The conformal p-value of a reference member against the other members.
fn leave_one_out_p(reference: &[f64], value: f64, side: crate::Side) -> f64 {
    // Removing one copy of `value` from the counts: every tail count that
    // included it shrinks by one, and n shrinks by one.
    let n = reference.len() as f64 - 1.0;
    let at_least = (reference.len() - reference.partition_point(|&r| r < value)) as f64 - 1.0;
    let upper = (1.0 + at_least) / (n + 1.0);
    match side {
        crate::Side::Upper => upper,
        crate::Side::Both => {
            let at_most = reference.partition_point(|&r| r <= value) as f64 - 1.0;
            (2.0 * upper.min((1.0 + at_most) / (n + 1.0))).min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Vec<Statistic> {
        vec![Statistic::Margin, Statistic::SqueezeMedian { window: 2 }]
    }

    /// Deterministic pseudo-data: the values are a permutation, so ties do not
    /// muddy the counts.
    fn samples(n: usize) -> Vec<(usize, Vec<f64>)> {
        (0..n)
            .map(|i| {
                let a = ((i * 37) % n) as f64;
                let b = ((i * 53 + 7) % n) as f64;
                (i % 2, vec![a, b])
            })
            .collect()
    }

    const TARGETS: Targets = Targets {
        flag_fpr: 0.05,
        reject_fpr: 0.01,
    };

    #[test]
    fn fitted_thresholds_realise_the_targets_on_the_calibration_set() {
        let data = samples(1000);
        let profile = fit(stats(), 2, &data, TARGETS).unwrap();
        profile.validate(2).unwrap();
        let t = profile.thresholds;
        assert!(t.reject < t.flag);
        // Judged leave-one-out the realised rate is <= target by construction;
        // judged against the full reference it can only be lower.
        let flagged = data
            .iter()
            .filter(|(c, v)| profile.judge(*c, v).verdict != Verdict::Accept)
            .count();
        assert!(flagged <= 50, "{flagged}");
        assert!(flagged >= 30, "thresholds too strict: {flagged}");
    }

    #[test]
    fn an_extreme_value_is_rejected_with_evidence() {
        let profile = fit(stats(), 2, &samples(1000), TARGETS).unwrap();
        let s = profile.judge(0, &[400.0, 1e9]);
        assert_eq!(s.verdict, Verdict::Reject);
        assert!(s.statistics[1].p_value < 0.003);
        assert!(s.p_value <= profile.thresholds.reject);
        let s = profile.judge(1, &[500.0, 500.0]);
        assert_eq!(s.verdict, Verdict::Accept);
    }

    #[test]
    fn what_cannot_be_scored_is_rejected() {
        let profile = fit(stats(), 2, &samples(1000), TARGETS).unwrap();
        assert_eq!(profile.judge(7, &[1.0, 1.0]).verdict, Verdict::Reject);
        assert_eq!(profile.judge(0, &[1.0]).verdict, Verdict::Reject);
        assert_eq!(profile.judge(0, &[f64::NAN, 1.0]).verdict, Verdict::Reject);
    }

    #[test]
    fn fit_refuses_too_little_data_and_bad_samples() {
        assert!(matches!(
            fit(stats(), 2, &samples(150), TARGETS),
            Err(FitError::TooFew { .. })
        ));
        let mut bad = samples(1000);
        bad[3].1[0] = f64::INFINITY;
        assert!(matches!(
            fit(stats(), 2, &bad, TARGETS),
            Err(FitError::BadSample { index: 3, .. })
        ));
        let swapped = Targets {
            flag_fpr: 0.01,
            reject_fpr: 0.05,
        };
        assert!(fit(stats(), 2, &samples(1000), swapped).is_err());
    }

    #[test]
    fn validate_refuses_inconsistent_profiles() {
        let good = fit(stats(), 2, &samples(1000), TARGETS).unwrap();
        assert!(good.validate(3).is_err());
        let mut p = good.clone();
        p.classes[1].reference[0].reverse();
        assert!(p.validate(2).is_err());
        let mut p = good.clone();
        p.thresholds.reject = 0.9;
        assert!(p.validate(2).is_err());
        let mut p = good;
        p.statistics.pop();
        assert!(p.validate(2).is_err());
    }

    #[test]
    fn leave_one_out_matches_removing_the_value() {
        let r = [1.0, 2.0, 2.0, 5.0];
        for (v, side) in [
            (2.0, crate::Side::Upper),
            (5.0, crate::Side::Both),
            (1.0, crate::Side::Both),
        ] {
            let i = r.iter().position(|&x| x == v).unwrap();
            let mut rest = r.to_vec();
            rest.remove(i);
            assert_eq!(leave_one_out_p(&r, v, side), conformal_p(&rest, v, side));
        }
    }
}
