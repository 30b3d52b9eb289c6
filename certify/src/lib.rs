//! Certified predictions by randomized smoothing (Cohen, Rosenfeld and
//! Kolter, ICML 2019).
//!
//! The smoothed classifier answers, for an image `x`, the class the base model
//! most often gives `x + N(0, sigma² I)`. If that class has probability at
//! least `p > 1/2` under the noise, no perturbation of L2 norm below
//! `sigma · Φ⁻¹(p)` can change the smoothed answer (their Theorem 1, with the
//! runner-up bounded by `1 - p`). The guest classifies [`Smoothing::samples`]
//! noised copies and counts the votes; this crate turns the count into that
//! radius, with `p` a one-sided Clopper-Pearson lower bound.
//!
//! The top class is chosen from the same votes it is bounded with, so the
//! bound is taken at level `alpha / classes`: all the classes' bounds hold at
//! once with probability at least `1 - alpha` (a union bound), and so does the
//! chosen one's, whichever it is. For two classes this costs a factor two in
//! `alpha` where Cohen's CERTIFY spends a separate selection batch.
//!
//! No I/O and no model runtime: the host tabulates a [`RadiusTable`] when it
//! admits a model and looks each answer up in it.

mod interval;

pub use interval::{
    Bounds, BoundsError, IntervalBounds, IntervalCertificate, IntervalError, RELATIVE_SLACK,
};

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::beta::checked_beta_reg;
use thiserror::Error;

/// Most noised copies one image may ask for: each is one inference in the
/// guest, inside the request's deadline.
pub const MAX_SAMPLES: u32 = 10_000;

/// The smallest error probability accepted: far below any deployment's
/// need, and far above where the incomplete beta function's tails lose
/// their precision.
pub const MIN_ALPHA: f64 = 1e-12;

/// The manifest's `certification` section: the method that certifies the
/// model's answers, and its parameters. In JSON, randomized smoothing's
/// four numbers (`method` absent or `"randomized-smoothing"`), or
/// `{"method": "interval-bound-propagation", "required_radius_linf": r}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CertificationFields", into = "CertificationFields")]
pub enum Certification {
    /// Gaussian randomized smoothing, L2.
    Smoothing(Smoothing),
    /// Interval bound propagation, L-infinity.
    IntervalBounds(IntervalBounds),
}

/// The section as written: one flat object, checked for the fields of the
/// method it names and no others.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificationFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<MethodName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sigma: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    samples: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    required_radius_l2: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    required_radius_linf: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MethodName {
    RandomizedSmoothing,
    IntervalBoundPropagation,
}

impl TryFrom<CertificationFields> for Certification {
    type Error = String;

    fn try_from(f: CertificationFields) -> Result<Self, String> {
        match f.method.unwrap_or(MethodName::RandomizedSmoothing) {
            MethodName::RandomizedSmoothing => {
                if f.required_radius_linf.is_some() {
                    return Err("required_radius_linf belongs to interval-bound-propagation, not randomized smoothing".into());
                }
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| format!("randomized smoothing needs `{name}`"))
                };
                Ok(Self::Smoothing(Smoothing {
                    sigma: need(f.sigma, "sigma")?,
                    samples: f.samples.ok_or("randomized smoothing needs `samples`")?,
                    alpha: need(f.alpha, "alpha")?,
                    required_radius_l2: need(f.required_radius_l2, "required_radius_l2")?,
                }))
            }
            MethodName::IntervalBoundPropagation => {
                if f.sigma.is_some()
                    || f.samples.is_some()
                    || f.alpha.is_some()
                    || f.required_radius_l2.is_some()
                {
                    return Err("interval-bound-propagation takes only `required_radius_linf`; sigma, samples, alpha and required_radius_l2 belong to randomized smoothing".into());
                }
                Ok(Self::IntervalBounds(IntervalBounds {
                    required_radius_linf: f
                        .required_radius_linf
                        .ok_or("interval-bound-propagation needs `required_radius_linf`")?,
                }))
            }
        }
    }
}

impl From<Certification> for CertificationFields {
    fn from(c: Certification) -> Self {
        match c {
            // No `method`: the form manifests had before there was a choice.
            Certification::Smoothing(s) => Self {
                method: None,
                sigma: Some(s.sigma),
                samples: Some(s.samples),
                alpha: Some(s.alpha),
                required_radius_l2: Some(s.required_radius_l2),
                required_radius_linf: None,
            },
            Certification::IntervalBounds(i) => Self {
                method: Some(MethodName::IntervalBoundPropagation),
                sigma: None,
                samples: None,
                alpha: None,
                required_radius_l2: None,
                required_radius_linf: Some(i.required_radius_linf),
            },
        }
    }
}

/// Why a certification section cannot be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CertificationError {
    /// Randomized smoothing's parameters.
    #[error(transparent)]
    Smoothing(#[from] SmoothingError),
    /// Interval bounds' parameters.
    #[error(transparent)]
    Intervals(#[from] IntervalError),
}

/// What certifies one admitted model's answers: built by
/// [`Certification::certifier`], so only from parameters that passed
/// validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Certifier {
    /// Randomized smoothing, its radius per vote count tabulated.
    Smoothing(RadiusTable),
    /// Interval bounds.
    IntervalBounds(IntervalBounds),
}

impl Certification {
    /// Checks the parameters for a model of `classes` classes whose inputs
    /// span `input_range` (an interval requirement may not exceed it).
    pub fn validate(&self, classes: usize, input_range: f64) -> Result<(), CertificationError> {
        match self {
            Self::Smoothing(s) => Ok(s.validate(classes)?),
            Self::IntervalBounds(i) => Ok(i.validate_for(input_range)?),
        }
    }

    /// The certifier of a model of `classes` classes, once per model.
    pub fn certifier(&self, classes: usize) -> Result<Certifier, CertificationError> {
        match self {
            Self::Smoothing(s) => Ok(Certifier::Smoothing(s.table(classes)?)),
            Self::IntervalBounds(i) => {
                i.validate()?;
                Ok(Certifier::IntervalBounds(*i))
            }
        }
    }
}

/// The manifest's randomized-smoothing parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smoothing {
    /// Standard deviation of the Gaussian noise, in the model's input units
    /// (the guest draws it in `f32`; the radius uses that value).
    pub sigma: f64,
    /// Noised copies per image (`n`), classified in one guest call.
    pub samples: u32,
    /// Probability that a certificate overstates its radius.
    pub alpha: f64,
    /// The deployment's requirement: an image whose certified L2 radius is
    /// below it (or that has none) is flagged, and its label withheld under
    /// the enforce policy.
    pub required_radius_l2: f64,
}

/// Why smoothing parameters cannot be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SmoothingError {
    /// A parameter is outside its range.
    #[error("smoothing parameters: {0}")]
    Invalid(String),
    /// Even unanimous votes could not certify the required radius.
    #[error(
        "the required L2 radius {required} is unreachable: with {samples} samples, sigma {sigma} and \
         alpha {alpha}, unanimous votes certify {largest:.4}; use at least {needed} samples or a \
         larger sigma"
    )]
    Unreachable {
        /// The manifest's requirement.
        required: f64,
        /// The manifest's samples.
        samples: u32,
        /// The manifest's sigma.
        sigma: f64,
        /// The manifest's alpha.
        alpha: f64,
        /// The radius unanimous votes certify.
        largest: f64,
        /// The fewest samples with which unanimous votes reach `required`.
        needed: String,
    },
}

/// Why a guest's votes cannot be certified.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VoteError {
    /// Not one count per class.
    #[error("{got} vote counts for {classes} classes")]
    Classes {
        /// Counts received.
        got: usize,
        /// Classes the model has.
        classes: usize,
    },
    /// The counts do not add up to the samples drawn.
    #[error("votes add up to {got}, {samples} samples were drawn")]
    Total {
        /// Their sum (saturating).
        got: u64,
        /// The manifest's samples.
        samples: u32,
    },
}

impl Smoothing {
    /// The noise's standard deviation as the guest draws it: `sigma` rounded
    /// to `f32`, so that the radius belongs to the noise actually added.
    pub fn noise_sigma(&self) -> f32 {
        self.sigma as f32
    }

    /// Checks the ranges, and that unanimous votes reach the required radius
    /// for a model of `classes` classes.
    pub fn validate(&self, classes: usize) -> Result<(), SmoothingError> {
        let invalid = |why: String| Err(SmoothingError::Invalid(why));
        let sigma = f64::from(self.noise_sigma());
        if !(sigma.is_finite() && sigma > 0.0 && sigma <= 16.0) {
            return invalid(format!("sigma must be in (0, 16], got {}", self.sigma));
        }
        if !(1..=MAX_SAMPLES).contains(&self.samples) {
            return invalid(format!(
                "samples must be 1 to {MAX_SAMPLES}, got {}",
                self.samples
            ));
        }
        if !(MIN_ALPHA..=0.5).contains(&self.alpha) {
            return invalid(format!(
                "alpha must be in [{MIN_ALPHA}, 0.5], got {}",
                self.alpha
            ));
        }
        if !(self.required_radius_l2.is_finite() && self.required_radius_l2 >= 0.0) {
            return invalid(format!(
                "required_radius_l2 must be finite and at least 0, got {}",
                self.required_radius_l2
            ));
        }
        if !(2..=256).contains(&classes) {
            return invalid(format!("a model of {classes} classes cannot be smoothed"));
        }
        // Unanimous votes that still abstain (too few samples for alpha)
        // would withhold every label, whatever the requirement.
        let largest = self.radius(self.samples, classes).unwrap_or(-1.0);
        if largest < self.required_radius_l2 {
            // Unanimous votes bound p by (alpha/K)^(1/n); reaching r needs
            // that to be at least Φ(r / sigma).
            let level = self.alpha / classes as f64;
            let needed = standard_normal().cdf(self.required_radius_l2 / sigma);
            let needed = if needed < 1.0 {
                format!("{}", (level.ln() / needed.ln()).ceil())
            } else {
                "more".into()
            };
            return Err(SmoothingError::Unreachable {
                required: self.required_radius_l2,
                samples: self.samples,
                sigma: self.sigma,
                alpha: self.alpha,
                largest: largest.max(0.0),
                needed,
            });
        }
        Ok(())
    }

    /// The radius certified when the top class of `classes` got `votes` of
    /// the samples; `None` is an abstention. Call on validated parameters.
    fn radius(&self, votes: u32, classes: usize) -> Option<f64> {
        let n = self.samples;
        // A lower bound above 1/2 needs more than half the votes.
        if votes > n || 2 * u64::from(votes) <= u64::from(n) {
            return None;
        }
        let p = clopper_pearson_lower(votes, n, self.alpha / classes as f64);
        (p > 0.5).then(|| f64::from(self.noise_sigma()) * standard_normal().inverse_cdf(p))
    }

    /// Tabulates the radius of every possible vote count, once per model.
    pub fn table(&self, classes: usize) -> Result<RadiusTable, SmoothingError> {
        self.validate(classes)?;
        Ok(RadiusTable {
            smoothing: *self,
            classes,
            radii: (0..=self.samples)
                .map(|votes| self.radius(votes, classes))
                .collect(),
        })
    }
}

/// The radius each top-class vote count certifies, for one model's
/// [`Smoothing`]: built by [`Smoothing::table`], so only from parameters that
/// passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RadiusTable {
    smoothing: Smoothing,
    classes: usize,
    /// Indexed by the top class's votes, `0..=samples`.
    radii: Vec<Option<f64>>,
}

impl RadiusTable {
    /// The parameters the table was built for.
    pub fn smoothing(&self) -> &Smoothing {
        &self.smoothing
    }

    /// The radius `votes` for the top class certify; `None` abstains.
    pub fn radius(&self, votes: u32) -> Option<f64> {
        self.radii.get(votes as usize).copied().flatten()
    }

    /// The fewest top-class votes that certify the required radius.
    pub fn votes_required(&self) -> u32 {
        let required = self.smoothing.required_radius_l2;
        (0..=self.smoothing.samples)
            .find(|&v| self.radius(v).is_some_and(|r| r >= required))
            .unwrap_or(self.smoothing.samples)
    }

    /// The certificate of one image's vote counts (one per class, in output
    /// order) over the noise `noise` names, after checking they are counts
    /// of the samples drawn.
    pub fn certify(&self, votes: &[u32], noise: Noise) -> Result<Certificate, VoteError> {
        if votes.len() != self.classes {
            return Err(VoteError::Classes {
                got: votes.len(),
                classes: self.classes,
            });
        }
        let total: u64 = votes.iter().map(|&v| u64::from(v)).sum();
        if total != u64::from(self.smoothing.samples) {
            return Err(VoteError::Total {
                got: total,
                samples: self.smoothing.samples,
            });
        }
        // The first class with the most votes; a tie at the top never
        // certifies (the top count is then at most half the samples).
        let (class, top) =
            votes.iter().copied().enumerate().fold(
                (0, 0),
                |(bc, bv), (c, v)| if v > bv { (c, v) } else { (bc, bv) },
            );
        let radius_l2 = self.radius(top);
        let s = &self.smoothing;
        Ok(Certificate::RandomizedSmoothing(SmoothedCertificate {
            class: Some(class),
            radius_l2,
            certified: radius_l2.is_some_and(|r| r >= s.required_radius_l2),
            required_radius_l2: s.required_radius_l2,
            samples: s.samples,
            sigma: s.sigma,
            alpha: s.alpha,
            votes: Some(votes.to_vec()),
            noise,
        }))
    }
}

/// One image's robustness certificate, by the method that made it. In
/// JSON, an object whose `method` names the method (`randomized-smoothing`,
/// `interval-bound-propagation`), with that method's fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Certificate {
    /// Gaussian randomized smoothing: an L2 radius, up to `alpha`.
    RandomizedSmoothing(SmoothedCertificate),
    /// Interval bound propagation: an L-infinity radius, deterministic.
    IntervalBoundPropagation(IntervalCertificate),
}

/// The norm a certificate's radius is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Euclidean.
    L2,
    /// The largest change to any one input value.
    LInf,
}

impl Norm {
    /// The distance between two images of equal length, in `f64`.
    pub fn distance(self, a: &[f32], b: &[f32]) -> f64 {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs());
        match self {
            Self::L2 => d.map(|v| v * v).sum::<f64>().sqrt(),
            Self::LInf => d.fold(0.0, f64::max),
        }
    }
}

/// A randomized-smoothing certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmoothedCertificate {
    /// The smoothed classifier's class: the most votes, the first on ties.
    /// `None` once [`Certificate::redacted`].
    pub class: Option<usize>,
    /// No L2 perturbation of the received image smaller than this changes
    /// `class`, except with probability `alpha`; `None` is an abstention.
    pub radius_l2: Option<f64>,
    /// Whether `radius_l2` reaches `required_radius_l2`.
    pub certified: bool,
    /// The manifest's requirement.
    pub required_radius_l2: f64,
    /// Noised copies classified.
    pub samples: u32,
    /// Their noise's standard deviation (the manifest's value).
    pub sigma: f64,
    /// The certificate's error probability.
    pub alpha: f64,
    /// Votes per class, in output order. `None` once
    /// [`Certificate::redacted`].
    pub votes: Option<Vec<u32>>,
    /// Which noise the votes were counted over: replaying it reproduces them.
    pub noise: Noise,
}

/// The noise of one certificate: ChaCha20 stream `stream` of `seed`. The
/// seed is drawn from the operating system for every request and never
/// taken from a caller: noise an attacker knows in advance can be optimised
/// against, and the certificate's probability would no longer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    /// The request's smoothing seed.
    pub seed: u64,
    /// The image's stream (its index in the request).
    pub stream: u64,
}

impl Certificate {
    /// The certified class, whatever its radius; `None` once redacted.
    pub fn class(&self) -> Option<usize> {
        match self {
            Self::RandomizedSmoothing(c) => c.class,
            Self::IntervalBoundPropagation(c) => c.class,
        }
    }

    /// The norm its radius is measured in.
    pub fn norm(&self) -> Norm {
        match self {
            Self::RandomizedSmoothing(_) => Norm::L2,
            Self::IntervalBoundPropagation(_) => Norm::LInf,
        }
    }

    /// The certified radius in [`Certificate::norm`]; `None` when there is
    /// none (smoothing abstained, or the bounds overlap at any radius).
    pub fn radius(&self) -> Option<f64> {
        match self {
            Self::RandomizedSmoothing(c) => c.radius_l2,
            Self::IntervalBoundPropagation(c) => c.radius_linf,
        }
    }

    /// Whether `image` is inside the region the certificate speaks for
    /// around `received`: the open L2 ball of the radius for smoothing
    /// (Cohen et al.'s Theorem 1), the closed L-infinity box for intervals.
    pub fn holds_at(&self, received: &[f32], image: &[f32]) -> bool {
        self.radius().is_some_and(|r| {
            let d = self.norm().distance(received, image);
            match self.norm() {
                Norm::L2 => d < r,
                Norm::LInf => d <= r,
            }
        })
    }

    /// Whether the radius reaches the manifest's requirement.
    pub fn certified(&self) -> bool {
        match self {
            Self::RandomizedSmoothing(c) => c.certified,
            Self::IntervalBoundPropagation(c) => c.certified,
        }
    }

    /// Whether it covers `label` (one of `labels`, the model's output
    /// labels; `None` when there is none to cover): the radius reaches the
    /// requirement and the certified class is that label.
    pub fn covers(&self, labels: &[String], label: Option<&String>) -> bool {
        self.certified()
            && label.is_none_or(|l| self.class().and_then(|c| labels.get(c)) == Some(l))
    }

    /// The certificate without what gives the class away, for a result
    /// whose label is withheld: the class itself, the smoothing votes (the
    /// smoothed classifier's answer) and the interval margin.
    pub fn redacted(self) -> Self {
        match self {
            Self::RandomizedSmoothing(c) => Self::RandomizedSmoothing(SmoothedCertificate {
                class: None,
                votes: None,
                ..c
            }),
            Self::IntervalBoundPropagation(c) => {
                Self::IntervalBoundPropagation(IntervalCertificate {
                    class: None,
                    margin: None,
                    ..c
                })
            }
        }
    }
}

/// The one-sided Clopper-Pearson lower bound at level `level` on a success
/// probability after `successes` of `n` trials: the largest `p` with
/// `P(Binomial(n, p) >= successes) <= level`, i.e. the `level` quantile of
/// Beta(successes, n - successes + 1).
///
/// Found by bisection on the regularised incomplete beta function, which is
/// increasing in `p`, keeping the end where it is at most `level`: the bound
/// is never optimistic through rounding, and the loop ends in a fixed number
/// of steps at any (n, level) (statrs' own inverse iterates without a bound).
fn clopper_pearson_lower(successes: u32, n: u32, level: f64) -> f64 {
    if successes == 0 {
        return 0.0;
    }
    let (a, b) = (f64::from(successes), f64::from(n - successes + 1));
    let target = level * (1.0 - 1e-9);
    // I_0 = 0 <= target < 1 = I_1.
    let (mut low, mut high) = (0.0_f64, 1.0_f64);
    // Each step halves the interval; 1100 halvings pass the smallest f64.
    for _ in 0..1100 {
        let mid = low + (high - low) / 2.0;
        if mid <= low || mid >= high {
            break;
        }
        // Arguments are in the function's domain (a, b > 0, 0 < mid < 1),
        // so it cannot fail; a failure would count as above the level. The
        // target sits a relative 1e-9 under the level: statrs' series is
        // accurate to about 1e-10 there, and an error must not round up.
        if checked_beta_reg(a, b, mid).is_ok_and(|i| i <= target) {
            low = mid;
        } else {
            high = mid;
        }
    }
    low
}

fn standard_normal() -> Normal {
    Normal::standard()
}

#[cfg(test)]
mod tests {
    use super::*;
    use statrs::distribution::{Binomial, Discrete};
    use statrs::function::beta::beta_reg;

    impl RadiusTable {
        fn certify_test(&self, votes: &[u32]) -> Result<SmoothedCertificate, VoteError> {
            self.certify(votes, Noise { seed: 1, stream: 0 })
                .map(smoothed)
        }
    }

    fn smoothed(c: Certificate) -> SmoothedCertificate {
        match c {
            Certificate::RandomizedSmoothing(c) => c,
            other => panic!("not a smoothing certificate: {other:?}"),
        }
    }

    fn smoothing(sigma: f64, samples: u32, alpha: f64, required: f64) -> Smoothing {
        Smoothing {
            sigma,
            samples,
            alpha,
            required_radius_l2: required,
        }
    }

    #[test]
    fn unanimous_votes_certify_sigma_times_the_quantile_of_the_union_bound() {
        // The issue's arithmetic: 1.83 sigma at n = 200, alpha = 0.001 for
        // one bound; the union over two classes halves the level.
        let s = smoothing(0.25, 200, 0.001, 0.0);
        let table = s.table(2).unwrap();
        let expected = 0.25 * standard_normal().inverse_cdf(0.0005f64.powf(1.0 / 200.0));
        // At most, and within the bound's 1e-9 safety margin of, the
        // closed form.
        let radius = table.radius(200).unwrap();
        assert!(radius <= expected && expected - radius < 1e-9, "{radius}");
        assert!((expected / 0.25 - 1.783).abs() < 1e-3, "{expected}");
        let one = smoothing(0.25, 200, 0.001, 0.0).table(1);
        assert!(one.is_err(), "one class is not a classifier");
    }

    #[test]
    fn bounds_cover_the_true_probability_at_the_level() {
        // Exact coverage: for each true p, the probability (over the votes)
        // that the bound exceeds p is at most the level.
        for n in [20u32, 200, 1000] {
            let level = 0.01;
            let bounds: Vec<f64> = (0..=n)
                .map(|k| clopper_pearson_lower(k, n, level))
                .collect();
            assert!(bounds.windows(2).all(|w| w[0] <= w[1]), "monotone in votes");
            for i in 1..200 {
                let p = f64::from(i) / 200.0;
                let binomial = Binomial::new(p, u64::from(n)).unwrap();
                let over: f64 = (0..=n)
                    .filter(|&k| bounds[k as usize] > p)
                    .map(|k| binomial.pmf(u64::from(k)))
                    .sum();
                assert!(over <= level * (1.0 + 1e-9), "n {n}, p {p}: {over}");
            }
        }
    }

    #[test]
    fn the_extreme_corners_of_the_manifest_limits_finish_and_stay_safe() {
        // The largest sample count at the smallest alpha, split over many
        // classes: every bound is found, monotone, and not optimistic.
        let n = MAX_SAMPLES;
        let level = MIN_ALPHA / 1000.0;
        let bounds: Vec<f64> = (0..=n)
            .map(|k| clopper_pearson_lower(k, n, level))
            .collect();
        assert!(bounds.windows(2).all(|w| w[0] <= w[1]), "monotone in votes");
        for k in [1, 2, n / 2, n - 1, n] {
            let p = bounds[k as usize];
            assert!((0.0..1.0).contains(&p), "{k}: {p}");
            assert!(beta_reg(f64::from(k), f64::from(n - k + 1), p) <= level);
        }
        // Unanimous votes: the closed form p^n = level.
        let closed = level.powf(1.0 / f64::from(n));
        assert!((bounds[n as usize] - closed).abs() < 1e-12);
        // One vote: 1 - (1 - p)^n = level.
        let one = -((-level).ln_1p() / f64::from(n)).exp_m1();
        assert!((bounds[1] - one).abs() <= one * 1e-9, "{} {one}", bounds[1]);
    }

    #[test]
    fn bounds_at_the_corners_match_an_independent_implementation() {
        // scipy 1.17.1 `beta.ppf(1e-12 / 256, k, 10000 - k + 1)` (Boost's
        // inverse incomplete beta), at the smallest alpha over 256 classes.
        let level = MIN_ALPHA / 256.0;
        for (k, reference) in [
            (5100, 0.4711239850414294),
            (6000, 0.5615336037180101),
            (9000, 0.8750206114394785),
            (9999, 0.9963257087922901),
        ] {
            let ours = clopper_pearson_lower(k, MAX_SAMPLES, level);
            assert!(
                (ours - reference).abs() <= reference * 1e-9,
                "{k}: {ours} against {reference}"
            );
        }
    }

    #[test]
    fn bounds_are_tight_not_just_safe() {
        // At the bound itself the binomial tail is the level (to rounding).
        for (k, n) in [(150u32, 200u32), (199, 200), (600, 1000), (11, 20)] {
            let p = clopper_pearson_lower(k, n, 0.0005);
            let tail = beta_reg(f64::from(k), f64::from(n - k + 1), p);
            assert!((tail - 0.0005).abs() < 1e-8, "{k}/{n}: tail {tail}");
        }
    }

    #[test]
    fn certify_picks_the_top_class_and_abstains_without_a_majority_bound() {
        let table = smoothing(0.5, 400, 0.001, 0.25).table(2).unwrap();
        let c = table.certify_test(&[12, 388]).unwrap();
        assert_eq!(c.class, Some(1));
        let r = c.radius_l2.unwrap();
        assert!(r > 0.25 && c.certified, "{r}");
        assert_eq!(c.votes, Some(vec![12, 388]));
        let hidden = smoothed(Certificate::RandomizedSmoothing(c.clone()).redacted());
        assert_eq!((hidden.class, hidden.votes), (None, None));
        assert_eq!(hidden.radius_l2, c.radius_l2);
        let tie = table.certify_test(&[200, 200]).unwrap();
        assert_eq!(
            (tie.class, tie.radius_l2, tie.certified),
            (Some(0), None, false)
        );
        // A majority too thin for its bound to pass 1/2 abstains too.
        assert_eq!(table.certify_test(&[190, 210]).unwrap().radius_l2, None);
        // Certified, but below the requirement.
        let low = table.votes_required() - 1;
        let c = table.certify_test(&[400 - low, low]).unwrap();
        assert!(c.radius_l2.is_some() && !c.certified);
        let c = table.certify_test(&[400 - low - 1, low + 1]).unwrap();
        assert!(c.certified);
    }

    #[test]
    fn votes_that_are_not_counts_of_the_samples_are_refused() {
        let table = smoothing(0.5, 100, 0.001, 0.0).table(2).unwrap();
        assert_eq!(
            table.certify_test(&[100]),
            Err(VoteError::Classes { got: 1, classes: 2 })
        );
        assert_eq!(
            table.certify_test(&[60, 41]),
            Err(VoteError::Total {
                got: 101,
                samples: 100
            })
        );
        assert_eq!(
            table.certify_test(&[u32::MAX, 101]),
            Err(VoteError::Total {
                got: u64::from(u32::MAX) + 101,
                samples: 100
            })
        );
    }

    #[test]
    fn parameters_out_of_range_or_unreachable_are_refused_with_the_way_out() {
        for bad in [
            smoothing(0.0, 100, 0.001, 0.0),
            smoothing(f64::NAN, 100, 0.001, 0.0),
            smoothing(0.25, 0, 0.001, 0.0),
            smoothing(0.25, MAX_SAMPLES + 1, 0.001, 0.0),
            smoothing(0.25, 100, 0.0, 0.0),
            smoothing(0.25, 100, 1e-300, 0.0),
            smoothing(0.25, 100, 0.6, 0.0),
            smoothing(0.25, 100, 0.001, -0.1),
            smoothing(0.25, 100, 0.001, f64::INFINITY),
        ] {
            assert!(
                matches!(bad.validate(2), Err(SmoothingError::Invalid(_))),
                "{bad:?}"
            );
        }
        // Unanimous votes of 5 samples cannot bound p above 1/2 at this
        // alpha: every label would be withheld, even at requirement 0.
        assert!(matches!(
            smoothing(0.25, 5, 0.001, 0.0).validate(2),
            Err(SmoothingError::Unreachable { .. })
        ));
        // L2 0.5 at sigma 0.25 is out of reach at n = 200 (the issue's note).
        let err = smoothing(0.25, 200, 0.001, 0.5).validate(2).unwrap_err();
        let SmoothingError::Unreachable { needed, .. } = &err else {
            panic!("{err}")
        };
        let needed: u32 = needed.parse().unwrap();
        assert!(smoothing(0.25, needed, 0.001, 0.5).validate(2).is_ok());
        assert!(smoothing(0.25, needed - 1, 0.001, 0.5).validate(2).is_err());
        assert!(err.to_string().contains("use at least"), "{err}");
    }

    #[test]
    fn the_manifest_section_is_strict_json() {
        let s: Smoothing = serde_json::from_str(
            r#"{"sigma":0.25,"samples":400,"alpha":0.001,"required_radius_l2":0.25}"#,
        )
        .unwrap();
        assert_eq!(s, smoothing(0.25, 400, 0.001, 0.25));
        assert!(
            serde_json::from_str::<Smoothing>(
                r#"{"sigma":0.25,"samples":400,"alpha":0.001,"required_radius_l2":0.25,"x":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn the_certification_section_names_one_method_with_its_fields_only() {
        let parse = |json: &str| serde_json::from_str::<Certification>(json);
        // Smoothing keeps the form manifests had before there was a
        // choice, both ways: signed manifests and their digests stay valid.
        let old = r#"{"sigma":0.25,"samples":400,"alpha":0.001,"required_radius_l2":0.25}"#;
        let c = parse(old).unwrap();
        assert_eq!(
            c,
            Certification::Smoothing(smoothing(0.25, 400, 0.001, 0.25))
        );
        assert_eq!(serde_json::to_string(&c).unwrap(), old);
        let named = r#"{"method":"randomized-smoothing","sigma":0.25,"samples":400,"alpha":0.001,"required_radius_l2":0.25}"#;
        assert_eq!(parse(named).unwrap(), c);
        let ibp = r#"{"method":"interval-bound-propagation","required_radius_linf":0.01}"#;
        let c = parse(ibp).unwrap();
        assert_eq!(
            c,
            Certification::IntervalBounds(IntervalBounds {
                required_radius_linf: 0.01
            })
        );
        assert_eq!(serde_json::to_string(&c).unwrap(), ibp);
        for (bad, why) in [
            (
                r#"{"method":"interval-bound-propagation","required_radius_linf":0.01,"sigma":0.25}"#,
                "belong to randomized smoothing",
            ),
            (
                r#"{"method":"interval-bound-propagation"}"#,
                "needs `required_radius_linf`",
            ),
            (
                r#"{"sigma":0.25,"samples":400,"alpha":0.001,"required_radius_l2":0.25,"required_radius_linf":0.01}"#,
                "belongs to interval-bound-propagation",
            ),
            (
                r#"{"sigma":0.25,"samples":400,"alpha":0.001}"#,
                "needs `required_radius_l2`",
            ),
            (
                r#"{"method":"ibp","required_radius_linf":0.01}"#,
                "unknown variant",
            ),
            (
                r#"{"method":"interval-bound-propagation","required_radius_linf":0.01,"x":1}"#,
                "unknown field",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // No wider than the input range, and the grid's farthest radius
        // must exist in f32.
        let ibp = |r| IntervalBounds {
            required_radius_linf: r,
        };
        assert!(ibp(0.5).validate_for(1.0).is_ok());
        assert!(matches!(
            ibp(1.5).validate_for(1.0),
            Err(IntervalError::Wider { .. })
        ));
        // Inside the range, but the grid's farthest radius overflows f32.
        assert!(matches!(
            ibp(1e38).validate_for(f64::from(f32::MAX) * 2.0),
            Err(IntervalError::Wider { .. })
        ));
        for r in [-0.01, f64::NAN, f64::INFINITY, 1e300] {
            let c = Certification::IntervalBounds(IntervalBounds {
                required_radius_linf: r,
            });
            assert!(
                c.validate(2, 1.0).is_err() && c.certifier(2).is_err(),
                "{r}"
            );
        }
    }

    /// Bounds at `ibp`'s radii whose margin for class 0 is `margins[k]`
    /// at radius `k` (class 0's lower bound, class 1's upper bound 0).
    fn bounds_with_margins(margins: &[f32]) -> Vec<Bounds> {
        margins
            .iter()
            .map(|&m| Bounds {
                lower: vec![m, -1.0],
                upper: vec![m + 2.0, 0.0],
                scale: 1.0,
            })
            .collect()
    }

    #[test]
    fn interval_certificates_take_the_radius_where_the_margin_first_fails() {
        let ibp = IntervalBounds {
            required_radius_linf: 2.0 / 255.0,
        };
        let radii = ibp.radii();
        assert_eq!(radii.len(), 33);
        assert_eq!(radii[0], 0.0);
        assert!(f64::from(radii[8]) >= 2.0 / 255.0 && radii[8] == ibp.required());
        assert!(radii.windows(2).all(|w| w[0] < w[1]));
        let certify = |margins: &[f32]| match ibp.certify(&bounds_with_margins(margins), 2) {
            Ok(Certificate::IntervalBoundPropagation(c)) => c,
            other => panic!("{other:?}"),
        };
        // Holding through the 12th radius (1.5 times the requirement).
        let mut margins = vec![1.0f32; 33];
        for m in &mut margins[13..] {
            *m = -1.0;
        }
        let c = certify(&margins);
        assert_eq!(c.class, Some(0));
        assert_eq!(c.radius_linf, Some(f64::from(radii[12])));
        assert!(c.certified);
        assert_eq!(c.margin, Some(1.0));
        // A failure below the requirement ends the radius there, even if a
        // larger box happens to pass.
        margins[5] = -1.0;
        let c = certify(&margins);
        assert_eq!(c.radius_linf, Some(f64::from(radii[4])));
        assert!(!c.certified);
        // A margin inside the slack is no margin, and the slack grows with
        // the largest bound anywhere in the network.
        let c = certify(&[5e-4; 33]);
        assert_eq!((c.radius_linf, c.certified), (None, false));
        let mut loud = bounds_with_margins(&[1.0; 33]);
        loud[3].scale = 2000.0;
        match ibp.certify(&loud, 2).unwrap() {
            Certificate::IntervalBoundPropagation(c) => {
                assert_eq!(c.radius_linf, Some(f64::from(radii[2])));
            }
            other => panic!("{other:?}"),
        }
        // Where the guest found no bound (it overflowed), the radius ends.
        let mut lost = bounds_with_margins(&[1.0; 33]);
        lost[6] = Bounds {
            lower: vec![f32::NEG_INFINITY; 2],
            upper: vec![f32::INFINITY; 2],
            scale: f32::INFINITY,
        };
        match ibp.certify(&lost, 2).unwrap() {
            Certificate::IntervalBoundPropagation(c) => {
                assert_eq!(c.radius_linf, Some(f64::from(radii[5])));
                assert!(!c.certified);
            }
            other => panic!("{other:?}"),
        }
        // The class is the network's own answer on the image (radius 0).
        let mut flipped = bounds_with_margins(&[1.0; 33]);
        flipped[0] = Bounds {
            lower: vec![-1.0, 3.0],
            upper: vec![-1.0, 3.0],
            scale: 3.0,
        };
        match ibp.certify(&flipped, 2).unwrap() {
            Certificate::IntervalBoundPropagation(c) => {
                assert_eq!(c.class, Some(1));
                assert!(!c.certified, "class 1 loses at every other radius");
            }
            other => panic!("{other:?}"),
        }
        let hidden = Certificate::IntervalBoundPropagation(certify(&[1.0; 33])).redacted();
        match hidden {
            Certificate::IntervalBoundPropagation(c) => {
                assert_eq!((c.class, c.margin), (None, None));
                assert!(c.certified && c.radius_linf.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bounds_that_are_not_ordered_finite_pairs_per_class_and_radius_are_refused() {
        let ibp = IntervalBounds {
            required_radius_linf: 0.01,
        };
        let good = bounds_with_margins(&[1.0; 33]);
        assert!(ibp.certify(&good, 2).is_ok());
        assert_eq!(
            ibp.certify(&good[..32], 2),
            Err(BoundsError::Radii { got: 32, radii: 33 })
        );
        for edit in [
            (|b: &mut Bounds| b.lower.push(0.0)) as fn(&mut Bounds),
            |b| b.upper.pop().map(drop).unwrap_or(()),
            |b| b.lower[0] = f32::NAN,
            |b| b.scale = f32::NAN,
            |b| b.scale = -1.0,
            |b| b.lower[1] = b.upper[1] + 1.0,
        ] {
            let mut bad = good.clone();
            edit(&mut bad[7]);
            assert!(
                matches!(ibp.certify(&bad, 2), Err(BoundsError::Malformed { .. })),
                "{bad:?}"
            );
        }
        // At radius 0 the bounds are the image's logits: never infinite.
        let mut bad = good.clone();
        bad[0].upper[1] = f32::INFINITY;
        assert!(matches!(
            ibp.certify(&bad, 2),
            Err(BoundsError::Malformed { .. })
        ));
        // A requirement of 0 bounds the image alone.
        let zero = IntervalBounds {
            required_radius_linf: 0.0,
        };
        assert_eq!(zero.radii(), vec![0.0]);
        assert!(zero.certify(&good[..1], 2).unwrap().certified());
    }

    #[test]
    fn certificates_are_tagged_by_method_and_strict() {
        let ibp = IntervalBounds {
            required_radius_linf: 0.01,
        };
        let c = ibp.certify(&bounds_with_margins(&[1.0; 33]), 2).unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["method"], "interval-bound-propagation");
        assert_eq!(
            serde_json::from_value::<Certificate>(json.clone()).unwrap(),
            c
        );
        let mut extra = json;
        extra["votes"] = serde_json::json!([1, 2]);
        assert!(serde_json::from_value::<Certificate>(extra).is_err());
        let table = smoothing(0.5, 400, 0.001, 0.25).table(2).unwrap();
        let c = table
            .certify(&[12, 388], Noise { seed: 1, stream: 0 })
            .unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["method"], "randomized-smoothing");
        assert_eq!(serde_json::from_value::<Certificate>(json).unwrap(), c);
        assert_eq!(c.norm(), Norm::L2);
        let (a, b) = ([0.0f32, 0.0], [0.3f32, 0.4]);
        assert!((Norm::L2.distance(&a, &b) - 0.5).abs() < 1e-7);
        assert!((Norm::LInf.distance(&a, &b) - 0.4).abs() < 1e-7);
    }
}
