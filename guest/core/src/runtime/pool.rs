//! The guest's own max pooling, for the windows tract 0.23.9 folds through
//! a library call per value on wasm: 2x2 windows over f32 NCHW images, at a
//! stride other than 1 in both axes.
//!
//! Why: tract folds those windows with `f32::max`, which has no wasm
//! instruction, so each of the four taps of every window is a call to the
//! `fmaxf` of Rust's compiler-builtins: about a tenth of the guest's time
//! on the bundled model (README, Measurements). That `fmaxf(m, v)` is
//! `m` is NaN ? `v` : (`m < v` ? `v` : `m`), and the running maximum `m`
//! never is NaN here (it starts at `f32::MIN` and only ever takes a value
//! `m < v` held true for), so it is `m < v ? v : m`. This module folds the
//! same taps in the same order with that step, four windows at a time, so
//! its outputs are tract's, bit for bit: NaN taps are passed over, and of
//! equal values (+0 and -0) the first stays, as in tract's fold.
//!
//! The step is a compare and a `v128.bitselect`, not `f32x4_pmax`, which
//! is the same step by the wasm specification: with relaxed SIMD enabled
//! (the guest's build until c5574ec), LLVM made it `f32x4.relaxed_max`,
//! and under wasmtime's deterministic relaxed SIMD that let NaN taps
//! through (tests/suite/parity.rs caught it).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedOp, ensure};
use tract_onnx::tract_core::ops::cnn::OptMaxPool;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::planned;

/// Replaces every max pooling of `model` that tract would run through
/// `fmaxf` ([`MaxPool::for_tract`]) by the guest's own.
pub(super) fn replace_max_pools(model: &mut TypedModel) -> TractResult<()> {
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(tract) = node.op_as::<OptMaxPool>() else {
            continue;
        };
        if let Some(ours) = MaxPool::for_tract(tract, model.outlet_fact(node.inputs[0])?)? {
            model.node_mut(id).op = Box::new(ours);
        }
    }
    Ok(())
}

/// Max pooling over 2x2 windows of a fixed `[N, C, H, W]` f32 input, at
/// `strides`, the windows starting `before` rows and columns ahead of the
/// image (ONNX padding: taps outside the image are passed over).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct MaxPool {
    input: [usize; 4],
    /// Height and width of the output.
    output: [usize; 2],
    strides: [usize; 2],
    before: [usize; 2],
}

impl MaxPool {
    /// The guest's pooling for `tract` on an input of `fact`, if `tract`
    /// would fold its windows with `f32::max` and nothing else: the cases
    /// its `try_nchw_2x2_f32` takes, less stride 1 in both axes (which it
    /// runs vectorised in the image's interior).
    fn for_tract(tract: &OptMaxPool, fact: &TypedFact) -> TractResult<Option<Self>> {
        let spec = &tract.pool_spec;
        let Some(shape) = fact.shape.as_concrete() else {
            return Ok(None);
        };
        if tract.with_index_outputs.is_some()
            || fact.datum_type != f32::datum_type()
            || spec.data_format != DataFormat::NCHW
            || shape.len() != 4
            || spec.output_channels != shape[1]
        {
            return Ok(None);
        }
        let geometry = tract.geometry.to_concrete(shape)?;
        let patch = &geometry.patch;
        let strides = &patch.spec.strides[..];
        if patch.rank() != 2
            || *geometry.input_shape.w_stride() != 1
            || patch.spec.kernel_shape[..] != [2, 2]
            || patch.spec.dilations[..] != [1, 1]
            || strides == [1, 1]
        {
            return Ok(None);
        }
        let input = [shape[0], shape[1], shape[2], shape[3]];
        let output = [patch.output_shape[0], patch.output_shape[1]];
        if geometry.output_shape.shape[..] != [input[0], input[1], output[0], output[1]] {
            return Ok(None);
        }
        // tract's own pooling panics on an empty output (a zero chunk size),
        // which in the guest is a trap in the middle of a request: such a
        // model is refused when it loads instead.
        ensure!(
            !output.contains(&0),
            "max pooling of {input:?} with 2x2 windows at strides {strides:?} gives no output"
        );
        Ok(Some(Self {
            input,
            output,
            strides: [strides[0], strides[1]],
            before: [patch.pad_before[0], patch.pad_before[1]],
        }))
    }

    /// One channel's image `x` (H x W) pooled into `y` (its output rows).
    fn plane(&self, x: &[f32], y: &mut [f32]) {
        let [.., h, w] = self.input;
        let [_, ow] = self.output;
        let [sh, sw] = self.strides;
        let [top, left] = self.before;
        for (oy, y) in y.chunks_exact_mut(ow).enumerate() {
            // The window's rows that lie in the image, in tract's order.
            let rows = [0, 1].map(|ky| {
                (oy * sh + ky)
                    .checked_sub(top)
                    .filter(|&iy| iy < h)
                    .map(|iy| &x[iy * w..][..w])
            });
            let mut ox = 0;
            while ox < ow {
                // Four windows at once where all their taps are in the image.
                let start = (ox * sw).checked_sub(left);
                if let ([Some(r0), Some(r1)], 2, Some(ix)) = (rows, sw, start)
                    && ix + 8 <= w
                    && ox + 4 <= ow
                {
                    four(&r0[ix..][..8], &r1[ix..][..8], &mut y[ox..][..4]);
                    ox += 4;
                } else {
                    y[ox] = window(&rows, ox * sw, left);
                    ox += 1;
                }
            }
        }
    }
}

/// tract's fold step, `fmaxf(m, v)` for an `m` that is not NaN (see the
/// module's documentation).
#[inline(always)]
fn max(m: f32, v: f32) -> f32 {
    if m < v { v } else { m }
}

/// The window whose first column is `x0` (counting the padding's `left`
/// columns), over the `rows` that lie in the image: tract's fold, the taps
/// row by row, from `f32::MIN`.
fn window(rows: &[Option<&[f32]>; 2], x0: usize, left: usize) -> f32 {
    let mut m = f32::MIN;
    for row in rows.iter().flatten() {
        for kx in 0..2 {
            if let Some(&v) = (x0 + kx).checked_sub(left).and_then(|ix| row.get(ix)) {
                m = max(m, v);
            }
        }
    }
    m
}

/// Four adjacent windows at stride 2, their two rows' 8 taps each in `r0`
/// and `r1`, into `y`: the fold of [`window`], four lanes at a time.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn four(r0: &[f32], r1: &[f32], y: &mut [f32]) {
    use std::arch::wasm32::*;
    // A row's first and second taps of the four windows: its even and its
    // odd values.
    let taps = |r: &[f32]| {
        let (a, b) = (f32x4(r[0], r[1], r[2], r[3]), f32x4(r[4], r[5], r[6], r[7]));
        (
            i32x4_shuffle::<0, 2, 4, 6>(a, b),
            i32x4_shuffle::<1, 3, 5, 7>(a, b),
        )
    };
    let ((a, b), (c, d)) = (taps(r0), taps(r1));
    let mut m = f32x4_splat(f32::MIN);
    for v in [a, b, c, d] {
        m = v128_bitselect(v, m, f32x4_lt(m, v));
    }
    y[0] = f32x4_extract_lane::<0>(m);
    y[1] = f32x4_extract_lane::<1>(m);
    y[2] = f32x4_extract_lane::<2>(m);
    y[3] = f32x4_extract_lane::<3>(m);
}

/// [`four`] off wasm, one window at a time: the native tests run the same
/// choice of windows as the guest does.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn four(r0: &[f32], r1: &[f32], y: &mut [f32]) {
    for (i, y) in y.iter_mut().enumerate() {
        *y = [r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1]]
            .into_iter()
            .fold(f32::MIN, max);
    }
}

impl Op for MaxPool {
    fn name(&self) -> StaticName {
        "MedguardMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{self:?}")])
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = planned::input("max pooling", &self.input, inputs)?;
        let [n, c, h, w] = self.input;
        let [oh, ow] = self.output;
        let mut output = Tensor::zero::<f32>(&[n, c, oh, ow])?;
        let x = input.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let mut y = output.try_as_plain_ram_mut()?;
        // `for_tract` took no empty output: `oh * ow` is not 0.
        for (p, y) in y
            .as_slice_mut::<f32>()?
            .chunks_exact_mut(oh * ow)
            .enumerate()
        {
            self.plane(&x[p * h * w..][..h * w], y);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        planned::wiring("max pooling", &self.input, inputs)?;
        let [n, c, _, _] = self.input;
        let [oh, ow] = self.output;
        Ok(tvec!(f32::fact([n, c, oh, ow])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

    /// `model` (empty, or with the symbols `shape` uses) with one max pooling
    /// over `shape` (its channels on axis 1), `kernel` windows at `strides`.
    fn pooling(
        mut model: TypedModel,
        shape: &[TDim],
        kernel: usize,
        strides: [usize; 2],
        padding: PaddingSpec,
    ) -> TypedModel {
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let channels = shape[1].to_i64().unwrap() as usize;
        let spec = PoolSpec::new(
            DataFormat::NCHW,
            tvec!(kernel, kernel),
            padding,
            None,
            Some(tvec!(strides[0], strides[1])),
            channels,
            channels,
        );
        let pool = tract_onnx::tract_core::ops::cnn::MaxPool::new(spec, None);
        let y = model.wire_node("pool", pool, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// tract's plan of a 2x2 max pooling over `shape`, and the same plan
    /// after [`replace_max_pools`], with whether it replaced the pooling.
    fn plans(
        shape: [usize; 4],
        strides: [usize; 2],
        padding: PaddingSpec,
    ) -> (
        Arc<TypedRunnableModel>,
        TractResult<Arc<TypedRunnableModel>>,
        bool,
    ) {
        let shape = shape.map(|d| d.to_dim());
        let model = pooling(TypedModel::default(), &shape, 2, strides, padding);
        let tract = model.into_optimized().unwrap();
        let mut ours = tract.clone();
        let result = replace_max_pools(&mut ours);
        let replaced = ours.nodes().iter().any(|n| n.op_is::<MaxPool>());
        let ours = result.and_then(|()| ours.into_runnable());
        (tract.into_runnable().unwrap(), ours, replaced)
    }

    /// Values in (-1, 1), some of them NaN or an infinity, none zero: natively
    /// tract's `f32::max` is the CPU's, not wasm's `fmaxf`, and the two may
    /// differ in which of +0 and -0 they keep (wasm: tests/suite/parity.rs).
    fn image(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                match state % 23 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::INFINITY,
                    _ => (state as f32 / u32::MAX as f32) * 2.0 - 1.0 + i as f32 * 1e-7,
                }
            })
            .collect()
    }

    fn bits(plan: &Arc<TypedRunnableModel>, input: &Tensor) -> (Vec<usize>, Vec<u32>) {
        let output = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
        let values = output[0].to_plain_array_view::<f32>().unwrap();
        (
            values.shape().to_vec(),
            values.iter().map(|v| v.to_bits()).collect(),
        )
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_guests_max_pooling_gives_tracts_bits_on_every_geometry_it_takes() {
        let paddings = [
            PaddingSpec::Valid,
            PaddingSpec::SameUpper,
            PaddingSpec::SameLower,
            PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
            PaddingSpec::Explicit(tvec!(0, 1), tvec!(1, 0)),
            PaddingSpec::ExplicitOnnxPool(tvec!(1, 0), tvec!(0, 0), true),
        ];
        let mut taken = 0;
        for (h, w) in [
            (1, 1),
            (2, 2),
            (3, 5),
            (4, 9),
            (7, 16),
            (9, 17),
            (28, 28),
            (14, 14),
        ] {
            for strides in [[2, 2], [2, 1], [1, 2], [3, 3], [2, 3], [1, 1]] {
                for padding in &paddings {
                    let shape = [2, 3, h, w];
                    let (tract, ours, replaced) = plans(shape, strides, padding.clone());
                    let output = tract.model().output_fact(0).unwrap().shape.to_tvec();
                    if output.iter().any(|d| *d == 0.to_dim()) {
                        // tract's pooling panics there: the model is refused.
                        let refused = ours.err().map(|e| e.to_string()).unwrap_or_default();
                        assert_eq!(refused.contains("gives no output"), strides != [1, 1]);
                        continue;
                    }
                    let ours = ours.unwrap();
                    assert_eq!(
                        replaced,
                        strides != [1, 1],
                        "{shape:?} {strides:?} {padding:?}"
                    );
                    taken += replaced as usize;
                    let seed = (h * 1000 + w * 10 + strides[0]) as u32;
                    let input = Tensor::from_shape(&shape, &image(2 * 3 * h * w, seed)).unwrap();
                    assert_eq!(
                        bits(&ours, &input),
                        bits(&tract, &input),
                        "{shape:?} {strides:?} {padding:?}"
                    );
                }
            }
        }
        assert!(taken >= 200, "only {taken} geometries replaced");
    }

    /// On wasm tract's fold is the guest's own `fmaxf`, so its bits are due
    /// also where native tract's are not: of +0 and -0 the first stays.
    #[cfg(target_arch = "wasm32")]
    #[wasm_bindgen_test::wasm_bindgen_test]
    fn on_wasm_zeros_of_both_signs_come_out_as_tracts() {
        const TAPS: [f32; 6] = [0.0, -0.0, f32::NAN, -1.0, f32::MIN, f32::NEG_INFINITY];
        let paddings = [
            PaddingSpec::Valid,
            PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
        ];
        for (h, w) in [(28, 28), (14, 14), (9, 17)] {
            for strides in [[2, 2], [2, 3]] {
                for padding in &paddings {
                    let shape = [1, 2, h, w];
                    let (tract, ours, replaced) = plans(shape, strides, padding.clone());
                    let ours = ours.unwrap();
                    assert!(replaced);
                    let values: Vec<f32> = image(2 * h * w, (h * w) as u32)
                        .iter()
                        .map(|v| TAPS[(v.to_bits() % 6) as usize])
                        .collect();
                    let input = Tensor::from_shape(&shape, &values).unwrap();
                    assert_eq!(
                        bits(&ours, &input),
                        bits(&tract, &input),
                        "{shape:?} {strides:?} {padding:?}"
                    );
                }
            }
        }
    }

    /// The guest's planning (`plan_at_batch_one`) puts the op in.
    #[cfg(target_arch = "wasm32")]
    #[wasm_bindgen_test::wasm_bindgen_test]
    fn the_guests_plans_pool_with_it() {
        let model = TypedModel::default();
        let batch = model.symbols.sym("batch");
        let shape = [batch.to_dim(), 2.to_dim(), 6.to_dim(), 6.to_dim()];
        let model = pooling(model, &shape, 2, [2, 2], PaddingSpec::Valid);
        let plan = super::super::plan_at_batch_one(model, &batch, &[1, 2, 6, 6], &[&[1, 2, 3, 3]])
            .unwrap();
        assert!(plan.model().nodes().iter().any(|n| n.op_is::<MaxPool>()));
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn pooling_that_tract_folds_otherwise_stays_tracts() {
        // 3x3 windows go through tract's row spans, not `f32::max`.
        let model = pooling(
            TypedModel::default(),
            &[1, 1, 9, 9].map(|d: usize| d.to_dim()),
            3,
            [2, 2],
            PaddingSpec::Valid,
        );
        let mut plan = model.into_optimized().unwrap();
        replace_max_pools(&mut plan).unwrap();
        assert!(plan.nodes().iter().any(|n| n.op_is::<OptMaxPool>()));
        assert!(!plan.nodes().iter().any(|n| n.op_is::<MaxPool>()));
    }
}
