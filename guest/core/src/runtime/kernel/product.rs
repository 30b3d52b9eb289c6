//! The product of one tile, with no tract in it: the matrix-product
//! kernel (`super`) calls it, and the kernel microbenchmark
//! (`tests/kernel-probe`, `scripts/kernel-probe.sh`) compiles this file
//! into its own wasm module to time it against tract's loop under the
//! sandbox's engine settings.

use std::arch::wasm32::*;

// Relaxed SIMD is enabled on these functions alone, not for the whole
// guest (.cargo/config.toml says why): fused multiply-add, which wasmtime
// runs in its deterministic mode.

#[target_feature(enable = "relaxed-simd")]
#[inline]
fn madd(acc: v128, a: v128, b: v128) -> v128 {
    f32x4_relaxed_madd(a, b, acc)
}

/// One k step of four rows: `c[2r]`, `c[2r + 1]` += A's row `r` of this
/// half times B's 8 columns.
///
/// # Safety
/// `a` and `b` point at step `i`'s values of A's half and of B.
#[target_feature(enable = "relaxed-simd")]
#[inline]
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

/// Steps per half per iteration of `product`'s loop: three beat two,
/// four and six in the kernel microbenchmark (README, Measurements).
const STEPS: usize = 3;

/// Up to `STEPS` steps of half `half` (0 or 1) from step `i`, each
/// followed by its exit test; returns the step after the last one done.
///
/// # Safety
/// As `product`'s, with `i < k` and `half` 0 or 1.
#[target_feature(enable = "relaxed-simd")]
#[inline]
unsafe fn steps(
    c: &mut [v128; 8],
    half: usize,
    mut i: usize,
    k: usize,
    pa: *const v128,
    pb: *const v128,
) -> usize {
    // Free: `half` is a constant wherever this is inlined.
    assert!(half < 2);
    for _ in 0..STEPS {
        unsafe { step(c, pa.add(2 * i + half), pb.add(2 * i)) };
        i += 1;
        if i == k {
            break;
        }
    }
    i
}

/// `tile` (8 rows of two vectors) = A B over `k`, A and B packed as tract's
/// 8x8 kernel packs them: per k step, A's 8 rows, then B's 8 columns.
///
/// Each iteration takes `STEPS` steps of the first half (rows 0 to 3),
/// then the same steps of the second. The halves' accumulators go through
/// memory at the loop head (the kernel module's documentation says why),
/// and each accumulator's chain of multiply-adds waits for its own store and
/// reload there; with both halves in one iteration the processor works on
/// one half's chains while the other's wait, instead of idling on them.
///
/// # Safety
/// `pa` and `pb` hold `2 * k` vectors each.
#[target_feature(enable = "relaxed-simd")]
pub(crate) unsafe fn product(k: usize, pa: *const v128, pb: *const v128, tile: &mut [v128; 16]) {
    let mut c = [[f32x4_splat(0.0); 8]; 2];
    let mut i = 0;
    while i < k {
        // The second half repeats the steps the first did: both stop at k.
        unsafe {
            steps(&mut c[0], 0, i, k, pa, pb);
            i = steps(&mut c[1], 1, i, k, pa, pb);
        }
    }
    tile[..8].copy_from_slice(&c[0]);
    tile[8..].copy_from_slice(&c[1]);
}
