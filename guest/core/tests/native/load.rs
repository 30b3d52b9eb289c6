//! Loading and classification.

use medguard_guest_core::{Classifier, GuestError, InputBatch, ModelSpec};

use crate::{model_bytes, spec};

#[test]
fn classifies_batches_of_any_size_up_to_the_cap() {
    let c = Classifier::load(&model_bytes(), spec()).unwrap();
    for n in [1usize, 3, 64] {
        let batch = InputBatch {
            shape: vec![n as u32, 1, 28, 28],
            data: vec![0.25; n * 784],
        };
        let probs = c.classify(&batch).unwrap();
        assert_eq!(probs.len(), n);
        for p in probs {
            assert!(
                (p.iter().sum::<f32>() - 1.0).abs() < 1e-5
                    && p.iter().all(|v| (0.0..=1.0).contains(v))
            );
        }
    }
}

#[test]
fn refuses_a_spec_the_model_does_not_fit() {
    let wrong_classes = ModelSpec {
        classes: 3,
        ..spec()
    };
    assert!(matches!(
        Classifier::load(&model_bytes(), wrong_classes),
        Err(GuestError::InvalidModel(_))
    ));
    let wrong_size = ModelSpec {
        height: 32,
        width: 32,
        ..spec()
    };
    // Global pooling would run 32x32 images, but the model declares 28x28:
    // it is not the model the manifest describes.
    assert!(
        matches!(Classifier::load(&model_bytes(), wrong_size), Err(GuestError::InvalidModel(m)) if m.contains("28"))
    );
    let wrong_channels = ModelSpec {
        channels: 3,
        ..spec()
    };
    assert!(matches!(
        Classifier::load(&model_bytes(), wrong_channels),
        Err(GuestError::InvalidModel(_))
    ));
}

#[test]
fn refuses_bytes_that_are_not_onnx() {
    for bytes in [&b""[..], b"not a model", &[0xff; 4096]] {
        assert!(matches!(
            Classifier::load(bytes, spec()),
            Err(GuestError::InvalidModel(_))
        ));
    }
    let mut truncated = model_bytes();
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        Classifier::load(&truncated, spec()),
        Err(GuestError::InvalidModel(_))
    ));
}

/// The `guest_onnx` fuzz target's committed seeds, natively: each loads (and
/// then classifies) or is refused with an error, never a panic. The CI smoke
/// run of the fuzzers leaves the guest targets out (their sanitizer build
/// takes half an hour), so this is how CI replays them.
#[test]
fn the_guest_onnx_fuzz_seeds_load_or_are_refused() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/guest_onnx");
    let mut loaded = 0;
    let mut seeds = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        seeds += 1;
        if let Ok(c) = Classifier::load(&bytes, crate::fuzz_spec()) {
            loaded += 1;
            let batch = InputBatch {
                shape: vec![1, 1, 4, 4],
                data: vec![0.5; 16],
            };
            // An error is an answer too; only a panic fails (as in the target).
            let _ = c.classify(&batch);
        }
    }
    // Seeds that load and seeds the lint refuses (fuzz/examples/seeds.rs).
    assert!(seeds >= 6 && loaded >= 4, "{loaded} of {seeds} loaded");
}
