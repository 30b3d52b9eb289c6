//! Lint of the ONNX protobuf before tract builds a model from it. It runs in
//! the guest, so even the parse of an untrusted model stays in the sandbox.

use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

mod ops;

/// Operator domains of the ONNX standard; anything else is custom code the
/// manifest cannot describe.
const STANDARD_DOMAINS: [&str; 4] = ["", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"];

/// Default-domain operator set versions accepted.
const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// Refuses models that reference external data (bytes the attestation did not
/// hash), use operator domains outside the ONNX standard or operators outside
/// medguard's list (`ops.rs`), break an operator's arity, or hold tensors of
/// a type tract cannot load. Returns the first reason found.
pub(crate) fn lint(model: &ModelProto) -> Result<(), String> {
    for opset in &model.opset_import {
        standard_domain(&opset.domain, "the model imports operator set")?;
    }
    // tract picks each operator's builder by the default domain's version,
    // and the operator table (`ops.rs`) describes the forms from opset 13
    // on: older forms take attributes tract indexes unchecked (Slice-1's
    // starts, ends and axes).
    let default = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .collect::<Vec<_>>();
    match default.as_slice() {
        [v] if OPSETS.contains(v) => {}
        _ => {
            return Err(format!(
                "the model imports the default ONNX operator set as {default:?}; exactly one version from {} to {} is accepted",
                OPSETS.start(),
                OPSETS.end()
            ));
        }
    }
    if let Some(function) = model.functions.first() {
        let domain = function.domain.as_deref().unwrap_or_default();
        return Err(format!(
            "the model defines function {:?} in domain {domain:?}; local functions are not accepted",
            function.name.as_deref().unwrap_or_default()
        ));
    }
    match &model.graph {
        Some(graph) => lint_graph(graph),
        None => Err("the model has no graph".into()),
    }
}

fn standard_domain(domain: &str, what: &str) -> Result<(), String> {
    if STANDARD_DOMAINS.contains(&domain) {
        Ok(())
    } else {
        Err(format!(
            "{what} domain {domain:?}, outside the ONNX standard domains"
        ))
    }
}

fn lint_graph(graph: &GraphProto) -> Result<(), String> {
    // tract indexes its name table with every graph output and panics on a
    // name nothing in the graph defines (fuzz finding 2): refuse such a
    // graph here, with a reason, instead of trapping in the loader. An output
    // of a subgraph that names a value of the enclosing graph directly is
    // refused too: tract wires such names only when a node reads them, and a
    // classifier has no use for it.
    let defined: std::collections::HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .filter(|name| !name.is_empty())
        .collect();
    if let Some(output) = graph
        .output
        .iter()
        .find(|o| !defined.contains(o.name.as_str()))
    {
        return Err(format!(
            "graph {:?} has output {:?}, which no input, initializer or node of that graph defines",
            graph.name, output.name
        ));
    }
    for tensor in &graph.initializer {
        lint_tensor(tensor)?;
    }
    for sparse in &graph.sparse_initializer {
        for tensor in sparse.values.iter().chain(&sparse.indices) {
            lint_tensor(tensor)?;
        }
    }
    for node in &graph.node {
        standard_domain(
            &node.domain,
            &format!("node {:?} ({}) uses operator", node.name, node.op_type),
        )?;
        ops::lint_node(node)?;
        for attribute in &node.attribute {
            lint_attribute(attribute)?;
        }
        if node.op_type == "If" {
            lint_if(node)?;
        }
    }
    Ok(())
}

/// ONNX If: both branches yield as many outputs as the node has. tract
/// unwraps that count while it analyses the graph (fuzz finding 3).
fn lint_if(node: &NodeProto) -> Result<(), String> {
    for branch in ["then_branch", "else_branch"] {
        let outputs = node
            .attribute
            .iter()
            .find(|a| a.name == branch)
            .and_then(|a| a.g.as_ref())
            .map(|g| g.output.len());
        if outputs != Some(node.output.len()) {
            return Err(format!(
                "If node {:?} has {} outputs but its {branch} {}",
                node.name,
                node.output.len(),
                match outputs {
                    Some(n) => format!("has {n}"),
                    None => "is missing".into(),
                }
            ));
        }
    }
    Ok(())
}

fn lint_attribute(a: &AttributeProto) -> Result<(), String> {
    for tensor in a.t.iter().chain(&a.tensors) {
        lint_tensor(tensor)?;
    }
    for graph in a.g.iter().chain(&a.graphs) {
        lint_graph(graph)?;
    }
    Ok(())
}

/// `TensorProto.DataType`s tract 0.23 loads: FLOAT, UINT8, INT8, UINT16,
/// INT16, INT32, INT64, BOOL, FLOAT16, DOUBLE, UINT32, UINT64. Others
/// (strings, bfloat16, complex, 8- and 4-bit floats and integers) reach an
/// `unimplemented!` in its loader (fuzz finding 6).
const LOADABLE_TYPES: [i32; 12] = [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13];

fn lint_tensor(t: &TensorProto) -> Result<(), String> {
    if !LOADABLE_TYPES.contains(&t.data_type) {
        return Err(format!(
            "tensor {:?} has ONNX data type {}, which the inference engine cannot load",
            t.name, t.data_type
        ));
    }
    if t.data_location == Some(EXTERNAL) || !t.external_data.is_empty() {
        return Err(format!(
            "tensor {:?} references external data, which attestation cannot cover; embed the weights in the model file",
            t.name
        ));
    }
    Ok(())
}
