//! The f32 matrix-product kernel the guest registers with tract for wasm:
//! tract's own 8x8 kernel, with the inner product of each tile computed by
//! a loop shaped for the sandbox's compiler.
//!
//! Why: wasmtime checks the epoch deadline at every loop head, and the
//! check's slow path is a call after which no vector register survives.
//! Cranelift therefore keeps every vector a loop carries in a stack slot
//! and reloads and stores it at every iteration: in tract's 8x8 kernel,
//! its 16 accumulators at every k step (README, Measurements). Here the
//! tile is computed in two halves of four rows (8 accumulators, which fit
//! x86's 16 vector registers beside their operands), and the k loop does
//! four steps per iteration with an exit test after each step. The tests
//! are what makes the unrolling pay: each exit hands the accumulators to
//! the code after the loop, so Cranelift computes every step's multiply-
//! adds before the next step's loads instead of sinking them all to the
//! loop's end (where the operands of four steps would be live at once).
//! The accumulators then go through memory once per four steps.
//!
//! The product goes into an 8x8 tile, which tract's kernel adds to its
//! freshly cleared accumulators (`AddUnicast`) in place of the `AddMatMul`
//! it was given; every other fused operation stays tract's. Each value is
//! the same chain of fused multiply-adds from zero in the same k order as
//! in tract's kernel, and zero plus a value is that value, so the results
//! are the same bits.
#![allow(unsafe_code)] // SIMD intrinsics over tract's packed panels, as its own kernels.

use std::arch::wasm32::*;
use std::sync::LazyLock;

use tract_linalg::isa::{Arch, IsaSet};
use tract_linalg::mmm::{DynKernel, FusedKerSpec, OutputStoreKer, Query, Suitable};
use tract_linalg::mmm_routines::MmmRoutine;
use tract_linalg::mmm_tiers::MmmTier;
use tract_onnx::prelude::DatumType;

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

/// wasm-ld drops an object nothing references, registry entries included:
/// parsing a model calls this so that the entries above stay in.
pub(super) fn keep_linked() {
    std::hint::black_box(run as *const ());
}

/// The most operations one call carries that this kernel rewrites; a
/// longer list goes to tract's kernel unchanged.
const MAX_OPS: usize = 32;

/// The kernel: the first `AddMatMul` of `ops`, if only `Clear`s come before
/// it, computed here and replaced by the addition of its tile; then tract's
/// 8x8 kernel on the result. Anything else is tract's kernel alone: a
/// product onto accumulators that are not zero would round differently.
unsafe fn run(ops: &[FusedKerSpec<f32>]) -> isize {
    let tract = tract_linalg::wasm::wasm_f32_8x8.kernel;
    let first = ops.iter().position(|op| !matches!(op, FusedKerSpec::Clear));
    let Some(at) = first.filter(|_| ops.len() <= MAX_OPS) else {
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
    let mut tile = [f32x4_splat(0.0); 16];
    // SAFETY: tract packs `k` steps of 8 values of A and of B for this
    // kernel's format (the one of its 8x8 kernel), each 16-byte aligned.
    unsafe { product(k, pa as *const v128, pb as *const v128, &mut tile) };
    let mut rewritten = [FusedKerSpec::Done; MAX_OPS];
    rewritten[..ops.len()].copy_from_slice(ops);
    rewritten[at] = FusedKerSpec::AddUnicast(OutputStoreKer {
        ptr: tile.as_mut_ptr() as *mut u8,
        row_byte_stride: 32,
        col_byte_stride: 4,
        item_size: 4,
    });
    unsafe { tract(&rewritten[..ops.len()]) }
}

#[cfg(target_feature = "relaxed-simd")]
#[inline(always)]
fn madd(acc: v128, a: v128, b: v128) -> v128 {
    f32x4_relaxed_madd(a, b, acc)
}

#[cfg(not(target_feature = "relaxed-simd"))]
#[inline(always)]
fn madd(acc: v128, a: v128, b: v128) -> v128 {
    f32x4_add(acc, f32x4_mul(a, b))
}

/// One k step of four rows: `c[2r]`, `c[2r + 1]` += A's row `r` of this
/// half times B's 8 columns.
///
/// # Safety
/// `a` and `b` point at step `i`'s values of A's half and of B.
#[inline(always)]
unsafe fn step(c: &mut [v128; 8], a: *const v128, b: *const v128) {
    let (a, lo, hi) = unsafe { (v128_load(a), v128_load(b), v128_load(b.add(1))) };
    let s = i32x4_shuffle::<0, 0, 0, 0>(a, a);
    c[0] = madd(c[0], s, lo);
    c[1] = madd(c[1], s, hi);
    let s = i32x4_shuffle::<1, 1, 1, 1>(a, a);
    c[2] = madd(c[2], s, lo);
    c[3] = madd(c[3], s, hi);
    let s = i32x4_shuffle::<2, 2, 2, 2>(a, a);
    c[4] = madd(c[4], s, lo);
    c[5] = madd(c[5], s, hi);
    let s = i32x4_shuffle::<3, 3, 3, 3>(a, a);
    c[6] = madd(c[6], s, lo);
    c[7] = madd(c[7], s, hi);
}

/// `tile` (8 rows of two vectors) = A B over `k`, A and B packed as tract's
/// 8x8 kernel packs them: per k step, A's 8 rows, then B's 8 columns.
///
/// # Safety
/// `pa` and `pb` hold `2 * k` vectors each.
unsafe fn product(k: usize, pa: *const v128, pb: *const v128, tile: &mut [v128; 16]) {
    for half in 0..2 {
        let mut c = [f32x4_splat(0.0); 8];
        let mut i = 0;
        // Four steps per iteration, each followed by its exit test (see the
        // module's documentation for why the tests stay).
        'steps: while i < k {
            for _ in 0..4 {
                unsafe { step(&mut c, pa.add(2 * i + half), pb.add(2 * i)) };
                i += 1;
                if i == k {
                    break 'steps;
                }
            }
        }
        tile[8 * half..8 * half + 8].copy_from_slice(&c);
    }
}
