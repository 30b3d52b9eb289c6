//! Interval bound propagation (Gowal et al. 2018) as a rewrite of the ONNX
//! graph: every value `v` that depends on the input becomes a pair
//! (`lower(v)`, `upper(v)`) of tensors that bound it elementwise, and the
//! rewritten graph maps an input box to boxes around the logits.
//!
//! The bounds come from the attested model's own nodes and weights, rewired:
//! an affine node runs once on the box's centre with its weights and once on
//! its radius with their absolute values; a monotone node runs on each end.
//! So the certificate is about the very network that classifies, and the
//! same engine and kernels compute both. Operators without a rule here are
//! refused by name, never approximated.
//!
//! The rules hold in real arithmetic; the engine computes in `f32`, so the
//! host accepts a bound only with a margin to spare (medguard-certify).

use std::collections::HashSet;

use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};

/// Every name the rewrite adds starts with it; a model that already uses
/// it is refused, so nothing added can shadow an original name.
const PREFIX: &str = "medguard/ibp/";

/// ONNX `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

/// ONNX `AttributeProto.AttributeType.INT`.
const INT: i32 = 2;

/// Rewrites `model` (linted, one input, one output) into its interval
/// form: inputs `lower`, `upper` shaped like the model's input; outputs the
/// lower and upper logits, then two scalars over the bounds of every value
/// in the graph: the sum of their magnitudes (finite exactly when every
/// bound is) and the largest magnitude.
pub(crate) fn rewrite(model: &ModelProto) -> Result<ModelProto, String> {
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let mut rewrite = Rewrite::new(graph)?;
    for node in &graph.node {
        rewrite.node(node)?;
    }
    let out = rewrite.finish()?;
    Ok(ModelProto {
        graph: Some(out),
        ..model.clone()
    })
}

/// The name of the lower bound of `value`.
fn lower(value: &str) -> String {
    format!("{PREFIX}lower/{value}")
}

/// The name of the upper bound of `value`.
fn upper(value: &str) -> String {
    format!("{PREFIX}upper/{value}")
}

struct Rewrite<'a> {
    graph: &'a GraphProto,
    input: &'a ValueInfoProto,
    /// Values that do not depend on the input: initializers and the outputs
    /// of nodes that read only such values (and input shapes).
    constant: HashSet<String>,
    /// Values that depend on the input: each has a lower and upper tensor.
    bounded: HashSet<String>,
    nodes: Vec<NodeProto>,
    fresh: usize,
}

impl<'a> Rewrite<'a> {
    fn new(graph: &'a GraphProto) -> Result<Self, String> {
        let names = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().chain(&n.output))
            .chain(graph.initializer.iter().map(|t| &t.name))
            .chain(graph.input.iter().map(|i| &i.name))
            .chain(graph.node.iter().map(|n| &n.name));
        if let Some(clash) = names.into_iter().find(|n| n.starts_with(PREFIX)) {
            return Err(format!(
                "the model names a value {clash:?}, inside the prefix interval bounds reserve"
            ));
        }
        let constant: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
        // tract wires every reader to the last definition of a name, this
        // rewrite to the one before it: a name defined twice could make the
        // bounds describe another network. (An input that is also an
        // initializer is ONNX's old way of giving a default: one value.)
        let mut defined = HashSet::new();
        let definitions = graph
            .initializer
            .iter()
            .map(|t| &t.name)
            .chain(
                graph
                    .input
                    .iter()
                    .map(|i| &i.name)
                    .filter(|n| !constant.contains(*n)),
            )
            .chain(graph.node.iter().flat_map(|n| &n.output))
            .filter(|n| !n.is_empty());
        for name in definitions {
            if !defined.insert(name) {
                return Err(format!(
                    "the model defines {name:?} more than once; interval bounds need each value defined once"
                ));
            }
        }
        let inputs: Vec<&ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !constant.contains(&i.name))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(format!(
                "interval bounds need one input, the model has {}",
                inputs.len()
            ));
        };
        Ok(Self {
            graph,
            input,
            bounded: HashSet::from([input.name.clone()]),
            constant,
            nodes: Vec::new(),
            fresh: 0,
        })
    }

    /// Adds a node `op(inputs)` with `attribute` and returns its output.
    fn emit(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.fresh += 1;
        let output = format!("{PREFIX}{}", self.fresh);
        self.emit_to(op, inputs, attribute, output.clone());
        output
    }

    fn emit_to(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, to: String) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|&i| i.to_owned()).collect(),
            output: vec![to],
            name: format!("{PREFIX}node/{}", self.nodes.len()),
            op_type: op.to_owned(),
            attribute,
            ..NodeProto::default()
        });
    }

    /// `node` again with other inputs and output, attributes as they are.
    fn again(&mut self, node: &NodeProto, inputs: Vec<String>, to: String) {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.emit_to(&node.op_type, &inputs, node.attribute.clone(), to);
    }

    /// The centre and radius of a bounded value's box.
    fn centre_radius(&mut self, value: &str) -> (String, String) {
        let (lo, hi) = (lower(value), upper(value));
        let sum = self.emit("Add", &[&lo, &hi], vec![]);
        let centre = self.emit("Mul", &[&sum, &half()], vec![]);
        let width = self.emit("Sub", &[&hi, &lo], vec![]);
        let radius = self.emit("Mul", &[&width, &half()], vec![]);
        (centre, radius)
    }

    /// Bounds `value` by the box `centre ± radius`.
    fn set_box(&mut self, value: &str, centre: &str, radius: &str) {
        self.emit_to("Sub", &[centre, radius], vec![], lower(value));
        self.emit_to("Add", &[centre, radius], vec![], upper(value));
        self.bounded.insert(value.to_owned());
    }

    /// The absolute value of a constant, computed by the engine when it
    /// folds constants.
    fn abs(&mut self, constant: &str) -> String {
        self.emit("Abs", &[constant], vec![])
    }

    fn node(&mut self, node: &NodeProto) -> Result<(), String> {
        let op = node.op_type.as_str();
        let refuse = |why: &str| {
            Err(format!(
                "node {:?} ({op}) {why}; interval bounds cannot certify this model",
                node.name
            ))
        };
        // Subgraphs read the enclosing graph's names on tract's terms, not
        // this rewrite's: no rule covers them.
        if node
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
        {
            return refuse("has a subgraph");
        }
        // Every input defined by an earlier node: the order tract reads
        // them in is then the order they are rewritten in.
        if let Some(unknown) = node
            .input
            .iter()
            .find(|i| !i.is_empty() && !self.bounded.contains(*i) && !self.constant.contains(*i))
        {
            return refuse(&format!("reads {unknown:?}, which no earlier node defines"));
        }
        let bounded: Vec<usize> = (0..node.input.len())
            .filter(|&k| self.bounded.contains(&node.input[k]))
            .collect();
        if bounded.is_empty() {
            // Independent of the input: kept as it is, for both ends.
            self.nodes.push(node.clone());
            self.constant.extend(node.output.iter().cloned());
            return Ok(());
        }
        let [out] = node.output.as_slice() else {
            return refuse(&format!(
                "has {} outputs; only single-output nodes have interval rules",
                node.output.len()
            ));
        };
        let input = |k: usize| node.input[k].as_str();
        match op {
            // Affine in one input with constant weights: the centre through
            // the node, the radius through the weights' absolute values and
            // no bias.
            "Conv" | "Gemm" | "MatMul" => {
                let (var, weight) = match (op, bounded.as_slice()) {
                    (_, [0]) => (0, 1),
                    ("Gemm" | "MatMul", [1]) => (1, 0),
                    _ => return refuse("is affine in more than one input, or in its weights"),
                };
                if op == "Gemm" && node.input.get(2).is_some_and(|c| self.bounded.contains(c)) {
                    return refuse("adds a bias that depends on the input");
                }
                let (centre, radius) = self.centre_radius(input(var));
                let mut inputs: Vec<String> = node.input.clone();
                inputs[var] = centre;
                let c = self.emit_node(node, inputs);
                let magnitude = self.abs(input(weight));
                let mut inputs = vec![String::new(); 2];
                inputs[var] = radius;
                inputs[weight] = magnitude;
                let mut attribute = node.attribute.clone();
                // Gemm's alpha scales the product: its magnitude scales the radius.
                for a in attribute.iter_mut().filter(|a| a.name == "alpha") {
                    a.f = a.f.abs();
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let r = self.emit(op, &inputs, attribute);
                self.set_box(out, &c, &r);
            }
            "BatchNormalization" => {
                if bounded != [0] {
                    return refuse("normalises with statistics that depend on the input");
                }
                let (centre, radius) = self.centre_radius(input(0));
                let mut inputs = node.input.clone();
                inputs[0] = centre;
                let c = self.emit_node(node, inputs);
                // scale * r / sqrt(var + eps): no shift, no mean.
                let scale = self.abs(input(1));
                let no_bias = self.emit("Sub", &[input(2), input(2)], vec![]);
                let no_mean = self.emit("Sub", &[input(3), input(3)], vec![]);
                let r = self.emit(
                    op,
                    &[&radius, &scale, &no_bias, &no_mean, input(4)],
                    node.attribute.clone(),
                );
                self.set_box(out, &c, &r);
            }
            "Mul" | "Div" => {
                let k = match (op, bounded.as_slice()) {
                    ("Mul", [0]) | ("Div", [0]) => 1,
                    ("Mul", [1]) => 0,
                    _ => {
                        return refuse(
                            "multiplies or divides by a value that depends on the input",
                        );
                    }
                };
                let (centre, radius) = self.centre_radius(input(1 - k));
                let mut inputs = node.input.clone();
                inputs[1 - k] = centre;
                let c = self.emit_node(node, inputs);
                let magnitude = self.abs(input(k));
                let mut inputs = vec![String::new(); 2];
                inputs[1 - k] = radius;
                inputs[k] = magnitude;
                let r = self.emit_node(node, inputs);
                self.set_box(out, &c, &r);
            }
            "Add" => {
                let (lo, hi) = (self.ends(node, lower), self.ends(node, upper));
                self.again(node, lo, lower(out));
                self.again(node, hi, upper(out));
                self.bounded.insert(out.clone());
            }
            "Sub" => {
                // The lower end subtracts the subtrahend's upper end.
                let pick = |k: usize, first: fn(&str) -> String, second: fn(&str) -> String| {
                    let i = &node.input[k];
                    if self.bounded.contains(i) {
                        if k == 0 { first(i) } else { second(i) }
                    } else {
                        i.clone()
                    }
                };
                let lo = vec![pick(0, lower, upper), pick(1, lower, upper)];
                let hi = vec![pick(0, upper, lower), pick(1, upper, lower)];
                self.again(node, lo, lower(out));
                self.again(node, hi, upper(out));
                self.bounded.insert(out.clone());
            }
            "Neg" => {
                self.again(node, vec![upper(input(0))], lower(out));
                self.again(node, vec![lower(input(0))], upper(out));
                self.bounded.insert(out.clone());
            }
            // Non-decreasing in every bounded input: each end maps to itself.
            "Relu" | "Sigmoid" | "Tanh" | "Softplus" | "Identity" | "Exp" | "LeakyRelu"
            | "HardSigmoid" | "Clip" | "Flatten" | "Reshape" | "Transpose" | "Squeeze"
            | "Unsqueeze" | "MaxPool" | "GlobalMaxPool" | "AveragePool" | "GlobalAveragePool"
            | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceSum" | "Pad" | "Slice"
            | "Concat" => {
                if op != "Concat" && bounded != [0] {
                    return refuse("takes a shape, axis or limit that depends on the input");
                }
                if matches!(op, "LeakyRelu" | "HardSigmoid")
                    && node
                        .attribute
                        .iter()
                        .any(|a| a.name == "alpha" && (a.f < 0.0 || a.f.is_nan()))
                {
                    return refuse("has a negative slope, so it is not monotone");
                }
                let (lo, hi) = (self.ends(node, lower), self.ends(node, upper));
                self.again(node, lo, lower(out));
                self.again(node, hi, upper(out));
                self.bounded.insert(out.clone());
            }
            // Depends on the input's shape only, which both ends share.
            "Shape" | "Size" => {
                let mut inputs = node.input.clone();
                inputs[0] = lower(input(0));
                self.again(node, inputs, out.clone());
                self.constant.insert(out.clone());
            }
            _ => return refuse("has no interval rule"),
        }
        Ok(())
    }

    /// The node's inputs with each bounded one replaced by one of its ends.
    fn ends(&self, node: &NodeProto, end: fn(&str) -> String) -> Vec<String> {
        node.input
            .iter()
            .map(|i| {
                if self.bounded.contains(i) {
                    end(i)
                } else {
                    i.clone()
                }
            })
            .collect()
    }

    /// `node` on other inputs, to a fresh output.
    fn emit_node(&mut self, node: &NodeProto, inputs: Vec<String>) -> String {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.emit(&node.op_type, &inputs, node.attribute.clone())
    }

    /// Two scalars over the bounds of every value: the sum of their
    /// magnitudes, finite exactly when all of them are (a sum carries NaN
    /// and infinity on, where the engine's max and ReLU turn NaN into a
    /// number), and the largest magnitude, the scale the host measures
    /// rounding against.
    fn watch(&mut self) -> (String, String) {
        let mut values: Vec<String> = self.bounded.iter().cloned().collect();
        values.sort();
        let all_axes = || {
            vec![AttributeProto {
                name: "keepdims".into(),
                i: 0,
                r#type: INT,
                ..AttributeProto::default()
            }]
        };
        let (mut check, mut scale) = (None::<String>, None::<String>);
        for value in values {
            for end in [lower(&value), upper(&value)] {
                let magnitude = self.emit("Abs", &[&end], vec![]);
                let sum = self.emit("ReduceSum", &[&magnitude], all_axes());
                let max = self.emit("ReduceMax", &[&magnitude], all_axes());
                check = Some(match check {
                    None => sum,
                    Some(c) => self.emit("Add", &[&c, &sum], vec![]),
                });
                scale = Some(match scale {
                    None => max,
                    Some(m) => self.emit("Max", &[&m, &max], vec![]),
                });
            }
        }
        // `finish` checked that the output is bounded, so both exist.
        (check.unwrap_or_default(), scale.unwrap_or_default())
    }

    fn finish(mut self) -> Result<GraphProto, String> {
        let graph = self.graph;
        let [output] = graph.output.as_slice() else {
            return Err(format!(
                "interval bounds need one output, the model has {}",
                graph.output.len()
            ));
        };
        if !self.bounded.contains(&output.name) {
            return Err(format!(
                "the output {:?} does not depend on the input",
                output.name
            ));
        }
        let (check, scale) = self.watch();
        let renamed = |info: &ValueInfoProto, name: String| ValueInfoProto {
            name,
            ..info.clone()
        };
        let scalar = |name: String| ValueInfoProto {
            name,
            ..ValueInfoProto::default()
        };
        let mut initializer = self.graph.initializer.clone();
        initializer.push(TensorProto {
            name: half(),
            data_type: FLOAT,
            float_data: vec![0.5],
            ..TensorProto::default()
        });
        Ok(GraphProto {
            node: self.nodes,
            name: self.graph.name.clone(),
            initializer,
            input: vec![
                renamed(self.input, lower(&self.input.name)),
                renamed(self.input, upper(&self.input.name)),
            ],
            output: vec![
                renamed(output, lower(&output.name)),
                renamed(output, upper(&output.name)),
                scalar(check),
                scalar(scale),
            ],
            ..GraphProto::default()
        })
    }
}

/// The scalar 0.5, an initializer of the rewritten graph.
fn half() -> String {
    format!("{PREFIX}half")
}
