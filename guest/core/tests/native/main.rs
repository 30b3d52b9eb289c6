//! The guest core natively, on the bundled demo model: loading and
//! classification (`load`), screening (`screen`).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod bounds;
mod lint;
mod load;
mod onnx;
mod screen;

use medguard_guest_core::{Classifier, ModelSpec};

fn model_bytes() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/pneumonia/model.onnx"
    );
    std::fs::read(path).expect("bundled model")
}

fn spec() -> ModelSpec {
    ModelSpec {
        input_name: "image".into(),
        output_name: "logits".into(),
        channels: 1,
        height: 28,
        width: 28,
        min_value: 0.0,
        max_value: 1.0,
        classes: 2,
        max_batch: 64,
    }
}

/// The spec the `guest_onnx` fuzz target loads every model with (1x4x4
/// images, two classes), for its reproducers.
fn fuzz_spec() -> ModelSpec {
    ModelSpec {
        height: 4,
        width: 4,
        max_batch: 4,
        ..spec()
    }
}

fn classifier() -> Classifier {
    Classifier::load(&model_bytes(), spec()).unwrap()
}
