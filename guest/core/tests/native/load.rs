//! Loading and classification.

use medguard_guest_core::{Classifier, GuestError, InputBatch, ModelSpec};

use crate::bounds::{batch_mean_model, headed};
use crate::onnx::{graph_model, int, node, tensor};
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

#[test]
fn an_images_answer_does_not_depend_on_the_rest_of_its_batch() {
    // A signed model may read across the batch axis. Run as one batch,
    // each image's logits would move with its companions; run one image
    // at a time, the mean of one image is the image and every image gets
    // the head's bias alone.
    let c = Classifier::load(&batch_mean_model(), spec()).unwrap();
    let batch = |pixels: &[f32]| InputBatch {
        shape: vec![pixels.len() as u32, 1, 28, 28],
        data: pixels.iter().flat_map(|&v| [v; 784]).collect(),
    };
    let alone = c.classify(&batch(&[0.2])).unwrap();
    let together = c.classify(&batch(&[0.2, 0.9, 0.0])).unwrap();
    assert_eq!(together.len(), 3);
    for probs in &together {
        assert_eq!(probs, &alone[0]);
    }

    // And the bundled model: the same bits for an image, alone or in
    // any batch.
    let c = Classifier::load(&model_bytes(), spec()).unwrap();
    let images: Vec<f32> = (0..5 * 784)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let all = c
        .classify(&InputBatch {
            shape: vec![5, 1, 28, 28],
            data: images.clone(),
        })
        .unwrap();
    for (image, probs) in images.chunks_exact(784).zip(&all) {
        let alone = c
            .classify(&InputBatch {
                shape: vec![1, 1, 28, 28],
                data: image.to_vec(),
            })
            .unwrap();
        assert_eq!(probs, &alone[0]);
    }
}

#[test]
fn a_batch_axis_that_is_not_one_symbol_is_refused() {
    let mut model = headed(vec![node("Relu", &["image"], "out", vec![])], vec![], 1);
    // The graph declares its batch as the dim_param "batch"; make it an
    // expression tract parses as one.
    let at = model
        .windows(5)
        .position(|w| w == b"batch")
        .expect("the graph names its batch");
    model.splice(at..at + 5, b"2*bat".iter().copied());
    let err = Classifier::load(&model, spec()).err().expect("refused");
    assert!(
        matches!(&err, GuestError::InvalidModel(m) if m.contains("one symbol")),
        "{err:?}"
    );
}

#[test]
fn a_model_whose_output_at_a_batch_of_one_is_not_one_row_is_refused() {
    // logits [batch + 1, 2]: a constant row appended. It type-checks with
    // a symbolic batch (rank 2, two classes), and run image by image it
    // would hand two rows to each image; at a batch of one it is [2, 2].
    let model = graph_model(
        vec![
            node("GlobalAveragePool", &["image"], "pooled", vec![]),
            node("Flatten", &["pooled"], "flat", vec![int("axis", 1)]),
            node("Gemm", &["flat", "head", "head_bias"], "z", vec![]),
            node("Concat", &["z", "extra"], "logits", vec![int("axis", 0)]),
        ],
        vec![
            tensor("head", &[1, 2], vec![1.0, -1.0]),
            tensor("head_bias", &[2], vec![0.25, -0.5]),
            tensor("extra", &[1, 2], vec![9.0, -9.0]),
        ],
    );
    let err = Classifier::load(&model, spec()).err().expect("refused");
    assert!(
        matches!(&err, GuestError::InvalidModel(m) if m.contains("batch of one")),
        "{err:?}"
    );
}
