//! The inference core that runs inside the medguard sandbox.
//!
//! It is target-independent on purpose: the same code runs natively (unit and
//! parity tests), inside the wasmtime guest, and later in the browser. It does
//! no I/O; bytes and pixels come in, probabilities go out.
//!
//! Pipeline: model bytes -> [`Classifier::load`] (parse, check against the
//! [`ModelSpec`], optimise) -> [`Classifier::classify`] on an [`InputBatch`]
//! that was checked for shape, finiteness and range, or
//! [`Classifier::screen`], which also computes the screening statistics of
//! each image and, with a calibrated [`Detector`], its verdict.

mod bounds;
mod canonical;
mod error;
mod input;
mod runtime;
mod screen;
mod smooth;

pub use bounds::MAX_RADII;
pub use canonical::Canonical;
pub use error::GuestError;
pub use input::{InputBatch, ModelSpec};
/// The logits' elementwise bounds over one box: the certify crate's own
/// type, which the host certifies.
pub use medguard_certify::Bounds as LogitBounds;
pub use medguard_screen::{ScreenOptions, ScreenedImage};
pub use screen::Detector;
pub use smooth::SmoothOptions;

/// A loaded, type-checked model ready to classify batches that match its spec.
pub struct Classifier {
    spec: ModelSpec,
    model: runtime::Runnable,
    /// The model's interval form, when it was loaded for interval bounds.
    bounds: Option<runtime::Runnable>,
}

impl Classifier {
    /// Parses `model_bytes` as ONNX, checks that its input and output agree with
    /// `spec` with a dynamic batch axis, and optimises it for one image at a
    /// time: a batch runs image by image.
    pub fn load(model_bytes: &[u8], spec: ModelSpec) -> Result<Self, GuestError> {
        spec.validate()?;
        let parsed = runtime::Parsed::parse(model_bytes)?;
        let model = runtime::Runnable::load(&parsed, &spec)?;
        Ok(Self {
            spec,
            model,
            bounds: None,
        })
    }

    /// [`Classifier::load`], and builds the model's interval form for
    /// [`Classifier::bound`]: from the same bytes, so the bounds are the
    /// classifying network's. Fails, naming the node, for a model with an
    /// operator interval bounds have no rule for.
    pub fn load_with_bounds(model_bytes: &[u8], spec: ModelSpec) -> Result<Self, GuestError> {
        spec.validate()?;
        let parsed = runtime::Parsed::parse(model_bytes)?;
        let model = runtime::Runnable::load(&parsed, &spec)?;
        let bounds = runtime::Runnable::load_bounds(&parsed, &spec)?;
        Ok(Self {
            spec,
            model,
            bounds: Some(bounds),
        })
    }

    /// The spec this model was loaded with.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Checks `batch` against the spec, runs the model and returns one
    /// probability vector (softmax over the logits) per image.
    pub fn classify(&self, batch: &InputBatch) -> Result<Vec<Vec<f32>>, GuestError> {
        let images = batch.check(&self.spec)?;
        let logits = self.logits(batch, images)?;
        logits
            .chunks_exact(self.spec.classes as usize)
            .map(softmax)
            .collect()
    }

    /// Runs `batch` (checked) `runs` times and returns the time each
    /// operator of the optimised plan took, summed over the runs, in plan
    /// order as `(operator type, node name, time)`: where native inference
    /// spends its time, for the latency benchmark's profile. Native only:
    /// the guest has no clock.
    #[cfg(not(target_family = "wasm"))]
    #[doc(hidden)]
    pub fn profile(
        &self,
        batch: &InputBatch,
        runs: usize,
    ) -> Result<Vec<(String, String, std::time::Duration)>, GuestError> {
        batch.check(&self.spec)?;
        self.model.profile(batch, runs)
    }

    /// Checks that a detector fits this model (statistics valid, one reference
    /// per class) before it is used for screening.
    pub fn check_detector(&self, detector: &Detector) -> Result<(), GuestError> {
        detector.validate(&self.spec)
    }

    /// Runs an already checked batch of `images` and returns their logits,
    /// `images * classes` values, row-major.
    fn logits(&self, batch: &InputBatch, images: usize) -> Result<Vec<f32>, GuestError> {
        let logits = self.model.run(batch)?;
        let classes = self.spec.classes as usize;
        if logits.len() != images * classes {
            return Err(GuestError::InferenceFailed(format!(
                "model returned {} values for {images} image(s) of {classes} classes",
                logits.len()
            )));
        }
        Ok(logits)
    }
}

/// The squeeze statistic's `window` x `window` median filter of one image
/// (`channels * height * width` values, as `spec` says): what screening
/// compares the image with, for a viewer to show beside it.
pub fn median_squeeze(image: &[f32], spec: &ModelSpec, window: u32) -> Vec<f32> {
    screen::median_filter(image, spec, window.max(1) as usize)
}

/// The screen crate's softmax, with a non-finite logit as the model's failure.
fn softmax(logits: &[f32]) -> Result<Vec<f32>, GuestError> {
    medguard_screen::softmax(logits).ok_or_else(|| {
        let bad = logits.iter().find(|v| !v.is_finite()).copied();
        GuestError::InferenceFailed(format!(
            "model produced a non-finite logit ({})",
            bad.unwrap_or(f32::NAN)
        ))
    })
}
