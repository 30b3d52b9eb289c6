//! The screening statistics that exist, their names and parameters.

use serde::{Deserialize, Serialize};

/// One screening statistic and its parameters. The parameters are part of the
/// calibration profile, so a profile is only ever compared with values computed
/// exactly the way its reference values were.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Statistic {
    /// The logit margin of the predicted class: `z[pred] - max(z[other])`.
    /// Minimal-perturbation attacks (CW, DeepFool) stop just past the decision
    /// boundary, strong ones overshoot it, so both tails are suspicious.
    Margin,
    /// Feature squeezing: how much the margin of the predicted class drops when
    /// the image is smoothed with a `window` x `window` median filter. A
    /// perturbation tuned to the exact pixels loses its effect; a clean image
    /// barely moves. Measured on margins, not on softmax L1, which saturates on a
    /// two-class model.
    SqueezeMedian {
        /// Side of the square median window (2 or 3).
        window: u32,
    },
    /// How much the margin drops, on average over `draws` Gaussian noise draws
    /// of standard deviation `sigma` (in input units), seeded by the host.
    /// Adversarial points sit in thin regions that small random noise leaves.
    NoiseResponse {
        /// Standard deviation of the noise, in the model's input units.
        sigma: f32,
        /// Number of noise draws per image.
        draws: u32,
    },
}

impl Statistic {
    /// The statistics `medguard calibrate` writes into new profiles, chosen by
    /// measurement on attacks against the validation split
    /// (tests/adversarial/select_statistics.py, README "Screening"): the
    /// margin and a 2x2 median squeeze, two model inputs per image. Noise
    /// response and a 3x3 squeeze added little for their extra inferences;
    /// pixel statistics flagged benign noise and JPEG far above target.
    pub fn default_set() -> Vec<Statistic> {
        vec![Statistic::Margin, Statistic::SqueezeMedian { window: 2 }]
    }

    /// Which tail of the clean distribution counts as suspicious.
    pub fn side(&self) -> crate::Side {
        match self {
            Statistic::Margin => crate::Side::Both,
            Statistic::SqueezeMedian { .. } | Statistic::NoiseResponse { .. } => crate::Side::Upper,
        }
    }

    /// A short stable name for reports, unique within a profile's statistics
    /// as long as no statistic is listed twice with the same parameters.
    pub fn name(&self) -> String {
        match self {
            Statistic::Margin => "margin".into(),
            Statistic::SqueezeMedian { window } => format!("squeeze-median-{window}x{window}"),
            Statistic::NoiseResponse { sigma, draws } => {
                format!("noise-response-{:.1}of255x{draws}", sigma * 255.0)
            }
        }
    }

    /// Extra model inputs this statistic needs per image (beyond the image itself).
    pub fn extra_inferences(&self) -> u32 {
        match self {
            Statistic::Margin => 0,
            Statistic::SqueezeMedian { .. } => 1,
            Statistic::NoiseResponse { draws, .. } => *draws,
        }
    }

    /// Checks parameters that would make the statistic meaningless or unbounded.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Statistic::Margin => Ok(()),
            Statistic::SqueezeMedian { window } if (2..=5).contains(&window) => Ok(()),
            Statistic::SqueezeMedian { window } => {
                Err(format!("median window must be 2 to 5, got {window}"))
            }
            Statistic::NoiseResponse { sigma, draws }
                if sigma.is_finite() && sigma > 0.0 && (1..=16).contains(&draws) =>
            {
                Ok(())
            }
            Statistic::NoiseResponse { sigma, draws } => Err(format!(
                "noise response needs 0 < sigma and 1 to 16 draws, got sigma {sigma}, draws {draws}"
            )),
        }
    }
}

/// The margin of class `class` in `logits`: its logit minus the largest other
/// logit. Positive when `class` wins. `None` for fewer than two logits or an
/// out-of-range class.
pub fn margin(logits: &[f32], class: usize) -> Option<f64> {
    let own = *logits.get(class)? as f64;
    let best_other = logits
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != class)
        .map(|(_, &v)| v as f64)
        .max_by(f64::total_cmp)?;
    Some(own - best_other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_own_minus_best_other() {
        assert_eq!(margin(&[1.0, 3.0, 2.0], 1), Some(1.0));
        assert_eq!(margin(&[1.0, 3.0, 2.0], 0), Some(-2.0));
        assert_eq!(margin(&[1.0], 0), None);
        assert_eq!(margin(&[1.0, 2.0], 5), None);
    }

    #[test]
    fn serialises_with_kind_tags() {
        let s = Statistic::NoiseResponse {
            sigma: 0.5,
            draws: 2,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"kind":"noise-response","sigma":0.5,"draws":2}"#);
        assert!(Statistic::SqueezeMedian { window: 1 }.validate().is_err());
        assert_eq!(s.name(), "noise-response-127.5of255x2");
        assert_eq!(
            Statistic::SqueezeMedian { window: 2 }.name(),
            "squeeze-median-2x2"
        );
        assert!(
            Statistic::NoiseResponse {
                sigma: f32::NAN,
                draws: 1
            }
            .validate()
            .is_err()
        );
    }
}
