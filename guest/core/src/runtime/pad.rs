//! The guest's own constant padding of f32 tensors, in place of tract
//! 0.23.9's.
//!
//! Why: tract pads before every convolution with padding (its lazy im2col
//! reads a padded input), and it pads by filling the output and assigning
//! the input to a slice of it through ndarray, which walks the slice value
//! by value (`Zip::for_each_core` in the guest's profile). On the bundled
//! model that was about 3% of an inference (0.076 ms of 2.6, README,
//! Measurements) for 280 KB of output. Here every row of the input (its
//! last axis) is one copy into the filled output: the same values, bit for
//! bit, since padding computes nothing.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedOp};
use tract_onnx::tract_core::ops::array::{Pad as TractPad, PadMode};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::planned;

/// Replaces every constant padding of a fixed-shape f32 tensor in `model`
/// by the guest's own.
pub(super) fn replace_pads(model: &mut TypedModel) -> TractResult<()> {
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(tract) = node.op_as::<TractPad>() else {
            continue;
        };
        if let Some(ours) = Pad::for_tract(tract, model.outlet_fact(node.inputs[0])?) {
            model.node_mut(id).op = Box::new(ours);
        }
    }
    Ok(())
}

/// Padding of a fixed-shape f32 input with a constant value.
#[derive(Debug, Clone, PartialEq, Hash)]
pub(super) struct Pad {
    input: TVec<usize>,
    output: TVec<usize>,
    /// Values before the input on each axis.
    before: TVec<usize>,
    /// The padding value's bits (so that the op can be `Eq` and `Hash`).
    value: u32,
}

impl Eq for Pad {}

impl Pad {
    /// The guest's padding for `tract` on an input of `fact`, if it pads an
    /// f32 tensor of fixed, non-empty shape with an f32 constant.
    fn for_tract(tract: &TractPad, fact: &TypedFact) -> Option<Self> {
        let PadMode::Constant(value) = &tract.mode else {
            return None;
        };
        let shape = fact.shape.as_concrete()?;
        if fact.datum_type != f32::datum_type()
            || value.datum_type() != f32::datum_type()
            || value.len() != 1
            || tract.pads.len() != shape.len()
            || shape.is_empty()
            || shape.contains(&0)
        {
            return None;
        }
        let value = value
            .try_as_plain_ram()
            .ok()?
            .as_slice::<f32>()
            .ok()?
            .first()?
            .to_bits();
        let output = shape
            .iter()
            .zip(&tract.pads)
            .map(|(&d, &(a, b))| d.checked_add(a)?.checked_add(b))
            .collect::<Option<TVec<usize>>>()?;
        // The output's length fits a `usize` (tract's own would allocate it).
        output.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
        Some(Self {
            input: shape.into(),
            output,
            before: tract.pads.iter().map(|&(a, _)| a).collect(),
            value,
        })
    }

    /// Copies `x` (of the input's shape) into `y` (of the output's, filled
    /// with the padding value), row by row along the last axis.
    fn copy(&self, x: &[f32], y: &mut [f32]) {
        let rank = self.input.len();
        // Each axis's stride in the output, in values.
        let mut strides: TVec<usize> = tvec![1; rank];
        for axis in (0..rank - 1).rev() {
            strides[axis] = strides[axis + 1] * self.output[axis + 1];
        }
        // Planes of rows: the last two axes (the last alone for a vector).
        let inner = rank.min(2);
        let planes = rank - inner;
        let width = self.input[rank - 1];
        let plane = self.input[planes..].iter().product::<usize>();
        let row_stride = if rank >= 2 { strides[rank - 2] } else { 0 };
        let first: usize = (planes..rank)
            .map(|axis| self.before[axis] * strides[axis])
            .sum();
        // The plane's index on every axis before the last two (an odometer).
        let mut at: TVec<usize> = tvec![0; planes];
        for x in x.chunks_exact(plane) {
            let start = first
                + (0..planes)
                    .map(|axis| (at[axis] + self.before[axis]) * strides[axis])
                    .sum::<usize>();
            for (r, row) in x.chunks_exact(width).enumerate() {
                copy_row(&mut y[start + r * row_stride..][..width], row);
            }
            for axis in (0..planes).rev() {
                at[axis] += 1;
                if at[axis] < self.input[axis] {
                    break;
                }
                at[axis] = 0;
            }
        }
    }
}

/// `dst.copy_from_slice(src)`, for rows of up to 32 values as two copies of
/// fixed size that overlap. Why: a copy of a length known only at run time
/// is wasm's `memory.copy`, which wasmtime runs as a call into the host,
/// and a convolution's rows are short (7 to 28 values in the bundled
/// model, thousands of them an inference).
fn copy_row(dst: &mut [f32], src: &[f32]) {
    /// The first and the last `N` values, for `N <= len <= 2N`.
    fn ends<const N: usize>(dst: &mut [f32], src: &[f32]) {
        if let (Some(d), Some(s)) = (dst.first_chunk_mut::<N>(), src.first_chunk::<N>()) {
            *d = *s;
        }
        if let (Some(d), Some(s)) = (dst.last_chunk_mut::<N>(), src.last_chunk::<N>()) {
            *d = *s;
        }
    }
    match src.len() {
        0 => {}
        1..=2 => ends::<1>(dst, src),
        3 => ends::<2>(dst, src),
        4..=8 => ends::<4>(dst, src),
        9..=16 => ends::<8>(dst, src),
        17..=32 => ends::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

impl Op for Pad {
    fn name(&self) -> StaticName {
        "MedguardPad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{self:?}")])
    }

    op_as_typed_op!();
}

impl EvalOp for Pad {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = planned::input("padding", &self.input, inputs)?;
        let len = self.output.iter().product();
        let mut y = vec![f32::from_bits(self.value); len];
        let x = input.try_as_plain_ram()?;
        self.copy(x.as_slice::<f32>()?, &mut y);
        let y = tract_ndarray::ArrayD::from_shape_vec(&*self.output, y)?;
        Ok(tvec!(y.into_tensor().into_tvalue()))
    }
}

impl TypedOp for Pad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        planned::wiring("padding", &self.input, inputs)?;
        Ok(tvec!(f32::fact(&*self.output)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract's plan of one constant padding of `shape` by `pads` with
    /// `value`, and the same plan after [`replace_pads`], with whether it
    /// replaced the padding.
    fn plans(
        shape: &[usize],
        pads: &[(usize, usize)],
        value: f32,
    ) -> (Arc<TypedRunnableModel>, Arc<TypedRunnableModel>, bool) {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let pad = TractPad::new(pads.to_vec(), PadMode::Constant(Arc::new(value.into())));
        let y = model.wire_node("pad", pad, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let tract = model.into_optimized().unwrap();
        let mut ours = tract.clone();
        replace_pads(&mut ours).unwrap();
        let replaced = ours.nodes().iter().any(|n| n.op_is::<Pad>());
        (
            tract.into_runnable().unwrap(),
            ours.into_runnable().unwrap(),
            replaced,
        )
    }

    /// Distinct values, NaNs with payloads and zeros of both signs among them.
    fn values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| match i % 11 {
                0 => f32::from_bits(0x7fc0_0000 | i as u32),
                1 => -0.0,
                2 => f32::from_bits(0xffc0_1234),
                _ => i as f32 * 0.5 - 3.0,
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
    fn the_guests_padding_gives_tracts_bits() {
        // Rows of every length `copy_row` tells apart, and around them.
        let shapes: [&[usize]; 14] = [
            &[5],
            &[3, 4],
            &[1, 1, 28, 28],
            &[1, 3, 7, 7],
            &[2, 3, 1, 5],
            &[2, 1, 2, 3, 4],
            &[1, 2, 3, 1],
            &[2, 2],
            &[3, 3],
            &[2, 9],
            &[1, 2, 16],
            &[3, 17],
            &[2, 1, 32],
            &[2, 33],
        ];
        let mut taken = 0;
        for shape in shapes {
            let rank = shape.len();
            for (p, value) in [0.0, -0.0, 1.5, f32::NAN].into_iter().enumerate() {
                // Padding on the last two axes as a convolution's, and on
                // every axis, unevenly.
                let pads: Vec<(usize, usize)> = (0..rank)
                    .map(|axis| match (p, rank - axis) {
                        (0 | 1, 1 | 2) => (1, 1),
                        (0 | 1, _) => (0, 0),
                        _ => (axis % 3, (axis + p) % 2 + 1),
                    })
                    .collect();
                let (tract, ours, replaced) = plans(shape, &pads, value);
                assert!(replaced, "{shape:?} {pads:?}");
                taken += 1;
                let input = Tensor::from_shape(shape, &values(shape.iter().product())).unwrap();
                assert_eq!(
                    bits(&ours, &input),
                    bits(&tract, &input),
                    "{shape:?} {pads:?} {value}"
                );
            }
        }
        assert_eq!(taken, 4 * shapes.len());
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn other_paddings_stay_tracts() {
        // Reflection: still tract's padding after optimisation, and not
        // replaced.
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 2, 4, 4])).unwrap();
        let pad = TractPad::new(vec![(0, 0), (0, 0), (1, 1), (1, 1)], PadMode::Reflect);
        let y = model.wire_node("pad", pad, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let mut model = model.into_optimized().unwrap();
        assert!(model.nodes().iter().any(|n| n.op_is::<TractPad>()));
        replace_pads(&mut model).unwrap();
        assert!(!model.nodes().iter().any(|n| n.op_is::<Pad>()));
        // What `for_tract` declines: an empty input, another type, a
        // constant that is not one f32, pads past a `usize`, a rank the
        // pads do not match.
        let zero = || PadMode::Constant(Arc::new(0f32.into()));
        let declined: [(TractPad, TypedFact); 6] = [
            (TractPad::new(vec![(1, 1); 3], zero()), f32::fact([1, 0, 3])),
            (TractPad::new(vec![(1, 1)], zero()), f64::fact([3])),
            (
                TractPad::new(vec![(1, 1)], PadMode::Constant(Arc::new(0f64.into()))),
                f32::fact([3]),
            ),
            (
                TractPad::new(
                    vec![(1, 1)],
                    PadMode::Constant(Arc::new(tensor1(&[0f32, 1.0]))),
                ),
                f32::fact([3]),
            ),
            (TractPad::new(vec![(usize::MAX, 1)], zero()), f32::fact([3])),
            (TractPad::new(vec![(1, 1)], zero()), f32::fact([2, 3])),
        ];
        for (tract, fact) in &declined {
            assert_eq!(Pad::for_tract(tract, fact), None, "{tract:?} {fact:?}");
        }
        // And the same with nothing wrong is taken.
        let taken = Pad::for_tract(&TractPad::new(vec![(1, 1)], zero()), &f32::fact([3]));
        assert!(taken.is_some());
    }
}
