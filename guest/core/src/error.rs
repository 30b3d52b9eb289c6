//! The guest's errors, one per case the WIT world's `guest-error` names.

use thiserror::Error;

/// Why the guest refused a model or an input. Mirrors the WIT `guest-error`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GuestError {
    /// The model bytes are not an ONNX model that fits the spec.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The input does not match the spec the model was loaded with.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The model was accepted but running it failed.
    #[error("inference failed: {0}")]
    InferenceFailed(String),
    /// `classify` was called before a successful `load`.
    #[error("no model is loaded in this sandbox")]
    NotLoaded,
}
