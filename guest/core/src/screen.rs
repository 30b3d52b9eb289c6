//! Screening: the statistics of one input and of the model's response to it.
//!
//! Every model input a statistic needs (the image, its squeezed version, its
//! noisy versions) goes into one call of the model, which runs each of them
//! alone, so screening costs one guest call however many statistics there
//! are.

use medguard_screen::{Profile, ScreenOptions, ScreenedImage, Statistic, Verdict, margin};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::{Classifier, GuestError, InputBatch, ModelSpec};

/// What the guest screens with: the statistics to compute and, once the model
/// has been calibrated, the profile that turns them into a verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Detector {
    /// Calibration runs: statistics are computed and reported, no verdict.
    Uncalibrated(Vec<Statistic>),
    /// Normal operation: statistics, p-values and a verdict.
    Calibrated(Profile),
}

impl Detector {
    /// The statistics this detector computes, in order.
    pub fn statistics(&self) -> &[Statistic] {
        match self {
            Detector::Uncalibrated(s) => s,
            Detector::Calibrated(p) => &p.statistics,
        }
    }

    pub(crate) fn validate(&self, spec: &ModelSpec) -> Result<(), GuestError> {
        let invalid = |why: String| Err(GuestError::InvalidModel(format!("detector: {why}")));
        if self.statistics().is_empty() {
            return invalid("no statistics".into());
        }
        for s in self.statistics() {
            s.validate().map_err(GuestError::InvalidModel)?;
        }
        if let Detector::Calibrated(p) = self {
            p.validate(spec.classes as usize)
                .map_err(|e| GuestError::InvalidModel(e.to_string()))?;
        }
        Ok(())
    }
}

/// Values more than this far from an integer level (in levels) are off grid.
/// The host maps levels with one f32 division, which is exact to ~1e-5 levels.
const GRID_TOLERANCE: f32 = 1e-3;

impl Classifier {
    /// Checks `batch`, runs the model once on the images and every variant the
    /// statistics need, and returns one [`ScreenedImage`] per image.
    pub fn screen(
        &self,
        batch: &InputBatch,
        detector: &Detector,
        options: ScreenOptions,
    ) -> Result<Vec<ScreenedImage>, GuestError> {
        let images = batch.check(&self.spec)?;
        detector.validate(&self.spec)?;
        let spec = &self.spec;
        let len = spec.image_elements() as usize;
        let statistics = detector.statistics();
        let per_image = 1 + statistics
            .iter()
            .map(|s| s.extra_inferences() as usize)
            .sum::<usize>();
        let mut data = Vec::with_capacity(images * per_image * len);
        for (i, image) in batch.data.chunks_exact(len).enumerate() {
            data.extend_from_slice(image);
            let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
            rng.set_stream(i as u64);
            for statistic in statistics {
                match *statistic {
                    Statistic::Margin => {}
                    Statistic::SqueezeMedian { window } => {
                        data.extend(median_filter(image, spec, window as usize))
                    }
                    Statistic::NoiseResponse { sigma, draws } => {
                        let normal = Normal::new(0.0f32, sigma).map_err(|e| {
                            GuestError::InvalidModel(format!("noise response: {e}"))
                        })?;
                        for _ in 0..draws {
                            data.extend(image.iter().map(|&v| {
                                (v + normal.sample(&mut rng)).clamp(spec.min_value, spec.max_value)
                            }));
                        }
                    }
                }
            }
        }
        let variants = InputBatch {
            shape: vec![
                (images * per_image) as u32,
                spec.channels,
                spec.height,
                spec.width,
            ],
            data,
        };
        let logits = self.logits(&variants, images * per_image)?;
        let classes = spec.classes as usize;
        batch
            .data
            .chunks_exact(len)
            .zip(logits.chunks_exact(per_image * classes))
            .map(|(image, logits)| {
                let mut rows = logits.chunks_exact(classes);
                let own = rows.next().unwrap_or_default();
                let probabilities = crate::softmax(own)?;
                // The class the host labels the image with: the argmax of
                // the probabilities, which two logits an ulp apart can tie.
                let class = medguard_screen::predicted_class(&probabilities);
                let base = margin(own, class).unwrap_or(f64::NAN);
                let values = statistics
                    .iter()
                    .map(|statistic| match *statistic {
                        Statistic::Margin => base,
                        Statistic::SqueezeMedian { .. } => {
                            base - rows
                                .next()
                                .and_then(|r| margin(r, class))
                                .unwrap_or(f64::NAN)
                        }
                        Statistic::NoiseResponse { draws, .. } => {
                            let drops: f64 = (0..draws)
                                .map(|_| {
                                    base - rows
                                        .next()
                                        .and_then(|r| margin(r, class))
                                        .unwrap_or(f64::NAN)
                                })
                                .sum();
                            drops / draws as f64
                        }
                    })
                    .collect::<Vec<f64>>();
                let screening = match detector {
                    Detector::Uncalibrated(_) => None,
                    Detector::Calibrated(profile) => Some(profile.judge(class, &values)),
                };
                let withheld = options.withhold_rejected
                    && screening
                        .as_ref()
                        .is_some_and(|s| s.verdict == Verdict::Reject);
                Ok(ScreenedImage {
                    probabilities: (!withheld).then_some(probabilities),
                    logits: (!withheld).then(|| own.to_vec()),
                    statistics: values,
                    screening,
                    off_grid: off_grid(image, spec, options.source_bits),
                })
            })
            .collect()
    }
}

/// Median over a `window` x `window` neighbourhood per channel, with edge
/// pixels repeated. Even windows extend right and down from the pixel (as in
/// the feature-squeezing paper's 2x2 filter); the median of an even count is
/// the mean of the middle two.
pub(crate) fn median_filter(image: &[f32], spec: &ModelSpec, window: usize) -> Vec<f32> {
    let (h, w) = (spec.height as usize, spec.width as usize);
    let before = (window - 1) / 2;
    let mut out = Vec::with_capacity(image.len());
    let mut values = Vec::with_capacity(window * window);
    for plane in image.chunks_exact(h * w) {
        for y in 0..h {
            for x in 0..w {
                values.clear();
                for dy in 0..window {
                    let yy = (y + dy).saturating_sub(before).min(h - 1);
                    for dx in 0..window {
                        let xx = (x + dx).saturating_sub(before).min(w - 1);
                        values.push(plane[yy * w + xx]);
                    }
                }
                values.sort_by(f32::total_cmp);
                let mid = values.len() / 2;
                out.push(if values.len() % 2 == 0 {
                    (values[mid - 1] + values[mid]) / 2.0
                } else {
                    values[mid]
                });
            }
        }
    }
    out
}

/// How many values of an image are not on the integer grid of a `bits`-deep
/// source mapped onto the spec's range.
fn off_grid(image: &[f32], spec: &ModelSpec, bits: u8) -> u32 {
    if bits == 0 || bits > 16 {
        return 0;
    }
    let levels = ((1u32 << bits) - 1) as f32;
    let span = spec.max_value - spec.min_value;
    image
        .iter()
        .filter(|&&v| {
            let level = (v - spec.min_value) / span * levels;
            (level - level.round()).abs() > GRID_TOLERANCE
        })
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(h: u32, w: u32) -> ModelSpec {
        ModelSpec {
            input_name: "x".into(),
            output_name: "y".into(),
            channels: 1,
            height: h,
            width: w,
            min_value: 0.0,
            max_value: 1.0,
            classes: 2,
            max_batch: 4,
        }
    }

    #[test]
    fn median_2x2_extends_right_and_down_with_edge_repeat() {
        let image = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let m = median_filter(&image, &spec(3, 3), 2);
        // (0,0): {1,2,4,5} -> 3; (2,2): {9,9,9,9} -> 9; (0,2): {3,3,6,6} -> 4.5
        assert_eq!(m[0], 3.0);
        assert_eq!(m[8], 9.0);
        assert_eq!(m[2], 4.5);
        let m3 = median_filter(&image, &spec(3, 3), 3);
        assert_eq!(m3[4], 5.0);
        // A lone spike disappears.
        let mut spike = [0.5f32; 9];
        spike[4] = 1.0;
        assert!(
            median_filter(&spike, &spec(3, 3), 3)
                .iter()
                .all(|&v| v == 0.5)
        );
    }

    #[test]
    fn off_grid_counts_values_between_levels() {
        let s = spec(1, 3);
        assert_eq!(off_grid(&[0.0, 128.0 / 255.0, 1.0], &s, 8), 0);
        assert_eq!(off_grid(&[0.0, 128.5 / 255.0, 1.0], &s, 8), 1);
        assert_eq!(off_grid(&[0.0, 128.5 / 255.0, 1.0], &s, 0), 0);
    }
}
