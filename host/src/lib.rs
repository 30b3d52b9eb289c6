//! The medguard host: attests models, runs them in the wasmtime sandbox, and
//! drives both from the `medguard` command line.
//!
//! Trust flows one way: bytes -> [`medguard_attest::AttestedModel`] (via
//! [`admission::admit_directory`] under a trust policy, or [`model_dir::load_unsigned`]
//! for a manifest the caller vouches for) -> [`sandbox::Session`] ->
//! probabilities. The host
//! never parses or runs the model itself; tract lives behind the sandbox.

pub mod admission;
pub mod cli;
pub mod drift;
pub mod eval;
pub mod guard;
pub mod guest;
/// Input decoding lives in its own crate, small enough to fuzz.
pub use medguard_input as input;
pub mod model_dir;
pub mod pacs;
pub mod prediction;
pub mod report;
pub mod sandbox;
pub mod server;
pub mod signing;
pub mod state;
pub mod vendor;
