//! Certified predictions by interval bound propagation (Gowal et al.
//! 2018): the guest bounds the logits over the box of images within an
//! L-infinity radius of the received one; a class whose lower bound beats
//! every other class's upper bound cannot change anywhere in the box. No
//! noise and no error probability: the same image always gets the same
//! certificate.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::Certificate;

/// Radii each image is bounded at, the requirement's multiples `k / STEPS`
/// for `k` in `1..=STEPS * REACH`, after radius 0.
const STEPS: u32 = 8;
/// How far past the requirement the grid reaches, in requirements.
const REACH: u32 = 4;

/// A bound certifies only with this much to spare, relative to the largest
/// magnitude of any bound in the network (the guest reports it): the guest
/// computes in `f32`, and the certificate speaks of the network in real
/// arithmetic. A guard band, not a proof: the rounding of a dot product of
/// `n` terms is at most about `n * 6e-8` times the sum of its terms'
/// magnitudes, far below this for the bundled models' few hundred terms
/// per output, and a network that cancels large values (the way rounding
/// is attacked) raises the scale with them.
pub const RELATIVE_SLACK: f64 = 1e-3;

/// The manifest's interval-bound parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IntervalBounds {
    /// The deployment's requirement, in the model's input units (for
    /// unit-interval pixels, 2/255 is two grey levels of an 8-bit image):
    /// an image whose label is not certified against every change of at
    /// most this much to every input value is flagged, and its label
    /// withheld under the enforce policy.
    pub required_radius_linf: f64,
}

/// Why interval-bound parameters cannot be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum IntervalError {
    /// The requirement is not a usable radius.
    #[error("required_radius_linf must be finite and at least 0, got {0}")]
    Radius(f64),
    /// The requirement exceeds the input range: a box that wide holds
    /// every input there is.
    #[error("required_radius_linf {required} is wider than the input range {range}")]
    Wider {
        /// The manifest's requirement.
        required: f64,
        /// The width of the manifest's input range.
        range: f64,
    },
}

/// Why a guest's bounds cannot be certified.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum BoundsError {
    /// Not one pair of bounds per radius asked for.
    #[error("{got} bounds for {radii} radii")]
    Radii {
        /// Bounds received.
        got: usize,
        /// Radii asked for.
        radii: usize,
    },
    /// A pair is not one ordered bound per class (finite at radius 0).
    #[error("bounds for radius {radius} are not {classes} ordered intervals")]
    Malformed {
        /// The radius they were for.
        radius: f32,
        /// Classes the model has.
        classes: usize,
    },
}

/// One box's bounds on the logits, as the guest reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Lower bound per class; negative infinity where the guest found no
    /// bound.
    pub lower: Vec<f32>,
    /// Upper bound per class; infinity where the guest found no bound.
    pub upper: Vec<f32>,
    /// The largest magnitude of any bound in the network (infinite with
    /// no bound).
    pub scale: f32,
}

/// An interval-bound certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalCertificate {
    /// The network's class on the received image. `None` once
    /// [`Certificate::redacted`].
    pub class: Option<usize>,
    /// The largest radius of the grid up to which `class` provably stays:
    /// no change of at most this much to every input value (within the
    /// input range) changes it. `None` when not even the smallest does.
    pub radius_linf: Option<f64>,
    /// Whether `radius_linf` reaches `required_radius_linf`.
    pub certified: bool,
    /// The manifest's requirement, as the guest applied it (rounded up to
    /// `f32`).
    pub required_radius_linf: f64,
    /// At the requirement, the lower bound of `class`'s logit less the
    /// highest upper bound of the others: certified when above the slack.
    /// `None` once [`Certificate::redacted`].
    pub margin: Option<f64>,
}

impl IntervalBounds {
    /// Checks the requirement.
    pub fn validate(&self) -> Result<(), IntervalError> {
        let r = self.required_radius_linf;
        if r.is_finite() && r >= 0.0 && (r as f32).is_finite() {
            Ok(())
        } else {
            Err(IntervalError::Radius(r))
        }
    }

    /// Checks the requirement against the width of the model's input range.
    pub fn validate_for(&self, range: f64) -> Result<(), IntervalError> {
        self.validate()?;
        // The grid reaches REACH times the requirement, in f32.
        let farthest = self.required() * REACH as f32;
        if self.required_radius_linf > range || !farthest.is_finite() {
            return Err(IntervalError::Wider {
                required: self.required_radius_linf,
                range,
            });
        }
        Ok(())
    }

    /// The requirement in `f32`, rounded up, so that the box the guest
    /// bounds is never smaller than the one required.
    pub fn required(&self) -> f32 {
        let r = self.required_radius_linf as f32;
        if f64::from(r) < self.required_radius_linf {
            r.next_up()
        } else {
            r
        }
    }

    /// The radii to bound each image at: 0 (the network's own answer), then
    /// the requirement's eighths up to four times it, the requirement among
    /// them. At most 33, within the guest's limit.
    pub fn radii(&self) -> Vec<f32> {
        let required = self.required();
        let mut radii = vec![0.0];
        if required > 0.0 {
            radii.extend((1..=STEPS * REACH).map(|k| {
                if k == STEPS {
                    required
                } else {
                    required * k as f32 / STEPS as f32
                }
            }));
        }
        radii
    }

    /// The certificate of one image from its bounds at [`Self::radii`], in
    /// that order, for a model of `classes` classes.
    pub fn certify(&self, bounds: &[Bounds], classes: usize) -> Result<Certificate, BoundsError> {
        let radii = self.radii();
        if bounds.len() != radii.len() {
            return Err(BoundsError::Radii {
                got: bounds.len(),
                radii: radii.len(),
            });
        }
        for (b, &radius) in bounds.iter().zip(&radii) {
            // No NaN anywhere; infinities only as "no bound", never at
            // radius 0, where the box is the image and the bounds its logits.
            let finite = |v: f32| v.is_finite() || (radius > 0.0 && v.is_infinite());
            let ordered = b.lower.len() == classes
                && b.upper.len() == classes
                && b.lower
                    .iter()
                    .zip(&b.upper)
                    .all(|(&l, &u)| finite(l) && finite(u) && l <= u)
                && finite(b.scale)
                && b.scale >= 0.0;
            if !ordered || classes == 0 {
                return Err(BoundsError::Malformed { radius, classes });
            }
        }
        // At radius 0 the box is the image (up to outward rounding): the
        // bounds' midpoints are the network's logits.
        let at_zero = &bounds[0];
        let class = (0..classes)
            .map(|k| (f64::from(at_zero.lower[k]) + f64::from(at_zero.upper[k])) / 2.0)
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |(bk, bv), (k, v)| {
                if v > bv { (k, v) } else { (bk, bv) }
            })
            .0;
        let margin = |b: &Bounds| -> f64 {
            let others = (0..classes)
                .filter(|&k| k != class)
                .map(|k| f64::from(b.upper[k]))
                .fold(f64::NEG_INFINITY, f64::max);
            f64::from(b.lower[class]) - others
        };
        let holds = |b: &Bounds| -> bool {
            let scale = b
                .lower
                .iter()
                .chain(&b.upper)
                .map(|v| f64::from(v.abs()))
                .fold(f64::from(b.scale).max(1.0), f64::max);
            scale.is_finite() && margin(b) > RELATIVE_SLACK * scale
        };
        // The radius is where the first failure stops the grid: a larger
        // box that happens to pass beyond a failure proves nothing here.
        let reached = bounds.iter().take_while(|b| holds(b)).count();
        let radius_linf = reached.checked_sub(1).map(|last| f64::from(radii[last]));
        let required = self.required();
        let at_required = radii.iter().position(|&r| r == required).unwrap_or(0);
        Ok(Certificate::IntervalBoundPropagation(IntervalCertificate {
            class: Some(class),
            radius_linf,
            certified: reached > at_required,
            required_radius_linf: f64::from(required),
            margin: Some(margin(&bounds[at_required])),
        }))
    }
}
