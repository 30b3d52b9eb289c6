//! The guest in wasmtime must compute what native tract and PyTorch compute.

use medguard_guest_core::{Classifier, InputBatch};
use medguard_tests::{bundled_model, golden, load_input, model_dir, native_spec, shared_program};
use rand::{Rng, SeedableRng};

/// The guest core tests' ONNX builders (one place builds test models).
#[allow(dead_code)] // Not every builder is used here.
#[path = "../../guest/core/tests/native/onnx.rs"]
mod onnx;

fn native(model: &medguard_attest::AttestedModel) -> Classifier {
    Classifier::load(model.model_bytes(), native_spec(model)).expect("native tract loads the model")
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn guest_matches_native_tract_and_pytorch_golden() {
    let model = bundled_model();
    let labels = &model.manifest().output.labels;
    let native = native(&model);
    let mut session = shared_program().session(&model).expect("session");
    let golden = golden();
    assert!(golden.samples.len() >= 4, "golden file has too few samples");
    for sample in &golden.samples {
        let batch = load_input(&model, &model_dir().join(&sample.file));
        let guest = session
            .classify(&batch.shape, &batch.data)
            .expect("guest classifies");
        let tract = native
            .classify(&InputBatch {
                shape: batch.shape.to_vec(),
                data: batch.data.clone(),
            })
            .expect("native classifies");
        let d = max_abs_diff(&guest, &tract);
        assert!(
            d <= 1e-5,
            "{}: guest vs native tract differ by {d}",
            sample.file
        );
        for (label, p) in labels.iter().zip(&guest[0]) {
            let want = sample.probabilities[label];
            let d = (*p as f64 - want).abs();
            assert!(
                d <= 1e-4,
                "{}: P({label}) guest {p} vs PyTorch {want} (diff {d})",
                sample.file
            );
        }
    }
}

#[test]
fn guest_matches_native_tract_on_a_random_batch() {
    let model = bundled_model();
    let native = native(&model);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261128);
    let n = 32usize;
    let data: Vec<f32> = (0..n * 28 * 28)
        .map(|_| (rng.random_range(0..=255u8) as f32) / 255.0)
        .collect();
    let shape = [n as u32, 1, 28, 28];
    let guest = shared_program()
        .session(&model)
        .unwrap()
        .classify(&shape, &data)
        .unwrap();
    let tract = native
        .classify(&InputBatch {
            shape: shape.to_vec(),
            data,
        })
        .unwrap();
    let d = max_abs_diff(&guest, &tract);
    assert!(d <= 1e-5, "batched guest vs native tract differ by {d}");
}

#[test]
fn guest_is_deterministic_across_sessions() {
    let model = bundled_model();
    let golden = golden();
    let batch = load_input(&model, &model_dir().join(&golden.samples[0].file));
    let a = shared_program()
        .session(&model)
        .unwrap()
        .classify(&batch.shape, &batch.data)
        .unwrap();
    let b = shared_program()
        .session(&model)
        .unwrap()
        .classify(&batch.shape, &batch.data)
        .unwrap();
    assert_eq!(a, b, "two fresh sandboxes gave different bits");
}

#[test]
fn screening_in_the_sandbox_matches_screening_natively() {
    let model = bundled_model();
    let native = native(&model);
    let profile = model
        .manifest()
        .screening
        .as_ref()
        .expect("the bundled model is calibrated")
        .profile
        .clone();
    let detector = medguard_guest_core::Detector::Calibrated(profile);
    let mut session = shared_program().session(&model).expect("session");
    for sample in &golden().samples {
        let batch = load_input(&model, &model_dir().join(&sample.file));
        let guest = session
            .screen(
                &batch.shape,
                &batch.data,
                medguard::sandbox::ScreenOptions {
                    seed: 3,
                    source_bits: batch.source_bits,
                    withhold_rejected: true,
                },
            )
            .expect("guest screens");
        let tract = native
            .screen(
                &InputBatch {
                    shape: batch.shape.to_vec(),
                    data: batch.data.clone(),
                },
                &detector,
                medguard_guest_core::ScreenOptions {
                    seed: 3,
                    source_bits: batch.source_bits,
                    withhold_rejected: true,
                },
            )
            .expect("native screens");
        let (g, t) = (&guest[0], &tract[0]);
        for (a, b) in g.statistics.iter().zip(&t.statistics) {
            assert!(
                (a - b).abs() <= 1e-4,
                "{}: statistic {a} vs {b}",
                sample.file
            );
        }
        let (gs, ts) = (g.screening.as_ref().unwrap(), t.screening.as_ref().unwrap());
        assert_eq!(gs.verdict, ts.verdict, "{}", sample.file);
        assert!((gs.p_value - ts.p_value).abs() <= 1e-3, "{}", sample.file);
    }
}

/// A chain of convolutions whose matrix products take every path of the
/// guest's own wasm kernel (guest/core/src/runtime/kernel.rs): depths `k`
/// below its three-step unrolling (1), at it (3), past it with each
/// remainder (10 and 16 leave 1, 11 leaves 2) and at multiples of it (6,
/// 9); output channels that fill no tile,
/// part of one or more than one (2 to 11 of 8 rows); images whose positions
/// end inside a tile (28 x 27, 27 x 26); and a bias and a ReLU, which tract
/// fuses into the kernel after the product.
fn awkward_convolutions() -> Vec<u8> {
    use onnx::{graph_model, ints, node, tensor};
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261205);
    // (output channels, kernel height, kernel width, ReLU after).
    let layers = [
        (3, 1, 1, true),
        (5, 1, 1, false),
        (6, 1, 2, true),
        (9, 1, 1, false),
        (4, 1, 1, true),
        (11, 2, 2, false),
        (2, 1, 1, false),
    ];
    let (mut nodes, mut initializer) = (Vec::new(), Vec::new());
    let (mut input, mut channels) = ("image".to_string(), 1i64);
    for (i, &(out, kh, kw, relu)) in layers.iter().enumerate() {
        let mut random = |name: String, dims: Vec<i64>| {
            let n = dims.iter().product::<i64>() as usize;
            let values = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
            initializer.push(tensor(&name, &dims, values));
            name
        };
        let (w, b) = (
            random(format!("w{i}"), vec![out, channels, kh, kw]),
            random(format!("b{i}"), vec![out]),
        );
        let conv = format!("conv{i}");
        nodes.push(node(
            "Conv",
            &[&input, &w, &b],
            &conv,
            vec![ints("kernel_shape", &[kh, kw])],
        ));
        input = conv;
        if relu {
            let out = format!("relu{i}");
            nodes.push(node("Relu", &[&input], &out, vec![]));
            input = out;
        }
        channels = out;
    }
    for (op, output) in [("GlobalAveragePool", "pooled"), ("Flatten", "logits")] {
        nodes.push(node(op, &[&input], output, vec![]));
        input = output.into();
    }
    graph_model(nodes, initializer)
}

/// The bundled model's manifest, describing `bytes` instead.
fn vouched(bytes: Vec<u8>) -> medguard_attest::AttestedModel {
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("manifest.json")).unwrap()).unwrap();
    manifest["model"]["sha256"] = medguard_attest::Sha256Digest::of(&bytes).to_string().into();
    manifest["model"]["size"] = bytes.len().into();
    let manifest =
        medguard_attest::Manifest::parse(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    medguard_attest::vouch_unsigned(manifest, bytes).expect("the manifest describes the model")
}

/// `model` in the sandbox and natively on `data` (28 x 28 images, one
/// channel): every probability finite and within 1e-5 of native tract's.
fn assert_guest_matches_native_tract(model: &medguard_attest::AttestedModel, data: Vec<f32>) {
    let n = data.len() / (28 * 28);
    let shape = [n as u32, 1, 28, 28];
    let tract = native(model)
        .classify(&InputBatch {
            shape: shape.to_vec(),
            data: data.clone(),
        })
        .expect("native tract classifies");
    let guest = shared_program()
        .session(model)
        .expect("the sandbox loads the model")
        .classify(&shape, &data)
        .expect("the guest classifies");
    assert_eq!((guest.len(), tract.len()), (n, n));
    for (g, t) in guest.iter().flatten().zip(tract.iter().flatten()) {
        assert!(
            g.is_finite() && (g - t).abs() <= 1e-5 * (1.0 + t.abs()),
            "guest {g} vs native tract {t}: {guest:?} vs {tract:?}"
        );
    }
}

#[test]
fn the_guests_matrix_product_kernel_matches_native_tract_on_awkward_shapes() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let data = (0..3 * 28 * 28)
        .map(|_| rng.random_range(0.0..=1.0))
        .collect();
    assert_guest_matches_native_tract(&vouched(awkward_convolutions()), data);
}

/// Max poolings of 2x2 windows that the guest runs itself
/// (guest/core/src/runtime/pool.rs), four windows at a time where stride 2
/// allows and one at a time elsewhere: stride 2 with and without padding,
/// stride 3 in one axis, and `ceil_mode`. Pixels of exactly 0.5 become NaN
/// before the pooling, which passes over them (a window of NaNs alone gives
/// `f32::MIN`). Every pooled value reaches the logits through random
/// weights.
fn pooled_windows() -> Vec<u8> {
    use onnx::{graph_model, int, ints, node, tensor};
    let mut nodes = vec![
        node("Sub", &["image", "half"], "centred", vec![]),
        node("Div", &["centred", "centred"], "ones", vec![]),
        node("Mul", &["centred", "ones"], "holed", vec![]),
    ];
    // (strides, pads, ceil_mode, values per image out).
    let pools: [([i64; 2], [i64; 4], i64, usize); 4] = [
        ([2, 2], [0, 0, 0, 0], 0, 14 * 14),
        ([2, 2], [1, 1, 1, 1], 0, 15 * 15),
        ([2, 3], [0, 1, 0, 0], 0, 14 * 10),
        ([3, 2], [0, 0, 0, 0], 1, 10 * 14),
    ];
    let mut flat = Vec::new();
    for (i, (strides, pads, ceil, _)) in pools.iter().enumerate() {
        let (pooled, out) = (format!("pooled{i}"), format!("flat{i}"));
        let attributes = vec![
            ints("kernel_shape", &[2, 2]),
            ints("strides", strides),
            ints("pads", pads),
            int("ceil_mode", *ceil),
        ];
        nodes.push(node("MaxPool", &["holed"], &pooled, attributes));
        nodes.push(node("Flatten", &[&pooled], &out, vec![]));
        flat.push(out);
    }
    let flat: Vec<&str> = flat.iter().map(String::as_str).collect();
    nodes.push(node("Concat", &flat, "all", vec![int("axis", 1)]));
    // A window whose taps are all NaN pools to f32::MIN, whose products
    // would overflow the logits: floored at -10 first.
    nodes.push(node("Max", &["all", "floor"], "floored", vec![]));
    nodes.push(node("MatMul", &["floored", "weights"], "logits", vec![]));
    let width: usize = pools.iter().map(|p| p.3).sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261205);
    let weights = (0..width * 2)
        .map(|_| rng.random_range(-0.5f32..0.5))
        .collect();
    graph_model(
        nodes,
        vec![
            tensor("half", &[], vec![0.5]),
            tensor("floor", &[], vec![-10.0]),
            tensor("weights", &[width as i64, 2], weights),
        ],
    )
}

#[test]
fn the_guests_max_pooling_matches_native_tract() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let data = (0..3 * 28 * 28)
        .map(|_| {
            if rng.random_range(0..10) == 0 {
                0.5
            } else {
                rng.random_range(0.0..=1.0)
            }
        })
        .collect();
    assert_guest_matches_native_tract(&vouched(pooled_windows()), data);
}

/// The matrix products run in the guest's own kernel
/// (guest/core/src/runtime/kernel.rs), seen in the guest's sampled call
/// stacks. Were its registration lost (dropped by the linker, or outranked
/// by a tier of a newer tract), tract would quietly run its own kernel: the
/// same answers at half the speed, which no parity test can tell.
#[test]
fn the_guests_own_kernel_does_the_matrix_products() {
    let model = bundled_model();
    let batch = load_input(&model, &model_dir().join(&golden().samples[0].file));
    let samples = shared_program()
        .session(&model)
        .expect("session")
        .profile_classify(&batch.shape, &batch.data, 100)
        .expect("the guest profiles");
    let in_kernel = samples
        .iter()
        .filter(|stack| {
            stack.iter().any(|f| {
                format!("{:#}", rustc_demangle::demangle(f))
                    .starts_with("medguard_guest_core::runtime::kernel::product::")
            })
        })
        .count();
    assert!(samples.len() >= 20, "only {} samples", samples.len());
    // The tile product itself, not only the dispatch into it: `run` is on
    // the stack also when it hands the whole op list to tract. It has about
    // 70% of the samples (README, Measurements).
    assert!(
        5 * in_kernel >= 2 * samples.len(),
        "{in_kernel} of {} samples in the guest's tile product",
        samples.len()
    );
}

/// Relaxed SIMD appears in the guest only where its source asks for it:
/// the matrix-product kernel's fused multiply-add. With relaxed SIMD on
/// for the whole build, LLVM compiled tract's NaN-dropping `f32x4.pmax`
/// reductions to `f32x4.relaxed_max`, which under wasmtime's deterministic
/// relaxed SIMD passes NaNs on with a sign that differs between CPUs
/// (.cargo/config.toml).
#[test]
fn the_guest_has_no_relaxed_simd_but_its_kernels_fused_multiply_add() {
    let guest = medguard::guest::bundled().expect("the bundled guest");
    let found = medguard_tests::relaxed_simd(guest.bytes());
    assert!(
        found.others.is_empty(),
        "relaxed SIMD in the guest: {:?}",
        found.others
    );
    // The tile product: three steps of eight for each of two halves,
    // inlined into one function.
    assert_eq!(
        found.madds_per_function,
        [48],
        "fused multiply-adds per function"
    );
}
