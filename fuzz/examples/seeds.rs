//! Writes the committed seed corpus, `fuzz/corpus/<target>/`: real inputs
//! from the repository (manifest, signatures, policy, keys) and small valid
//! inputs made with the crates' own writers (ledger files, receipts and
//! checkpoints from a real ledger with the fixed fuzz key; tiny ONNX
//! models). Deterministic: rerunning it rewrites the same files.
//!
//! `cargo +nightly run --example seeds` (from `fuzz/`).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use medguard_fuzz::{
    LEDGER_FILES, encode_input_case, note_verifier, onnx_spec, sample_entries, template_ledger,
};
use medguard_guest_core::{InputBatch, ModelSpec};
use medguard_ledger::merkle::Hash;
use medguard_ledger::note::Checkpoint;
use ndarray_npy::WriteNpyExt as _;
use prost::Message as _;
use tract_onnx::pb::{self, attribute_proto::AttributeType};

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().expect("fuzz/ sits in the repository");
    let corpus = fuzz.join("corpus");
    let read = |path: &str| std::fs::read(repo.join(path)).expect(path);
    let mut seeds = Seeds(corpus);

    // attest: manifest.
    let manifest = read("models/pneumonia/manifest.json");
    seeds.put("attest_manifest", "pneumonia.json", &manifest);
    let mut value: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    // The same manifest with a short screening profile (five reference
    // values per class), and with none.
    if let Some(classes) = value.pointer_mut("/screening/profile/classes") {
        for class in classes.as_array_mut().expect("classes") {
            for reference in class["reference"].as_array_mut().expect("reference") {
                reference.as_array_mut().expect("values").truncate(5);
            }
        }
    }
    seeds.put("attest_manifest", "short-profile.json", &json(&value));
    value.as_object_mut().expect("object").remove("screening");
    seeds.put("attest_manifest", "no-screening.json", &json(&value));

    // attest: signature bundles and the statements inside them.
    for (name, path) in [
        ("pneumonia.sig", "models/pneumonia/model.sig"),
        (
            "fixture-p256.sig",
            "tests/fixtures/signing/model-p256/model.sig",
        ),
        (
            "fixture-p384.sig",
            "tests/fixtures/signing/model-p384/model.sig",
        ),
    ] {
        let bundle = read(path);
        seeds.put("attest_bundle", name, &bundle);
        let value: serde_json::Value = serde_json::from_slice(&bundle).expect("bundle JSON");
        let payload = value["dsseEnvelope"]["payload"].as_str().expect("payload");
        let payload = BASE64.decode(payload).expect("base64 payload");
        seeds.put("attest_statement", &name.replace(".sig", ".json"), &payload);
    }

    // attest: trust policies and keys.
    seeds.put(
        "attest_policy",
        "demo-policy.toml",
        &read("models/trust/demo-policy.toml"),
    );
    let demo_fingerprint = medguard_fuzz::verifying_keys()[0].fingerprint();
    let inline = format!(
        "schema = \"medguard.policy/v1\"\nrequire_expiry = false\nrevoked_keys = [\"{}\"]\n\n\
         [[keys]]\nname = \"inline\"\npublic_key = \"\"\"\n{}\"\"\"\n\n\
         [[keys]]\nname = \"p384\"\npublic_key_file = \"p384.pub.pem\"\n\n\
         [[models]]\nname = \"pneumonia-cnn\"\nsigners = [\"inline\", \"p384\"]\nmin_version = \"1.0.0\"\n\n\
         [[models]]\nname = \"other\"\nsigners = [\"p384\"]\n",
        "ab".repeat(32),
        String::from_utf8(read("models/trust/demo.pub.pem")).expect("PEM"),
    );
    seeds.put("attest_policy", "inline-keys.toml", inline.as_bytes());
    for (name, path) in [
        ("demo.pub.pem", "models/trust/demo.pub.pem"),
        ("demo.key.pem", "models/trust/demo.key.pem"),
        ("p384.pub.pem", "tests/fixtures/signing/p384.pub.pem"),
        ("p384.key.pem", "tests/fixtures/signing/p384.key.pem"),
    ] {
        seeds.put("attest_pem", name, &read(path));
    }
    seeds.put(
        "attest_pem",
        "fingerprint.txt",
        demo_fingerprint.to_string().as_bytes(),
    );

    // ledger: entries, receipts, checkpoints, files of a real ledger.
    let (files, receipts) = template_ledger();
    for entry in sample_entries() {
        let bytes = serde_json::to_vec(&entry).expect("entry JSON");
        seeds.put("ledger_entry", &format!("{}.json", entry.kind()), &bytes);
    }
    let view = files
        .iter()
        .find(|(name, _)| name == "view.json")
        .expect("the template ledger saved its view");
    seeds.put("ledger_entry", "view.json", &view.1);
    for (i, receipt) in receipts.iter().enumerate() {
        let bytes = serde_json::to_vec_pretty(receipt).expect("receipt JSON");
        seeds.put("ledger_receipt", &format!("receipt-{i}.json"), &bytes);
    }
    let last = receipts.last().expect("receipts");
    seeds.put("ledger_note", "checkpoint.txt", last.checkpoint.as_bytes());
    let witnessed = format!("{}\u{2014} witness.example AAAAAAAA\n", last.checkpoint);
    seeds.put("ledger_note", "witnessed.txt", witnessed.as_bytes());
    seeds.put(
        "ledger_note",
        "verifier.txt",
        note_verifier().to_string().as_bytes(),
    );
    let body = Checkpoint {
        origin: medguard_fuzz::NOTE_ORIGIN.into(),
        size: 42,
        root: Hash([9; 32]),
    }
    .body();
    seeds.put("ledger_note", "body.txt", body.as_bytes());
    for (selector, name) in LEDGER_FILES.iter().enumerate() {
        let (_, bytes) = files
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("template ledger has no {name}"));
        let mut seed = vec![selector as u8];
        seed.extend_from_slice(bytes);
        seeds.put("ledger_files", &format!("{selector}-{name}"), &seed);
    }

    // guest: input batches (spec, shape, data) and tiny ONNX models.
    let mnist = ModelSpec {
        input_name: "image".into(),
        output_name: "logits".into(),
        channels: 1,
        height: 28,
        width: 28,
        min_value: 0.0,
        max_value: 1.0,
        classes: 2,
        max_batch: 64,
    };
    let gradient = |n: usize| (0..n).map(|i| (i % 256) as f32 / 255.0).collect();
    let cases = [
        ("mnist-1.bin", &mnist, vec![1, 1, 28, 28], gradient(784)),
        ("small-2.bin", &onnx_spec(), vec![2, 1, 4, 4], gradient(32)),
        (
            "small-nan.bin",
            &onnx_spec(),
            vec![1, 1, 4, 4],
            [0.5; 15].into_iter().chain([f32::NAN]).collect(),
        ),
    ];
    for (name, spec, shape, data) in cases {
        let batch = InputBatch { shape, data };
        seeds.put("guest_input", name, &encode_input_case(spec, &batch));
    }
    // input: image files as the host reads them, and archives.
    for name in ["normal-1.png", "pneumonia-1.png"] {
        let bytes = read(&format!("models/pneumonia/samples/{name}"));
        seeds.put("input_decode", name, &bytes);
    }
    seeds.put(
        "input_decode",
        "pgd8-1.png",
        &read("models/pneumonia/adversarial/pgd8-1.png"),
    );
    let pixels = ndarray::Array3::from_shape_fn((2, 28, 28), |(n, y, x)| (n * 7 + y * 3 + x) as u8);
    let mut npy = Vec::new();
    pixels.write_npy(&mut npy).expect("npy");
    seeds.put("input_decode", "u8-2x28x28.npy", &npy);
    let values =
        ndarray::Array4::from_shape_fn((1, 1, 28, 28), |(_, _, y, x)| (y * 28 + x) as f32 / 784.0);
    let mut npy = Vec::new();
    values.write_npy(&mut npy).expect("npy");
    seeds.put("input_decode", "f32-1x1x28x28.npy", &npy);
    for (name, compressed) in [("stored.npz", false), ("deflated.npz", true)] {
        let mut out = std::io::Cursor::new(Vec::new());
        {
            let mut npz = if compressed {
                ndarray_npy::NpzWriter::new_compressed(&mut out)
            } else {
                ndarray_npy::NpzWriter::new(&mut out)
            };
            npz.add_array("images", &pixels).expect("npz");
            npz.add_array("flipped", &ndarray::arr1(&[true, false]))
                .expect("npz");
            npz.finish().expect("npz");
        }
        seeds.put("input_decode", name, &out.into_inner());
    }
    for (name, model) in onnx_models() {
        let bytes = model.encode_to_vec();
        // Say which seeds load, so that a seed that stopped loading is seen.
        match medguard_guest_core::Classifier::load(&bytes, onnx_spec()) {
            Ok(_) => println!("guest_onnx/{name}: loads"),
            Err(e) => println!("guest_onnx/{name}: refused: {e}"),
        }
        seeds.put("guest_onnx", name, &bytes);
    }
}

struct Seeds(PathBuf);

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), bytes).expect("seed");
    }
}

fn json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

// ------------------------------------------------------------ ONNX models

/// Small models that load under `onnx_spec()` (1x4x4 images, 2 classes),
/// and two that the lint refuses.
fn onnx_models() -> Vec<(&'static str, pb::ModelProto)> {
    let image = value_info("image", vec![dim_param("batch"), dim(1), dim(4), dim(4)]);
    let logits = value_info("logits", vec![dim_param("batch"), dim(2)]);
    let weights = |name: &str, dims: Vec<i64>| {
        let n: i64 = dims.iter().product();
        tensor(
            name,
            dims,
            (0..n).map(|i| (i as f32 - 8.0) / 16.0).collect(),
        )
    };
    let flatten = node("Flatten", &["image"], &["flat"], vec![int_attr("axis", 1)]);

    let matmul = graph(
        vec![
            flatten.clone(),
            node("MatMul", &["flat", "w"], &["mm"], vec![]),
            node("Add", &["mm", "b"], &["logits"], vec![]),
        ],
        vec![weights("w", vec![16, 2]), weights("b", vec![2])],
        &image,
        &logits,
    );
    let gemm = graph(
        vec![
            flatten.clone(),
            node(
                "Gemm",
                &["flat", "w", "b"],
                &["logits"],
                vec![int_attr("transB", 1), float_attr("alpha", 0.5)],
            ),
        ],
        vec![weights("w", vec![2, 16]), weights("b", vec![2])],
        &image,
        &logits,
    );
    let conv = graph(
        vec![
            node(
                "Conv",
                &["image", "k", "kb"],
                &["c"],
                vec![
                    ints_attr("pads", &[1, 1, 1, 1]),
                    ints_attr("kernel_shape", &[3, 3]),
                ],
            ),
            node("Relu", &["c"], &["r"], vec![]),
            node(
                "MaxPool",
                &["r"],
                &["p"],
                vec![
                    ints_attr("kernel_shape", &[2, 2]),
                    ints_attr("strides", &[2, 2]),
                ],
            ),
            node("GlobalAveragePool", &["p"], &["g"], vec![]),
            node("Flatten", &["g"], &["logits"], vec![int_attr("axis", 1)]),
        ],
        vec![weights("k", vec![2, 1, 3, 3]), weights("kb", vec![2])],
        &image,
        &logits,
    );
    // An If whose branches are subgraphs: the lint recurses into them.
    let branch = |scale: f32| pb::GraphProto {
        name: "branch".into(),
        node: vec![node("Mul", &["mm", "s"], &["out"], vec![])],
        initializer: vec![tensor("s", vec![], vec![scale])],
        output: vec![value_info("out", vec![dim_param("batch"), dim(2)])],
        ..Default::default()
    };
    let mut cond = tensor("cond", vec![], vec![]);
    cond.data_type = pb::tensor_proto::DataType::Bool as i32;
    cond.raw_data = vec![1];
    let if_graph = graph(
        vec![
            flatten.clone(),
            node("MatMul", &["flat", "w"], &["mm"], vec![]),
            node(
                "If",
                &["cond"],
                &["logits"],
                vec![
                    graph_attr("then_branch", branch(1.0)),
                    graph_attr("else_branch", branch(-1.0)),
                ],
            ),
        ],
        vec![weights("w", vec![16, 2]), cond],
        &image,
        &logits,
    );
    let mut external = matmul.clone();
    let w = &mut external.initializer[0];
    w.raw_data.clear();
    w.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    w.external_data = vec![pb::StringStringEntryProto {
        key: "location".into(),
        value: "weights.bin".into(),
    }];
    let mut custom = gemm.clone();
    custom.node[1].domain = "com.example".into();

    vec![
        ("matmul.onnx", model(matmul)),
        ("gemm.onnx", model(gemm)),
        ("conv.onnx", model(conv)),
        ("if.onnx", model(if_graph)),
        ("external-data.onnx", model(external)),
        ("custom-domain.onnx", model(custom)),
    ]
}

fn model(graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "medguard-fuzz-seeds".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

fn graph(
    node: Vec<pb::NodeProto>,
    initializer: Vec<pb::TensorProto>,
    input: &pb::ValueInfoProto,
    output: &pb::ValueInfoProto,
) -> pb::GraphProto {
    pb::GraphProto {
        name: "seed".into(),
        node,
        initializer,
        input: vec![input.clone()],
        output: vec![output.clone()],
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: format!("{op}_{}", outputs[0]),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

fn tensor(name: &str, dims: Vec<i64>, values: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims,
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn float_attr(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

fn ints_attr(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn graph_attr(name: &str, g: pb::GraphProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Graph as i32,
        g: Some(g),
        ..Default::default()
    }
}

fn dim(v: i64) -> pb::tensor_shape_proto::Dimension {
    pb::tensor_shape_proto::Dimension {
        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)),
        ..Default::default()
    }
}

fn dim_param(p: &str) -> pb::tensor_shape_proto::Dimension {
    pb::tensor_shape_proto::Dimension {
        value: Some(pb::tensor_shape_proto::dimension::Value::DimParam(p.into())),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: Vec<pb::tensor_shape_proto::Dimension>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
