//! Conformal p-values against clean references and the Cauchy combination
//! of several of them.

/// Which tail of the reference distribution counts as evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Large values are suspicious.
    Upper,
    /// Both unusually small and unusually large values are suspicious.
    Both,
}

/// Conformal p-value of `value` against `reference` (sorted ascending, finite).
///
/// Upper: `(1 + #{r >= value}) / (n + 1)`; two-sided: twice the smaller tail,
/// capped at 1. Under exchangeability with the reference this is a valid
/// p-value: `P(p <= a) <= a`. A non-finite value gets the smallest possible
/// p-value, since no clean input produces one.
pub fn conformal_p(reference: &[f64], value: f64, side: Side) -> f64 {
    let n = reference.len() as f64;
    if !value.is_finite() {
        return 1.0 / (n + 1.0);
    }
    let at_least = (reference.len() - reference.partition_point(|&r| r < value)) as f64;
    let upper = (1.0 + at_least) / (n + 1.0);
    match side {
        Side::Upper => upper,
        Side::Both => {
            let at_most = reference.partition_point(|&r| r <= value) as f64;
            let lower = (1.0 + at_most) / (n + 1.0);
            (2.0 * upper.min(lower)).min(1.0)
        }
    }
}

/// Largest p-value the Cauchy combination takes at face value; see [`cauchy_combine`].
pub const CAUCHY_TRUNCATE: f64 = 0.99;

/// The Cauchy combination test (Liu & Xie 2020): `T = mean(tan((0.5 - p) pi))`,
/// combined `p = 0.5 - atan(T) / pi`. Its tail is accurate under arbitrary
/// dependence between the p-values, which ours have (they describe one image).
/// Returns 1 for an empty list.
///
/// P-values above [`CAUCHY_TRUNCATE`] are truncated to it. Untruncated, a
/// p-value of exactly 1 (a conformal p-value is 1 whenever the value is the
/// smallest seen) contributes `tan(-pi/2)`, about -1.6e16, and hides any
/// evidence in the others; an adaptive attacker would only need to push one
/// statistic to its harmless extreme. Truncation bounds what one harmless
/// statistic can cancel. The verdict thresholds are calibrated on the combined
/// value, so truncation does not bias the false-positive rate.
pub fn cauchy_combine(p_values: &[f64]) -> f64 {
    if p_values.is_empty() {
        return 1.0;
    }
    // tan diverges at p = 0; the floor keeps the sum finite.
    const FLOOR: f64 = 1e-15;
    let t = p_values
        .iter()
        .map(|&p| {
            let p = if p.is_nan() {
                FLOOR
            } else {
                p.clamp(FLOOR, CAUCHY_TRUNCATE)
            };
            ((0.5 - p) * std::f64::consts::PI).tan()
        })
        .sum::<f64>()
        / p_values.len() as f64;
    (0.5 - t.atan() / std::f64::consts::PI).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformal_p_counts_the_tail_including_ties() {
        let r = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(conformal_p(&r, 10.0, Side::Upper), 0.2);
        assert_eq!(conformal_p(&r, 4.0, Side::Upper), 0.4);
        assert_eq!(conformal_p(&r, 0.0, Side::Upper), 1.0);
        assert_eq!(conformal_p(&r, 0.0, Side::Both), 0.4);
        assert_eq!(conformal_p(&r, 2.5, Side::Both), 1.0);
        assert_eq!(conformal_p(&r, f64::NAN, Side::Both), 0.2);
    }

    #[test]
    fn cauchy_combination_behaves_at_the_edges() {
        assert!((cauchy_combine(&[0.3]) - 0.3).abs() < 1e-12);
        assert!((cauchy_combine(&[0.5, 0.5]) - 0.5).abs() < 1e-12);
        // One very small p-value dominates, and p-values of 1 cannot cancel it.
        let p = cauchy_combine(&[1e-6, 1.0, 1.0]);
        assert!(p > 0.0 && p < 1e-4, "{p}");
        assert!(cauchy_combine(&[0.0, 0.0]) < 1e-12);
        assert!((cauchy_combine(&[1.0, 1.0]) - CAUCHY_TRUNCATE).abs() < 1e-12);
        assert!(cauchy_combine(&[f64::NAN]).is_finite());
        assert_eq!(cauchy_combine(&[]), 1.0);
    }
}
