//! Randomized smoothing: the votes of a model over Gaussian-noised copies of
//! each image, which the host turns into a certified radius
//! (medguard-certify). The guest only counts; it never decides what a count
//! certifies.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::{Classifier, GuestError, InputBatch};

/// Noised copies classified per model run: one. A model whose operators
/// read across the batch axis could otherwise make copies vote for each
/// other (every copy answering as the first does is unanimous), and the
/// smoothed classifier is defined over single images. Batching bought
/// little here: the guest took 1.38 ms per copy in runs of 50 and 1.39 ms
/// for one bare inference.
const CHUNK: usize = 1;

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
        let mut copies = Vec::with_capacity(CHUNK.min(spec.max_batch.max(1) as usize) * len);
        for (i, image) in batch.data.chunks_exact(len).enumerate() {
            let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
            rng.set_stream(options.first_stream.wrapping_add(i as u64));
            let mut votes = vec![0u32; classes];
            let mut left = options.samples as usize;
            // Never more copies per run than the model takes in one batch.
            let chunk = CHUNK.min(spec.max_batch.max(1) as usize);
            while left > 0 {
                let run = left.min(chunk);
                copies.clear();
                for _ in 0..run {
                    copies.extend(image.iter().map(|&v| v + normal.sample(&mut rng)));
                }
                let noised = InputBatch {
                    shape: vec![run as u32, spec.channels, spec.height, spec.width],
                    data: std::mem::take(&mut copies),
                };
                let logits = self.logits(&noised, run)?;
                copies = noised.data;
                for row in logits.chunks_exact(classes) {
                    if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
                        return Err(GuestError::InferenceFailed(format!(
                            "model produced a non-finite logit ({bad}) on a noised copy"
                        )));
                    }
                    votes[medguard_screen::predicted_class(row)] += 1;
                }
                left -= run;
            }
            all.push(votes);
        }
        Ok(all)
    }
}
