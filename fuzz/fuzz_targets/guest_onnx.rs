//! `Classifier::load` on ONNX bytes: the protobuf parse, the lint
//! (external data, custom operator domains, local functions; recursing into
//! subgraphs), tract's model building, type check against a fixed small
//! spec and optimisation; then, for a model that loaded, one classification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_fuzz::onnx_spec;
use medguard_guest_core::{Classifier, InputBatch};

fuzz_target!(|data: &[u8]| {
    let spec = onnx_spec();
    let Ok(classifier) = Classifier::load(data, spec.clone()) else {
        return;
    };
    let batch = InputBatch {
        shape: vec![1, spec.channels, spec.height, spec.width],
        data: vec![0.5; spec.image_elements() as usize],
    };
    let _ = classifier.classify(&batch);
});
