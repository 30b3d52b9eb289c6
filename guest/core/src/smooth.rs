//! Randomized smoothing: the votes of a model over Gaussian-noised copies of
//! each image, which the host turns into a certified radius
//! (medguard-certify). The guest only counts; it never decides what a count
//! certifies.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::{Classifier, GuestError, InputBatch};

/// What one smoothing call draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothOptions {
    /// Standard deviation of the noise, in input units.
    pub sigma: f32,
    /// Noised copies per image.
    pub samples: u32,
    /// Seeds the noise, so the votes can be reproduced. The host draws it
    /// fresh per request; nothing about the input goes into it. (The
    /// screening statistics draw from ChaCha8 streams of the same seed: a
    /// different cipher, so the two noises are unrelated.)
    pub seed: u64,
    /// Image `i` of the batch uses ChaCha20 stream `first_stream + i`.
    pub first_stream: u64,
}

impl Classifier {
    /// Checks `batch`, classifies `samples` noised copies of each image and
    /// returns each image's votes per class (the argmax of the copy's logits,
    /// the first on ties). The copies are not clamped to the input range:
    /// the noise is part of the smoothed classifier, and the model was
    /// trained on it as drawn.
    pub fn smooth(
        &self,
        batch: &InputBatch,
        options: SmoothOptions,
    ) -> Result<Vec<Vec<u32>>, GuestError> {
        let images = batch.check(&self.spec)?;
        let normal = Normal::new(0.0f32, options.sigma)
            .ok()
            .filter(|_| options.sigma.is_finite() && options.sigma > 0.0)
            .ok_or_else(|| {
                GuestError::InvalidInput(format!(
                    "smoothing sigma must be finite and positive, got {}",
                    options.sigma
                ))
            })?;
        if options.samples == 0 || options.samples > medguard_certify::MAX_SAMPLES {
            return Err(GuestError::InvalidInput(format!(
                "smoothing needs 1 to {} samples, got {}",
                medguard_certify::MAX_SAMPLES,
                options.samples
            )));
        }
        let spec = &self.spec;
        let len = spec.image_elements() as usize;
        let classes = spec.classes as usize;
        let mut all = Vec::with_capacity(images);
        // One copy per call: every image runs alone anyway (a model
        // reading across the batch axis cannot make copies vote for each
        // other), and a copy at a time keeps one image's memory.
        let mut copy = InputBatch {
            shape: vec![1, spec.channels, spec.height, spec.width],
            data: Vec::with_capacity(len),
        };
        for (i, image) in batch.data.chunks_exact(len).enumerate() {
            let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
            rng.set_stream(options.first_stream.wrapping_add(i as u64));
            let mut votes = vec![0u32; classes];
            for _ in 0..options.samples {
                copy.data.clear();
                copy.data
                    .extend(image.iter().map(|&v| v + normal.sample(&mut rng)));
                let logits = self.logits(&copy, 1)?;
                if let Some(bad) = logits.iter().find(|v| !v.is_finite()) {
                    return Err(GuestError::InferenceFailed(format!(
                        "model produced a non-finite logit ({bad}) on a noised copy"
                    )));
                }
                votes[medguard_screen::predicted_class(&logits)] += 1;
            }
            all.push(votes);
        }
        Ok(all)
    }
}
