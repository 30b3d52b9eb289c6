//! The f32 matrix-product kernel the guest registers with tract for wasm:
//! tract's own 8x8 kernel, with the inner product of each tile computed by
//! a loop shaped for the sandbox's compiler.
//!
//! Why: wasmtime checks the epoch deadline at every loop head, and the
//! check's slow path is a call after which no vector register survives.
//! Cranelift therefore keeps every vector a loop carries in a stack slot
//! and reloads and stores it at every iteration: in tract's 8x8 kernel,
//! its 16 accumulators at every k step (README, Measurements). Here the
//! tile is computed in two halves of four rows, and each iteration of the
//! k loop does three steps of one half, then the same three of the other,
//! with an exit test after each step. A half's 8 accumulators fit x86's 16
//! vector registers beside their operands while its steps run; both halves'
//! 16 go through memory at the loop head, once per three steps, and one
//! half computes while the other's chains wait on that round trip. The
//! exit tests are what makes the unrolling pay: each hands the accumulators
//! on to code the step's results must reach (the other half's steps, or
//! the code after the loop), so Cranelift computes every step's
//! multiply-adds before the next step's loads instead of sinking them all
//! to the iteration's end (where the operands of three steps would be live
//! at once).
//!
//! The product goes into an 8x8 tile. The operations tract fuses after it
//! (bias, activation, store) are applied to that tile here, with tract's
//! own instructions in tract's operand order; a list with any other
//! operation goes to tract's kernel, which loads the tile as its
//! accumulators (`LoadTile`) in place of the `AddMatMul` it was given.
//! Each value is the chain of
//! fused multiply-adds from zero in k order that tract's kernel computes
//! when built with relaxed SIMD, loaded as it is (a negative zero
//! included): the bits of scalar fused multiply-adds (the tests below).
#![allow(unsafe_code)] // SIMD intrinsics over tract's packed panels, as its own kernels.

use std::arch::wasm32::*;
use std::mem::MaybeUninit;
use std::sync::LazyLock;

use product::product;

use tract_linalg::isa::{Arch, IsaSet};
use tract_linalg::mmm::{DynKernel, FusedKerSpec, OutputStoreKer, Query, Suitable};
use tract_linalg::mmm_routines::MmmRoutine;
use tract_linalg::mmm_tiers::MmmTier;
use tract_onnx::prelude::DatumType;

// The arithmetic alone, without tract: `scripts/kernel-probe.sh` compiles
// the same file into its microbenchmark.
mod product;

/// The kernel's name in tract's dispatch.
const NAME: &str = "medguard_wasm_f32_8x8";

static KERNEL: LazyLock<DynKernel<8, 8, f32>> = LazyLock::new(|| {
    let mut kernel = tract_linalg::wasm::wasm_f32_8x8.clone();
    kernel.name = NAME.to_owned();
    kernel.kernel = run;
    kernel
});

inventory::submit! {
    MmmRoutine { make: || KERNEL.mmm() }
}

inventory::submit! {
    MmmTier {
        arch: Some(Arch::Wasm32Simd128),
        // Above tract's own wasm tier (1), which answers every f32 product
        // with its 8x8 kernel.
        precedence: 2,
        name: "medguard-wasm",
        applies: |_| true,
        preferred,
    }
}

/// Matrix products (not matrix-vector ones, which tract's own tier routes
/// to its narrow kernels) of f32.
fn preferred(_: &IsaSet, dt: DatumType, query: &Query, _: &[Suitable]) -> Option<&'static str> {
    (dt == DatumType::F32 && query.n != Some(1)).then_some(NAME)
}

/// wasm-ld may drop an object nothing references, registry entries
/// included: parsing a model calls this so that the entries stay in.
pub(super) fn keep_linked() {
    std::hint::black_box(run as *const ());
}

/// The most operations one call carries that this kernel rewrites for
/// tract's kernel; a longer list goes to tract's kernel unchanged.
const MAX_OPS: usize = 32;

/// The kernel: the first `AddMatMul` of `ops`, if only `Clear`s come before
/// it, computed here. If every operation after it (up to `Done`) is one
/// [`applies`] takes, they are applied here too and the tile stored;
/// otherwise the product is replaced by loading its tile and tract's 8x8
/// kernel runs the result. Anything else is tract's kernel alone: a
/// product onto accumulators that are not zero would round differently.
///
/// Why apply the operations here: tract's kernel runs them in a loop over
/// the list, which (wasmtime's deadline check at its head) keeps its 16
/// accumulators in stack slots, reloaded and stored for each operation,
/// and it stores a tile value by value, 64 lane extractions. A convolution
/// of the bundled model has about six operations a tile (bias, ReLU,
/// store), and in the guest's profile tract's kernel and its loop were 3
/// to 4% of an inference (README, Measurements).
///
/// # Safety
/// As tract's kernel's: `ops` ends with `Done` (tract's kernel reads up to
/// it, whatever the slice's length), and its pointers are to buffers of
/// the sizes the 8x8 kernel reads. A list that does not end with `Done`
/// goes to tract's kernel as it is, so that nothing reads past the copy.
unsafe fn run(ops: &[FusedKerSpec<f32>]) -> isize {
    let tract = tract_linalg::wasm::wasm_f32_8x8.kernel;
    let first = ops.iter().position(|op| !matches!(op, FusedKerSpec::Clear));
    let ends = matches!(ops.last(), Some(FusedKerSpec::Done));
    let Some(at) = first.filter(|_| ends) else {
        return unsafe { tract(ops) };
    };
    let FusedKerSpec::AddMatMul {
        k,
        pa,
        pb,
        packing: 0,
    } = ops[at]
    else {
        return unsafe { tract(ops) };
    };
    // tract's kernel stops at the first `Done`, and so does `apply`.
    let rest = &ops[at + 1..];
    let done = rest
        .iter()
        .position(|op| matches!(op, FusedKerSpec::Done))
        .unwrap_or(rest.len());
    let own = rest[..done].iter().all(applies);
    if !own && ops.len() > MAX_OPS {
        return unsafe { tract(ops) };
    }
    let mut tile = [f32x4_splat(0.0); 16];
    // SAFETY: tract packs `k` steps of 8 values of A and of B for this
    // kernel's format (the one of its 8x8 kernel, packing 0); `product`
    // reads them with unaligned loads, as tract's kernel does.
    unsafe { product(k, pa as *const v128, pb as *const v128, &mut tile) };
    if own {
        // SAFETY: the operations' pointers are as tract's kernel reads them.
        unsafe { apply(&mut tile, &rest[..done]) };
        return 0;
    }
    // Only the slots `ops` fills are written: filling all `MAX_OPS` cost
    // about 1% of an inference, for a list of about six operations.
    let mut rewritten = [const { MaybeUninit::<FusedKerSpec<f32>>::uninit() }; MAX_OPS];
    let slots = &mut rewritten[..ops.len()];
    for (slot, op) in slots.iter_mut().zip(ops) {
        slot.write(*op);
    }
    // tract's wasm 8x8 kernel loads a tile from the second pointer, row by
    // row, two vectors a row: `tile`'s layout (and alignment, as an array
    // of `v128`). It does not read the first (column-major) one.
    let rows = tile.as_ptr() as *const f32;
    slots[at].write(FusedKerSpec::LoadTile(rows, rows));
    // SAFETY: every slot of `slots` was written above, and
    // `MaybeUninit<T>` has `T`'s layout.
    let rewritten = unsafe {
        std::slice::from_raw_parts(slots.as_ptr().cast::<FusedKerSpec<f32>>(), slots.len())
    };
    unsafe { tract(rewritten) }
}

/// Whether [`apply`] does `op` as tract's 8x8 kernel does.
fn applies(op: &FusedKerSpec<f32>) -> bool {
    use FusedKerSpec::*;
    matches!(
        op,
        ScalarMin(_)
            | ScalarMax(_)
            | ScalarAdd(_)
            | ScalarMul(_)
            | ScalarSub(_)
            | ScalarSubF(_)
            | PerRowMin(_)
            | PerRowMax(_)
            | PerRowAdd(_)
            | PerRowMul(_)
            | PerRowSub(_)
            | PerRowSubF(_)
            | PerColMin(_)
            | PerColMax(_)
            | PerColAdd(_)
            | PerColMul(_)
            | PerColSub(_)
            | PerColSubF(_)
            | Store(_)
    )
}

/// Applies `ops` (each one [`applies`] takes) to `tile` (8 rows of two
/// vectors), with the instructions and operand order of tract 0.23.9's
/// wasm 8x8 kernel (`wasm/fuse.rs`): `op(shared, accumulator)`, flipped for
/// the `SubF`s. Not inlined into the product, whose relaxed SIMD would let
/// LLVM turn `f32x4_min`/`f32x4_max` into their relaxed forms (which under
/// wasmtime let a NaN's sign through: .cargo/config.toml).
///
/// # Safety
/// Per-row operands point at 8 values, per-column ones at 8, and each
/// `Store` at a tile of 8 rows of 8 values at its strides.
#[inline(never)]
unsafe fn apply(tile: &mut [v128; 16], ops: &[FusedKerSpec<f32>]) {
    use FusedKerSpec::*;
    // `tile[2r]` and `tile[2r + 1]` are row r's columns 0 to 3 and 4 to 7.
    fn scalar(tile: &mut [v128; 16], f: impl Fn(v128, v128) -> v128, s: f32, flip: bool) {
        let s = f32x4_splat(s);
        for v in tile.iter_mut() {
            *v = if flip { f(*v, s) } else { f(s, *v) };
        }
    }
    unsafe fn per_row(
        tile: &mut [v128; 16],
        f: impl Fn(v128, v128) -> v128,
        p: *const f32,
        flip: bool,
    ) {
        for (r, row) in tile.chunks_exact_mut(2).enumerate() {
            let s = f32x4_splat(unsafe { p.add(r).read() });
            for v in row {
                *v = if flip { f(*v, s) } else { f(s, *v) };
            }
        }
    }
    unsafe fn per_col(
        tile: &mut [v128; 16],
        f: impl Fn(v128, v128) -> v128,
        p: *const f32,
        flip: bool,
    ) {
        let p = p as *const v128;
        let cols = unsafe { [v128_load(p), v128_load(p.add(1))] };
        for row in tile.chunks_exact_mut(2) {
            for (v, &c) in row.iter_mut().zip(&cols) {
                *v = if flip { f(*v, c) } else { f(c, *v) };
            }
        }
    }
    for op in ops {
        // SAFETY (every arm): the pointers are as this function's contract
        // says.
        match *op {
            ScalarMin(s) => scalar(tile, |a, b| f32x4_min(a, b), s, false),
            ScalarMax(s) => scalar(tile, |a, b| f32x4_max(a, b), s, false),
            ScalarAdd(s) => scalar(tile, |a, b| f32x4_add(a, b), s, false),
            ScalarMul(s) => scalar(tile, |a, b| f32x4_mul(a, b), s, false),
            ScalarSub(s) => scalar(tile, |a, b| f32x4_sub(a, b), s, false),
            ScalarSubF(s) => scalar(tile, |a, b| f32x4_sub(a, b), s, true),
            PerRowMin(p) => unsafe { per_row(tile, |a, b| f32x4_min(a, b), p, false) },
            PerRowMax(p) => unsafe { per_row(tile, |a, b| f32x4_max(a, b), p, false) },
            PerRowAdd(p) => unsafe { per_row(tile, |a, b| f32x4_add(a, b), p, false) },
            PerRowMul(p) => unsafe { per_row(tile, |a, b| f32x4_mul(a, b), p, false) },
            PerRowSub(p) => unsafe { per_row(tile, |a, b| f32x4_sub(a, b), p, false) },
            PerRowSubF(p) => unsafe { per_row(tile, |a, b| f32x4_sub(a, b), p, true) },
            PerColMin(p) => unsafe { per_col(tile, |a, b| f32x4_min(a, b), p, false) },
            PerColMax(p) => unsafe { per_col(tile, |a, b| f32x4_max(a, b), p, false) },
            PerColAdd(p) => unsafe { per_col(tile, |a, b| f32x4_add(a, b), p, false) },
            PerColMul(p) => unsafe { per_col(tile, |a, b| f32x4_mul(a, b), p, false) },
            PerColSub(p) => unsafe { per_col(tile, |a, b| f32x4_sub(a, b), p, false) },
            PerColSubF(p) => unsafe { per_col(tile, |a, b| f32x4_sub(a, b), p, true) },
            Store(out) => unsafe { store(tile, &out) },
            // `run` hands only what `applies` takes.
            _ => {}
        }
    }
}

/// Stores `tile` as tract's kernel does: row by row, in each row the
/// columns at `col_byte_stride` from one another (a row of neighbouring
/// values as two vector stores, the same bytes in the same row order).
///
/// # Safety
/// `out` points at a tile of 8 rows of 8 f32s at its strides.
unsafe fn store(tile: &[v128; 16], out: &OutputStoreKer) {
    let mut ptr = out.ptr;
    for row in tile.chunks_exact(2) {
        unsafe {
            if out.col_byte_stride == size_of::<f32>() as isize {
                v128_store(ptr as *mut v128, row[0]);
                v128_store(ptr.add(16) as *mut v128, row[1]);
            } else {
                let values: [f32; 8] = std::mem::transmute([row[0], row[1]]);
                for (c, v) in values.into_iter().enumerate() {
                    (ptr.wrapping_offset(out.col_byte_stride * c as isize) as *mut f32)
                        .write_unaligned(v);
                }
            }
            // Past the last row it points out of the tile, never to be used:
            // a wrapping offset, which has no bounds to keep.
            ptr = ptr.wrapping_offset(out.row_byte_stride);
        }
    }
}

/// `run` against tract's own 8x8 kernel, in wasm (scripts/test.sh runs
/// these under Node with wasm-bindgen-test).
#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    /// Values in [-0.5, 0.5) whose products round (so that a fused chain,
    /// an unfused one and one in another order differ), and, with
    /// `special`, zeros of both signs, infinities, NaNs and subnormals
    /// among them, at positions `seed` shifts.
    fn values(len: usize, seed: usize, special: bool) -> Vec<f32> {
        const SPECIAL: [f32; 6] = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40];
        (0..len)
            .map(|i| match (i * 7 + seed * 13) % 41 {
                j @ 0..6 if special => SPECIAL[j],
                _ => ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5,
            })
            .collect()
    }

    /// The 8x8 tile, row by row, as a chain of fused multiply-adds from
    /// zero in k order, one value at a time (`f32::mul_add` is exact); or,
    /// unless `fused`, of a multiplication and an addition each.
    fn reference_tile(k: usize, a: &[f32], b: &[f32], fused: bool) -> [v128; 16] {
        let mut tile = [0f32; 64];
        for (i, value) in tile.iter_mut().enumerate() {
            let (row, column) = (i / 8, i % 8);
            *value = (0..k).fold(0.0, |acc, s| {
                let (a, b) = (a[8 * s + row], b[8 * s + column]);
                if fused {
                    a.mul_add(b, acc)
                } else {
                    acc + a * b
                }
            });
        }
        std::array::from_fn(|v| {
            f32x4(
                tile[4 * v],
                tile[4 * v + 1],
                tile[4 * v + 2],
                tile[4 * v + 3],
            )
        })
    }

    /// Strides (of a row, of a column, in bytes) the tests store tiles
    /// at: rows of neighbouring values (as tract's output, and its border
    /// tiles' padded temporary tile), columns of them, rows that overlap
    /// (the last write wins), and strides of zero and below.
    const STRIDES: [(isize, isize); 7] = [
        (32, 4),
        (128, 4),
        (4, 32),
        (16, 4),
        (-32, 4),
        (32, 0),
        (32, -4),
    ];

    /// The buffer `kernel` stores into for `ops` (with a store at `strides`
    /// appended), the tile's first value at whatever place keeps every
    /// value's address in it; the rest of the buffer keeps a NaN's bits
    /// no kernel makes.
    fn stored(
        kernel: unsafe fn(&[FusedKerSpec<f32>]) -> isize,
        ops: &[FusedKerSpec<f32>],
        (row, column): (isize, isize),
    ) -> Vec<f32> {
        let offsets = (0..64).map(|i| (i / 8) * row + (i % 8) * column);
        let (low, high) = (offsets.clone().min().unwrap(), offsets.max().unwrap());
        let mut out = vec![f32::from_bits(0x7f80_dead); ((high - low) / 4 + 1) as usize];
        let store = OutputStoreKer {
            ptr: out.as_mut_ptr().wrapping_byte_offset(-low) as *mut u8,
            row_byte_stride: row,
            col_byte_stride: column,
            item_size: 4,
        };
        let mut ops = ops.to_vec();
        ops.extend([FusedKerSpec::Store(store), FusedKerSpec::Done]);
        // SAFETY: every pointer in `ops` is to live buffers of the sizes the
        // 8x8 kernel reads, and every value of the tile `store` names is in
        // `out`.
        assert_eq!(unsafe { kernel(&ops) }, 0);
        out
    }

    fn same(a: f32, b: f32) -> bool {
        // NaN bits are made canonical after every operator (runtime.rs), so
        // which NaN a kernel makes does not matter; everything else must be
        // the same bits, a zero's sign included.
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// Whether this engine fuses `relaxed_madd`: wasmtime's deterministic
    /// mode always does, V8 only on a CPU with FMA. (1 + e)(1 - e) - 1 is
    /// -e^2 fused and 0 unfused for e = 2^-13.
    #[target_feature(enable = "relaxed-simd")]
    fn engine_fuses() -> bool {
        let e = std::hint::black_box(2f32.powi(-13));
        let (a, b) = (f32x4_splat(1.0 + e), f32x4_splat(1.0 - e));
        f32x4_extract_lane::<0>(f32x4_relaxed_madd(a, b, f32x4_splat(-1.0))) != 0.0
    }

    /// `run` stores what tract's kernel stores when the product `run`
    /// takes over is handed to it as a loaded tile of fused multiply-adds
    /// (tract's own loop fuses them only where the whole build has relaxed
    /// SIMD, which the guest's has not: .cargo/config.toml), and what
    /// tract's kernel stores for lists it does not take over. Special
    /// values soon make most of a tile NaN or infinite, where a skipped or
    /// repeated step would go unseen, so every depth also runs with finite
    /// values alone, and those tiles must come out finite.
    #[wasm_bindgen_test]
    fn the_kernel_stores_what_tracts_kernel_stores_for_a_fused_product() {
        // A safe call on wasm: the module validates only where relaxed SIMD
        // does.
        assert!(
            engine_fuses(),
            "this wasm engine does not fuse relaxed_madd (a CPU without FMA?); the \
             reference tile is fused, so this test needs one that does"
        );
        let tract = tract_linalg::wasm::wasm_f32_8x8.kernel;
        let (bias, other) = (values(8, 99, false), values(8, 98, false));
        // Where a list's store in its middle (`twice`) goes.
        let mut scratch = vec![0f32; 64];
        // Every remainder of the kernel's loop many times over, and one of
        // the bundled model's depths.
        let depths = (0..=40).chain([1152]);
        for (k, special) in depths.flat_map(|k| [(k, false), (k, true)]) {
            let (a, b) = (
                values(8 * k.max(1), k, special),
                values(8 * k.max(1), k + 1, special),
            );
            let product = FusedKerSpec::AddMatMul {
                k,
                pa: a.as_ptr() as *const u8,
                pb: b.as_ptr() as *const u8,
                packing: 0,
            };
            let tile = reference_tile(k, &a, &b, true);
            // Else the comparisons below could not tell whether `run` took a
            // product over, or fused it.
            if k >= 2 && !special {
                let unfused = reference_tile(k, &a, &b, false);
                let bits = |t: &[v128; 16]| {
                    t.iter()
                        .flat_map(|&v| {
                            [
                                u32x4_extract_lane::<0>(v),
                                u32x4_extract_lane::<1>(v),
                                u32x4_extract_lane::<2>(v),
                                u32x4_extract_lane::<3>(v),
                            ]
                        })
                        .collect::<Vec<_>>()
                };
                assert_ne!(
                    bits(&tile),
                    bits(&unfused),
                    "k {k}: fused and unfused agree"
                );
            }
            let loaded =
                FusedKerSpec::LoadTile(tile.as_ptr() as *const f32, tile.as_ptr() as *const f32);
            // The longest list `run` rewrites for tract's kernel (`stored`
            // appends two operations), with `at` more operations that change
            // nothing (a zero's sign included) after the product: `LeakyRelu`,
            // which `run` leaves to tract's kernel, or `ScalarMul`, which it
            // applies itself at any length.
            let long = |at: usize, op: FusedKerSpec<f32>| {
                let mut ops = vec![FusedKerSpec::Clear, product];
                ops.resize(MAX_OPS - 2 + at, op);
                ops
            };
            let (relu, one) = (FusedKerSpec::LeakyRelu(1.0), FusedKerSpec::ScalarMul(1.0));
            let (rows, columns) = (bias.as_ptr(), other.as_ptr());
            // Every operation `run` applies itself, each once, in an order
            // where each one's result reaches the store.
            let every = vec![
                FusedKerSpec::Clear,
                product,
                FusedKerSpec::PerRowMul(rows),
                FusedKerSpec::PerRowAdd(columns),
                FusedKerSpec::PerColSub(columns),
                FusedKerSpec::PerColSubF(rows),
                FusedKerSpec::ScalarSub(0.25),
                FusedKerSpec::ScalarSubF(-0.125),
                FusedKerSpec::ScalarMul(1.5),
                FusedKerSpec::ScalarAdd(0.0625),
                FusedKerSpec::PerRowSub(rows),
                FusedKerSpec::PerRowSubF(columns),
                FusedKerSpec::PerColMul(rows),
                FusedKerSpec::PerColAdd(columns),
                FusedKerSpec::ScalarMin(0.75),
                FusedKerSpec::PerRowMin(rows),
                FusedKerSpec::PerColMin(columns),
                FusedKerSpec::ScalarMax(-0.5),
                FusedKerSpec::PerRowMax(columns),
                FusedKerSpec::PerColMax(rows),
            ];
            // A store in the middle of the list, then more operations and
            // the store `stored` appends, over the same tile.
            let mut twice = vec![FusedKerSpec::Clear, product, FusedKerSpec::ScalarMax(0.0)];
            twice.push(FusedKerSpec::Store(OutputStoreKer {
                ptr: scratch.as_mut_ptr() as *mut u8,
                row_byte_stride: 32,
                col_byte_stride: 4,
                item_size: 4,
            }));
            twice.push(FusedKerSpec::PerRowAdd(rows));
            // (the list, whether `run` takes its product over)
            let lists: [(Vec<FusedKerSpec<f32>>, bool); 14] = [
                (vec![FusedKerSpec::Clear, product], true),
                (vec![product], true),
                (
                    vec![FusedKerSpec::Clear, FusedKerSpec::Clear, product],
                    true,
                ),
                (
                    vec![
                        FusedKerSpec::Clear,
                        product,
                        FusedKerSpec::PerRowAdd(rows),
                        FusedKerSpec::ScalarMax(0.0),
                    ],
                    true,
                ),
                (every, true),
                (twice, true),
                // An operation `run` leaves to tract's kernel: the product is
                // handed to it as a tile, and the operations after it too.
                (
                    vec![
                        FusedKerSpec::Clear,
                        product,
                        FusedKerSpec::PerRowAdd(rows),
                        relu,
                    ],
                    true,
                ),
                // A second product onto accumulators that are not zero
                // stays tract's.
                (vec![FusedKerSpec::Clear, product, product], true),
                (
                    vec![FusedKerSpec::Clear, FusedKerSpec::ScalarAdd(1.0), product],
                    false,
                ),
                // What follows the first `Done` is never run.
                (
                    vec![FusedKerSpec::Clear, product, FusedKerSpec::Done, relu],
                    true,
                ),
                (long(0, relu), true),
                (long(1, relu), false),
                (long(0, one), true),
                (long(1, one), true),
            ];
            for (l, (ops, taken)) in lists.iter().enumerate() {
                let mut expected = ops.clone();
                if *taken {
                    let at = ops
                        .iter()
                        .position(|op| matches!(op, FusedKerSpec::AddMatMul { .. }));
                    expected[at.unwrap()] = loaded;
                }
                for strides in STRIDES {
                    // A finite value no store leaves: a list that stores
                    // there must store in both runs.
                    scratch.fill(7.0);
                    let theirs = stored(tract, &expected, strides);
                    let first = scratch.clone();
                    scratch.fill(7.0);
                    let ours = stored(run, ops, strides);
                    // An early `Done` stores nothing.
                    let early = ops
                        .iter()
                        .filter(|op| matches!(op, FusedKerSpec::Done))
                        .count();
                    // (Other strides leave slots between the values.)
                    if !special && early == 0 && strides == STRIDES[0] {
                        assert!(theirs.iter().all(|v| v.is_finite()), "k {k}, list {l}");
                    }
                    let pairs = theirs.iter().zip(&ours).chain(first.iter().zip(&scratch));
                    for (i, (t, o)) in pairs.enumerate() {
                        assert!(
                            same(*t, *o),
                            "k {k}, list {l}, strides {strides:?}, value {i}: \
                             tract {t:e}, ours {o:e}"
                        );
                    }
                }
            }
        }
    }
}
