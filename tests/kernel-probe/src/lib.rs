//! The kernel microbenchmark's wasm module (`scripts/kernel-probe.sh`):
//! the guest's product of one 8x8 tile, compiled from the guest's own
//! source file, and tract 0.23.9's wasm 8x8 loop, over the same packed
//! panels in this module's memory. The host side is
//! `host/examples/kernel_probe.rs`.

use std::arch::wasm32::*;

#[path = "../../../guest/core/src/runtime/kernel/product.rs"]
mod product;

/// The deepest product `run` takes, in k steps.
const MAX_K: usize = 4096;

/// A's and B's panels: per k step, 8 values of each.
static mut A: [f32; 8 * MAX_K] = [0.0; 8 * MAX_K];
static mut B: [f32; 8 * MAX_K] = [0.0; 8 * MAX_K];

/// Fills the panels with values in [-0.5, 0.5).
#[unsafe(no_mangle)]
pub extern "C" fn init() {
    for i in 0..8 * MAX_K {
        // SAFETY: one thread; nothing holds a reference into the panels.
        unsafe {
            A[i] = ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
            B[i] = ((i * 104_729) % 997) as f32 / 997.0 - 0.5;
        }
    }
}

/// tract-linalg 0.23.9's `kernel_f32_8x8` `AddMatMul` loop (src/wasm/mmm_f32_gemm.rs),
/// fused as tract builds it with relaxed SIMD (the guest's build has it on
/// its own kernel's functions alone, so tract's loop in the guest is not).
#[inline(never)]
#[target_feature(enable = "relaxed-simd")]
unsafe fn tract_8x8(k: usize, a: *const v128, b: *const v128, tile: &mut [v128; 16]) {
    let mut c = [f32x4_splat(0.0); 16];
    for i in 0..k {
        // SAFETY: `run` keeps `k` within the panels.
        let (alo, ahi, blo, bhi) = unsafe {
            (
                v128_load(a.add(2 * i)),
                v128_load(a.add(2 * i + 1)),
                v128_load(b.add(2 * i)),
                v128_load(b.add(2 * i + 1)),
            )
        };
        let s = [
            i32x4_shuffle::<0, 0, 0, 0>(alo, alo),
            i32x4_shuffle::<1, 1, 1, 1>(alo, alo),
            i32x4_shuffle::<2, 2, 2, 2>(alo, alo),
            i32x4_shuffle::<3, 3, 3, 3>(alo, alo),
            i32x4_shuffle::<0, 0, 0, 0>(ahi, ahi),
            i32x4_shuffle::<1, 1, 1, 1>(ahi, ahi),
            i32x4_shuffle::<2, 2, 2, 2>(ahi, ahi),
            i32x4_shuffle::<3, 3, 3, 3>(ahi, ahi),
        ];
        for (r, s) in s.into_iter().enumerate() {
            c[2 * r] = f32x4_relaxed_madd(s, blo, c[2 * r]);
            c[2 * r + 1] = f32x4_relaxed_madd(s, bhi, c[2 * r + 1]);
        }
    }
    *tile = c;
}

/// `reps` products of depth `k` (at most `MAX_K`) with kernel `variant`
/// (0: tract's loop, 1: the guest's product); returns a hash of the bits of
/// every lane of every tile, which the two kernels must agree on.
#[unsafe(no_mangle)]
pub extern "C" fn run(variant: u32, k: u32, reps: u32) -> u64 {
    let k = (k as usize).min(MAX_K);
    let (a, b) = (&raw const A as *const v128, &raw const B as *const v128);
    // FNV-1a over 32-bit words: each step is a bijection of the state, so
    // one lane that differs changes the hash.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..reps {
        let mut tile = [f32x4_splat(0.0); 16];
        // SAFETY: both panels hold `2 * MAX_K` vectors.
        unsafe {
            match variant {
                0 => tract_8x8(k, a, b, &mut tile),
                _ => product::product(k, a, b, &mut tile),
            }
        }
        for v in tile {
            for lane in [
                u32x4_extract_lane::<0>(v),
                u32x4_extract_lane::<1>(v),
                u32x4_extract_lane::<2>(v),
                u32x4_extract_lane::<3>(v),
            ] {
                hash = (hash ^ u64::from(lane)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    hash
}
