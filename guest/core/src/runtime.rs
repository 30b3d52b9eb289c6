//! The one place that talks to tract. Swapping the inference engine is a
//! change to this file alone.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::{Canonical, GuestError, InputBatch, ModelSpec};

mod checked;
#[cfg(any(test, all(target_arch = "wasm32", target_feature = "simd128")))]
mod im2col;
mod interval;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod kernel;
mod lint;
#[cfg(any(test, all(target_arch = "wasm32", target_feature = "simd128")))]
mod pad;
#[cfg(any(test, all(target_arch = "wasm32", target_feature = "simd128")))]
mod planned;
#[cfg(any(test, all(target_arch = "wasm32", target_feature = "simd128")))]
mod pool;

fn invalid(what: &str, e: TractError) -> GuestError {
    GuestError::InvalidModel(format!("{what}: {e:#}"))
}

/// An f32 `[batch, channels, height, width]` input as `spec` describes it.
fn image_fact(batch: TDim, spec: &ModelSpec) -> InferenceFact {
    InferenceFact::dt_shape(
        f32::datum_type(),
        tvec!(
            batch,
            (spec.channels as usize).to_dim(),
            (spec.height as usize).to_dim(),
            (spec.width as usize).to_dim()
        ),
    )
}

/// The parsed and linted ONNX model, before tract builds anything from it.
pub(crate) struct Parsed {
    onnx: tract_onnx::Onnx,
    proto: tract_onnx::pb::ModelProto,
}

impl Parsed {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, GuestError> {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        kernel::keep_linked();
        let mut reader = bytes;
        let mut onnx = tract_onnx::onnx();
        checked::register(&mut onnx.op_register);
        let proto = onnx
            .proto_model_for_read(&mut reader)
            .map_err(|e| invalid("not a readable ONNX model", e))?;
        lint::lint(&proto).map_err(GuestError::InvalidModel)?;
        Ok(Self { onnx, proto })
    }
}

/// An optimised tract plan for one image at a time.
///
/// The model is type-checked with its symbolic batch axis (the manifest
/// promises a dynamic batch), then planned for a batch of one and run once
/// per image. Two reasons:
/// - an image's answer cannot depend on the other images of its request,
///   whatever the model does across the batch axis;
/// - a fixed shape lets tract pick its lazy im2col for the convolutions,
///   which never materialises the patch matrix (README, Measurements).
///
/// Each image gets a fresh tract state, so nothing an operator keeps
/// between runs can carry one image into the next, and every run makes
/// its NaNs canonical operator by operator ([`execute`]).
pub(crate) struct Runnable {
    plan: std::sync::Arc<TypedRunnableModel>,
    /// The shape of one input of the plan, `[1, C, H, W]`.
    image: [usize; 4],
    /// How many logits one image's run of [`Runnable::run`] must return.
    classes: usize,
}

/// Fixes the batch symbol `batch` of a model that type-checked with it to
/// 1, then optimises it: see [`Runnable`]. The plan must take exactly one
/// `image` per input and give `outputs` per output, or it is not the plan
/// the per-image runs need (a substitution that did not take, or a model
/// whose output at a batch of one is not one row).
fn plan_at_batch_one(
    typed: TypedModel,
    batch: &Symbol,
    image: &[usize],
    outputs: &[&[usize]],
) -> TractResult<std::sync::Arc<TypedRunnableModel>> {
    let one = std::collections::HashMap::from([(batch.clone(), 1.to_dim())]);
    let mut plan = typed.set_symbols(&one)?.into_optimized()?;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    pool::replace_max_pools(&mut plan)?;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    pad::replace_pads(&mut plan)?;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    im2col::replace_lazy_im2cols(&mut plan)?;
    canonical_constants(&mut plan)?;
    let concrete = |fact: &TypedFact| fact.shape.as_concrete().map(<[usize]>::to_vec);
    for input in 0..plan.inputs.len() {
        let fact = plan.input_fact(input)?;
        tract_onnx::tract_core::internal::ensure!(
            concrete(fact).as_deref() == Some(image),
            "at a batch of one, input {input} is {:?}, not {image:?}",
            fact.shape
        );
    }
    tract_onnx::tract_core::internal::ensure!(
        plan.outputs.len() == outputs.len(),
        "the plan has {} outputs, not {}",
        plan.outputs.len(),
        outputs.len()
    );
    for (output, wanted) in outputs.iter().enumerate() {
        let fact = plan.output_fact(output)?;
        tract_onnx::tract_core::internal::ensure!(
            concrete(fact).as_deref() == Some(*wanted),
            "at a batch of one, output {output} is {:?}, not {wanted:?}",
            fact.shape
        );
    }
    plan.into_runnable()
}

/// Makes every NaN in the plan's constants canonical. tract folds a model's
/// constants while it optimises it, with no operator boundary for
/// [`execute`] to fix what that arithmetic makes; the folded constants are
/// its outputs. (Constants that fused operators hold inside them reach
/// values only through those operators' outputs, which `execute` fixes.)
fn canonical_constants(model: &mut TypedModel) -> TractResult<()> {
    use tract_onnx::tract_core::ops::konst::Const;
    for node in model.nodes_mut() {
        let Some(constant) = node.op_as::<Const>() else {
            continue;
        };
        let canonical = canonical_nans(TValue::from_const(constant.val().clone()))?;
        // `canonical_nans` hands back the same tensor when it holds no NaN.
        let unchanged = canonical
            .as_arc_tensor()
            .is_some_and(|t| std::sync::Arc::ptr_eq(t, constant.val()));
        if !unchanged {
            node.op = Box::new(Const::new(canonical.into_arc_tensor())?);
        }
    }
    Ok(())
}

/// Runs `plan` on `inputs` with a fresh tract state (see [`Runnable`]),
/// every NaN an operator outputs made the canonical one.
///
/// Why: the sandbox's engine leaves NaN canonicalisation to the guest
/// (host/src/sandbox.rs). In wasm, the sign and payload of a NaN that
/// arithmetic makes differ between CPUs, and they are the only part of a
/// wasm computation that does; wasmtime's own canonicalisation fixes them
/// after every float instruction, at little more than half the speed of
/// the guest's matrix-product kernel (README, Measurements). Here they are
/// fixed after every operator instead: no operator sees a NaN another made
/// other than as the canonical one, so tract's reductions that order NaNs
/// by their sign bit (`f32::total_cmp`) give the same answer on every host.
fn execute(
    plan: &std::sync::Arc<TypedRunnableModel>,
    inputs: TVec<TValue>,
) -> TractResult<TVec<TValue>> {
    execute_with(plan, inputs, |_, _| {})
}

/// [`execute`], calling `around(node, false)` before each node runs and
/// `around(node, true)` once its outputs are canonical: the profile times
/// nodes by it.
fn execute_with(
    plan: &std::sync::Arc<TypedRunnableModel>,
    inputs: TVec<TValue>,
    mut around: impl FnMut(usize, bool),
) -> TractResult<TVec<TValue>> {
    tract_onnx::tract_core::plan::SimpleState::new(plan)?.run_plan_with_eval(
        inputs,
        |ctx, op_state, node, inputs| {
            around(node.id, false);
            let outputs = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs)?
                .into_iter()
                .map(canonical_nans)
                .collect::<TractResult<TVec<TValue>>>();
            around(node.id, true);
            outputs
        },
    )
}

/// `value` with every NaN of a float tensor replaced by the canonical NaN
/// ([`crate::Canonical`]); other values, and tensors that are not plain
/// memory (packed weights), as they are.
fn canonical_nans(value: TValue) -> TractResult<TValue> {
    fn replace<T: Datum + Copy + Canonical>(
        value: TValue,
        any_nan: impl Fn(&[T]) -> bool,
    ) -> TractResult<TValue> {
        if !value.is_plain_ram() || !any_nan(value.try_as_plain_ram()?.as_slice::<T>()?) {
            return Ok(value);
        }
        let mut tensor = value.into_tensor();
        for v in tensor.try_as_plain_ram_mut()?.as_slice_mut::<T>()? {
            *v = v.canonical();
        }
        Ok(tensor.into_tvalue())
    }
    match value.datum_type() {
        DatumType::F32 => replace(value, any_nan_f32),
        DatumType::F64 => replace(value, |s: &[f64]| s.iter().any(|v| v.is_nan())),
        DatumType::F16 => replace(value, |s: &[f16]| s.iter().any(|v| v.is_nan())),
        _ => Ok(value),
    }
}

/// Whether `values` hold a NaN. It scans every activation of every run, so
/// on wasm it compares sixteen values at a time, as written, whatever
/// LLVM's vectoriser makes of the plain loop. Nothing but the index crosses
/// the loop head, where wasmtime's deadline check would send a vector
/// through memory (the kernel module says why).
fn any_nan_f32(values: &[f32]) -> bool {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use std::arch::wasm32::{f32x4, f32x4_ne, v128, v128_any_true, v128_or};
        let nans = |c: &[f32]| -> v128 {
            let v = f32x4(c[0], c[1], c[2], c[3]);
            f32x4_ne(v, v)
        };
        let mut chunks = values.chunks_exact(16);
        for c in &mut chunks {
            let any = v128_or(
                v128_or(nans(&c[..4]), nans(&c[4..8])),
                v128_or(nans(&c[8..12]), nans(&c[12..])),
            );
            if v128_any_true(any) {
                return true;
            }
        }
        chunks.remainder().iter().any(|v| v.is_nan())
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    values.iter().any(|v| v.is_nan())
}

/// `[1, C, H, W]`: one image of `spec`.
fn one_image(spec: &ModelSpec) -> [usize; 4] {
    [
        1,
        spec.channels as usize,
        spec.height as usize,
        spec.width as usize,
    ]
}

impl Runnable {
    pub(crate) fn load(parsed: &Parsed, spec: &ModelSpec) -> Result<Self, GuestError> {
        let Parsed { onnx, proto } = parsed;
        let mut model = onnx
            .model_for_proto_model(proto)
            .map_err(|e| invalid("not a usable ONNX model", e))?;
        if model.inputs.len() != 1 || model.outputs.len() != 1 {
            return Err(GuestError::InvalidModel(format!(
                "expected one input and one output, the model has {} and {}",
                model.inputs.len(),
                model.outputs.len()
            )));
        }
        // The manifest names the tensors; a model wired differently is not the
        // model the manifest describes.
        let input_name = model.node(model.inputs[0].node).name.clone();
        let output_name = model
            .outlet_label(model.outputs[0])
            .unwrap_or(&model.node(model.outputs[0].node).name);
        if input_name != spec.input_name || output_name != spec.output_name {
            return Err(GuestError::InvalidModel(format!(
                "model tensors are {input_name:?} -> {output_name:?}, the manifest says {:?} -> {:?}",
                spec.input_name, spec.output_name
            )));
        }
        // Pin the input to the manifest's spec: f32, [batch, C, H, W]. The
        // batch axis keeps the model's own symbol (a fixed batch contradicts
        // the manifest's dynamic one); a model whose declared C, H or W
        // disagree with the spec fails type analysis below, before any input.
        let declared: Vec<Option<TDim>> = model
            .input_fact(0)
            .map_err(|e| invalid("model has no input", e))?
            .shape
            .dims()
            .map(|d| d.concretize())
            .collect();
        // set_input_fact replaces what the model declares, so compare first:
        // a model declared for another image size is not the manifest's model.
        let wanted = [spec.channels, spec.height, spec.width].map(|d| (d as usize).to_dim());
        for (axis, (have, want)) in declared.iter().skip(1).zip(&wanted).enumerate() {
            if let Some(have) = have
                && have != want
            {
                return Err(GuestError::InvalidModel(format!(
                    "model input axis {} is {have}, the manifest says {want}",
                    axis + 1
                )));
            }
        }
        let batch = match declared.first().cloned().flatten() {
            Some(d) if d.to_i64().is_ok() => {
                return Err(GuestError::InvalidModel(format!(
                    "model has a fixed batch of {d}; the manifest promises a dynamic batch axis"
                )));
            }
            Some(TDim::Sym(symbol)) => symbol,
            Some(other) => {
                return Err(GuestError::InvalidModel(format!(
                    "model's batch axis is {other}; medguard needs one symbol there (a dynamic batch)"
                )));
            }
            None => model.symbols.sym("batch"),
        };
        model
            .set_input_fact(0, image_fact(batch.to_dim(), spec))
            .map_err(|e| invalid("input does not fit the spec", e))?;
        let typed = model
            .into_typed()
            .map_err(|e| invalid("model does not type-check with the spec's input", e))?;
        let output = typed
            .output_fact(0)
            .map_err(|e| invalid("model has no output", e))?;
        let classes = output.shape.last().and_then(|d| d.to_i64().ok());
        if output.datum_type != f32::datum_type()
            || output.rank() != 2
            || classes != Some(spec.classes as i64)
        {
            return Err(GuestError::InvalidModel(format!(
                "output is {:?}, expected f32 [batch, {}] logits",
                output, spec.classes
            )));
        }
        let plan = plan_at_batch_one(
            typed,
            &batch,
            &one_image(spec),
            &[&[1, spec.classes as usize]],
        )
        .map_err(|e| invalid("model could not be planned for one image", e))?;
        Ok(Self::new(plan, spec))
    }

    fn new(plan: std::sync::Arc<TypedRunnableModel>, spec: &ModelSpec) -> Self {
        Self {
            plan,
            image: one_image(spec),
            classes: spec.classes as usize,
        }
    }

    /// The interval form of a model that [`Runnable::load`] accepted with
    /// `spec` (`interval.rs`): inputs the lower and upper ends of a box of
    /// images, outputs the lower and upper logits over it.
    pub(crate) fn load_bounds(parsed: &Parsed, spec: &ModelSpec) -> Result<Self, GuestError> {
        let proto = interval::rewrite(&parsed.proto).map_err(GuestError::InvalidModel)?;
        let mut model = parsed
            .onnx
            .model_for_proto_model(&proto)
            .map_err(|e| invalid("the interval form of the model is not usable", e))?;
        // Type-checked with a symbolic batch and planned at a batch of one,
        // as the classifying plan is: tract decides some shapes by whether
        // an axis is exactly 1, and the two plans must make the same
        // decisions. `Classifier::bound` runs one box at a time.
        let batch = model.symbols.sym("batch");
        let fact = image_fact(batch.to_dim(), spec);
        for input in 0..2 {
            model
                .set_input_fact(input, fact.clone())
                .map_err(|e| invalid("the interval form's input does not fit the spec", e))?;
        }
        let plan = model
            .into_typed()
            .and_then(|m| {
                let logits: &[usize] = &[1, spec.classes as usize];
                plan_at_batch_one(m, &batch, &one_image(spec), &[logits, logits, &[], &[]])
            })
            .map_err(|e| invalid("the interval form of the model could not be optimised", e))?;
        Ok(Self::new(plan, spec))
    }

    /// Runs the interval form on the box `[lower, upper]` around one image
    /// (each end shaped like one image) and returns the lower and upper
    /// logits, then the sum and the largest of every bound's magnitude.
    pub(crate) fn run_bounds(
        &self,
        lower: &[f32],
        upper: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, f32, f32), GuestError> {
        let failed = |e: TractError| GuestError::InferenceFailed(format!("{e:#}"));
        let lower = Tensor::from_shape(&self.image, lower).map_err(failed)?;
        let upper = Tensor::from_shape(&self.image, upper).map_err(failed)?;
        let outputs = execute(&self.plan, tvec!(lower.into(), upper.into())).map_err(failed)?;
        let [lo, hi, check, scale] = outputs.as_slice() else {
            return Err(GuestError::InferenceFailed(format!(
                "the interval form returned {} outputs, not 4",
                outputs.len()
            )));
        };
        let flat = |t: &TValue| -> Result<Vec<f32>, GuestError> {
            Ok(t.to_plain_array_view::<f32>()
                .map_err(failed)?
                .iter()
                .copied()
                .collect())
        };
        let scalar = |t: &TValue| -> Result<f32, GuestError> {
            match flat(t)?.as_slice() {
                [v] => Ok(*v),
                other => Err(GuestError::InferenceFailed(format!(
                    "the interval form's check has {} values, not 1",
                    other.len()
                ))),
            }
        };
        Ok((flat(lo)?, flat(hi)?, scalar(check)?, scalar(scale)?))
    }

    /// The checked batch's images, one input of the plan each; an error if
    /// its data is not a whole number of images.
    fn images(&self, batch: &InputBatch) -> Result<Vec<TValue>, GuestError> {
        let len: usize = self.image.iter().product();
        if !batch.data.len().is_multiple_of(len) {
            return Err(GuestError::InvalidInput(format!(
                "{} values are not a whole number of {len}-value images",
                batch.data.len()
            )));
        }
        batch
            .data
            .chunks_exact(len)
            .map(|pixels| {
                Tensor::from_shape(&self.image, pixels)
                    .map(TValue::from)
                    .map_err(|e| GuestError::InferenceFailed(format!("{e:#}")))
            })
            .collect()
    }

    /// Runs the checked batch, one image at a time, and returns the
    /// logits, row-major.
    pub(crate) fn run(&self, batch: &InputBatch) -> Result<Vec<f32>, GuestError> {
        let failed = |e: TractError| GuestError::InferenceFailed(format!("{e:#}"));
        let mut logits = Vec::new();
        for image in self.images(batch)? {
            let outputs = execute(&self.plan, tvec!(image)).map_err(failed)?;
            let output = outputs.first().ok_or_else(|| {
                GuestError::InferenceFailed("the model returned no output".into())
            })?;
            let values = output.to_plain_array_view::<f32>().map_err(failed)?;
            if values.len() != self.classes {
                return Err(GuestError::InferenceFailed(format!(
                    "the model returned {} values for one image of {} classes",
                    values.len(),
                    self.classes
                )));
            }
            logits.extend(values.iter());
        }
        Ok(logits)
    }

    /// Per-node time over `runs` runs of `batch`; see `Classifier::profile`.
    #[cfg(not(target_family = "wasm"))]
    pub(crate) fn profile(
        &self,
        batch: &InputBatch,
        runs: usize,
    ) -> Result<Vec<(String, String, std::time::Duration)>, GuestError> {
        let failed = |e: TractError| GuestError::InferenceFailed(format!("{e:#}"));
        let images = self.images(batch)?;
        let nodes = self.plan.model().nodes();
        let mut times = vec![std::time::Duration::ZERO; nodes.len()];
        for _ in 0..runs {
            for image in &images {
                let mut started = std::time::Instant::now();
                execute_with(&self.plan, tvec!(image.clone()), |node, done| {
                    if done {
                        times[node] += started.elapsed();
                    } else {
                        started = std::time::Instant::now();
                    }
                })
                .map_err(failed)?;
            }
        }
        Ok(nodes
            .iter()
            .zip(times)
            .map(|(node, time)| (node.op().name().into_owned(), node.name.clone(), time))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::math;

    /// `op(x, x)` over `input`, run by `execute`: the raw bits of the output.
    fn bits_of(op: TypedBinOp, input: Tensor) -> Vec<u64> {
        let mut model = TypedModel::default();
        let x = model
            .add_source("x", input.datum_type().fact(input.shape()))
            .unwrap();
        let y = model.wire_node("y", op, &[x, x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = model.into_runnable().unwrap();
        let out = execute(&plan, tvec!(input.into())).unwrap();
        let view = out[0].try_as_plain_ram().unwrap();
        match out[0].datum_type() {
            DatumType::F32 => view
                .as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits().into())
                .collect(),
            DatumType::F64 => view
                .as_slice::<f64>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect(),
            _ => view
                .as_slice::<f16>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits().into())
                .collect(),
        }
    }

    /// A NaN with its sign bit and a payload set, in each float type.
    const NEGATIVE_F32: u32 = 0xffc0_0001;
    const NEGATIVE_F64: u64 = 0xfff8_0000_0000_0001;
    const NEGATIVE_F16: u16 = 0xfe01;

    /// Addition passes a NaN operand's sign and payload on, on every CPU:
    /// the run must hand on the canonical NaN, and every other value as it
    /// is.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_nan_an_operator_outputs_leaves_it_canonical() {
        let f32_in = tensor1(&[f32::from_bits(NEGATIVE_F32), 1.5, -0.0]);
        assert_eq!(
            bits_of(math::add(), f32_in),
            [
                0x7fc0_0000,
                3.0f32.to_bits().into(),
                (-0.0f32).to_bits().into()
            ]
        );
        let f64_in = tensor1(&[f64::from_bits(NEGATIVE_F64), 2.0]);
        assert_eq!(
            bits_of(math::add(), f64_in),
            [0x7ff8_0000_0000_0000, 4.0f64.to_bits()]
        );
        let f16_in = tensor1(&[f16::from_bits(NEGATIVE_F16)]);
        assert_eq!(bits_of(math::add(), f16_in), [0x7e00]);
    }

    /// `0 / 0` makes a NaN whose sign is the CPU's (negative on x86).
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_nan_an_operator_makes_leaves_it_canonical() {
        assert_eq!(
            bits_of(math::div(), tensor1(&[0f32, 0.0])),
            [0x7fc0_0000; 2]
        );
    }

    /// The plan's constants are outputs of tract's folding, which no
    /// operator boundary follows.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_plans_constants_hold_canonical_nans() {
        use tract_onnx::tract_core::ops::konst::Const;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2])).unwrap();
        let nan = tensor1(&[f32::from_bits(NEGATIVE_F32), -0.0]);
        let c = model.add_const("c", nan).unwrap();
        let kept = tensor1(&[1f32, 2.0]);
        let k = model.add_const("k", kept.clone()).unwrap();
        let y = model.wire_node("y", math::add(), &[x, c]).unwrap();
        let z = model.wire_node("z", math::add(), &[y[0], k]).unwrap();
        model.select_output_outlets(&z).unwrap();
        let before = model.node(k.node).op_as::<Const>().unwrap().val().clone();
        canonical_constants(&mut model).unwrap();
        let value = |outlet: OutletId| -> Vec<u32> {
            let op = model.node(outlet.node).op_as::<Const>().unwrap();
            op.val()
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(value(c), [0x7fc0_0000, (-0.0f32).to_bits()]);
        assert_eq!(value(k), [1f32.to_bits(), 2f32.to_bits()]);
        let after = model.node(k.node).op_as::<Const>().unwrap().val();
        assert!(
            std::sync::Arc::ptr_eq(&before, after),
            "a constant without NaN is kept as it is"
        );
    }

    /// The plan the load paths build (`plan_at_batch_one`) holds its
    /// constants canonical: a negative NaN the model carries stays a
    /// constant of the optimised plan, as the canonical NaN.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_planned_models_constants_hold_canonical_nans() {
        use tract_onnx::tract_core::ops::konst::Const;
        let mut model = TypedModel::default();
        let batch = model.symbols.sym("batch");
        let x = model
            .add_source("x", f32::fact([batch.to_dim(), 2.to_dim()]))
            .unwrap();
        let nan = tensor2(&[[f32::from_bits(NEGATIVE_F32), -0.0]]);
        let c = model.add_const("c", nan).unwrap();
        let y = model.wire_node("y", math::add(), &[x, c]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = plan_at_batch_one(model, &batch, &[1, 2], &[&[1, 2]]).unwrap();
        let nans: Vec<u32> = plan
            .model()
            .nodes()
            .iter()
            .filter_map(|node| node.op_as::<Const>())
            .flat_map(|c| {
                let values = c.val().try_as_plain_ram().unwrap();
                let values = values.as_slice::<f32>().unwrap().to_vec();
                values.into_iter().filter(|v| v.is_nan()).map(f32::to_bits)
            })
            .collect();
        assert_eq!(nans, [0x7fc0_0000], "{:#?}", plan.model());
    }

    /// Every convolution tract lowers to its lazy im2col in the bundled
    /// model is gathered by the guest's own (a reading that declined would
    /// leave tract's in place: the same answers, only slower), and its
    /// input padded by the guest's own.
    #[cfg(target_arch = "wasm32")]
    #[wasm_bindgen_test::wasm_bindgen_test]
    fn the_bundled_models_convolutions_are_gathered_by_the_guest() {
        let spec = ModelSpec {
            input_name: "image".into(),
            output_name: "logits".into(),
            channels: 1,
            height: 28,
            width: 28,
            min_value: 0.0,
            max_value: 1.0,
            classes: 2,
            max_batch: 64,
        };
        let parsed = Parsed::parse(include_bytes!("../../../models/pneumonia/model.onnx")).unwrap();
        let runnable = Runnable::load(&parsed, &spec).unwrap();
        let names: Vec<String> = runnable
            .plan
            .model()
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .collect();
        let ours = names.iter().filter(|n| *n == "MedguardIm2col").count();
        assert!(ours >= 5, "{names:?}");
        assert!(!names.iter().any(|n| n == "LazyIm2col"), "{names:?}");
        // And every padding before them is the guest's.
        let pads = names.iter().filter(|n| *n == "MedguardPad").count();
        assert!(pads >= 5, "{names:?}");
        assert!(!names.iter().any(|n| n == "Pad"), "{names:?}");
    }

    /// The scan finds a NaN of either sign at every position of every
    /// length around its sixteen-value chunks (its vector path on wasm).
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_nan_scan_finds_a_nan_anywhere() {
        for len in 0..=37 {
            let plain = vec![f32::INFINITY; len];
            assert!(!any_nan_f32(&plain), "{len}");
            for at in 0..len {
                for nan in [f32::NAN, f32::from_bits(NEGATIVE_F32)] {
                    let mut values = vec![-0.0; len];
                    values[at] = nan;
                    assert!(any_nan_f32(&values), "{len} {at}");
                }
            }
        }
    }

    #[test]
    fn values_that_are_not_nan_pass_unchanged() {
        for value in [
            tensor1(&[0f32, -0.0, 1.5, f32::INFINITY, f32::NEG_INFINITY]),
            tensor1(&[3i64, -4]),
        ] {
            let out = canonical_nans(value.clone().into_tvalue()).unwrap();
            assert_eq!(*out, value);
            let bits = |t: &Tensor| t.as_bytes().to_vec();
            assert_eq!(bits(&out), bits(&value));
        }
    }
}
