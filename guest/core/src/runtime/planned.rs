//! What the guest's own operators (its gathering, padding and pooling)
//! share: each replaces one of tract's in an optimised plan, for one f32
//! input of the fixed shape it was planned for, and refuses anything else
//! with an error that names it (a plan wired otherwise is a bug, never a
//! model's doing, but an error ends one request where a panic would trap).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{ensure, format_err};

/// The one input of operator `what`, planned for an f32 input of `shape`.
pub(super) fn input(what: &str, shape: &[usize], inputs: TVec<TValue>) -> TractResult<TValue> {
    let [input] = <[TValue; 1]>::try_from(inputs.into_vec())
        .map_err(|inputs| format_err!("{what} expects one input, got {}", inputs.len()))?;
    ensure!(
        input.datum_type() == f32::datum_type() && input.shape() == shape,
        "{what} planned for f32 {shape:?} got {:?} {:?}",
        input.datum_type(),
        input.shape()
    );
    Ok(input)
}

/// Checks that operator `what`, planned for an f32 input of `shape`, is
/// wired to one.
pub(super) fn wiring(what: &str, shape: &[usize], inputs: &[&TypedFact]) -> TractResult<()> {
    ensure!(
        inputs.len() == 1
            && inputs[0].datum_type == f32::datum_type()
            && inputs[0].shape.as_concrete() == Some(shape),
        "{what} planned for f32 {shape:?} wired to {inputs:?}"
    );
    Ok(())
}
