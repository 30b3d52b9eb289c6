//! Statistics of the pixels themselves, for drift monitoring.
//!
//! The screening statistics look at the model's response to an input, and a
//! new scanner or a changed preprocessing can leave that response where
//! clean images put it (a contrast change does: README, "Serving"). What it
//! cannot leave alone is the pixels: their mean intensity and their spread.
//! Calibration records both for the clean images ([`PixelReference`]); the
//! server watches where a stream of inputs falls among them. They never vote
//! on one input's verdict: a single dark or flat radiograph is normal, a
//! stream of them is a change.

use serde::{Deserialize, Serialize};

use crate::ProfileError;

/// The pixel statistics of one model input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelStatistics {
    /// Mean of the input's values.
    pub intensity: f64,
    /// Their standard deviation (population), the image's contrast.
    pub contrast: f64,
}

/// The two pixel statistics, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PixelStatistic {
    /// [`PixelStatistics::intensity`].
    Intensity,
    /// [`PixelStatistics::contrast`].
    Contrast,
}

impl PixelStatistic {
    /// Both, in the order of [`PixelReference::ranks`].
    pub const ALL: [PixelStatistic; 2] = [PixelStatistic::Intensity, PixelStatistic::Contrast];

    /// Its name in metrics, logs and the ledger.
    pub fn name(self) -> &'static str {
        match self {
            PixelStatistic::Intensity => "intensity",
            PixelStatistic::Contrast => "contrast",
        }
    }
}

impl PixelStatistics {
    /// The statistics of `image`'s values (all channels), computed in f64
    /// with the mean first, so that a flat image has a contrast of exactly 0.
    /// An empty image has NaN for both.
    pub fn of(image: &[f32]) -> Self {
        let n = image.len() as f64;
        let intensity = image.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let variance = image
            .iter()
            .map(|&v| (f64::from(v) - intensity).powi(2))
            .sum::<f64>()
            / n;
        Self {
            intensity,
            contrast: variance.sqrt(),
        }
    }

    fn get(&self, statistic: PixelStatistic) -> f64 {
        match statistic {
            PixelStatistic::Intensity => self.intensity,
            PixelStatistic::Contrast => self.contrast,
        }
    }
}

/// Clean reference values of the pixel statistics: one ascending list per
/// statistic, one value per calibration image, stored in the signed
/// manifest beside the screening profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelReference {
    /// Mean intensities of the clean images, ascending.
    pub intensity: Vec<f64>,
    /// Contrasts of the clean images, ascending.
    pub contrast: Vec<f64>,
}

impl PixelReference {
    /// The reference of `images` (each one model input's values).
    pub fn fit<'a>(images: impl IntoIterator<Item = &'a [f32]>) -> Self {
        let (mut intensity, mut contrast): (Vec<f64>, Vec<f64>) = images
            .into_iter()
            .map(|image| {
                let s = PixelStatistics::of(image);
                (s.intensity, s.contrast)
            })
            .unzip();
        intensity.sort_by(f64::total_cmp);
        contrast.sort_by(f64::total_cmp);
        Self {
            intensity,
            contrast,
        }
    }

    /// How many clean images the reference holds.
    pub fn images(&self) -> usize {
        self.intensity.len()
    }

    /// Checks that both lists hold the same number of finite, ascending
    /// values, at least one.
    pub fn validate(&self) -> Result<(), ProfileError> {
        for statistic in PixelStatistic::ALL {
            let values = self.values(statistic);
            let sorted = values.windows(2).all(|w| w[0] <= w[1]);
            if values.is_empty() || !sorted || values.iter().any(|v| !v.is_finite()) {
                return Err(ProfileError::Invalid(format!(
                    "pixel reference {}: values must be finite, sorted and non-empty",
                    statistic.name()
                )));
            }
        }
        if self.intensity.len() != self.contrast.len() {
            return Err(ProfileError::Invalid(format!(
                "pixel reference: {} intensities but {} contrasts; one of each per image",
                self.intensity.len(),
                self.contrast.len()
            )));
        }
        Ok(())
    }

    fn values(&self, statistic: PixelStatistic) -> &[f64] {
        match statistic {
            PixelStatistic::Intensity => &self.intensity,
            PixelStatistic::Contrast => &self.contrast,
        }
    }

    /// Where `input` falls among the clean values, per statistic in
    /// [`PixelStatistic::ALL`] order: (R + 1/2) / (n + 1), with R the
    /// number of the n reference values below it (a tie counts half). For
    /// an input exchangeable with the calibration images R is uniform on
    /// 0..=n, so the rank has mean exactly 1/2 whatever the statistic's
    /// distribution; a shifted stream moves the mean. A NaN ranks 1/2.
    pub fn ranks(&self, input: PixelStatistics) -> [f64; 2] {
        PixelStatistic::ALL.map(|statistic| {
            let values = self.values(statistic);
            let x = input.get(statistic);
            if x.is_nan() {
                return 0.5;
            }
            let below = values.partition_point(|&v| v < x);
            let ties = values[below..].partition_point(|&v| v <= x);
            (below as f64 + ties as f64 / 2.0 + 0.5) / (values.len() as f64 + 1.0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_the_mean_and_the_population_spread() {
        let s = PixelStatistics::of(&[0.0, 1.0, 0.0, 1.0]);
        assert_eq!((s.intensity, s.contrast), (0.5, 0.5));
        let flat = PixelStatistics::of(&[0.3; 784]);
        assert_eq!(flat.contrast, 0.0);
        assert!((flat.intensity - f64::from(0.3f32)).abs() < 1e-12);
    }

    #[test]
    fn ranks_place_an_input_among_the_clean_values() {
        let images: Vec<Vec<f32>> = (1..=4)
            .map(|i| vec![0.1 * i as f32, 0.2 * i as f32])
            .collect();
        let reference = PixelReference::fit(images.iter().map(Vec::as_slice));
        reference.validate().unwrap();
        assert_eq!(reference.images(), 4);
        // Below every clean value, above every one, and tied with the second.
        let low = PixelStatistics {
            intensity: 0.0,
            contrast: 0.0,
        };
        assert_eq!(reference.ranks(low), [0.1, 0.1]);
        let high = PixelStatistics {
            intensity: 9.0,
            contrast: 9.0,
        };
        assert_eq!(reference.ranks(high), [0.9, 0.9]);
        let tied = PixelStatistics::of(&images[1]);
        assert_eq!(reference.ranks(tied), [0.4, 0.4]);
        let nan = PixelStatistics {
            intensity: f64::NAN,
            contrast: f64::NAN,
        };
        assert_eq!(reference.ranks(nan), [0.5, 0.5]);
    }

    #[test]
    fn a_reference_that_contradicts_itself_is_invalid() {
        let good = PixelReference {
            intensity: vec![0.1, 0.2],
            contrast: vec![0.1, 0.3],
        };
        good.validate().unwrap();
        for bad in [
            PixelReference {
                intensity: vec![0.2, 0.1],
                ..good.clone()
            },
            PixelReference {
                contrast: vec![0.1, f64::NAN],
                ..good.clone()
            },
            PixelReference {
                contrast: vec![],
                ..good.clone()
            },
            PixelReference {
                contrast: vec![0.1, 0.2, 0.3],
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
