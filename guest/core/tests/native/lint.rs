//! ONNX lint before load: external data and non-standard operator domains.

use medguard_guest_core::{Classifier, GuestError};
use prost::Message;
use tract_onnx::pb::{ModelProto, OperatorSetIdProto, StringStringEntryProto};
use tract_onnx::prelude::Framework;

use crate::{model_bytes, spec};

fn proto() -> ModelProto {
    tract_onnx::onnx()
        .proto_model_for_read(&mut model_bytes().as_slice())
        .unwrap()
}

fn refused(model: ModelProto) -> String {
    match Classifier::load(&model.encode_to_vec(), spec()) {
        Err(GuestError::InvalidModel(why)) => why,
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a model that fails the lint was loaded"),
    }
}

#[test]
fn the_bundled_model_passes_the_lint_after_a_round_trip() {
    // Re-encoding must not change what loads: the lint reads the same proto.
    Classifier::load(&proto().encode_to_vec(), spec()).unwrap();
}

#[test]
fn external_data_is_refused_with_the_tensor_named() {
    let mut model = proto();
    let graph = model.graph.as_mut().unwrap();
    let tensor = &mut graph.initializer[0];
    let name = tensor.name.clone();
    tensor.data_location = Some(1);
    tensor.external_data = vec![StringStringEntryProto {
        key: "location".into(),
        value: "weights.bin".into(),
    }];
    let why = refused(model);
    assert!(
        why.contains("external data") && why.contains(&name),
        "{why}"
    );
}

#[test]
fn custom_operator_domains_are_refused() {
    let mut model = proto();
    model.opset_import.push(OperatorSetIdProto {
        domain: "com.example.custom".into(),
        version: 1,
    });
    assert!(refused(model).contains("com.example.custom"));
    let mut model = proto();
    let node = &mut model.graph.as_mut().unwrap().node[0];
    node.domain = "com.microsoft".into();
    let why = refused(model);
    assert!(
        why.contains("com.microsoft") && why.contains("outside the ONNX standard"),
        "{why}"
    );
}

/// Fuzz finding 2 (fuzz/README.md): an `If` whose branch names an output
/// that nothing in the branch defines made tract's loader panic on a map
/// lookup. The reproducer the fuzzer wrote is committed as is.
#[test]
fn an_output_nothing_defines_is_refused_not_a_panic() {
    let bytes = include_bytes!("fuzz/finding-2-if-output-undefined.onnx");
    match Classifier::load(bytes, crate::fuzz_spec()) {
        Err(GuestError::InvalidModel(why)) => {
            assert!(why.contains("which no input"), "{why}")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("loaded"),
    }
    // The same in the top-level graph of the bundled model.
    let mut model = proto();
    let graph = model.graph.as_mut().unwrap();
    graph.output[0].name = "defined-nowhere".into();
    let why = refused(model);
    assert!(why.contains("defined-nowhere"), "{why}");
}
