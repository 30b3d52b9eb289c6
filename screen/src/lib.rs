//! The arithmetic of medguard's adversarial-input screening.
//!
//! The guest core computes statistics of an input and of the model's response
//! to it; this crate says which statistics exist ([`Statistic`]), turns each
//! value into a conformal p-value against clean reference values of the same
//! predicted class, combines them with the Cauchy combination test and maps
//! the result to a [`Verdict`] using thresholds that calibration wrote into the
//! manifest ([`Profile`]). Nothing here is a constant threshold: every cut-off
//! comes from calibration data.
//!
//! It has no I/O and no model runtime, so the guest (wasm), the host (which
//! calibrates) and the browser build share one implementation.

mod pixels;
mod profile;
mod pvalue;
mod screened;
mod statistic;

pub use pixels::{PixelReference, PixelStatistic, PixelStatistics};
pub use profile::{
    ClassReference, FitError, Profile, ProfileError, Screening, StatisticReport, Targets,
    Thresholds, Verdict, fit,
};
pub use pvalue::{CAUCHY_TRUNCATE, Side, cauchy_combine, conformal_p};
pub use screened::{ScreenOptions, ScreenedImage};
pub use statistic::{Statistic, margin};

/// The predicted class: the index of the largest probability, the first on
/// ties; NaN never wins. The one argmax of guest, host and browser, so that
/// the class a verdict was judged against is the label shown.
pub fn predicted_class(probabilities: &[f32]) -> usize {
    probabilities
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// Softmax in f64, so that large logits neither overflow nor lose the small
/// class; `None` when a logit is not finite. The one softmax of guest and
/// host: the host checks a guest's probabilities against its logits with it.
pub fn softmax(logits: &[f32]) -> Option<Vec<f32>> {
    if logits.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let max = f64::from(logits.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let exps: Vec<f64> = logits.iter().map(|&l| (f64::from(l) - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    Some(exps.iter().map(|e| (e / sum) as f32).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn softmax_is_stable_and_refuses_non_finite_logits() {
        use super::softmax;
        let p = softmax(&[1000.0, 0.0]).unwrap();
        assert!((p[0] - 1.0).abs() < 1e-6 && p[1] >= 0.0);
        assert_eq!(softmax(&[0.0, 0.0]).unwrap(), vec![0.5, 0.5]);
        assert!(softmax(&[f32::NAN, 0.0]).is_none());
        assert!(softmax(&[f32::INFINITY, 0.0]).is_none());
    }

    #[test]
    fn predicted_class_prefers_the_first_and_ignores_nan() {
        use super::predicted_class;
        assert_eq!(predicted_class(&[1.0, 1.0]), 0);
        assert_eq!(predicted_class(&[f32::NAN, 0.5]), 1);
        assert_eq!(predicted_class(&[0.1, 0.9]), 1);
    }
}
