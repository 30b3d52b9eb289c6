//! What one screening call takes (`ScreenOptions`) and returns per image
//! (`ScreenedImage`), shared by the guest and the host.

use crate::Screening;

/// Per-request screening options chosen by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenOptions {
    /// Seeds the noise draws (image `i` of a batch uses stream `i`), so a
    /// verdict can be reproduced.
    pub seed: u64,
    /// Bit depth of the image the values came from (8 or 16), or 0 when the
    /// source was floating point or colour; used only for the off-grid count.
    pub source_bits: u8,
    /// Withhold the prediction of rejected inputs (`false`: flag-only policy).
    pub withhold_rejected: bool,
}

/// The result of screening one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ScreenedImage {
    /// Softmax probabilities, or `None` when the input was rejected and the
    /// policy withholds rejected predictions.
    pub probabilities: Option<Vec<f32>>,
    /// The model's logits the probabilities came from, withheld with them.
    pub logits: Option<Vec<f32>>,
    /// Statistic values in detector order.
    pub statistics: Vec<f64>,
    /// P-values and verdict; `None` for an uncalibrated detector.
    pub screening: Option<Screening>,
    /// Format integrity, reported but not counted as detection: how many
    /// values are not on the source's integer grid (an 8-bit image saved as
    /// an 8-bit file has none).
    pub off_grid: u32,
}

impl ScreenedImage {
    /// The predicted label (the one argmax, [`crate::predicted_class`]) and
    /// the probabilities by label, as every front end shows them; both
    /// `None` when the prediction was withheld.
    pub fn labelled(
        &self,
        labels: &[String],
    ) -> (
        Option<String>,
        Option<std::collections::BTreeMap<String, f32>>,
    ) {
        match &self.probabilities {
            None => (None, None),
            Some(p) => (
                labels.get(crate::predicted_class(p)).cloned(),
                Some(labels.iter().cloned().zip(p.iter().copied()).collect()),
            ),
        }
    }
}
