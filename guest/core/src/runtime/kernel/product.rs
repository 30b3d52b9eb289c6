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

/// One k step of four rows, on rotated diagonals: `c[2j]`, `c[2j + 1]`
/// += A's four values of this half rotated by `j` lanes, times B's columns
/// 0 to 3 and 4 to 7, lane by lane. Lane `l` of `c[2j]` so holds row
/// `(l + j) % 4`, column `l` (of `c[2j + 1]`: column `4 + l`); `unrotate`
/// puts them back in rows.
///
/// Why rotations: broadcasting each of A's four values takes four shuffles
/// a half step, rotating takes three (the unrotated vector is A's load
/// itself). Shuffles take vector execution slots the multiply-adds need
/// (on AMD Zen 3, this machine, they share a port), and with a quarter of
/// them gone the product ran 6 to 10% faster in the kernel microbenchmark
/// (README, Measurements). Each lane is the same chain of
/// fused multiply-adds from zero in k order as before: the bits are too.
///
/// # Safety
/// `a` and `b` point at step `i`'s values of A's half and of B.
#[target_feature(enable = "relaxed-simd")]
#[inline]
unsafe fn step(c: &mut [v128; 8], a: *const v128, b: *const v128) {
    let (a, lo, hi) = unsafe { (v128_load(a), v128_load(b), v128_load(b.add(1))) };
    c[0] = madd(c[0], a, lo);
    c[1] = madd(c[1], a, hi);
    let s = i32x4_shuffle::<1, 2, 3, 0>(a, a);
    c[2] = madd(c[2], s, lo);
    c[3] = madd(c[3], s, hi);
    let s = i32x4_shuffle::<2, 3, 0, 1>(a, a);
    c[4] = madd(c[4], s, lo);
    c[5] = madd(c[5], s, hi);
    let s = i32x4_shuffle::<3, 0, 1, 2>(a, a);
    c[6] = madd(c[6], s, lo);
    c[7] = madd(c[7], s, hi);
}

/// Rows of a 4x4 block from its rotated diagonals: `d[j]`'s lane `l` is
/// row `(l + j) % 4`, column `l`, so row `r`'s lane `l` is `d[(r - l) % 4]`'s.
/// Twelve two-vector shuffles (blends, to Cranelift) a block, once a tile.
#[inline]
fn unrotate(d: [v128; 4]) -> [v128; 4] {
    let row = |r: usize| {
        let p = i32x4_shuffle::<0, 5, 2, 7>(d[r], d[(r + 3) % 4]);
        let q = i32x4_shuffle::<0, 5, 2, 7>(d[(r + 2) % 4], d[(r + 1) % 4]);
        i32x4_shuffle::<0, 1, 6, 7>(p, q)
    };
    [row(0), row(1), row(2), row(3)]
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
    for (h, c) in c.iter().enumerate() {
        let lo = unrotate([c[0], c[2], c[4], c[6]]);
        let hi = unrotate([c[1], c[3], c[5], c[7]]);
        for r in 0..4 {
            tile[8 * h + 2 * r] = lo[r];
            tile[8 * h + 2 * r + 1] = hi[r];
        }
    }
}
