//! Detection metrics for `medguard eval`: ROC-AUC, TPR at a fixed clean
//! false-positive rate, percentile-bootstrap confidence intervals, and the ROC
//! plot ([`plot`], the only module that touches plotters).
//!
//! Scores are combined p-values: lower means more suspicious, so "detected at
//! FPR a" means "p below the clean p-values' a-quantile".

pub mod plot;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::Serialize;

/// A point estimate with a 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The estimate on the full sample.
    pub value: f64,
    /// 2.5th percentile of the bootstrap distribution.
    pub ci_low: f64,
    /// 97.5th percentile of the bootstrap distribution.
    pub ci_high: f64,
}

/// ROC-AUC of separating `positives` (attacks) from `negatives` (clean) when
/// lower p-values are more suspicious: the probability that a random attack
/// has a lower p-value than a random clean input, ties counting half
/// (the Mann-Whitney statistic, computed from mid-ranks).
pub fn roc_auc(negatives: &[f64], positives: &[f64]) -> f64 {
    if negatives.is_empty() || positives.is_empty() {
        return f64::NAN;
    }
    // Rank by suspicion: higher rank = lower p.
    let mut all: Vec<(f64, bool)> = negatives
        .iter()
        .map(|&p| (-p, false))
        .chain(positives.iter().map(|&p| (-p, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mid_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += mid_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (n, m) = (negatives.len() as f64, positives.len() as f64);
    (rank_sum - m * (m + 1.0) / 2.0) / (n * m)
}

/// Fraction of `positives` detected at a threshold that flags at most
/// `fpr` of `negatives`: with clean p-values sorted, `k = floor(fpr * n)`,
/// an attack is detected when its p-value is below the (k+1)-th smallest
/// clean p-value. Ties therefore never push the realised FPR over `fpr`.
pub fn tpr_at_fpr(negatives: &[f64], positives: &[f64], fpr: f64) -> f64 {
    if negatives.is_empty() || positives.is_empty() {
        return f64::NAN;
    }
    let mut clean = negatives.to_vec();
    clean.sort_by(f64::total_cmp);
    let k = ((fpr * clean.len() as f64).floor() as usize).min(clean.len() - 1);
    let cut = clean[k];
    positives.iter().filter(|&&p| p < cut).count() as f64 / positives.len() as f64
}

/// The ROC curve as (FPR, TPR) points, from (0, 0) to (1, 1).
pub fn roc_curve(negatives: &[f64], positives: &[f64]) -> Vec<(f64, f64)> {
    let mut cuts: Vec<f64> = negatives.iter().chain(positives).copied().collect();
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();
    let rate =
        |v: &[f64], cut: f64| v.iter().filter(|&&p| p <= cut).count() as f64 / v.len() as f64;
    let mut points = vec![(0.0, 0.0)];
    points.extend(
        cuts.iter()
            .map(|&c| (rate(negatives, c), rate(positives, c))),
    );
    points.push((1.0, 1.0));
    points
}

/// A metric of (clean, attack) samples with a percentile-bootstrap 95% CI:
/// both samples are resampled with replacement `rounds` times.
pub fn bootstrap(
    negatives: &[f64],
    positives: &[f64],
    rounds: usize,
    seed: u64,
    metric: impl Fn(&[f64], &[f64]) -> f64,
) -> Estimate {
    let value = metric(negatives, positives);
    if negatives.is_empty() || positives.is_empty() || rounds == 0 {
        return Estimate {
            value,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
        };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |v: &[f64]| -> Vec<f64> {
        (0..v.len())
            .map(|_| v[(rng.next_u64() % v.len() as u64) as usize])
            .collect()
    };
    let mut values: Vec<f64> = (0..rounds)
        .map(|_| {
            let n = draw(negatives);
            let p = draw(positives);
            metric(&n, &p)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((q * (rounds - 1) as f64).round() as usize).min(rounds - 1)];
    Estimate {
        value,
        ci_low: at(0.025),
        ci_high: at(0.975),
    }
}

/// A proportion `k / n` with its Wilson score 95% interval.
pub fn proportion(k: usize, n: usize) -> Estimate {
    if n == 0 {
        return Estimate {
            value: f64::NAN,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
        };
    }
    let (k, n) = (k as f64, n as f64);
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    Estimate {
        value: p,
        ci_low: (centre - half).max(0.0),
        ci_high: (centre + half).min(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_and_ties() {
        // Attacks all lower than clean: perfect.
        assert_eq!(roc_auc(&[0.5, 0.6], &[0.1, 0.2]), 1.0);
        assert_eq!(roc_auc(&[0.1, 0.2], &[0.5, 0.6]), 0.0);
        // All tied: chance.
        assert_eq!(roc_auc(&[0.3, 0.3], &[0.3]), 0.5);
        // Brute force on a mixed case.
        let n = [0.9, 0.4, 0.4, 0.7, 0.05];
        let p = [0.4, 0.01, 0.6, 0.02];
        let mut wins = 0.0;
        for a in p {
            for c in n {
                wins += if a < c {
                    1.0
                } else if a == c {
                    0.5
                } else {
                    0.0
                };
            }
        }
        assert!((roc_auc(&n, &p) - wins / 20.0).abs() < 1e-12);
    }

    #[test]
    fn tpr_at_fpr_never_exceeds_the_fpr_on_clean() {
        let clean: Vec<f64> = (1..=100).map(|i| i as f64 / 100.0).collect();
        let attacks = [0.001, 0.015, 0.03, 0.2];
        // k = 5: detected below the 6th smallest clean value (0.06).
        assert_eq!(tpr_at_fpr(&clean, &attacks, 0.05), 0.75);
        // k = 1: below 0.02.
        assert_eq!(tpr_at_fpr(&clean, &attacks, 0.01), 0.5);
        assert_eq!(tpr_at_fpr(&clean, &clean, 0.05), 0.05);
    }

    #[test]
    fn bootstrap_interval_contains_the_estimate_and_is_reproducible() {
        let clean: Vec<f64> = (0..200).map(|i| ((i * 37) % 200) as f64 / 200.0).collect();
        let attacks: Vec<f64> = (0..100).map(|i| ((i * 11) % 100) as f64 / 250.0).collect();
        let a = bootstrap(&clean, &attacks, 200, 7, roc_auc);
        let b = bootstrap(&clean, &attacks, 200, 7, roc_auc);
        assert_eq!(a, b);
        assert!(a.ci_low <= a.value && a.value <= a.ci_high, "{a:?}");
        assert!(a.ci_high - a.ci_low > 0.0);
    }

    #[test]
    fn wilson_interval_is_sane_at_the_edges() {
        let e = proportion(0, 500);
        assert_eq!(e.value, 0.0);
        assert!(
            e.ci_low < 1e-12 && e.ci_high > 0.0 && e.ci_high < 0.01,
            "{e:?}"
        );
        let e = proportion(25, 500);
        assert!(e.ci_low < 0.05 && e.ci_high > 0.05);
    }

    #[test]
    fn roc_curve_runs_from_origin_to_corner() {
        let c = roc_curve(&[0.5, 0.9], &[0.1, 0.5]);
        assert_eq!(c.first(), Some(&(0.0, 0.0)));
        assert_eq!(c.last(), Some(&(1.0, 1.0)));
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }
}
