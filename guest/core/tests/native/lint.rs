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

fn refused_as_fuzzed(bytes: &[u8]) -> String {
    match Classifier::load(bytes, crate::fuzz_spec()) {
        Err(GuestError::InvalidModel(why)) => why,
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("loaded"),
    }
}

/// Every model the `guest_onnx` fuzz target found to crash tract 0.23.9
/// (fuzz findings 3 to 8 in fuzz/README.md), as the fuzzer wrote it: each is
/// refused with a reason instead of a panic (a trap in the guest).
#[test]
fn every_guest_onnx_reproducer_is_refused_with_a_reason() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/native/fuzz/guest_onnx");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let why = refused_as_fuzzed(&std::fs::read(&path).unwrap());
        assert!(!why.is_empty(), "{}", path.display());
        seen += 1;
    }
    assert_eq!(seen, 22, "reproducers in {dir}");
}

/// The fuzzer's seed with a Flatten, edited one attribute at a time.
fn flatten_seed() -> ModelProto {
    let bytes = include_bytes!("fuzz/seed-matmul.onnx");
    ModelProto::decode(bytes.as_slice()).unwrap()
}

fn with_flatten(edit: impl FnOnce(&mut tract_onnx::pb::NodeProto)) -> Vec<u8> {
    let mut model = flatten_seed();
    let node = model
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type == "Flatten")
        .unwrap();
    edit(node);
    model.encode_to_vec()
}

/// Fuzz finding 4: a Flatten axis past the input's rank, either way, made
/// tract slice its shape out of bounds. ONNX allows [-rank, rank].
#[test]
fn a_flatten_axis_outside_the_rank_is_refused() {
    Classifier::load(&flatten_seed().encode_to_vec(), crate::fuzz_spec()).unwrap();
    // -3 is axis 1 of the rank-4 image: the same model.
    let axis = |value: i64| with_flatten(|n| n.attribute[0].i = value);
    Classifier::load(&axis(-3), crate::fuzz_spec()).unwrap();
    for outside in [5, 17, -5, i64::MIN, i64::MAX] {
        let why = refused_as_fuzzed(&axis(outside));
        assert!(
            why.contains(&format!("Flatten axis {outside} is outside [-4, 4]")),
            "{why}"
        );
    }
}

/// Fuzz finding 5: a Flatten with no input made tract index past the end
/// (now the operator table's arity refuses it; `runtime/checked.rs` checks
/// again).
#[test]
fn a_flatten_without_its_input_is_refused() {
    let why = refused_as_fuzzed(&with_flatten(|n| n.input.clear()));
    assert!(why.contains("has 0 inputs; ONNX allows 1"), "{why}");
}

/// Fuzz finding 3: If branches that yield other than the node's number of
/// outputs made tract unwrap an error while it analysed the graph.
#[test]
fn if_branches_must_yield_the_nodes_outputs() {
    let seed = ModelProto::decode(include_bytes!("fuzz/seed-if.onnx").as_slice()).unwrap();
    Classifier::load(&seed.encode_to_vec(), crate::fuzz_spec()).unwrap();
    for branch in ["then_branch", "else_branch"] {
        let mut model = seed.clone();
        let node = &mut model.graph.as_mut().unwrap().node[2];
        let attribute = node
            .attribute
            .iter_mut()
            .find(|a| a.name == branch)
            .unwrap();
        attribute.g.as_mut().unwrap().output.clear();
        let why = refused_as_fuzzed(&model.encode_to_vec());
        assert!(why.contains(&format!("its {branch} has 0")), "{why}");
        let mut model = seed.clone();
        let node = &mut model.graph.as_mut().unwrap().node[2];
        node.attribute.retain(|a| a.name != branch);
        let why = refused_as_fuzzed(&model.encode_to_vec());
        assert!(why.contains(&format!("its {branch} is missing")), "{why}");
    }
}

/// The fuzzer's seed with a Conv, a MaxPool and a GlobalAveragePool.
fn conv_seed() -> ModelProto {
    ModelProto::decode(include_bytes!("fuzz/seed-conv.onnx").as_slice()).unwrap()
}

fn edited_node(op: &str, edit: impl FnOnce(&mut tract_onnx::pb::NodeProto)) -> Vec<u8> {
    let mut model = conv_seed();
    let graph = model.graph.as_mut().unwrap();
    edit(graph.node.iter_mut().find(|n| n.op_type == op).unwrap());
    model.encode_to_vec()
}

fn set_ints(node: &mut tract_onnx::pb::NodeProto, name: &str, values: &[i64]) {
    node.attribute.retain(|a| a.name != name);
    node.attribute.push(tract_onnx::pb::AttributeProto {
        name: name.into(),
        r#type: 7, // INTS
        ints: values.to_vec(),
        ..Default::default()
    });
}

/// Fuzz findings 7 and 8: operators outside the list (contrib ones too,
/// which tract dispatches on by name whatever the domain) and operators
/// missing inputs that tract indexes unchecked.
#[test]
fn operators_must_be_on_the_list_and_within_their_arity() {
    Classifier::load(&conv_seed().encode_to_vec(), crate::fuzz_spec()).unwrap();
    let why = refused_as_fuzzed(&edited_node("Relu", |n| {
        n.op_type = "GroupQueryAttention".into()
    }));
    assert!(
        why.contains("outside the ONNX operators medguard accepts"),
        "{why}"
    );
    let why = refused_as_fuzzed(&edited_node("MaxPool", |n| n.input.clear()));
    assert!(why.contains("has 0 inputs; ONNX allows 1"), "{why}");
    let why = refused_as_fuzzed(&edited_node("Conv", |n| n.input.push("".into())));
    assert!(why.contains("has 4 inputs; ONNX allows 2 to 3"), "{why}");
    let why = refused_as_fuzzed(&edited_node("Conv", |n| n.input[2] = String::new()));
    assert!(why.contains("empty name"), "{why}");
    let why = refused_as_fuzzed(&edited_node("Relu", |n| n.output.clear()));
    assert!(why.contains("has 0 outputs"), "{why}");
}

/// Fuzz finding 5 and 8: window attributes tract indexes per axis and
/// divides by.
#[test]
fn window_attributes_must_agree_and_be_positive() {
    let cases: [(&str, &str, &[i64], &str); 6] = [
        ("MaxPool", "kernel_shape", &[], "kernel_shape is required"),
        ("MaxPool", "kernel_shape", &[0, 2], "must be positive"),
        ("MaxPool", "strides", &[0, 2], "must be positive"),
        (
            "Conv",
            "dilations",
            &[1],
            "has 1 axes where the other window attributes have 2",
        ),
        (
            "Conv",
            "pads",
            &[1, 1],
            "a begin and an end per spatial axis",
        ),
        ("Conv", "pads", &[1, 1, -1, 1], "must be 0 to 32768"),
    ];
    for (op, name, values, needle) in cases {
        let why = refused_as_fuzzed(&edited_node(op, |n| set_ints(n, name, values)));
        assert!(why.contains(needle), "{op} {name} {values:?}: {why}");
    }
}

/// From the attacker review of the lint (fuzz/README.md, finding 8): values
/// past 32 bits arrive in the guest truncated (2^32 as 0), groups of 0,
/// kernels of billions of positions, Conv without a kernel_shape to tie the
/// ranks, string tensors through Cast and Constant, old operator sets.
#[test]
fn attributes_are_capped_and_old_operator_sets_refused() {
    let big = 1i64 << 32;
    let cases: [(&str, &str, &[i64], &str); 5] = [
        ("MaxPool", "strides", &[big, big], "up to 32768"),
        ("Conv", "pads", &[0, 0, big, 0], "must be 0 to 32768"),
        (
            "MaxPool",
            "kernel_shape",
            &[30_000, 30_000],
            "more than 1048576 positions",
        ),
        ("Conv", "kernel_shape", &[], "kernel_shape is required"),
        ("Conv", "group", &[], "group 0 must be 1 to 32768"),
    ];
    for (op, name, values, needle) in cases {
        let model = edited_node(op, |n| {
            if name == "group" {
                n.attribute.push(tract_onnx::pb::AttributeProto {
                    name: "group".into(),
                    r#type: 2, // INT
                    i: 0,
                    ..Default::default()
                });
            } else if values.is_empty() {
                n.attribute.retain(|a| a.name != name);
            } else {
                set_ints(n, name, values);
            }
        });
        let why = refused_as_fuzzed(&model);
        assert!(why.contains(needle), "{op} {name}: {why}");
    }
    let why = refused_as_fuzzed(&edited_node("Relu", |n| {
        n.op_type = "Cast".into();
        n.attribute.push(tract_onnx::pb::AttributeProto {
            name: "to".into(),
            r#type: 2,
            i: 8,
            ..Default::default()
        });
    }));
    assert!(why.contains("string tensors"), "{why}");
    let why = refused_as_fuzzed(&edited_node("Relu", |n| n.op_type = "ConvTranspose".into()));
    assert!(why.contains("outside the ONNX operators"), "{why}");
    for versions in [vec![9], vec![], vec![13, 17]] {
        let mut model = conv_seed();
        model.opset_import.retain(|o| !o.domain.is_empty());
        for v in &versions {
            model.opset_import.push(OperatorSetIdProto {
                domain: String::new(),
                version: *v,
            });
        }
        let why = refused_as_fuzzed(&model.encode_to_vec());
        assert!(
            why.contains("exactly one version from 13 to 21"),
            "{versions:?}: {why}"
        );
    }
}

/// Fuzz finding 6: a tensor of a type tract's loader does not implement.
#[test]
fn tensors_of_types_tract_cannot_load_are_refused() {
    let mut model = conv_seed();
    let tensor = &mut model.graph.as_mut().unwrap().initializer[0];
    tensor.data_type = 16; // BFLOAT16
    let why = refused_as_fuzzed(&model.encode_to_vec());
    assert!(why.contains("ONNX data type 16"), "{why}");
}
