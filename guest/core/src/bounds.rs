//! Interval bounds on the logits over L-infinity boxes around each image:
//! what the host turns into a certified radius (medguard-certify). As with
//! smoothing, the guest only computes; it never decides what a bound
//! certifies.

use medguard_certify::Bounds as LogitBounds;

use crate::{Classifier, GuestError, InputBatch};

/// Most radii one image may be bounded at in one call: each is one run of
/// the interval form.
pub const MAX_RADII: usize = 64;

impl Classifier {
    /// Checks `batch` and, for each image and each radius `r` of `radii`,
    /// bounds the logits over the box of images within `r` of it in every
    /// element, clipped to the spec's value range. Returns, per image, one
    /// [`LogitBounds`] per radius in `radii`'s order: vacuous (infinite)
    /// where some bound in the network overflowed. Needs a model loaded by
    /// [`Classifier::load_with_bounds`].
    pub fn bound(
        &self,
        batch: &InputBatch,
        radii: &[f32],
    ) -> Result<Vec<Vec<LogitBounds>>, GuestError> {
        let images = batch.check(&self.spec)?;
        let plan = self.bounds.as_ref().ok_or_else(|| {
            GuestError::InvalidInput("the model was loaded without interval bounds".into())
        })?;
        if radii.is_empty() || radii.len() > MAX_RADII {
            return Err(GuestError::InvalidInput(format!(
                "interval bounds take 1 to {MAX_RADII} radii, got {}",
                radii.len()
            )));
        }
        if let Some(r) = radii.iter().find(|r| !(r.is_finite() && **r >= 0.0)) {
            return Err(GuestError::InvalidInput(format!(
                "a radius must be finite and at least 0, got {r}"
            )));
        }
        let spec = &self.spec;
        let len = spec.image_elements() as usize;
        let classes = spec.classes as usize;
        // One box per run (the interval plan takes one): an operator
        // reading across the batch axis would otherwise mix one box's
        // bounds into another's.
        let (mut lower, mut upper) = (Vec::with_capacity(len), Vec::with_capacity(len));
        let mut all = Vec::with_capacity(images);
        // The image is in every box: the classifying plan's logits for it
        // (each image runs alone) must lie within every finite bound. A
        // tripwire for any way the interval form could describe another
        // network.
        let logits = self.logits(batch, images)?;
        for (image, own) in batch
            .data
            .chunks_exact(len)
            .zip(logits.chunks_exact(classes))
        {
            let mut per_radius = Vec::with_capacity(radii.len());
            for &r in radii {
                lower.clear();
                upper.clear();
                // Rounded outwards, so that the box holds every image within
                // `r` in real arithmetic, then clipped to the inputs there
                // are. Radius 0 is the image itself, exactly.
                let exact = r == 0.0;
                lower.extend(image.iter().map(|&v| {
                    let l = v - r;
                    if exact { l } else { l.next_down() }.max(spec.min_value)
                }));
                upper.extend(image.iter().map(|&v| {
                    let u = v + r;
                    if exact { u } else { u.next_up() }.min(spec.max_value)
                }));
                let (lo, hi, check, scale) = plan.run_bounds(&lower, &upper)?;
                if lo.len() != classes || hi.len() != classes {
                    return Err(GuestError::InferenceFailed(format!(
                        "the interval form returned {} and {} values for {classes} classes",
                        lo.len(),
                        hi.len()
                    )));
                }
                per_radius.push(if check.is_finite() && scale.is_finite() {
                    if let Some((l, h)) = lo.iter().zip(&hi).find(|(l, h)| l > h) {
                        return Err(GuestError::InferenceFailed(format!(
                            "the interval form produced the bounds [{l}, {h}]"
                        )));
                    }
                    // Equal to rounding: the same weights, rewired, summed
                    // in another order.
                    if let Some(((l, h), v)) = lo
                        .iter()
                        .zip(&hi)
                        .zip(own)
                        .find(|((l, h), v)| {
                            let slack = 1e-4 * (1.0 + v.abs());
                            **l > **v + slack || **h < **v - slack
                        })
                    {
                        return Err(GuestError::InferenceFailed(format!(
                            "the interval form's bounds [{l}, {h}] at radius {r} do not hold the model's own logit {v}: it does not describe this network"
                        )));
                    }
                    LogitBounds {
                        lower: lo,
                        upper: hi,
                        scale,
                    }
                } else {
                    LogitBounds {
                        lower: vec![f32::NEG_INFINITY; classes],
                        upper: vec![f32::INFINITY; classes],
                        scale: f32::INFINITY,
                    }
                });
            }
            all.push(per_radius);
        }
        Ok(all)
    }
}
