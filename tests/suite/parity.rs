//! The guest in wasmtime must compute what native tract and PyTorch compute.

use medguard_guest_core::{Classifier, InputBatch};
use medguard_tests::{bundled_model, golden, load_input, model_dir, native_spec, shared_program};
use rand::{Rng, SeedableRng};

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
