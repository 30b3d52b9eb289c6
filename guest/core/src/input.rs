//! The model spec the host sends and the checks every input batch passes
//! (shape, batch size, finiteness, range) before the model sees it.

use crate::GuestError;

/// What an attested manifest says about a model's input and output.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Name of the model's input tensor.
    pub input_name: String,
    /// Name of the model's output tensor (logits).
    pub output_name: String,
    /// Channels of one image.
    pub channels: u32,
    /// Height of one image in pixels.
    pub height: u32,
    /// Width of one image in pixels.
    pub width: u32,
    /// Smallest value an input element may take.
    pub min_value: f32,
    /// Largest value an input element may take.
    pub max_value: f32,
    /// Number of output classes (the model outputs logits over them).
    pub classes: u32,
    /// The largest batch one call may carry.
    pub max_batch: u32,
}

/// Refuse specs whose product would overflow or exhaust the guest before any
/// tensor is built: the spec crosses the sandbox boundary too.
const MAX_ELEMENTS_PER_IMAGE: u64 = 64 * 1024 * 1024;

impl ModelSpec {
    pub(crate) fn validate(&self) -> Result<(), GuestError> {
        let bad = |why: &str| Err(GuestError::InvalidModel(format!("model spec: {why}")));
        if self.channels == 0 || self.height == 0 || self.width == 0 {
            return bad("image dimensions must be positive");
        }
        if self.image_elements() > MAX_ELEMENTS_PER_IMAGE {
            return bad("image is larger than the guest accepts");
        }
        if !(self.min_value.is_finite() && self.max_value.is_finite())
            || self.min_value >= self.max_value
        {
            return bad("value range must be finite with min < max");
        }
        if self.classes < 2 {
            return bad("a classifier needs at least two classes");
        }
        if self.max_batch == 0 {
            return bad("max batch must be positive");
        }
        Ok(())
    }

    /// Elements in one image (`channels * height * width`), saturating: the
    /// three `u32`s of a hostile spec can overflow a `u64` (fuzz finding 1),
    /// and a saturated count is still refused as too large.
    pub fn image_elements(&self) -> u64 {
        u64::from(self.channels)
            .saturating_mul(u64::from(self.height))
            .saturating_mul(u64::from(self.width))
    }
}

/// A batch of images, `[batch, channels, height, width]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct InputBatch {
    /// The tensor shape as sent by the caller; checked against the spec.
    pub shape: Vec<u32>,
    /// The tensor values, row-major.
    pub data: Vec<f32>,
}

impl InputBatch {
    /// Checks shape, element count, finiteness and range against `spec` and
    /// returns the number of images. The first offending element is named so
    /// that a caller can find it.
    pub fn check(&self, spec: &ModelSpec) -> Result<usize, GuestError> {
        let bad = |why: String| Err(GuestError::InvalidInput(why));
        let expected = [spec.channels, spec.height, spec.width];
        let [batch, rest @ ..] = self.shape.as_slice() else {
            return bad("input has no dimensions".into());
        };
        if rest != expected {
            return bad(format!(
                "input shape is {:?}, the model expects [batch, {}, {}, {}]",
                self.shape, spec.channels, spec.height, spec.width
            ));
        }
        if *batch == 0 || *batch > spec.max_batch {
            return bad(format!(
                "batch of {batch} images; this model takes 1 to {}",
                spec.max_batch
            ));
        }
        let elements = u64::from(*batch).saturating_mul(spec.image_elements());
        if self.data.len() as u64 != elements {
            return bad(format!(
                "shape {:?} needs {elements} values but {} were sent",
                self.shape,
                self.data.len()
            ));
        }
        if let Some((i, v)) = self.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return bad(format!("value {i} is {v}: inputs must be finite"));
        }
        let (lo, hi) = (spec.min_value, spec.max_value);
        if let Some((i, v)) = self
            .data
            .iter()
            .enumerate()
            .find(|(_, v)| !(lo..=hi).contains(*v))
        {
            return bad(format!(
                "value {i} is {v}, outside the model's range [{lo}, {hi}]"
            ));
        }
        Ok(*batch as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec {
            input_name: "image".into(),
            output_name: "logits".into(),
            channels: 1,
            height: 2,
            width: 2,
            min_value: 0.0,
            max_value: 1.0,
            classes: 2,
            max_batch: 4,
        }
    }

    fn batch(shape: &[u32], data: &[f32]) -> InputBatch {
        InputBatch {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn accepts_a_well_formed_batch() {
        assert_eq!(batch(&[2, 1, 2, 2], &[0.5; 8]).check(&spec()), Ok(2));
    }

    #[test]
    fn refuses_wrong_shape_count_range_and_non_finite_values() {
        let s = spec();
        for (b, needle) in [
            (batch(&[1, 1, 2, 3], &[0.5; 6]), "expects"),
            (batch(&[], &[]), "no dimensions"),
            (batch(&[0, 1, 2, 2], &[]), "batch of 0"),
            (batch(&[5, 1, 2, 2], &[0.5; 20]), "batch of 5"),
            (batch(&[1, 1, 2, 2], &[0.5; 3]), "needs 4 values"),
            (
                batch(&[1, 1, 2, 2], &[0.5, f32::NAN, 0.5, 0.5]),
                "value 1 is NaN",
            ),
            (
                batch(&[1, 1, 2, 2], &[0.5, 0.5, f32::INFINITY, 0.5]),
                "value 2 is inf",
            ),
            (batch(&[1, 1, 2, 2], &[0.5, 0.5, 0.5, 1.5]), "outside"),
        ] {
            let err = b.check(&s).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn refuses_degenerate_specs() {
        let mut s = spec();
        s.classes = 1;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.min_value = f32::NAN;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.height = u32::MAX;
        s.width = u32::MAX;
        assert!(s.validate().is_err());
    }

    /// Fuzz finding 1 (fuzz/README.md): 2^20 * 2^22 * 2^22 elements is 2^64,
    /// which wrapped to 0 and passed the size check (or panicked with
    /// overflow checks on).
    #[test]
    fn a_spec_whose_element_count_overflows_u64_is_refused() {
        let mut s = spec();
        (s.channels, s.height, s.width) = (1 << 20, 1 << 22, 1 << 22);
        assert_eq!(s.image_elements(), u64::MAX);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("larger than the guest accepts"), "{err}");
        let err = batch(&[u32::MAX, 1 << 20, 1 << 22, 1 << 22], &[]).check(&s);
        assert!(err.is_err());
    }
}
