//! The ONNX operators a model may use, with their arity, and the checks on
//! attributes that tract 0.23 indexes or divides by unchecked.
//!
//! tract-onnx dispatches on the operator name alone, contrib operators
//! included, and many of its operators index their inputs or their
//! attributes without counting them first (fuzz findings 3 to 8 in
//! fuzz/README.md). A classifier needs few operators, so the lint accepts
//! those on this list and checks each node against the ONNX specification's
//! input and output counts before tract sees it. A model that needs another
//! standard operator is refused with its name: add it here, with its arity
//! and a look at how tract's builder reads its attributes.

use tract_onnx::pb::{AttributeProto, NodeProto};

/// No upper bound on a count.
const MANY: usize = usize::MAX;

/// The least and most of a node's inputs or outputs.
type Arity = (usize, usize);

/// Operator name, inputs, outputs, as the ONNX operator schemas give them
/// (optional inputs and outputs counted in the maximum).
const OPERATORS: &[(&str, Arity, Arity)] = &[
    // Element-wise, one input.
    ("Abs", (1, 1), (1, 1)),
    ("Ceil", (1, 1), (1, 1)),
    ("Cos", (1, 1), (1, 1)),
    ("Elu", (1, 1), (1, 1)),
    ("Erf", (1, 1), (1, 1)),
    ("Exp", (1, 1), (1, 1)),
    ("Floor", (1, 1), (1, 1)),
    ("HardSigmoid", (1, 1), (1, 1)),
    ("HardSwish", (1, 1), (1, 1)),
    ("Identity", (1, 1), (1, 1)),
    ("LeakyRelu", (1, 1), (1, 1)),
    ("Log", (1, 1), (1, 1)),
    ("Neg", (1, 1), (1, 1)),
    ("Not", (1, 1), (1, 1)),
    ("Reciprocal", (1, 1), (1, 1)),
    ("Relu", (1, 1), (1, 1)),
    ("Round", (1, 1), (1, 1)),
    ("Selu", (1, 1), (1, 1)),
    ("Sigmoid", (1, 1), (1, 1)),
    ("Sign", (1, 1), (1, 1)),
    ("Sin", (1, 1), (1, 1)),
    ("Softplus", (1, 1), (1, 1)),
    ("Softsign", (1, 1), (1, 1)),
    ("Sqrt", (1, 1), (1, 1)),
    ("Tanh", (1, 1), (1, 1)),
    ("Cast", (1, 1), (1, 1)),
    // Element-wise, two or more inputs.
    ("Add", (2, 2), (1, 1)),
    ("And", (2, 2), (1, 1)),
    ("Div", (2, 2), (1, 1)),
    ("Equal", (2, 2), (1, 1)),
    ("Greater", (2, 2), (1, 1)),
    ("GreaterOrEqual", (2, 2), (1, 1)),
    ("Less", (2, 2), (1, 1)),
    ("LessOrEqual", (2, 2), (1, 1)),
    ("Mul", (2, 2), (1, 1)),
    ("Or", (2, 2), (1, 1)),
    ("Pow", (2, 2), (1, 1)),
    ("PRelu", (2, 2), (1, 1)),
    ("Sub", (2, 2), (1, 1)),
    ("Xor", (2, 2), (1, 1)),
    ("Max", (1, MANY), (1, 1)),
    ("Mean", (1, MANY), (1, 1)),
    ("Min", (1, MANY), (1, 1)),
    ("Sum", (1, MANY), (1, 1)),
    ("Where", (3, 3), (1, 1)),
    ("Clip", (1, 3), (1, 1)),
    // Linear algebra, convolution, pooling, normalisation.
    ("MatMul", (2, 2), (1, 1)),
    ("Gemm", (2, 3), (1, 1)),
    ("Conv", (2, 3), (1, 1)),
    ("AveragePool", (1, 1), (1, 1)),
    ("MaxPool", (1, 1), (1, 2)),
    ("GlobalAveragePool", (1, 1), (1, 1)),
    ("GlobalMaxPool", (1, 1), (1, 1)),
    ("BatchNormalization", (5, 5), (1, 3)),
    ("InstanceNormalization", (3, 3), (1, 1)),
    ("Dropout", (1, 3), (1, 2)),
    ("Softmax", (1, 1), (1, 1)),
    ("LogSoftmax", (1, 1), (1, 1)),
    // Shapes.
    ("Concat", (1, MANY), (1, 1)),
    ("Constant", (0, 0), (1, 1)),
    ("ConstantOfShape", (1, 1), (1, 1)),
    ("Expand", (2, 2), (1, 1)),
    ("Flatten", (1, 1), (1, 1)),
    ("Gather", (2, 2), (1, 1)),
    ("Pad", (1, 4), (1, 1)),
    ("Reshape", (2, 2), (1, 1)),
    ("Shape", (1, 1), (1, 1)),
    ("Slice", (1, 5), (1, 1)),
    ("Tile", (2, 2), (1, 1)),
    ("Transpose", (1, 1), (1, 1)),
    ("Squeeze", (1, 2), (1, 1)),
    ("Unsqueeze", (1, 2), (1, 1)),
    // Reductions.
    ("ArgMax", (1, 1), (1, 1)),
    ("ArgMin", (1, 1), (1, 1)),
    ("ReduceL2", (1, 2), (1, 1)),
    ("ReduceMax", (1, 2), (1, 1)),
    ("ReduceMean", (1, 2), (1, 1)),
    ("ReduceMin", (1, 2), (1, 1)),
    ("ReduceProd", (1, 2), (1, 1)),
    ("ReduceSum", (1, 2), (1, 1)),
    // Control flow (branches linted as graphs of their own).
    ("If", (1, 1), (1, MANY)),
];

/// Operators whose spatial attributes tract indexes by axis and divides by.
/// (ConvTranspose, LRN and LayerNormalization are left off the list: tract
/// 0.23 panics or loops on several of their attributes, and a classifier of
/// radiographs does without them.)
const WINDOWED: [&str; 3] = ["Conv", "MaxPool", "AveragePool"];

/// The largest window attribute, group and pad: tract reads them as
/// `usize`, 32 bits in the guest, so 2^32 would pass a positivity check and
/// arrive as 0; and a huge kernel makes it allocate per position.
const WINDOW_MAX: i64 = 1 << 15;

/// The largest number of positions in a kernel.
const KERNEL_VOLUME_MAX: i64 = 1 << 20;

/// Checks one node: an operator on the list, within its input and output
/// counts, its required inputs named, and sane window attributes.
pub(super) fn lint_node(node: &NodeProto) -> Result<(), String> {
    let what = || format!("node {:?} ({})", node.name, node.op_type);
    let Some(&(_, (min_in, max_in), (min_out, max_out))) =
        OPERATORS.iter().find(|(op, ..)| *op == node.op_type)
    else {
        return Err(format!(
            "{} uses an operator outside the ONNX operators medguard accepts",
            what()
        ));
    };
    let inputs = node.input.len();
    if inputs < min_in || inputs > max_in {
        return Err(format!(
            "{} has {inputs} inputs; ONNX allows {}",
            what(),
            range(min_in, max_in)
        ));
    }
    // Optional inputs may be named "" to skip them; required ones may not.
    if let Some(i) = node.input.iter().take(min_in).position(String::is_empty) {
        return Err(format!("{} leaves its required input {i} unnamed", what()));
    }
    // tract counts the inputs a node names, a skipped one included, and
    // reads the last as present: only the required ones and then a run of
    // named ones are accepted.
    if let Some(i) = node.input.iter().position(String::is_empty) {
        return Err(format!(
            "{} skips optional input {i} with an empty name; leave trailing inputs out instead",
            what()
        ));
    }
    let outputs = node.output.len();
    if outputs < min_out || outputs > max_out {
        return Err(format!(
            "{} has {outputs} outputs; ONNX allows {}",
            what(),
            range(min_out, max_out)
        ));
    }
    if node.output.first().is_some_and(String::is_empty) {
        return Err(format!("{} leaves its first output unnamed", what()));
    }
    if WINDOWED.contains(&node.op_type.as_str()) {
        lint_window(node).map_err(|why| format!("{}: {why}", what()))?;
    }
    lint_strings(node).map_err(|why| format!("{}: {why}", what()))?;
    Ok(())
}

/// `TensorProto.DataType.STRING`.
const STRING: i64 = 8;

/// No string tensors through the back doors (a `Cast` to strings, a
/// `Constant` of strings): the tensor lint refuses them everywhere else.
fn lint_strings(node: &NodeProto) -> Result<(), String> {
    let cast_to_string = node.op_type == "Cast" && ints(node, "to").is_some_and(|a| a.i == STRING);
    let constant_strings = node.op_type == "Constant"
        && node
            .attribute
            .iter()
            .any(|a| a.name == "value_string" || a.name == "value_strings");
    if cast_to_string || constant_strings {
        return Err("string tensors are not accepted".into());
    }
    Ok(())
}

fn range(min: usize, max: usize) -> String {
    match (min, max) {
        (a, b) if a == b => a.to_string(),
        (a, MANY) => format!("{a} or more"),
        (a, b) => format!("{a} to {b}"),
    }
}

fn ints<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// `kernel_shape`, `strides`, `dilations` and `pads`: tract indexes them per
/// spatial axis and divides by strides, so they must agree in length (pads
/// twice the others) and be positive (pads non-negative). Pools need a
/// kernel.
fn lint_window(node: &NodeProto) -> Result<(), String> {
    let kernel = ints(node, "kernel_shape").map(|a| a.ints.as_slice());
    // With it, tract's rules tie the weight's and the input's rank to its
    // length, and the lengths checked below tie the rest.
    if kernel.is_none_or(<[i64]>::is_empty) {
        return Err("kernel_shape is required and must not be empty".into());
    }
    if let Some(kernel) = kernel
        && kernel
            .iter()
            .try_fold(1i64, |v, &k| v.checked_mul(k.max(1)))
            .is_none_or(|v| v > KERNEL_VOLUME_MAX)
    {
        return Err(format!(
            "kernel_shape {kernel:?} has more than {KERNEL_VOLUME_MAX} positions"
        ));
    }
    if let Some(group) = ints(node, "group").map(|a| a.i)
        && !(1..=WINDOW_MAX).contains(&group)
    {
        return Err(format!("group {group} must be 1 to {WINDOW_MAX}"));
    }
    let mut spatial = kernel.map(<[i64]>::len);
    for name in ["kernel_shape", "strides", "dilations"] {
        let Some(values) = ints(node, name).map(|a| a.ints.as_slice()) else {
            continue;
        };
        if values.is_empty() || values.iter().any(|&v| !(1..=WINDOW_MAX).contains(&v)) {
            return Err(format!(
                "{name} {values:?} must be positive integers up to {WINDOW_MAX}"
            ));
        }
        match spatial {
            Some(n) if n != values.len() => {
                return Err(format!(
                    "{name} has {} axes where the other window attributes have {n}",
                    values.len()
                ));
            }
            _ => spatial = Some(values.len()),
        }
    }
    if let Some(pads) = ints(node, "pads").map(|a| a.ints.as_slice()) {
        if pads.iter().any(|&p| !(0..=WINDOW_MAX).contains(&p)) {
            return Err(format!("pads {pads:?} must be 0 to {WINDOW_MAX}"));
        }
        if pads.len() % 2 == 1 || spatial.is_some_and(|n| pads.len() != 2 * n) {
            return Err(format!(
                "pads has {} values; it needs a begin and an end per spatial axis",
                pads.len()
            ));
        }
    }
    Ok(())
}
