//! Interval bounds: the rewritten graph bounds the real network's logits.

use medguard_guest_core::{
    Classifier, Detector, GuestError, InputBatch, LogitBounds, MAX_RADII, ScreenOptions,
};
use medguard_screen::Statistic;
use prost::Message;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::Framework;

use crate::onnx::{float, graph_model, int, int64s, ints, node, tensor};
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
            let [
                LogitBounds {
                    lower,
                    upper,
                    scale,
                },
            ] = bounds.as_slice()
            else {
                panic!("one radius, one bound")
            };
            assert!(scale.is_finite() && *scale > 0.0, "{name}: {scale}");
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
            assert_holds(&c, &centre, *r, b, name, &mut rng);
        }
    }
}

/// 64 images within `r` of `centre` (every other one a corner, each pixel
/// at one end of its range), clipped to the pixel range: the model's logits
/// for each lie within `bounds`, to rounding.
fn assert_holds(
    c: &Classifier,
    centre: &[f32],
    r: f32,
    bounds: &LogitBounds,
    name: &str,
    rng: &mut ChaCha8Rng,
) {
    let points: Vec<f32> = (0..64)
        .flat_map(|k| {
            centre
                .iter()
                .map(|&v| {
                    let u = rng.next_u32() as f32 / u32::MAX as f32;
                    let t = match (k % 2 == 0, u > 0.5) {
                        (true, true) => 1.0,
                        (true, false) => -1.0,
                        (false, _) => u * 2.0 - 1.0,
                    };
                    (v + t * r).clamp(0.0, 1.0)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for l in logits(c, &one(points)) {
        for (k, (v, (lo, hi))) in l
            .iter()
            .zip(bounds.lower.iter().zip(&bounds.upper))
            .enumerate()
        {
            let slack = 1e-4 * (1.0 + v.abs());
            assert!(
                lo - slack <= *v && *v <= hi + slack,
                "{name} at {r}: logit {k} is {v}, bounds [{lo}, {hi}]"
            );
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

#[test]
fn a_name_defined_twice_is_refused() {
    // tract reads the last definition of a name, the rewrite the one
    // before it: with two, the bounds could describe another network.
    let mut model = proto();
    let graph = model.graph.as_mut().unwrap();
    let first_output = graph.node[0].output[0].clone();
    let mut shadow = graph.initializer[0].clone();
    shadow.name = first_output;
    graph.initializer.push(shadow);
    match Classifier::load_with_bounds(&model.encode_to_vec(), spec()) {
        Err(GuestError::InvalidModel(why)) => assert!(why.contains("more than once"), "{why}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a model defining a name twice was loaded for bounds"),
    }
}

/// A network whose value never depends on the input (`x * 1e30 - x * 1e30`
/// is 0), but whose bounds overflow at any radius: infinity, then NaN in
/// the first dense layer, which the ReLU after it would turn into a tight
/// [0, 0] if nothing watched for it.
fn overflowing_model() -> Vec<u8> {
    let w1: Vec<f32> = (0..784 * 4)
        .map(|i| if i % 2 == 0 { 1e-3 } else { -1e-3 })
        .collect();
    graph_model(
        vec![
            node("Mul", &["image", "big"], "a", vec![]),
            node("Sub", &["a", "a"], "b", vec![]),
            node("Mul", &["b", "bigger"], "c", vec![]),
            node("Relu", &["c"], "d", vec![]),
            node(
                "Flatten",
                &["d"],
                "e",
                vec![AttributeProto {
                    name: "axis".into(),
                    i: 1,
                    r#type: 2,
                    ..AttributeProto::default()
                }],
            ),
            node("Gemm", &["e", "w1", "b1"], "f", vec![]),
            node("Relu", &["f"], "g", vec![]),
            node("Gemm", &["g", "w2", "b2"], "logits", vec![]),
        ],
        vec![
            tensor("big", &[], vec![1e30]),
            tensor("bigger", &[], vec![1e12]),
            tensor("w1", &[784, 4], w1),
            tensor("b1", &[4], vec![0.0; 4]),
            tensor(
                "w2",
                &[4, 2],
                vec![1.0, -1.0, -1.0, 1.0, 0.5, 0.5, 0.0, 0.0],
            ),
            tensor("b2", &[2], vec![3.0, -3.0]),
        ],
    )
}

#[test]
fn bounds_that_overflow_anywhere_in_the_network_bound_nothing() {
    let c = Classifier::load_with_bounds(&overflowing_model(), spec()).unwrap();
    let bounds = c
        .bound(&one(vec![0.5; 784]), &[0.0, 1.0 / 255.0])
        .unwrap()
        .remove(0);
    // The image itself: the network's logits, its bias.
    assert_eq!(bounds[0].lower, vec![3.0, -3.0]);
    assert_eq!(bounds[0].upper, vec![3.0, -3.0]);
    // Any box: no bound at all, not the tight [3, 3] a laundered NaN gives.
    let b = &bounds[1];
    assert!(b.lower.iter().all(|v| *v == f32::NEG_INFINITY), "{b:?}");
    assert!(b.upper.iter().all(|v| *v == f32::INFINITY), "{b:?}");
    assert_eq!(b.scale, f32::INFINITY);
}

/// `body` (from `image` to `out`, `channels` channels of any size) and a
/// head that pools, flattens and maps to two logits with weights of both
/// signs.
pub(crate) fn headed(
    mut body: Vec<NodeProto>,
    mut initializer: Vec<TensorProto>,
    channels: i64,
) -> Vec<u8> {
    body.push(node("GlobalAveragePool", &["out"], "pooled", vec![]));
    body.push(node("Flatten", &["pooled"], "flat", vec![int("axis", 1)]));
    body.push(node(
        "Gemm",
        &["flat", "head", "head_bias"],
        "logits",
        vec![],
    ));
    let head: Vec<f32> = (0..channels * 2)
        .map(|i| if i % 3 == 0 { -1.5 } else { 2.0 })
        .collect();
    initializer.push(tensor("head", &[channels, 2], head));
    initializer.push(tensor("head_bias", &[2], vec![0.25, -0.5]));
    graph_model(body, initializer)
}

/// One small graph per interval rule the bundled models do not exercise.
fn rule_models() -> Vec<(&'static str, Vec<u8>)> {
    let scalar = |name: &str, v: f32| tensor(name, &[], vec![v]);
    let unary = |op: &str, attribute: Vec<AttributeProto>| {
        headed(vec![node(op, &["image"], "out", attribute)], vec![], 1)
    };
    let pixels: Vec<f32> = (0..784)
        .map(|i| ((i * 37) % 11) as f32 / 5.0 - 1.0)
        .collect();
    let square: Vec<f32> = (0..784)
        .map(|i| ((i * 13) % 7) as f32 / 7.0 - 0.5)
        .collect();
    vec![
        ("Neg", unary("Neg", vec![])),
        ("Sigmoid", unary("Sigmoid", vec![])),
        ("Tanh", unary("Tanh", vec![])),
        ("Exp", unary("Exp", vec![])),
        ("LeakyRelu", unary("LeakyRelu", vec![float("alpha", 0.1)])),
        (
            "Transpose",
            unary("Transpose", vec![ints("perm", &[0, 1, 3, 2])]),
        ),
        (
            "MaxPool",
            unary(
                "MaxPool",
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            ),
        ),
        (
            "constant - x",
            headed(
                vec![node("Sub", &["k", "image"], "out", vec![])],
                vec![scalar("k", 0.3)],
                1,
            ),
        ),
        (
            "x * negative",
            headed(
                vec![node("Mul", &["k", "image"], "out", vec![])],
                vec![scalar("k", -2.0)],
                1,
            ),
        ),
        (
            "x * per-pixel signs",
            headed(
                vec![node("Mul", &["image", "k"], "out", vec![])],
                vec![tensor("k", &[1, 1, 28, 28], pixels)],
                1,
            ),
        ),
        (
            "x / negative",
            headed(
                vec![node("Div", &["image", "k"], "out", vec![])],
                vec![scalar("k", -4.0)],
                1,
            ),
        ),
        (
            "x + x",
            headed(
                vec![node("Add", &["image", "image"], "out", vec![])],
                vec![],
                1,
            ),
        ),
        (
            "x - relu(x)",
            headed(
                vec![
                    node("Relu", &["image"], "r", vec![]),
                    node("Sub", &["image", "r"], "out", vec![]),
                ],
                vec![],
                1,
            ),
        ),
        (
            "Clip",
            headed(
                vec![node("Clip", &["image", "lo", "hi"], "out", vec![])],
                vec![scalar("lo", 0.2), scalar("hi", 0.7)],
                1,
            ),
        ),
        (
            "BatchNormalization, negative scale",
            headed(
                vec![node(
                    "BatchNormalization",
                    &["image", "s", "b", "m", "v"],
                    "out",
                    vec![float("epsilon", 1e-3)],
                )],
                vec![
                    tensor("s", &[1], vec![-2.0]),
                    tensor("b", &[1], vec![0.1]),
                    tensor("m", &[1], vec![0.4]),
                    tensor("v", &[1], vec![0.25]),
                ],
                1,
            ),
        ),
        (
            "MatMul, bounded on the right",
            headed(
                vec![node("MatMul", &["a", "image"], "out", vec![])],
                vec![tensor("a", &[28, 28], square)],
                1,
            ),
        ),
        (
            "Concat of x and -x",
            headed(
                vec![
                    node("Neg", &["image"], "n", vec![]),
                    node("Concat", &["image", "n"], "out", vec![int("axis", 1)]),
                ],
                vec![],
                2,
            ),
        ),
        (
            "Pad",
            headed(
                vec![node("Pad", &["image", "pads", "value"], "out", vec![])],
                vec![
                    int64s("pads", &[0, 0, 1, 2, 0, 0, 3, 1]),
                    scalar("value", 0.9),
                ],
                1,
            ),
        ),
        (
            "Slice",
            headed(
                vec![node(
                    "Slice",
                    &["image", "starts", "ends", "axes"],
                    "out",
                    vec![],
                )],
                vec![
                    int64s("starts", &[3, 5]),
                    int64s("ends", &[20, 27]),
                    int64s("axes", &[2, 3]),
                ],
                1,
            ),
        ),
        (
            "ReduceMax",
            headed(
                vec![node(
                    "ReduceMax",
                    &["image"],
                    "out",
                    vec![ints("axes", &[2, 3])],
                )],
                vec![],
                1,
            ),
        ),
        (
            "Gemm, negative alpha, transposed weights",
            graph_model(
                vec![
                    node("Flatten", &["image"], "flat", vec![int("axis", 1)]),
                    node(
                        "Gemm",
                        &["flat", "w", "c"],
                        "logits",
                        vec![float("alpha", -0.5), int("transB", 1)],
                    ),
                ],
                vec![
                    tensor(
                        "w",
                        &[2, 784],
                        (0..1568)
                            .map(|i| ((i * 7) % 5) as f32 / 10.0 - 0.2)
                            .collect(),
                    ),
                    tensor("c", &[2], vec![0.5, -0.5]),
                ],
            ),
        ),
    ]
}

#[test]
fn every_interval_rule_bounds_every_image_in_the_box() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let radii = [0.0, 2.0 / 255.0, 16.0 / 255.0];
    for (name, bytes) in rule_models() {
        let c =
            Classifier::load_with_bounds(&bytes, spec()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let centre = image(&mut rng);
        let bounds = c.bound(&one(centre.clone()), &radii).unwrap().remove(0);
        let at_centre = logits(&c, &one(centre.clone())).remove(0);
        for (k, w) in at_centre.iter().enumerate() {
            let slack = 1e-4 * (1.0 + w.abs());
            assert!(
                (bounds[0].lower[k] - w).abs() <= slack && (bounds[0].upper[k] - w).abs() <= slack,
                "{name}: at radius 0 [{}, {}] for {w}",
                bounds[0].lower[k],
                bounds[0].upper[k]
            );
        }
        for (r, b) in radii.iter().zip(&bounds).skip(1) {
            // A bound, not a vacuous pass.
            assert!(b.scale.is_finite(), "{name} at {r}: no bound");
            assert_holds(&c, &centre, *r, b, name, &mut rng);
        }
    }
}

/// `x - mean over the batch`, then the head: an operator reading across
/// the batch axis, 0 for an image run alone.
pub(crate) fn batch_mean_model() -> Vec<u8> {
    headed(
        vec![
            node("ReduceMean", &["image"], "m", vec![ints("axes", &[0])]),
            node("Sub", &["image", "m"], "out", vec![]),
        ],
        vec![],
        1,
    )
}

#[test]
fn each_box_is_bounded_alone_whatever_else_is_asked() {
    // Were the boxes of one call run as one batch, each would be centred
    // on the others.
    let c = Classifier::load_with_bounds(&batch_mean_model(), spec()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let image = one(image(&mut rng));
    let radii = [0.0, 2.0 / 255.0, 16.0 / 255.0];
    let together = c.bound(&image, &radii).unwrap().remove(0);
    for (r, bounds) in radii.iter().zip(&together) {
        let alone = c.bound(&image, &[*r]).unwrap().remove(0).remove(0);
        assert_eq!(bounds, &alone, "radius {r}");
    }
    // At radius 0 the difference is exactly 0: the logits are the head's bias.
    assert_eq!(together[0].lower, [0.25, -0.5]);
    assert_eq!(together[0].upper, [0.25, -0.5]);
}
