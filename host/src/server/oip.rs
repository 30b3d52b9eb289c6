//! The Open Inference Protocol (KServe v2) REST messages medguard speaks,
//! and the mapping of an inference request's tensor onto the model's input.
//! Plain serde types: no HTTP here.

use std::collections::BTreeMap;

use medguard_attest::Manifest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::input::Batch;

/// `GET /v2`.
#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    /// `medguard`.
    pub name: &'static str,
    /// This build's version.
    pub version: &'static str,
    /// Protocol extensions supported.
    pub extensions: Vec<&'static str>,
}

/// A tensor's metadata: name, datatype, shape with `-1` for the batch axis.
#[derive(Debug, Serialize)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: String,
    /// `FP32` or `UINT8`.
    pub datatype: &'static str,
    /// Dimensions; `-1` is variable.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{m}[/versions/{v}]`.
#[derive(Debug, Serialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// The versions served.
    pub versions: Vec<String>,
    /// `onnx_onnxv1`.
    pub platform: &'static str,
    /// Inputs accepted: the manifest's tensor as FP32, and as UINT8 pixels.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs returned.
    pub outputs: Vec<TensorMetadata>,
}

/// The output every inference returns unless others are asked for: one
/// probability per label.
pub const PROBABILITIES: &str = "probabilities";
/// The model's logits, one per label, the probabilities' source: returned
/// when asked for by name.
pub const LOGITS: &str = "logits";

/// An output the model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Softmax probabilities.
    Probabilities,
    /// Logits.
    Logits,
}

impl Output {
    /// Its tensor name.
    pub fn name(self) -> &'static str {
        match self {
            Output::Probabilities => PROBABILITIES,
            Output::Logits => LOGITS,
        }
    }
}

/// One output of the answer, and whether it goes as bytes after the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    /// Which output.
    pub output: Output,
    /// The binary tensor data extension for it.
    pub binary: bool,
}

impl ModelMetadata {
    /// The metadata of `manifest`, served in `versions`.
    pub fn of(manifest: &Manifest, versions: Vec<String>) -> Self {
        let shape = &manifest.input.shape;
        let image = vec![
            -1,
            i64::from(shape.channels),
            i64::from(shape.height),
            i64::from(shape.width),
        ];
        Self {
            name: manifest.name.clone(),
            versions,
            platform: "onnx_onnxv1",
            inputs: vec![
                TensorMetadata {
                    name: manifest.input.tensor.clone(),
                    datatype: "FP32",
                    shape: image.clone(),
                },
                TensorMetadata {
                    name: manifest.input.tensor.clone(),
                    datatype: "UINT8",
                    shape: image,
                },
            ],
            outputs: [PROBABILITIES, LOGITS]
                .into_iter()
                .map(|name| TensorMetadata {
                    name: name.into(),
                    datatype: "FP32",
                    shape: vec![-1, manifest.output.labels.len() as i64],
                })
                .collect(),
        }
    }
}

/// `POST .../infer` body.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters: the two medguard reads; others are skipped
    /// unparsed.
    #[serde(default)]
    pub parameters: RequestParameters,
    /// Exactly one input: the image tensor.
    pub inputs: Vec<InferInput>,
    /// Requested outputs: `probabilities`, `logits` or both; none asks for
    /// the probabilities.
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
}

/// One input tensor.
#[derive(Debug, Deserialize)]
pub struct InferInput {
    /// Must be the manifest's input tensor.
    pub name: String,
    /// `[N, C, H, W]`.
    pub shape: Vec<i64>,
    /// `FP32` or `UINT8`.
    pub datatype: String,
    /// Row-major values, flat or nested; absent when the tensor is binary.
    #[serde(default)]
    pub data: Option<Values>,
    /// `binary_data_size` when the tensor follows the JSON as bytes.
    #[serde(default)]
    pub parameters: InputParameters,
}

/// The request parameters medguard reads. Any other is skipped as the JSON
/// is read, never held (a body of parameters must not cost more memory
/// than its bytes).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RequestParameters {
    /// Seed of the guest's noise draws, to reproduce a verdict.
    #[serde(deserialize_with = "seed")]
    pub medguard_seed: Option<u64>,
    /// Return every output as bytes after the JSON.
    #[serde(deserialize_with = "flag")]
    pub binary_data_output: Option<bool>,
}

/// The input parameter of the binary tensor data extension.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct InputParameters {
    /// Bytes of this tensor after the JSON.
    #[serde(deserialize_with = "size")]
    pub binary_data_size: Option<u64>,
}

/// The output parameter of the binary tensor data extension.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OutputParameters {
    /// Return this output as bytes after the JSON.
    #[serde(deserialize_with = "flag")]
    pub binary_data: Option<bool>,
}

/// A parameter of type `T`, or an error that names what it must be (serde's
/// own says only "expected u64").
fn typed<'de, D, T>(d: D, what: &str) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d)
        .map(Some)
        .map_err(|_| serde::de::Error::custom(what))
}

fn seed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    typed(d, "parameter medguard_seed must be a non-negative integer")
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    typed(d, "binary_data_size must be a non-negative integer")
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    typed(
        d,
        "binary_data and binary_data_output must be true or false",
    )
}

/// A tensor's `data`: the numbers of a flat or nested array, read straight
/// into one vector (8 bytes per value, whatever the nesting), not into a
/// tree of JSON values that costs 32 bytes for the 2 of `0,`.
#[derive(Debug, Default)]
pub struct Values(pub Vec<f64>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut values = Vec::new();
        d.deserialize_any(Leaves(&mut values))?;
        Ok(Self(values))
    }
}

/// Appends the numbers of a value (a number, or arrays of them to any
/// depth serde_json allows) to one vector.
struct Leaves<'a>(&'a mut Vec<f64>);

impl<'de> serde::de::DeserializeSeed<'de> for Leaves<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Leaves<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("numbers, or arrays of them")
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f64);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f64);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v);
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Leaves(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// One requested output.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    /// Its name.
    pub name: String,
    /// `binary_data: true` asks for the tensor as bytes after the JSON.
    #[serde(default)]
    pub parameters: OutputParameters,
}

/// The binary tensor data extension: the header that says how long the JSON
/// part of a body is, when tensors follow it as bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The name `GET /v2` advertises for that extension.
pub const BINARY_EXTENSION: &str = "binary_tensor_data";

/// The model repository extension (`/v2/repository/...`), as `GET /v2`
/// advertises it.
pub const REPOSITORY_EXTENSION: &str = "model_repository";

/// Splits an inference body into its JSON request and the binary tensor
/// data after it. `header_length` is the `Inference-Header-Content-Length`
/// header; without it the whole body is JSON.
pub fn parse_request<'a>(
    body: &'a [u8],
    header_length: Option<&[u8]>,
) -> Result<(InferRequest, &'a [u8]), TensorError> {
    let split = match header_length {
        None => body.len(),
        Some(text) => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                TensorError(format!(
                    "Inference-Header-Content-Length must be a byte count within the {}-byte body",
                    body.len()
                ))
            })?,
    };
    let (json, binary) = body.split_at(split);
    let request = serde_json::from_slice(json)
        .map_err(|e| TensorError(format!("not an inference request: {e}")))?;
    Ok((request, binary))
}

/// The outputs to answer with, in the request's order: those it names
/// (each at most once), else the probabilities. Each goes as bytes after
/// the JSON when its own `binary_data` says so, else when the request's
/// `binary_data_output` does.
pub fn requested_outputs(request: &InferRequest) -> Result<Vec<Requested>, TensorError> {
    let fallback = request.parameters.binary_data_output.unwrap_or(false);
    if request.outputs.is_empty() {
        return Ok(vec![Requested {
            output: Output::Probabilities,
            binary: fallback,
        }]);
    }
    let mut requested: Vec<Requested> = Vec::with_capacity(2);
    for o in &request.outputs {
        let output = match o.name.as_str() {
            PROBABILITIES => Output::Probabilities,
            LOGITS => Output::Logits,
            _ => {
                return Err(TensorError(format!(
                    "output {:?} does not exist; this model returns {PROBABILITIES:?} and {LOGITS:?}",
                    o.name
                )));
            }
        };
        if requested.iter().any(|r| r.output == output) {
            return Err(TensorError(format!(
                "output {:?} is asked for twice",
                o.name
            )));
        }
        requested.push(Requested {
            output,
            binary: o.parameters.binary_data.unwrap_or(fallback),
        });
    }
    Ok(requested)
}

/// `POST .../infer` answer.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The request's id, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// medguard's verdicts, evidence, seed and receipts.
    pub parameters: BTreeMap<String, Value>,
    /// The outputs asked for (the probabilities unless others were named).
    pub outputs: Vec<OutputTensor>,
}

/// One output tensor.
#[derive(Debug, Serialize)]
pub struct OutputTensor {
    /// Its name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// `FP32`.
    pub datatype: &'static str,
    /// Row-major values; none when they follow the JSON as bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
    /// `binary_data_size` when the values follow the JSON as bytes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, Value>,
}

/// Why a request's tensor does not fit the model (answered 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TensorError(pub String);

/// The request's one input as a batch for `manifest`: the tensor name, a
/// `[N, C, H, W]` shape with N from 1 to `max_batch`, FP32 values (the
/// guest checks their range) or UINT8 pixels (mapped to [0, 1], as the
/// manifest's pixel mapping does for 8-bit images), and exactly as many
/// values as the shape says: in `data`, flat or nested, or as the
/// little-endian bytes in `binary` (the binary tensor data extension).
pub fn batch_of(
    request: &InferRequest,
    binary: &[u8],
    manifest: &Manifest,
) -> Result<Batch, TensorError> {
    let bad = |why: String| Err(TensorError(why));
    let [input] = request.inputs.as_slice() else {
        return bad(format!(
            "{} inputs; this model takes exactly one, {:?}",
            request.inputs.len(),
            manifest.input.tensor
        ));
    };
    if input.name != manifest.input.tensor {
        return bad(format!(
            "input {:?}; this model's input is {:?}",
            input.name, manifest.input.tensor
        ));
    }
    let s = &manifest.input.shape;
    let expected = [s.channels, s.height, s.width];
    let dims: Option<Vec<u32>> = input.shape.iter().map(|&d| u32::try_from(d).ok()).collect();
    let shape = match dims.as_deref() {
        Some(&[n, c, h, w]) if [c, h, w] == expected && n >= 1 && n <= manifest.max_batch => {
            [n, c, h, w]
        }
        _ => {
            return bad(format!(
                "shape {:?}; this model takes [N, {}, {}, {}] with N from 1 to {}",
                input.shape, s.channels, s.height, s.width, manifest.max_batch
            ));
        }
    };
    // At most max_batch * C * H * W, which the manifest bounds; checked all
    // the same, and never reserved beyond what a body can hold.
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
        .ok_or_else(|| TensorError(format!("shape {:?} is too large", input.shape)))?;
    let source_bits = match input.datatype.as_str() {
        "FP32" => 0,
        "UINT8" => 8,
        other => {
            return bad(format!(
                "datatype {other:?}; this model takes FP32 values or UINT8 pixels"
            ));
        }
    };
    let data = match binary_size(input)? {
        Some(size) => {
            if input.data.is_some() {
                return bad("input has both data and binary_data_size; send one".into());
            }
            binary_values(binary, size, count, source_bits)?
        }
        None => {
            if !binary.is_empty() {
                return bad(format!(
                    "{} bytes follow the JSON but no input has binary_data_size",
                    binary.len()
                ));
            }
            let data = input
                .data
                .as_ref()
                .ok_or_else(|| TensorError("input has neither data nor binary_data_size".into()))?;
            json_values(data, count, source_bits, &input.shape)?
        }
    };
    Ok(Batch {
        shape,
        data,
        source_bits,
    })
}

/// The input's `binary_data_size`, if it is binary.
fn binary_size(input: &InferInput) -> Result<Option<usize>, TensorError> {
    input
        .parameters
        .binary_data_size
        .map(|n| {
            usize::try_from(n)
                .map_err(|_| TensorError(format!("binary_data_size {n} is too large")))
        })
        .transpose()
}

/// `count` values from the bytes after the JSON: 4-byte little-endian FP32
/// or one byte per UINT8 pixel, exactly `size` bytes, which must be all the
/// bytes there are (the model has one input).
fn binary_values(
    binary: &[u8],
    size: usize,
    count: usize,
    source_bits: u8,
) -> Result<Vec<f32>, TensorError> {
    let width = if source_bits == 8 { 1 } else { 4 };
    if binary.len() != size || Some(size) != count.checked_mul(width) {
        return Err(TensorError(format!(
            "binary_data_size is {size} and {} bytes follow the JSON; the shape needs {count} values of {width} bytes",
            binary.len()
        )));
    }
    Ok(if source_bits == 8 {
        binary.iter().map(|&b| f32::from(b) / 255.0).collect()
    } else {
        binary
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

/// `count` values from JSON `data`, flat or nested.
fn json_values(
    data: &Values,
    count: usize,
    source_bits: u8,
    shape: &[i64],
) -> Result<Vec<f32>, TensorError> {
    let values = &data.0;
    if values.len() != count {
        return Err(TensorError(format!(
            "shape {shape:?} needs {count} values; {} were sent",
            values.len()
        )));
    }
    if source_bits == 8 {
        values
            .iter()
            .map(|&x| (x.fract() == 0.0 && (0.0..=255.0).contains(&x)).then_some(x as f32 / 255.0))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| TensorError("UINT8 data must be integers 0 to 255".into()))
    } else {
        Ok(values.iter().map(|&x| x as f32).collect())
    }
}

/// An error body: `{"error": "..."}`, what every OIP client reads.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
    /// For a rejected input: the verdicts, evidence and receipts.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, Value>,
}
