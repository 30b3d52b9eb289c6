//! The guest's gathering of convolution patches into the matrix product's
//! panels, in place of tract 0.23.9's lazy im2col.
//!
//! Why: tract lowers a convolution to a matrix product whose B operand is
//! gathered panel by panel as the product needs it ("lazy im2col"): every
//! value of a panel is read through two offset tables, one per k step and
//! one per output pixel, and written through a generic packing writer. In
//! the guest that loop took 12 to 13% of an inference on the bundled model
//! (README, Measurements), more than all of tract's other operators. Yet
//! eight neighbouring output pixels of one image row read eight
//! neighbouring input values at every k step: in such a panel, a k step is
//! one copy of 32 bytes. This module gathers those panels so, and the
//! others value by value, into the same layout.
//!
//! tract's gathering is private to tract-core, so its offsets are read off
//! it instead: at planning time, [`replace_lazy_im2cols`] runs tract's
//! operator on an input whose every value is its own index, and asks for
//! every panel. tract's gathering depends on offsets alone, never on the
//! values, so that names the source of every slot of every panel. The
//! replacement is made only if the result is what an offset gather gives
//! (the value at k step `k` and pixel `n` is `x[k_off[k] + n_off[n]]`), so
//! the guest's panels are tract's, value for value, on every input. (In
//! the last, partial panel, tract leaves the slots past the image's last
//! pixel as they were and the guest zeroes them: the product's columns
//! there are never stored.) Everything else about the operand (its format,
//! its facts, its scratch layout) is tract's own: the plan keeps the
//! offsets and clones of tract's format and fact (each of which holds
//! tract's offset tables), not tract's operand, which holds the whole input
//! of indices.
#![allow(unsafe_code)] // tract's operand interface hands panels as raw pointers.

use std::alloc::Layout;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::dyn_clone::clone_box;
use tract_onnx::tract_core::internal::{
    EvalContext, EvalOp, ExoticFact, Op, StaticName, TypedOp, bail, ensure, format_err,
};
use tract_onnx::tract_core::tract_linalg::mmm::{
    MMMInputFormat, MMMInputValue, PackedMatrixStorage,
};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::planned;

/// tract's name for its lazy im2col operator (its type is private).
const TRACT_OP: &str = "LazyIm2col";

/// Replaces every lazy im2col of `model` whose offsets [`Gathering::read`]
/// can read off by the guest's [`Im2col`].
pub(super) fn replace_lazy_im2cols(model: &mut TypedModel) -> TractResult<()> {
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        if node.op.name() != TRACT_OP || node.inputs.len() != 1 || node.outputs.len() != 1 {
            continue;
        }
        let input = model.outlet_fact(node.inputs[0])?.clone();
        let output = node.outputs[0].fact.clone();
        // Reading can fail where running would not (tract's operator on the
        // input of indices, or the scratch's allocation): tract's operator
        // then stays, as it is.
        if let Ok(Some(gathering)) = Gathering::read(node.op.as_ref(), &input) {
            model.node_mut(id).op = Box::new(Im2col {
                gathering: Arc::new(gathering),
                output,
            });
        }
    }
    Ok(())
}

/// What a lazy im2col of one f32 input of fixed shape gathers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Gathering {
    /// The input's shape.
    shape: TVec<usize>,
    /// Pixels per panel: the kernel's panel width (8 for tract's wasm f32
    /// kernel and the guest's).
    r: usize,
    /// How far each k step's values lie past the first k step's, in f32s
    /// (the first is 0).
    k: Vec<usize>,
    /// Index of each output pixel's value at the first k step.
    n: Vec<usize>,
    /// Where each panel's pixels lie in the input.
    spans: Vec<Span>,
    /// tract's operand's format, exotic fact and scratch layout: the
    /// guest's operand's too (so tract's product takes it as its own).
    format: Box<dyn MMMInputFormat>,
    exotic: Box<dyn ExoticFact>,
    layout: Layout,
    /// The shape of the packed storage tract's operator outputs.
    batch: TVec<usize>,
}

impl Gathering {
    /// Runs `op` (tract's lazy im2col) on an input of `fact` whose values are
    /// their own indices, and reads the offsets off every panel; `None` if
    /// the operand is not one f32 gathering that offsets explain (tract's
    /// operator is then left in the plan).
    fn read(op: &dyn TypedOp, fact: &TypedFact) -> TractResult<Option<Self>> {
        let Some(shape) = fact.shape.as_concrete() else {
            return Ok(None);
        };
        let Some(len) = elements(shape) else {
            return Ok(None);
        };
        // Every index must be exact in an f32 (and not 0 alone).
        if fact.datum_type != f32::datum_type() || !(2..=1 << 24).contains(&len) {
            return Ok(None);
        }
        let indices: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let input = tract_ndarray::ArrayD::from_shape_vec(shape, indices)?
            .into_tensor()
            .into_tvalue();
        let output = op.eval(&EvalContext::out_of_plan(), tvec!(input))?;
        let [output] = &output[..] else {
            return Ok(None);
        };
        let storage = output.try_storage_as::<PackedMatrixStorage>()?;
        // One operand: a grouped convolution's gathers are tract's.
        let [tract] = storage.values() else {
            return Ok(None);
        };
        Self::from_operand(tract.as_ref(), shape, storage.batch_shape())
    }

    /// The gathering `tract` (an operand over an input of `shape` whose
    /// values are their own indices) makes, if offsets explain it.
    fn from_operand(
        tract: &dyn MMMInputValue,
        shape: &[usize],
        batch: &[usize],
    ) -> TractResult<Option<Self>> {
        let Some(len) = elements(shape) else {
            return Ok(None);
        };
        let (k, mn, r) = (tract.k(), tract.mn(), tract.format().r());
        let Some(layout) = tract.scratch_panel_buffer_layout() else {
            return Ok(None);
        };
        let fits = k
            .checked_mul(r)
            .and_then(|v| v.checked_mul(size_of::<f32>()))
            .is_some_and(|bytes| bytes <= layout.size());
        if k == 0 || mn == 0 || r == 0 || !fits || layout.align() < align_of::<f32>() {
            return Ok(None);
        }
        let mut scratch = Scratch::new(layout)?;
        // The offsets are read off the first k step (`n`) and the first
        // pixel (`k_steps`), and every other value is checked against them
        // as it is read: no table of the whole product (k by mn) is kept,
        // which for a large image would be far larger than the image.
        let mut n = vec![0usize; mn];
        let mut k_steps = Vec::with_capacity(k);
        for p in 0..mn.div_ceil(r) {
            let panel = tract.panel_bytes(p, Some(scratch.as_mut_ptr()))?;
            // tract's lazy im2col packs into the buffer it is given; a
            // panel elsewhere is not one whose size is known.
            if panel != scratch.as_mut_ptr().cast_const() {
                return Ok(None);
            }
            // SAFETY: the scratch, of tract's layout, was checked above to
            // hold `k` steps of `r` f32s, and tract has written a panel into
            // it (a partial panel leaves the slots past the image's last
            // pixel as they were, zero or an earlier panel's; they are not
            // read).
            let panel = unsafe { std::slice::from_raw_parts(panel as *const f32, k * r) };
            let pixels = &mut n[p * r..(p * r + r).min(mn)];
            for (kk, step) in panel.chunks_exact(r).enumerate() {
                for (j, (&v, pixel)) in step.iter().zip(pixels.iter_mut()).enumerate() {
                    if !(v >= 0.0 && v < len as f32 && v.fract() == 0.0) {
                        return Ok(None);
                    }
                    let v = v as usize;
                    if kk == 0 {
                        *pixel = v;
                    }
                    if p == 0 && j == 0 {
                        // The first k step's `v - pixel` is 0, so `k_steps[0]` is.
                        let Some(at) = v.checked_sub(*pixel) else {
                            return Ok(None);
                        };
                        k_steps.push(at);
                    }
                    if k_steps.get(kk).map(|&at| at + *pixel) != Some(v) {
                        return Ok(None);
                    }
                }
            }
        }
        // Every k step's reads of `r` values from `at` on stay in the input.
        let k_max = k_steps.iter().copied().max().unwrap_or(0);
        let fits = |at: usize| reads_fit(k_max, at, r, len);
        let spans = n.chunks(r).map(|p| Span::of(p, r, fits)).collect();
        Ok(Some(Self {
            shape: shape.into(),
            r,
            k: k_steps,
            n,
            spans,
            format: clone_box(tract.format()),
            exotic: clone_box(tract.exotic_fact()),
            layout,
            batch: batch.into(),
        }))
    }

    /// Writes panel `p` of `x` into `panel` (`k` steps of `r` values; the
    /// slots past the last pixel are zero).
    fn panel(&self, x: &[f32], p: usize, panel: &mut [f32]) -> TractResult<()> {
        let r = self.r;
        let start = p.saturating_mul(r);
        let pixels = self.n.get(start..start.saturating_add(r).min(self.n.len()));
        let (Some(pixels), Some(&span)) = (pixels, self.spans.get(p)) else {
            bail!("im2col panel {p} out of range");
        };
        ensure!(
            panel.len() == self.k.len() * r,
            "im2col panel {p}: wrong buffer"
        );
        let gathered = match r {
            // tract's wasm f32 kernel and the guest's: a k step is one array.
            8 => gather::<8>(x, &self.k, pixels, span, panel),
            _ => gather_any(x, &self.k, pixels, span, panel),
        };
        gathered.ok_or_else(|| format_err!("im2col panel {p} reads past its input"))
    }
}

/// The number of values of a tensor of `shape`, if it fits a `usize`.
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Whether reads of `r` values from `at` past every k step (the farthest
/// `k_max` past the first) stay in an input of `len` values.
fn reads_fit(k_max: usize, at: usize, r: usize, len: usize) -> bool {
    k_max
        .checked_add(at)
        .and_then(|end| end.checked_add(r))
        .is_some_and(|end| end <= len)
}

/// Where a panel's pixels lie in the input, at the first k step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Span {
    /// A full panel of neighbouring values from `first` on.
    One { first: usize },
    /// A full panel that crosses an image row once: slots before `split`
    /// from `first` on, the others from `second + split` on. Both reads of a
    /// whole panel's width, from `first` and from `second`, stay in the
    /// input.
    Two {
        first: usize,
        second: usize,
        split: usize,
    },
    /// Anything else (a partial panel, one that crosses rows more than
    /// once): value by value.
    Scattered,
}

impl Span {
    /// The span of `pixels` in a panel `r` wide, where `fits(at)` says
    /// whether every k step's read of `r` values from `at` on is in the
    /// input.
    fn of(pixels: &[usize], r: usize, fits: impl Fn(usize) -> bool) -> Self {
        let run = |from: usize| {
            let start = pixels[from];
            from + pixels[from..]
                .iter()
                .enumerate()
                .take_while(|&(j, &v)| v == start + j)
                .count()
        };
        if pixels.len() != r {
            return Self::Scattered;
        }
        let first = pixels[0];
        let split = run(0);
        if split == r {
            return Self::One { first };
        }
        match pixels[split].checked_sub(split) {
            Some(second) if run(split) == r && fits(first) && fits(second) => Self::Two {
                first,
                second,
                split,
            },
            _ => Self::Scattered,
        }
    }
}

/// `Gathering::panel` for panels `R` wide: a k step of neighbouring pixels
/// is one copy of an array (a row's crossing two, and a select), not a
/// `memcpy` of a length known at run time.
fn gather<const R: usize>(
    x: &[f32],
    ks: &[usize],
    pixels: &[usize],
    span: Span,
    panel: &mut [f32],
) -> Option<()> {
    let (steps, []) = panel.as_chunks_mut::<R>() else {
        return None;
    };
    if let Span::One { first } = span {
        each_step(steps, ks, |step, k| {
            *step = *x.get(k + first..)?.first_chunk::<R>()?;
            Some(())
        })
    } else if let Span::Two {
        first,
        second,
        split,
    } = span
    {
        each_step(steps, ks, |step, k| {
            let a = x.get(k + first..)?.first_chunk::<R>()?;
            let b = x.get(k + second..)?.first_chunk::<R>()?;
            for (j, v) in step.iter_mut().enumerate() {
                *v = if j < split { a[j] } else { b[j] };
            }
            Some(())
        })
    } else if pixels.len() <= R {
        // Value by value into an array whose slots past the last pixel are
        // zero, stored whole: zeroing those slots in the panel itself would
        // be a `memory.fill` of a length known only at run time, which
        // wasmtime runs as a call into the host, once per k step.
        each_step(steps, ks, |step, k| {
            let x = x.get(k..)?;
            let mut values = [0.0; R];
            for (v, &n) in values.iter_mut().zip(pixels) {
                *v = *x.get(n)?;
            }
            *step = values;
            Some(())
        })
    } else {
        None
    }
}

/// `f(step, k)` for every k step and its offset, four to an iteration of
/// the loop: wasmtime checks the deadline at every loop head, and a k step
/// of a panel is only a copy or two. `None` if `steps` and `ks` differ in
/// length or `f` fails.
#[inline(always)]
fn each_step<const R: usize>(
    steps: &mut [[f32; R]],
    ks: &[usize],
    mut f: impl FnMut(&mut [f32; R], usize) -> Option<()>,
) -> Option<()> {
    if steps.len() != ks.len() {
        return None;
    }
    let (steps, steps_left) = steps.as_chunks_mut::<4>();
    let (ks, ks_left) = ks.as_chunks::<4>();
    for (steps, ks) in steps.iter_mut().zip(ks) {
        for (step, &k) in steps.iter_mut().zip(ks) {
            f(step, k)?;
        }
    }
    for (step, &k) in steps_left.iter_mut().zip(ks_left) {
        f(step, k)?;
    }
    Some(())
}

/// `Gathering::panel` for panels of any width: `panel` holds a k step of
/// `r` values per entry of `ks`, `pixels` the panel's (up to `r`) pixels.
fn gather_any(
    x: &[f32],
    ks: &[usize],
    pixels: &[usize],
    span: Span,
    panel: &mut [f32],
) -> Option<()> {
    let r = panel.len().checked_div(ks.len()).filter(|&r| r > 0)?;
    if let Span::One { first } = span {
        for (step, &k) in panel.chunks_exact_mut(r).zip(ks) {
            step.copy_from_slice(x.get(k + first..)?.get(..r)?);
        }
    } else {
        for (step, &k) in panel.chunks_exact_mut(r).zip(ks) {
            let (values, rest) = step.split_at_mut(pixels.len());
            for (v, &n) in values.iter_mut().zip(pixels) {
                *v = *x.get(k + n)?;
            }
            rest.fill(0.0);
        }
    }
    Some(())
}

/// A buffer of `layout` for [`Gathering::read`]'s call on tract's operand.
struct Scratch {
    ptr: *mut u8,
    layout: Layout,
}

impl Scratch {
    fn new(layout: Layout) -> TractResult<Self> {
        ensure!(layout.size() > 0, "empty im2col scratch layout");
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        ensure!(!ptr.is_null(), "allocating the im2col scratch failed");
        Ok(Self { ptr, layout })
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The guest's lazy im2col: tract's operand, gathered by [`Gathering`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Im2col {
    gathering: Arc<Gathering>,
    /// tract's operator's output fact.
    output: TypedFact,
}

impl Op for Im2col {
    fn name(&self) -> StaticName {
        "MedguardIm2col".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Im2col {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = planned::input("im2col", &self.gathering.shape, inputs)?;
        let operand = Operand {
            gathering: self.gathering.clone(),
            input,
        };
        let storage = PackedMatrixStorage::new_batched(
            &self.gathering.batch,
            tvec!(Box::new(operand) as Box<dyn MMMInputValue>),
        );
        Ok(tvec!(storage.into_tensor(f32::datum_type()).into_tvalue()))
    }
}

impl TypedOp for Im2col {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        planned::wiring("im2col", &self.gathering.shape, inputs)?;
        Ok(tvec!(self.output.clone()))
    }

    as_op!();
}

/// The B operand of one convolution's product on one input.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Operand {
    gathering: Arc<Gathering>,
    input: TValue,
}

impl Hash for Operand {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.gathering.hash(state);
        self.input.as_bytes().hash(state);
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MedguardIm2col operand (k={} mn={})",
            self.k(),
            self.mn()
        )
    }
}

impl MMMInputValue for Operand {
    fn format(&self) -> &dyn MMMInputFormat {
        self.gathering.format.as_ref()
    }

    fn scratch_panel_buffer_layout(&self) -> Option<Layout> {
        Some(self.gathering.layout)
    }

    fn panel_bytes(&self, i: usize, buffer: Option<*mut u8>) -> TractResult<*const u8> {
        let Some(buffer) = buffer else {
            bail!("im2col panel {i} asked for without a scratch buffer");
        };
        let x = self.input.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let len = self.gathering.k.len() * self.gathering.r;
        // SAFETY: tract hands a buffer of `scratch_panel_buffer_layout()`,
        // which `Gathering::read` checked holds `k` steps of `r` f32s at an
        // f32's alignment or more, and which nothing else uses meanwhile.
        let panel = unsafe { std::slice::from_raw_parts_mut(buffer as *mut f32, len) };
        self.gathering.panel(x, i, panel)?;
        Ok(buffer)
    }

    fn mn(&self) -> usize {
        self.gathering.n.len()
    }

    fn k(&self) -> usize {
        self.gathering.k.len()
    }

    fn exotic_fact(&self) -> &dyn ExoticFact {
        self.gathering.exotic.as_ref()
    }

    fn extract_at_mn_f16(&self, _: usize, _: &mut [f16]) -> TractResult<()> {
        bail!("an im2col operand is only ever read by panel")
    }

    fn extract_at_mn_f32(&self, _: usize, _: &mut [f32]) -> TractResult<()> {
        bail!("an im2col operand is only ever read by panel")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    /// A convolution's geometry: input `[1, ci, h, w]`, `co` outputs,
    /// `kernel` square, `stride`, `dilation`, `group`.
    #[derive(Debug, Clone)]
    struct Geometry {
        ci: usize,
        co: usize,
        hw: [usize; 2],
        kernel: usize,
        stride: usize,
        dilation: usize,
        group: usize,
        padding: PaddingSpec,
    }

    impl Geometry {
        /// Two 6x6 channels into eight, 3x3, padding 1.
        fn small() -> Self {
            Self {
                ci: 2,
                co: 8,
                hw: [6, 6],
                kernel: 3,
                stride: 1,
                dilation: 1,
                group: 1,
                padding: PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
            }
        }
    }

    /// Values in (-1, 1), some of them NaN, an infinity or a zero of either
    /// sign, from `seed`.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                match state % 29 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::INFINITY,
                    3 => 0.0,
                    4 => -0.0,
                    _ => (state as f32 / u32::MAX as f32) * 2.0 - 1.0,
                }
            })
            .collect()
    }

    /// The optimised model of one convolution of `g`, with weights and a
    /// bias from `seed`.
    fn convolution(g: &Geometry, seed: u32) -> TypedModel {
        convolution_of(TypedModel::default(), 1.to_dim(), g, seed)
            .into_optimized()
            .unwrap()
    }

    /// `model` with one convolution of `g` over `batch` images.
    fn convolution_of(mut model: TypedModel, batch: TDim, g: &Geometry, seed: u32) -> TypedModel {
        let [h, w] = g.hw;
        let x = model
            .add_source(
                "x",
                f32::fact([batch, g.ci.to_dim(), h.to_dim(), w.to_dim()]),
            )
            .unwrap();
        let weights = g.co * (g.ci / g.group) * g.kernel * g.kernel;
        let kernel = Tensor::from_shape(
            &[g.co, g.ci / g.group, g.kernel, g.kernel],
            &values(weights, seed)
                .iter()
                .map(|v| if v.is_finite() { *v } else { 0.5 })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let kernel = model.add_const("kernel", kernel).unwrap();
        let bias = model
            .add_const(
                "bias",
                Tensor::from_shape(&[g.co], &values(g.co, seed + 1)).unwrap(),
            )
            .unwrap();
        let conv = Conv {
            pool_spec: PoolSpec::new(
                DataFormat::NCHW,
                tvec!(g.kernel, g.kernel),
                g.padding.clone(),
                Some(tvec!(g.dilation, g.dilation)),
                Some(tvec!(g.stride, g.stride)),
                g.ci,
                g.co,
            ),
            kernel_fmt: KernelFormat::OIHW,
            group: g.group,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, kernel, bias]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    fn bits(plan: &Arc<TypedRunnableModel>, input: &Tensor) -> (Vec<usize>, Vec<u32>) {
        let output = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
        let values = output[0].to_plain_array_view::<f32>().unwrap();
        (
            values.shape().to_vec(),
            values.iter().map(|v| v.to_bits()).collect(),
        )
    }

    fn count(model: &TypedModel, name: &str) -> usize {
        model.nodes().iter().filter(|n| n.op.name() == name).count()
    }

    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_guests_im2col_gives_tracts_bits_on_every_geometry_it_takes() {
        let paddings = [
            PaddingSpec::Valid,
            PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
            PaddingSpec::Explicit(tvec!(0, 2), tvec!(1, 0)),
            PaddingSpec::SameUpper,
        ];
        let (mut taken, mut seen) = (0, 0);
        for (ci, co, group) in [(1, 8, 1), (3, 5, 1), (8, 16, 1), (4, 6, 2)] {
            for hw in [[5, 5], [7, 9], [12, 12], [28, 28]] {
                for (kernel, stride, dilation) in [
                    (3, 1, 1),
                    (3, 2, 1),
                    (3, 1, 2),
                    (2, 1, 1),
                    (5, 2, 1),
                    (1, 2, 1),
                ] {
                    for padding in &paddings {
                        let g = Geometry {
                            ci,
                            co,
                            hw,
                            kernel,
                            stride,
                            dilation,
                            group,
                            padding: padding.clone(),
                        };
                        let seed = (seen * 7 + 1) as u32;
                        seen += 1;
                        let tract = convolution(&g, seed);
                        let mut ours = tract.clone();
                        replace_lazy_im2cols(&mut ours).unwrap();
                        let lazy = count(&tract, TRACT_OP);
                        let replaced = count(&ours, "MedguardIm2col");
                        // Every lazy im2col of one group into more than one
                        // pixel is replaced; into one, on wasm, tract's
                        // matrix-vector kernels take the product, in a packing
                        // aligned to single bytes, which `Gathering::read`
                        // declines (its panels are read as f32s).
                        let output = tract
                            .output_fact(0)
                            .unwrap()
                            .shape
                            .as_concrete()
                            .unwrap()
                            .to_vec();
                        let one_pixel = output[2] * output[3] == 1;
                        let gathered = group == 1 && !(one_pixel && cfg!(target_arch = "wasm32"));
                        assert_eq!(replaced, if gathered { lazy } else { 0 }, "{g:?}");
                        assert_eq!(count(&ours, TRACT_OP), lazy - replaced, "{g:?}");
                        taken += replaced;
                        let [h, w] = hw;
                        let input =
                            Tensor::from_shape(&[1, ci, h, w], &values(ci * h * w, seed + 2))
                                .unwrap();
                        let (tract, ours) = (
                            tract.into_runnable().unwrap(),
                            ours.into_runnable().unwrap(),
                        );
                        assert_eq!(bits(&ours, &input), bits(&tract, &input), "{g:?}");
                    }
                }
            }
        }
        assert!(
            taken >= 100,
            "only {taken} of {seen} convolutions gathered by the guest"
        );
    }

    /// The array gathers (`gather::<8>`: one run, a row's crossing, value
    /// by value, a partial panel) give what the value-by-value one does, on
    /// every target (natively, tract's kernels may not be 8 wide, so the
    /// plans above may not reach them).
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_array_gathers_agree_with_the_value_by_value_one() {
        let x: Vec<f32> = (0..400).map(|i| i as f32).collect();
        let ks = [0, 1, 2, 30, 31, 32, 60, 61, 62];
        let fits = |at: usize| 62 + at + 8 <= x.len();
        let panels: [&[usize]; 6] = [
            &[0, 1, 2, 3, 4, 5, 6, 7],
            &[5, 6, 7, 10, 11, 12, 13, 14],
            &[9, 20, 21, 22, 23, 24, 25, 26],
            &[0, 1, 2, 3, 4, 5, 6, 330],
            &[0, 2, 4, 6, 8, 10, 12, 14],
            &[7, 8, 9],
        ];
        let spans = [
            Span::One { first: 0 },
            Span::Two {
                first: 5,
                second: 7,
                split: 3,
            },
            Span::Two {
                first: 9,
                second: 19,
                split: 1,
            },
            Span::Two {
                first: 0,
                second: 323,
                split: 7,
            },
            Span::Scattered,
            Span::Scattered,
        ];
        for (pixels, span) in panels.into_iter().zip(spans) {
            assert_eq!(Span::of(pixels, 8, fits), span, "{pixels:?}");
            let mut by_value = vec![f32::NAN; ks.len() * 8];
            let mut by_array = vec![f32::NAN; ks.len() * 8];
            gather_any(&x, &ks, pixels, Span::Scattered, &mut by_value).unwrap();
            gather::<8>(&x, &ks, pixels, span, &mut by_array).unwrap();
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&by_array), bits(&by_value), "{pixels:?}");
        }
        // Both reads of a whole panel must end at the input's end or before.
        assert!(reads_fit(62, 330, 8, 400));
        assert!(!reads_fit(62, 331, 8, 400));
        assert!(!reads_fit(usize::MAX, 1, 8, usize::MAX));
        // The last run's read would pass the input's end: value by value.
        assert_eq!(
            Span::of(&[0, 1, 2, 3, 4, 5, 6, 330], 8, |at| at < 300),
            Span::Scattered
        );
        assert_eq!(
            Span::of(&[5, 6, 7, 10, 11, 12, 13, 14], 8, |at| at != 7),
            Span::Scattered
        );
    }

    /// The guest's planning (`plan_at_batch_one`) puts the op in.
    #[cfg(target_arch = "wasm32")]
    #[wasm_bindgen_test::wasm_bindgen_test]
    fn the_guests_plans_gather_with_it() {
        let g = Geometry::small();
        let model = TypedModel::default();
        let batch = model.symbols.sym("batch");
        let model = convolution_of(model, batch.to_dim(), &g, 5);
        let plan = super::super::plan_at_batch_one(model, &batch, &[1, 2, 6, 6], &[&[1, 8, 6, 6]])
            .unwrap();
        let names: Vec<_> = plan.model().nodes().iter().map(|n| n.op.name()).collect();
        assert!(names.iter().any(|n| n == "MedguardIm2col"), "{names:?}");
        assert!(!names.iter().any(|n| n == TRACT_OP), "{names:?}");
    }

    /// An operand whose panels hold `value(k step, pixel)`, `r` wide.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Fake {
        k: usize,
        mn: usize,
        /// Which alteration to make: of a value (`value`), of where the
        /// panel is (5), or an error (6).
        alter: u8,
        format: tract_onnx::tract_core::tract_linalg::pack::PackedFormat,
        fact: tract_onnx::tract_core::tract_linalg::mmm::PackedExoticFact,
    }

    impl Fake {
        const R: usize = 8;

        fn new(k: usize, mn: usize, alter: u8) -> Self {
            let format = tract_onnx::tract_core::tract_linalg::pack::PackedFormat {
                dt: f32::datum_type(),
                r: Self::R,
                alignment_bytes: 16,
                end_padding_record: 0,
            };
            let fact = tract_onnx::tract_core::tract_linalg::mmm::PackedExoticFact {
                format: Box::new(format.clone()),
                mn: mn.to_dim(),
                k,
            };
            Self {
                k,
                mn,
                alter,
                format,
                fact,
            }
        }

        /// An offset gather over a 10-wide padded image, but for `alter`.
        fn value(&self, kk: usize, n: usize) -> f32 {
            let v = (kk / 3) * 100 + (kk % 3) * 10 + (n / 8) * 10 + n % 8;
            match (self.alter, kk, n) {
                (1, 3, 10) => v as f32 + 1.0,
                (2, 5, 0) => v as f32 - 0.5,
                (3, 2, 17) => 1e6,
                (4, 0, 9) => -1.0,
                _ => v as f32,
            }
        }
    }

    impl fmt::Display for Fake {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl MMMInputValue for Fake {
        fn format(&self) -> &dyn MMMInputFormat {
            &self.format
        }
        fn scratch_panel_buffer_layout(&self) -> Option<Layout> {
            Layout::from_size_align(self.k * Self::R * 4, 16).ok()
        }
        fn panel_bytes(&self, i: usize, buffer: Option<*mut u8>) -> TractResult<*const u8> {
            match self.alter {
                5 => return Ok(std::ptr::NonNull::<u8>::dangling().as_ptr()),
                6 => bail!("no panel"),
                _ => (),
            }
            let buffer = buffer.unwrap();
            // SAFETY: `Gathering::from_operand` hands a buffer of the layout above.
            let panel =
                unsafe { std::slice::from_raw_parts_mut(buffer as *mut f32, self.k * Self::R) };
            for (kk, step) in panel.chunks_exact_mut(Self::R).enumerate() {
                for (j, v) in step.iter_mut().enumerate() {
                    *v = self.value(kk, i * Self::R + j);
                }
            }
            Ok(buffer)
        }
        fn mn(&self) -> usize {
            self.mn
        }
        fn k(&self) -> usize {
            self.k
        }
        fn exotic_fact(&self) -> &dyn ExoticFact {
            &self.fact
        }
        fn extract_at_mn_f16(&self, _: usize, _: &mut [f16]) -> TractResult<()> {
            unimplemented!()
        }
        fn extract_at_mn_f32(&self, _: usize, _: &mut [f32]) -> TractResult<()> {
            unimplemented!()
        }
    }

    /// The offsets are read off an operand that gathers by offsets, and an
    /// operand any one of whose values is not an offset gather's (another
    /// index, not an index, past the input, negative) or whose panels are
    /// not in the buffer it is given is left to tract.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn only_a_gathering_by_offsets_is_taken_over() {
        let shape = [1, 3, 10, 10];
        let read = |alter| Gathering::from_operand(&Fake::new(9, 20, alter), &shape, &[1, 1]);
        let gathering = read(0).unwrap().unwrap();
        assert_eq!(gathering.k, [0, 10, 20, 100, 110, 120, 200, 210, 220]);
        let n: Vec<usize> = (0..20).map(|n| (n / 8) * 10 + n % 8).collect();
        assert_eq!(gathering.n, n);
        assert_eq!(
            gathering.spans,
            [
                Span::One { first: 0 },
                Span::One { first: 10 },
                Span::Scattered
            ]
        );
        for alter in 1..=5 {
            assert!(read(alter).unwrap().is_none(), "alteration {alter} taken");
        }
        // An error reading is an error (`replace_lazy_im2cols` then leaves
        // tract's operator in place).
        assert!(read(6).is_err());
    }

    /// A shape the gathering was not read for is refused, not read past.
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn an_input_of_another_shape_is_refused() {
        let g = Geometry::small();
        let mut model = convolution(&g, 3);
        replace_lazy_im2cols(&mut model).unwrap();
        let node = model
            .nodes()
            .iter()
            .find(|n| n.op.name() == "MedguardIm2col")
            .unwrap();
        let small = Tensor::from_shape(&[1, 2, 7, 7], &[0.5f32; 98])
            .unwrap()
            .into_tvalue();
        let refused = node
            .op
            .eval(&EvalContext::out_of_plan(), tvec!(small))
            .unwrap_err();
        assert!(
            refused.to_string().contains("im2col planned for f32"),
            "{refused}"
        );
        let Some(im2col) = node.op.downcast_ref::<Im2col>() else {
            panic!("not ours")
        };
        let gathering = &im2col.gathering;
        let mut panel = vec![0.0; gathering.k.len() * gathering.r];
        let x = vec![0.0; 2 * 8 * 8];
        let past = gathering.n.len().div_ceil(gathering.r);
        assert!(gathering.panel(&x, past, &mut panel).is_err());
        assert!(gathering.panel(&x[..10], 0, &mut panel).is_err());
        assert!(gathering.panel(&x, 0, &mut panel[1..]).is_err());
    }
}
