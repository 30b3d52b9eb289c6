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

mod profile;
mod pvalue;
mod screened;
mod statistic;

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

#[cfg(test)]
mod tests {
    #[test]
    fn predicted_class_prefers_the_first_and_ignores_nan() {
        use super::predicted_class;
        assert_eq!(predicted_class(&[1.0, 1.0]), 0);
        assert_eq!(predicted_class(&[f32::NAN, 0.5]), 1);
        assert_eq!(predicted_class(&[0.1, 0.9]), 1);
    }
}
