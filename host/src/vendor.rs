//! The vendor's tools, as a library: calibrating a model's screening
//! profile and evaluating the guard on clean, attacked and corrupted images.
//!
//! They run on a working copy before it is signed, so they take models
//! loaded with [`crate::model_dir::load_unsigned`] and drive the sandbox
//! directly; the [`crate::guard::Guard`] refuses such models. `medguard
//! calibrate` and `medguard eval` read the files and print; everything
//! between is here.

pub mod bulk;
pub mod calibration;
pub mod evaluation;

/// Why a bulk run through the sandbox stopped.
#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    /// The sandbox could not load the model or screen a chunk.
    #[error("{what}")]
    Sandbox {
        /// Which images.
        what: String,
        /// The sandbox's error.
        #[source]
        source: crate::sandbox::SandboxError,
    },
    /// A worker thread panicked.
    #[error("a screening worker panicked")]
    WorkerPanicked,
    /// The guest answered without a verdict or without a prediction.
    #[error("the guest returned no {0} for an image it was asked to judge")]
    Missing(&'static str),
    /// The data do not fit the model or each other.
    #[error("{0}")]
    Data(String),
    /// Fitting the screening profile failed.
    #[error("fitting the screening profile: {0}")]
    Fit(String),
}
