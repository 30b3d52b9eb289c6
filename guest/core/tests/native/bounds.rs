//! Interval bounds: the rewritten graph bounds the real network's logits.

use medguard_guest_core::{
    Classifier, Detector, GuestError, InputBatch, LogitBounds, MAX_RADII, ScreenOptions,
};
use medguard_screen::Statistic;
use prost::Message;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tract_onnx::pb::{ModelProto, NodeProto};
use tract_onnx::prelude::Framework;

use crate::{model_bytes, spec};

/// The bundled networks: the demo model (convolutions, batch-norm, max
/// pooling), the smoothed model's base network (strided convolutions,
/// batch-norm, global average pooling) and the network trained for interval
/// bounds (normalisation, convolutions, a mean, a reshape and a Gemm).
fn models() -> Vec<(&'static str, Vec<u8>)> {
    let read = |dir: &str| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/");
        std::fs::read(format!("{root}{dir}/model.onnx")).unwrap()
    };
    vec![
        ("demo", model_bytes()),
        ("smoothed", read("pneumonia-smoothed")),
        ("ibp", read("pneumonia-ibp")),
    ]
}

fn image(rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..784)
        .map(|_| (rng.next_u32() >> 24) as f32 / 255.0)
        .collect()
}

fn one(data: Vec<f32>) -> InputBatch {
    InputBatch {
        shape: vec![(data.len() / 784) as u32, 1, 28, 28],
        data,
    }
}

/// The model's own logits, through the screening path that reports them.
fn logits(c: &Classifier, batch: &InputBatch) -> Vec<Vec<f32>> {
    let options = ScreenOptions {
        seed: 1,
        source_bits: 0,
        withhold_rejected: false,
    };
    c.screen(
        batch,
        &Detector::Uncalibrated(vec![Statistic::Margin]),
        options,
    )
    .unwrap()
    .into_iter()
    .map(|s| s.logits.unwrap())
    .collect()
}

#[test]
fn at_radius_zero_the_bounds_meet_at_the_models_logits() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (name, bytes) in models() {
        let c = Classifier::load_with_bounds(&bytes, spec()).unwrap();
        let batch = one((0..3).flat_map(|_| image(&mut rng)).collect());
        let want = logits(&c, &batch);
        let got = c.bound(&batch, &[0.0]).unwrap();
        assert_eq!(got.len(), 3);
        for (bounds, want) in got.iter().zip(&want) {
            let [LogitBounds { lower, upper }] = bounds.as_slice() else {
                panic!("one radius, one bound")
            };
            for ((l, u), w) in lower.iter().zip(upper).zip(want) {
                // The same network on the same image, rewired: equal up to
                // the order the engine sums in.
                assert!(
                    l <= u && (l - w).abs() < 1e-4 && (u - w).abs() < 1e-4,
                    "{name}: {l} {u} {w}"
                );
            }
        }
    }
}

#[test]
fn every_image_in_the_box_has_logits_within_its_bounds() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let radii = [1.0 / 255.0, 4.0 / 255.0, 16.0 / 255.0];
    for (name, bytes) in models() {
        let c = Classifier::load_with_bounds(&bytes, spec()).unwrap();
        let centre = image(&mut rng);
        let bounds = c.bound(&one(centre.clone()), &radii).unwrap().remove(0);
        // Wider boxes, wider bounds.
        for pair in bounds.windows(2) {
            for k in 0..2 {
                assert!(
                    pair[1].lower[k] <= pair[0].lower[k] && pair[1].upper[k] >= pair[0].upper[k],
                    "{name}"
                );
            }
        }
        for (r, b) in radii.iter().zip(&bounds) {
            // Corners (each pixel at one end of its range) and points inside.
            let points: Vec<f32> = (0..64)
                .flat_map(|k| {
                    let corner = k % 2 == 0;
                    centre
                        .iter()
                        .map(|&v| {
                            let u = rng.next_u32() as f32 / u32::MAX as f32;
                            let t = if corner {
                                (u > 0.5) as u8 as f32 * 2.0 - 1.0
                            } else {
                                u * 2.0 - 1.0
                            };
                            (v + t * r).clamp(0.0, 1.0)
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            for l in logits(&c, &one(points)) {
                for (k, (v, (lo, hi))) in l.iter().zip(b.lower.iter().zip(&b.upper)).enumerate() {
                    let slack = 1e-4 * (1.0 + v.abs());
                    assert!(
                        lo - slack <= *v && *v <= hi + slack,
                        "{name} at {r}: logit {k} is {v}, bounds [{lo}, {hi}]"
                    );
                }
            }
        }
    }
}

#[test]
fn bounds_need_a_model_loaded_for_them_and_sane_radii() {
    let plain = Classifier::load(&model_bytes(), spec()).unwrap();
    let batch = one(vec![0.5; 784]);
    assert!(
        matches!(plain.bound(&batch, &[0.01]), Err(GuestError::InvalidInput(m)) if m.contains("without interval bounds"))
    );
    let c = Classifier::load_with_bounds(&model_bytes(), spec()).unwrap();
    for radii in [
        vec![],
        vec![0.01; MAX_RADII + 1],
        vec![-0.01],
        vec![f32::NAN],
        vec![f32::INFINITY],
    ] {
        assert!(
            matches!(c.bound(&batch, &radii), Err(GuestError::InvalidInput(_))),
            "{radii:?}"
        );
    }
    // The input is checked as for classification.
    assert!(matches!(
        c.bound(&one(vec![2.0; 784]), &[0.01]),
        Err(GuestError::InvalidInput(_))
    ));
}

fn proto() -> ModelProto {
    tract_onnx::onnx()
        .proto_model_for_read(&mut model_bytes().as_slice())
        .unwrap()
}

#[test]
fn an_operator_without_an_interval_rule_is_refused_by_name() {
    // Softmax over the logits: a model that classifies, but whose outputs
    // are not bounded by bounding each input alone.
    let mut model = proto();
    let graph = model.graph.as_mut().unwrap();
    let out = graph.output[0].name.clone();
    for node in &mut graph.node {
        for o in &mut node.output {
            if *o == out {
                *o = "pre-softmax".into();
            }
        }
    }
    graph.node.push(NodeProto {
        input: vec!["pre-softmax".into()],
        output: vec![out],
        name: "the-softmax".into(),
        op_type: "Softmax".into(),
        ..NodeProto::default()
    });
    let bytes = model.encode_to_vec();
    Classifier::load(&bytes, spec()).unwrap();
    match Classifier::load_with_bounds(&bytes, spec()) {
        Err(GuestError::InvalidModel(why)) => {
            assert!(
                why.contains("the-softmax") && why.contains("Softmax") && why.contains("interval"),
                "{why}"
            )
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a model with no interval rule was loaded for bounds"),
    }
}

#[test]
fn a_model_using_the_reserved_prefix_is_refused() {
    let mut model = proto();
    let graph = model.graph.as_mut().unwrap();
    graph.node[0].name = "medguard/ibp/node/0".into();
    match Classifier::load_with_bounds(&model.encode_to_vec(), spec()) {
        Err(GuestError::InvalidModel(why)) => assert!(why.contains("prefix"), "{why}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a model shadowing the rewrite's names was loaded"),
    }
}
