//! ONNX models built in code, for tests: the guest core's native tests
//! and the sandbox's parity tests (tests/suite/parity.rs includes this file
//! by path), so that both build models the same way.

use prost::Message;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};

/// A node of `op` from `inputs` to `output`, named after its output.
pub fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|&i| i.into()).collect(),
        output: vec![output.into()],
        name: output.into(),
        op_type: op.into(),
        attribute,
        ..NodeProto::default()
    }
}

/// An f32 initializer.
pub fn tensor(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values,
        ..TensorProto::default()
    }
}

/// A model of `nodes` and `initializers` from input `image` (f32
/// `[batch, 1, 28, 28]`) to output `logits`, at operator set 17.
pub fn graph_model(node: Vec<NodeProto>, initializer: Vec<TensorProto>) -> Vec<u8> {
    let graph = GraphProto {
        node,
        name: "test".into(),
        initializer,
        input: vec![ValueInfoProto {
            name: "image".into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto {
                        dim: ["batch", "1", "28", "28"]
                            .map(|d| tensor_shape_proto::Dimension {
                                value: Some(match d.parse::<i64>() {
                                    Ok(n) => tensor_shape_proto::dimension::Value::DimValue(n),
                                    Err(_) => {
                                        tensor_shape_proto::dimension::Value::DimParam(d.into())
                                    }
                                }),
                                ..Default::default()
                            })
                            .to_vec(),
                    }),
                })),
                ..TypeProto::default()
            }),
            ..ValueInfoProto::default()
        }],
        output: vec![ValueInfoProto {
            name: "logits".into(),
            ..ValueInfoProto::default()
        }],
        ..GraphProto::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..ModelProto::default()
    }
    .encode_to_vec()
}

/// An attribute of one integer.
pub fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: 2,
        ..AttributeProto::default()
    }
}

/// An attribute of integers.
pub fn ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: 7,
        ..AttributeProto::default()
    }
}

/// An attribute of one float.
pub fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: 1,
        ..AttributeProto::default()
    }
}

/// An i64 initializer.
pub fn int64s(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: 7,
        int64_data: values.to_vec(),
        ..TensorProto::default()
    }
}
