//! tract operators whose 0.23 implementation panics on attributes that
//! break the ONNX specification, registered again with the specification's
//! checks in front. In the guest a panic is a trap: the request ends and
//! nothing leaks, but the operator learns "trap" instead of what is wrong
//! with the model. The fuzz findings in fuzz/README.md led here; every
//! operator in this file has its reproducer in tests/native/fuzz/.

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{InferenceResult, Solver, TensorProxy};
use tract_onnx::tract_hir::infer::{check_input_arity, check_output_arity};
use tract_onnx::tract_hir::internal::{Expansion, InferenceOp, StaticName, ensure, expand};
use tract_onnx::tract_hir::ops::array::Flatten;

/// Replaces tract's builders for the operators in this file.
pub(super) fn register(ops: &mut OnnxOpRegister) {
    ops.insert("Flatten", flatten);
}

fn flatten(
    _: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let axis: i64 = node.get_attr_opt("axis")?.unwrap_or(1);
    Ok((expand(CheckedFlatten(Flatten::new(axis))), vec![]))
}

/// ONNX Flatten: one input of rank r, `axis` in [-r, r]. tract slices the
/// shape at `axis` unchecked, and indexes the first input without counting
/// the inputs.
#[derive(Debug, Clone)]
struct CheckedFlatten(Flatten);

impl CheckedFlatten {
    fn check_axis(&self, rank: usize) -> TractResult<()> {
        let rank = rank as i64;
        ensure!(
            (-rank..=rank).contains(&self.0.axis),
            "Flatten axis {} is outside [-{rank}, {rank}] for an input of rank {rank}",
            self.0.axis
        );
        Ok(())
    }
}

impl Expansion for CheckedFlatten {
    fn name(&self) -> StaticName {
        "Flatten".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given(&inputs[0].shape, move |s, shape| {
            self.check_axis(shape.len())?;
            let [rows, columns] = self.0.compute_shape(&shape)?;
            s.equals(&outputs[0].shape, tvec![rows, columns])
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        ensure!(
            inputs.len() == 1,
            "Flatten takes one input, got {}",
            inputs.len()
        );
        self.check_axis(model.outlet_fact(inputs[0])?.rank())?;
        self.0.wire(prefix, model, inputs)
    }
}
