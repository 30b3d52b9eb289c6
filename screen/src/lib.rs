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
