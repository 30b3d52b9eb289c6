//! `medguard serve`'s Open Inference Protocol routes, in process: the
//! router is driven request by request (tower's `oneshot`), over the real
//! guard, sandbox and ledger.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use medguard::guard::Receipt;
use medguard::guard::{Admission, Guard, ScreeningPolicy};
use medguard::guest::GuestModule;
use medguard::sandbox::{GuestProgram, Runtime};
use medguard::server::auth::Tokens;
use medguard::server::{Limits, Server, router};
use medguard_attest::Sha256Digest;
use medguard_ledger::entry::Entry;
use medguard_tests::{model_dir, repo_root, shared_program_owned};
use serde_json::{Value, json};
use tower::ServiceExt as _;

mod listen;

struct Fixture {
    server: Arc<Server>,
    guard: Arc<Guard>,
    _data: tempfile::TempDir,
}

fn fixture(tokens: Option<Tokens>, limits: Limits) -> Fixture {
    fixture_with(shared_program_owned(), tokens, limits)
}

fn fixture_with(program: GuestProgram, tokens: Option<Tokens>, limits: Limits) -> Fixture {
    fixture_under(program, tokens, limits, ScreeningPolicy::Enforce)
}

fn fixture_under(
    program: GuestProgram,
    tokens: Option<Tokens>,
    limits: Limits,
    policy: ScreeningPolicy,
) -> Fixture {
    fixture_serving(&model_dir(), program, tokens, limits, policy)
}

fn fixture_serving(
    dir: &std::path::Path,
    program: GuestProgram,
    tokens: Option<Tokens>,
    limits: Limits,
    policy: ScreeningPolicy,
) -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let guard = Guard::open(data.path(), medguard_tests::demo_policy()).unwrap();
    let Admission::Admitted { model, .. } = guard.admit(dir).unwrap() else {
        panic!("{} is admitted", dir.display());
    };
    let guard = Arc::new(guard.with_sandbox(program));
    let server = Arc::new(Server::new(
        guard.clone(),
        vec![*model],
        tokens,
        policy,
        limits,
    ));
    Fixture {
        server,
        guard,
        _data: data,
    }
}

async fn call(
    server: &Arc<Server>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .unwrap();
    let response = router(server.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

/// The bundled sample `file` as the FP32 tensor and as UINT8 pixels.
fn tensors(file: &str) -> (Vec<f32>, Vec<u8>) {
    let bytes = std::fs::read(model_dir().join(file)).unwrap();
    let model = medguard_tests::bundled_model();
    let m = model.manifest();
    let batch = medguard::input::decode(&bytes, &m.input, m.max_batch).unwrap();
    let pixels = batch
        .data
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    (batch.data, pixels)
}

fn infer_body(datatype: &str, data: Value, seed: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "r1",
        "parameters": {"medguard_seed": seed},
        "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": datatype, "data": data}],
    }))
    .unwrap()
}

fn results(parameters: &Value) -> Vec<Value> {
    serde_json::from_str(parameters["medguard_results"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn health_and_metadata_follow_the_protocol() {
    let f = fixture(None, Limits::default());
    assert_eq!(
        call(&f.server, "GET", "/v2/health/live", None, None).await,
        (StatusCode::OK, json!({"live": true}))
    );
    assert_eq!(
        call(&f.server, "GET", "/v2/health/ready", None, None).await,
        (StatusCode::OK, json!({"ready": true}))
    );
    let (status, meta) = call(&f.server, "GET", "/v2", None, None).await;
    assert_eq!(
        (status, meta["name"].as_str()),
        (StatusCode::OK, Some("medguard"))
    );
    assert_eq!(
        meta["extensions"],
        json!(["binary_tensor_data", "model_repository"])
    );
    let (status, model) = call(&f.server, "GET", "/v2/models/pneumonia-cnn", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(model["platform"], "onnx_onnxv1");
    assert_eq!(model["inputs"][0]["shape"], json!([-1, 1, 28, 28]));
    assert_eq!(
        model["outputs"],
        json!([
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "logits", "datatype": "FP32", "shape": [-1, 2]},
        ])
    );
    let version = model["versions"][0].as_str().unwrap().to_owned();
    let (status, _) = call(
        &f.server,
        "GET",
        &format!("/v2/models/pneumonia-cnn/versions/{version}/ready"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for uri in [
        "/v2/models/no-such-model",
        "/v2/models/pneumonia-cnn/versions/9.9.9",
        "/v2/models/no-such-model/ready",
        "/v3/anything",
    ] {
        let (status, body) = call(&f.server, "GET", uri, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(body["error"].is_string(), "{uri}: {body}");
    }
    f.server.set_ready(false);
    let (status, body) = call(&f.server, "GET", "/v2/health/ready", None, None).await;
    assert_eq!(
        (status, body),
        (StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fp32_and_uint8_give_the_same_answer_with_a_receipt() {
    let f = fixture(None, Limits::default());
    let (values, pixels) = tensors("samples/normal-1.png");
    let uri = "/v2/models/pneumonia-cnn/infer";
    let (status, fp32) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(infer_body("FP32", json!(values), 7)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{fp32}");
    assert_eq!(fp32["id"], "r1");
    assert_eq!(fp32["outputs"][0]["shape"], json!([1, 2]));
    let p: Vec<f64> = serde_json::from_value(fp32["outputs"][0]["data"].clone()).unwrap();
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
    // UINT8 pixels, nested [1][1][28][28], the same seed: the same answer.
    let nested: Vec<Vec<Vec<Vec<u8>>>> =
        vec![vec![pixels.chunks(28).map(<[u8]>::to_vec).collect()]];
    let (status, uint8) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(infer_body("UINT8", json!(nested), 7)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{uint8}");
    assert_eq!(uint8["outputs"], fp32["outputs"]);
    assert_eq!(uint8["parameters"]["medguard_seed"], 7);
    let verdict = fp32["parameters"]["medguard_verdict"].as_str().unwrap();
    assert!(["accept", "flag"].contains(&verdict), "{verdict}");
    // Each result carries a receipt that verifies with the ledger's key alone.
    for r in results(&fp32["parameters"]) {
        let receipt: Receipt = serde_json::from_value(r["receipt"].clone()).unwrap();
        receipt.verify(f.guard.verifier()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacked_image_is_refused_with_its_evidence_and_no_prediction() {
    let f = fixture(None, Limits::default());
    let (values, _) = tensors("adversarial/pgd8-1.png");
    let (status, body) = call(
        &f.server,
        "POST",
        "/v2/models/pneumonia-cnn/infer",
        None,
        Some(infer_body("FP32", json!(values), 1)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("rejected"),
        "{body}"
    );
    assert!(body.get("outputs").is_none());
    let r = &results(&body["parameters"])[0];
    assert_eq!(r["verdict"], "reject");
    assert!(r["label"].is_null());
    // The evidence (margin, per-class p-values) would rebuild the withheld
    // prediction: only the verdict and the receipt come back.
    assert!(
        r.get("statistics").is_none() && r.get("p_value").is_none(),
        "{r}"
    );
    let receipt: Receipt = serde_json::from_value(r["receipt"].clone()).unwrap();
    receipt.verify(f.guard.verifier()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_gate_each_model_and_the_ledger_names_the_caller() {
    let reader = Sha256Digest::of(b"reader-secret");
    let other = Sha256Digest::of(b"other-secret");
    let tokens = Tokens::parse(&format!(
        "[[tokens]]\nname = \"pacs-reader\"\nsha256 = \"{reader}\"\nmodels = [\"pneumonia-cnn\"]\n\
         [[tokens]]\nname = \"other\"\nsha256 = \"{other}\"\nmodels = [\"another-model\"]\n"
    ))
    .unwrap();
    let f = fixture(Some(tokens), Limits::default());
    let (values, _) = tensors("samples/normal-2.png");
    let uri = "/v2/models/pneumonia-cnn/infer";
    let body = || Some(infer_body("FP32", json!(values), 3));
    for (token, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong"), StatusCode::UNAUTHORIZED),
        (Some("other-secret"), StatusCode::FORBIDDEN),
    ] {
        let (status, answer) = call(&f.server, "POST", uri, token, body()).await;
        assert_eq!(status, expected, "{token:?}: {answer}");
        assert!(answer["error"].is_string());
    }
    // An unknown caller learns nothing about which models exist.
    for (method, uri) in [
        ("POST", "/v2/models/nope/infer"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/pneumonia-cnn"),
        ("GET", "/v2/models/pneumonia-cnn/ready"),
    ] {
        let b = if method == "POST" { body() } else { None };
        let (status, _) = call(&f.server, method, uri, None, b).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
    let (status, answer) = call(&f.server, "POST", uri, Some("reader-secret"), body()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let receipt: Receipt =
        serde_json::from_value(results(&answer["parameters"])[0]["receipt"].clone()).unwrap();
    let entry: Value = serde_json::from_str(&receipt.entry).unwrap();
    assert_eq!(entry["caller"], "pacs-reader");
    assert!(!receipt.entry.contains("reader-secret"));
    // Health stays open.
    let (status, _) = call(&f.server, "GET", "/v2/health/ready", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_requests_get_a_json_error_and_the_right_status() {
    let f = fixture(
        None,
        Limits {
            max_body_bytes: 64 << 10,
            ..Limits::default()
        },
    );
    let uri = "/v2/models/pneumonia-cnn/infer";
    let good = vec![0.5f32; 784];
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (b"not json".to_vec(), StatusCode::BAD_REQUEST, "not an inference request"),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 27], "datatype": "FP32", "data": good}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "shape",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP64", "data": good}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "datatype",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": good}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "input \"pixels\"",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": &good[..700]}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "needs 784 values",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": vec![300; 784]}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "0 to 255",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [100, 1, 28, 28], "datatype": "FP32", "data": []}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "N from 1",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": vec![2.0f32; 784]}]})).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "outside the model's range",
        ),
        (
            serde_json::to_vec(&json!({"parameters": {"medguard_seed": "seven"}, "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": good}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "medguard_seed",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [[true]]}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "numbers, or arrays of them",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": good}], "outputs": [{"name": "scores"}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "output \"scores\" does not exist",
        ),
        (
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": good}], "outputs": [{"name": "logits"}, {"name": "logits", "parameters": {"binary_data": true}}]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "asked for twice",
        ),
        (vec![b' '; 65 << 10], StatusCode::PAYLOAD_TOO_LARGE, ""),
    ];
    let (status, answer) = call(&f.server, "GET", uri, None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer["error"].is_string());
    for (body, expected, needle) in cases {
        let (status, answer) = call(&f.server, "POST", uri, None, Some(body)).await;
        assert_eq!(status, expected, "{answer}");
        if expected != StatusCode::PAYLOAD_TOO_LARGE {
            let error = answer["error"].as_str().unwrap();
            assert!(error.contains(needle), "{needle:?} not in {error:?}");
        }
    }
    // And the server still answers.
    let (status, _) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(infer_body("FP32", json!(good), 1)),
    )
    .await;
    assert!(
        status == StatusCode::OK || status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_past_its_deadline_is_504_and_a_full_queue_is_503() {
    // A guest whose model load never returns, stopped after one second;
    // one sandbox and no queue.
    let runtime = Runtime::new(medguard::sandbox::Limits {
        deadline: std::time::Duration::from_secs(1),
        ..medguard::sandbox::Limits::default()
    })
    .unwrap();
    let spin =
        medguard_tests::hostile_component("(loop $l (br $l)) unreachable", "unreachable", "");
    let (program, _) = runtime
        .load_guest(&GuestModule::hostile_for_tests(spin), None)
        .unwrap();
    let f = fixture_with(
        program,
        None,
        Limits {
            concurrency: 1,
            queue: 0,
            ..Limits::default()
        },
    );
    let uri = "/v2/models/pneumonia-cnn/infer";
    let body = || Some(infer_body("FP32", json!(vec![0.5f32; 784]), 1));
    let server = f.server.clone();
    let first = body();
    let slow = tokio::spawn(async move { call(&server, "POST", uri, None, first).await });
    // While the first holds the one sandbox, the next finds no place.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, answer) = call(&f.server, "POST", uri, None, body()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("queue is full"),
        "{answer}"
    );
    let (status, answer) = slow.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("deadline"),
        "{answer}"
    );
    // The place came back: the next request runs (and times out) again.
    let (status, _) = call(&f.server, "POST", uri, None, body()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_time_budget_is_504_naming_the_budget() {
    // Each call may run ten seconds; the request as a whole, 300 ms. The
    // guest loads its model and then never finishes screening.
    let runtime = Runtime::new(medguard::sandbox::Limits {
        deadline: std::time::Duration::from_secs(10),
        session_budget: Some(std::time::Duration::from_millis(300)),
        ..medguard::sandbox::Limits::default()
    })
    .unwrap();
    let spin = medguard_tests::hostile_screening_component("(loop $l (br $l)) unreachable", "");
    let (program, _) = runtime
        .load_guest(&GuestModule::hostile_for_tests(spin), None)
        .unwrap();
    let f = fixture_with(program, None, Limits::default());
    let body = infer_body("FP32", json!(vec![0.5f32; 784]), 1);
    let started = std::time::Instant::now();
    let (status, answer) = call(
        &f.server,
        "POST",
        "/v2/models/pneumonia-cnn/infer",
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("300ms time budget"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the budget, not the deadline, stopped it"
    );
}

/// A request under the binary tensor data extension: the JSON, then the
/// tensor's bytes; the header says where the JSON ends.
async fn call_binary(
    server: &Arc<Server>,
    json_part: Value,
    tensor: &[u8],
    header_length: Option<String>,
) -> (StatusCode, Value, Vec<u8>) {
    let mut body = serde_json::to_vec(&json_part).unwrap();
    let length = header_length.unwrap_or_else(|| body.len().to_string());
    body.extend_from_slice(tensor);
    let request = Request::builder()
        .method("POST")
        .uri("/v2/models/pneumonia-cnn/infer")
        .header("Inference-Header-Content-Length", length)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(body))
        .unwrap();
    let response = router(server.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let split = response
        .headers()
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let split = split.unwrap_or(bytes.len());
    let value = serde_json::from_slice(&bytes[..split]).unwrap();
    (status, value, bytes[split..].to_vec())
}

fn binary_input(datatype: &str, size: usize) -> Value {
    json!({"name": "image", "shape": [1, 1, 28, 28], "datatype": datatype,
           "parameters": {"binary_data_size": size}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensors_give_the_answer_json_gives() {
    let f = fixture(None, Limits::default());
    let (values, pixels) = tensors("samples/pneumonia-1.png");
    let (status, json_answer) = call(
        &f.server,
        "POST",
        "/v2/models/pneumonia-cnn/infer",
        None,
        Some(infer_body("FP32", json!(values), 11)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json_answer}");
    let expected: Vec<f32> =
        serde_json::from_value(json_answer["outputs"][0]["data"].clone()).unwrap();

    // FP32 bytes in, JSON out.
    let fp32: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (status, answer, rest) = call_binary(
        &f.server,
        json!({"parameters": {"medguard_seed": 11}, "inputs": [binary_input("FP32", fp32.len())]}),
        &fp32,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(rest.is_empty());
    assert_eq!(answer["outputs"], json_answer["outputs"]);

    // UINT8 bytes in, binary out (per output, and for the whole request).
    for outputs in [
        json!({"outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]}),
        json!({"parameters": {"binary_data_output": true, "medguard_seed": 11}}),
    ] {
        let mut request = json!({"parameters": {"medguard_seed": 11},
            "inputs": [binary_input("UINT8", pixels.len())]});
        for (k, v) in outputs.as_object().unwrap() {
            request[k] = v.clone();
        }
        let (status, answer, rest) = call_binary(&f.server, request, &pixels, None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let output = &answer["outputs"][0];
        assert!(output.get("data").is_none(), "{output}");
        assert_eq!(output["parameters"]["binary_data_size"], 8);
        let got: Vec<f32> = rest
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(
            answer["parameters"]["medguard_verdict"],
            json_answer["parameters"]["medguard_verdict"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logits_come_when_asked_for_and_give_the_probabilities() {
    let f = fixture(None, Limits::default());
    let (values, pixels) = tensors("samples/pneumonia-1.png");
    let uri = "/v2/models/pneumonia-cnn/infer";
    let (status, plain) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(infer_body("FP32", json!(values), 5)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    assert_eq!(plain["outputs"].as_array().unwrap().len(), 1, "{plain}");
    let probabilities: Vec<f32> =
        serde_json::from_value(plain["outputs"][0]["data"].clone()).unwrap();

    // Logits as bytes, then the probabilities as JSON, in the order asked.
    let (status, answer, rest) = call_binary(
        &f.server,
        json!({"parameters": {"medguard_seed": 5},
            "inputs": [binary_input("UINT8", pixels.len())],
            "outputs": [{"name": "logits", "parameters": {"binary_data": true}},
                        {"name": "probabilities"}]}),
        &pixels,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let outputs = answer["outputs"].as_array().unwrap();
    assert_eq!(
        (outputs[0]["name"].as_str(), outputs[1]["name"].as_str()),
        (Some("logits"), Some("probabilities"))
    );
    assert_eq!(outputs[0]["shape"], json!([1, 2]));
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], 8);
    assert!(outputs[0].get("data").is_none(), "{answer}");
    assert_eq!(outputs[1]["data"], plain["outputs"][0]["data"]);
    let logits: Vec<f32> = rest
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(logits.len(), 2);
    // Softmax of the logits is the probabilities, and their argmax the label.
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l).exp()).collect();
    let total: f64 = exps.iter().sum();
    for (e, p) in exps.iter().zip(&probabilities) {
        assert!((e / total - f64::from(*p)).abs() < 1e-5);
    }
    let label = results(&plain["parameters"])[0]["label"].clone();
    let argmax = if logits[1] > logits[0] {
        "pneumonia"
    } else {
        "normal"
    };
    assert_eq!(label, argmax);

    // Logits alone, as JSON: the same numbers.
    let mut request: Value = serde_json::from_slice(&infer_body("FP32", json!(values), 5)).unwrap();
    request["outputs"] = json!([{"name": "logits"}]);
    let (status, only) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(serde_json::to_vec(&request).unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{only}");
    assert_eq!(only["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(only["outputs"][0]["name"], "logits");
    let json_logits: Vec<f32> = serde_json::from_value(only["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(json_logits, logits);

    // A rejected input under enforce gives no logits either.
    let (values, _) = tensors("adversarial/pgd8-1.png");
    let mut request: Value = serde_json::from_slice(&infer_body("FP32", json!(values), 1)).unwrap();
    request["outputs"] = json!([{"name": "logits"}]);
    let (status, body) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(serde_json::to_vec(&request).unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.get("outputs").is_none(), "{body}");
    assert!(results(&body["parameters"])[0]["label"].is_null());
    assert!(!body.to_string().contains("logits"), "{body}");

    // Under the flag-only policy the same image is answered, and its
    // logits still give its probabilities.
    let f = fixture_under(
        shared_program_owned(),
        None,
        Limits::default(),
        ScreeningPolicy::FlagOnly,
    );
    request["outputs"] = json!([{"name": "logits"}, {"name": "probabilities"}]);
    let (status, body) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(serde_json::to_vec(&request).unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(results(&body["parameters"])[0]["verdict"], "reject");
    let logits: Vec<f64> = serde_json::from_value(body["outputs"][0]["data"].clone()).unwrap();
    let probabilities: Vec<f64> =
        serde_json::from_value(body["outputs"][1]["data"].clone()).unwrap();
    let total: f64 = logits.iter().map(|l| l.exp()).sum();
    for (l, p) in logits.iter().zip(&probabilities) {
        assert!((l.exp() / total - p).abs() < 1e-5, "{body}");
    }
}

#[tokio::test]
async fn malformed_binary_requests_are_400() {
    let f = fixture(None, Limits::default());
    let fp32 = vec![0u8; 784 * 4];
    let request = |input: Value| json!({"inputs": [input]});
    let cases = [
        // The size says one thing, the bytes another.
        (
            request(binary_input("FP32", 784 * 4)),
            &fp32[..100],
            None,
            "bytes follow",
        ),
        (
            request(binary_input("FP32", 784)),
            &fp32[..784],
            None,
            "values of 4 bytes",
        ),
        (
            request(binary_input("UINT8", 784)),
            &fp32[..],
            None,
            "bytes follow",
        ),
        // Bytes with no binary input, and a header past the body.
        (
            infer_json(),
            &fp32[..4],
            None,
            "no input has binary_data_size",
        ),
        (
            request(binary_input("FP32", 784 * 4)),
            &fp32[..],
            Some("99999999".into()),
            "within",
        ),
        (
            request(binary_input("FP32", 784 * 4)),
            &fp32[..],
            Some("-1".into()),
            "byte count",
        ),
        (
            request(
                json!({"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                "parameters": {"binary_data_size": "many"}}),
            ),
            &fp32[..],
            None,
            "non-negative integer",
        ),
        (
            request(json!({"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32"})),
            &[][..],
            None,
            "neither data nor binary_data_size",
        ),
    ];
    for (json_part, tensor, header_length, needle) in cases {
        let (status, answer, _) = call_binary(&f.server, json_part, tensor, header_length).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{needle}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
}

fn infer_json() -> Value {
    serde_json::from_slice(&infer_body("FP32", json!(vec![0.5f32; 784]), 1)).unwrap()
}

async fn metrics_text(server: &Arc<Server>) -> String {
    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = router(server.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The value of the sample `name{labels}` in an OpenMetrics text.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_answers_verdicts_and_time_without_patient_data() {
    let f = fixture(None, Limits::default());
    let uri = "/v2/models/pneumonia-cnn/infer";
    let (clean, _) = tensors("samples/normal-1.png");
    let (attacked, _) = tensors("adversarial/pgd8-1.png");
    let (status, _) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(infer_body("FP32", json!(clean), 5)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &f.server,
        "POST",
        uri,
        None,
        Some(infer_body("FP32", json!(attacked), 5)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = call(&f.server, "POST", uri, None, Some(b"{}".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &f.server,
        "POST",
        "/v2/models/patient-jane-doe/infer",
        None,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let text = metrics_text(&f.server).await;
    let version = medguard_tests::bundled_model()
        .manifest()
        .version
        .to_string();
    let model = format!("model=\"pneumonia-cnn\",version=\"{version}\"");
    let get = |name: &str, labels: &str| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
    };
    assert_eq!(get("medguard_inference_request_success_total", &model), 1.0);
    for (reason, n) in [("refused", 1.0), ("bad_request", 1.0)] {
        let labels = format!("{model},reason=\"{reason}\"");
        assert_eq!(get("medguard_inference_request_failure_total", &labels), n);
    }
    assert_eq!(get("medguard_request_denied_total", "status=\"404\""), 1.0);
    assert_eq!(get("medguard_inference_exec_count_total", &model), 2.0);
    assert_eq!(get("medguard_inference_count_total", &model), 2.0);
    assert_eq!(
        get(
            "medguard_verdict_count_total",
            &format!("{model},verdict=\"reject\"")
        ),
        1.0
    );
    assert_eq!(get("medguard_sandbox_instantiation_seconds_count", ""), 2.0);
    assert!(get("medguard_inference_compute_infer_duration_us_total", &model) > 0.0);
    assert!(get("medguard_sandbox_instantiation_duration_us_total", &model) > 0.0);
    assert!(get("medguard_ledger_commit_duration_us_total", "") > 0.0);
    assert_eq!(
        get("medguard_inference_request_duration_seconds_count", &model),
        3.0
    );
    // The path a client chose is not a label.
    assert!(!text.contains("jane"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_medguard_does_not_read_are_skipped() {
    let f = fixture(None, Limits::default());
    let (values, _) = tensors("samples/normal-2.png");
    let body = serde_json::to_vec(&json!({
        "parameters": {"medguard_seed": 3, "priority": 1, "vendor": {"nested": [1, 2, {"deep": true}]}},
        "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": values,
                    "parameters": {"shared_memory_region": "x"}}],
    }))
    .unwrap();
    let (status, answer) = call(
        &f.server,
        "POST",
        "/v2/models/pneumonia-cnn/infer",
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["parameters"]["medguard_seed"], 3);
}

/// A server whose drift windows are 8 inputs, at a false-alarm rate of
/// 0.01: one request of 8 images fills them.
fn drift_fixture() -> Fixture {
    let mut f = fixture(None, Limits::default());
    let server = Arc::try_unwrap(f.server).ok().unwrap();
    f.server = Arc::new(server.with_drift(medguard::drift::DriftConfig {
        window: 8,
        false_alarm: 0.01,
        ..medguard::drift::DriftConfig::default()
    }));
    f
}

/// Posts `images` (784 values each) as one FP32 request with seed 2;
/// answers the status, the body, and the ledger's entries the request added
/// (from the size before it).
async fn post_images(f: &Fixture, images: &[f32]) -> (StatusCode, Value, Vec<Entry>) {
    let before = f.guard.checkpoint().unwrap().0;
    let body = serde_json::to_vec(&json!({
        "parameters": {"medguard_seed": 2},
        "inputs": [{"name": "image", "shape": [images.len() / 784, 1, 28, 28],
                    "datatype": "FP32", "data": images}],
    }))
    .unwrap();
    let (status, answer) = call(
        &f.server,
        "POST",
        "/v2/models/pneumonia-cnn/infer",
        None,
        Some(body),
    )
    .await;
    let size = f.guard.checkpoint().unwrap().0;
    let entries = (before..size).map(|i| f.guard.entry(i).unwrap()).collect();
    (status, answer, entries)
}

/// How many of `entries` are of `kind`.
fn count(entries: &[Entry], kind: &str) -> usize {
    entries.iter().filter(|e| e.kind() == kind).count()
}

/// The metric labels of the bundled model, then `extra` ones.
fn bundled_labels(extra: &str) -> String {
    let version = medguard_tests::bundled_model()
        .manifest()
        .version
        .to_string();
    format!("model=\"pneumonia-cnn\",version=\"{version}\"{extra}")
}

/// The first images of the committed contrast-0.6 corruption set.
fn contrast_06(images: usize) -> Vec<f32> {
    let bytes =
        std::fs::read(repo_root().join("tests/adversarial/sets/corruption-contrast-0.6.npz"))
            .unwrap();
    let shifted = medguard::input::read_npz_images(&bytes, "images").unwrap();
    shifted.data[..images * 784].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_attacks_raises_the_drift_alarm_in_metrics_and_ledger() {
    let f = drift_fixture();
    let (attacked, _) = tensors("adversarial/pgd8-1.png");
    let eight: Vec<f32> = attacked.iter().copied().cycle().take(8 * 784).collect();
    let (status, _, entries) = post_images(&f, &eight).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Eight verdicts and one drift alarm in the ledger (eight copies of one
    // image may also move the pixel statistics' window: not counted here).
    assert_eq!(count(&entries, "inference"), 8, "{entries:?}");
    assert_eq!(count(&entries, "drift-alarm"), 1, "{entries:?}");
    let text = metrics_text(&f.server).await;
    let model = bundled_labels("");
    assert_eq!(
        sample(&text, "medguard_drift_alarm", &model),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "medguard_drift_alarms_total", &model),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_scanner_raises_the_input_drift_alarm_in_metrics_and_ledger() {
    // Images with their contrast scaled to 0.6: the screening statistics
    // pass them as clean (README, "Serving"), their pixels do not.
    let f = drift_fixture();
    let (status, answer, entries) = post_images(&f, &contrast_06(8)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(count(&entries, "inference"), 8, "{entries:?}");
    let Some(Entry::InputDriftAlarm {
        statistic,
        window,
        mean_rank,
        threshold,
        ..
    }) = entries
        .into_iter()
        .find(|e| e.kind() == "input-drift-alarm")
    else {
        panic!("no input drift alarm in the ledger");
    };
    assert_eq!((statistic.as_str(), window), ("contrast", 8));
    assert!(mean_rank < 0.5 - threshold, "{mean_rank} {threshold}");

    let text = metrics_text(&f.server).await;
    let contrast = bundled_labels(",statistic=\"contrast\"");
    let intensity = bundled_labels(",statistic=\"intensity\"");
    assert_eq!(
        sample(&text, "medguard_input_drift_alarm", &contrast),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "medguard_input_drift_alarms_total", &contrast),
        Some(1.0)
    );
    // Scaling about each image's mean leaves its intensity where it was.
    assert_eq!(
        sample(&text, "medguard_input_drift_alarm", &intensity),
        Some(0.0),
        "{text}"
    );
    // No per-window rank in the open metrics: scrapes around a request
    // would tell its image's rank.
    assert!(!text.contains("mean_rank"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_writes_at_most_one_input_drift_alarm() {
    // Window 8, one request of 32 images that takes the contrast alarm up,
    // down, up and down again: one alarm on the record, not two.
    let f = drift_fixture();
    let shifted = contrast_06(8);
    // An image at the calibration images' median intensity and contrast:
    // half its pixels one contrast above the mean, half one below.
    let pixels = medguard_tests::bundled_model()
        .manifest()
        .screening
        .clone()
        .unwrap()
        .pixels
        .unwrap();
    let (m, c) = (
        pixels.intensity[pixels.images() / 2] as f32,
        pixels.contrast[pixels.images() / 2] as f32,
    );
    let middle: Vec<f32> = (0..784)
        .map(|i| if i % 2 == 0 { m + c } else { m - c })
        .collect();
    let mut data = Vec::new();
    for _ in 0..2 {
        data.extend_from_slice(&shifted);
        for _ in 0..8 {
            data.extend_from_slice(&middle);
        }
    }
    let (status, answer, entries) = post_images(&f, &data).await;
    assert!(
        status == StatusCode::OK || status == StatusCode::UNPROCESSABLE_ENTITY,
        "{answer}"
    );
    assert_eq!(count(&entries, "inference"), 32, "{entries:?}");
    assert_eq!(count(&entries, "input-drift-alarm"), 1, "{entries:?}");
    // It ended cleared, and the raise was counted.
    let text = metrics_text(&f.server).await;
    let contrast = bundled_labels(",statistic=\"contrast\"");
    assert_eq!(
        sample(&text, "medguard_input_drift_alarm", &contrast),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "medguard_input_drift_alarms_total", &contrast),
        Some(1.0)
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `dir`'s manifest set to `version` and the directory signed again with
/// the demo key.
fn resign(dir: &std::path::Path, version: &str) {
    let manifest = dir.join("manifest.json");
    let mut value: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    value["version"] = json!(version);
    std::fs::write(&manifest, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    let pem =
        std::fs::read_to_string(medguard_tests::repo_root().join("models/trust/demo.key.pem"))
            .unwrap();
    let key = medguard_attest::SigningKey::from_pem(&pem).unwrap();
    medguard::signing::sign_directory(dir, &key, &dir.join("model.sig")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_loads_signed_versions_and_a_refused_load_changes_nothing() {
    let admin = Sha256Digest::of(b"admin-secret");
    let reader = Sha256Digest::of(b"reader-secret");
    let tokens = Tokens::parse(&format!(
        "[[tokens]]\nname = \"admin\"\nsha256 = \"{admin}\"\nmodels = [\"*\"]\nrepository = true\n\
         [[tokens]]\nname = \"reader\"\nsha256 = \"{reader}\"\nmodels = [\"pneumonia-cnn\"]\n"
    ))
    .unwrap();
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().join("pneumonia");
    copy_dir(&model_dir(), &dir);
    let mut f = fixture(Some(tokens), Limits::default());
    let server = Arc::try_unwrap(f.server).ok().unwrap();
    f.server = Arc::new(
        server.with_repository(
            [("pneumonia-cnn".to_owned(), dir.clone())]
                .into_iter()
                .collect(),
        ),
    );
    let (values, _) = tensors("samples/normal-1.png");
    let infer = || Some(infer_body("FP32", json!(values), 4));
    let uri = "/v2/models/pneumonia-cnn/infer";
    let load = "/v2/repository/models/pneumonia-cnn/load";
    let unload = "/v2/repository/models/pneumonia-cnn/unload";
    let served_version = |f: &Fixture| {
        let server = f.server.clone();
        async move {
            let (_, meta) = call(
                &server,
                "GET",
                "/v2/models/pneumonia-cnn",
                Some("reader-secret"),
                None,
            )
            .await;
            meta["versions"].clone()
        }
    };

    // Who may manage: only a token marked repository = true.
    for (token, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("reader-secret"), StatusCode::FORBIDDEN),
    ] {
        let (status, body) = call(&f.server, "POST", load, token, None).await;
        assert_eq!(status, expected, "{body}");
        let (status, _) = call(&f.server, "POST", unload, token, None).await;
        assert_eq!(status, expected);
    }
    let (status, index) = call(
        &f.server,
        "POST",
        "/v2/repository/index",
        Some("reader-secret"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        index,
        json!([{"name": "pneumonia-cnn", "version": "1.0.0", "state": "READY"}])
    );
    let (status, _) = call(&f.server, "POST", "/v2/repository/index", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Unload, then load again.
    let (status, _) = call(&f.server, "POST", unload, Some("admin-secret"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&f.server, "POST", uri, Some("reader-secret"), infer()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, index) = call(
        &f.server,
        "POST",
        "/v2/repository/index",
        Some("admin-secret"),
        None,
    )
    .await;
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    let (status, body) = call(&f.server, "POST", load, Some("admin-secret"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = call(&f.server, "POST", uri, Some("reader-secret"), infer()).await;
    assert_eq!(status, StatusCode::OK);

    // A newly signed version is admitted and served.
    resign(&dir, "1.1.0");
    let (status, body) = call(&f.server, "POST", load, Some("admin-secret"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(served_version(&f).await, json!(["1.1.0"]));

    // A tampered model file is refused and 1.1.0 stays.
    let onnx = dir.join("model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&onnx, &bytes).unwrap();
    let (status, body) = call(&f.server, "POST", load, Some("admin-secret"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("refused"),
        "{body}"
    );
    assert_eq!(served_version(&f).await, json!(["1.1.0"]));
    bytes[last] ^= 1;
    std::fs::write(&onnx, &bytes).unwrap();

    // Rolled back to 1.0.0, correctly signed: refused, 1.1.0 stays.
    resign(&dir, "1.0.0");
    let (status, body) = call(&f.server, "POST", load, Some("admin-secret"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(served_version(&f).await, json!(["1.1.0"]));
    let (status, answer) = call(&f.server, "POST", uri, Some("reader-secret"), infer()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["model_version"], "1.1.0");
}

#[tokio::test]
async fn without_a_token_file_nobody_loads_or_unloads() {
    let f = fixture(None, Limits::default());
    for uri in [
        "/v2/repository/models/pneumonia-cnn/load",
        "/v2/repository/models/pneumonia-cnn/unload",
    ] {
        let (status, body) = call(&f.server, "POST", uri, None, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("--tokens"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_guest_refuses_is_on_the_record_without_its_values() {
    let f = fixture(None, Limits::default());
    let size = |f: &Fixture| f.guard.checkpoint().unwrap().0;
    let before = size(&f);
    let (status, body) = call(
        &f.server,
        "POST",
        "/v2/models/pneumonia-cnn/infer",
        None,
        Some(infer_body("FP32", json!(vec![2.5f32; 784]), 9)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(size(&f), before + 1, "one inference-failed entry");
    let log = std::fs::read(f._data.path().join("ledger/entries.log")).unwrap();
    let log = String::from_utf8_lossy(&log);
    let entry = log
        .split('\n')
        .find(|l| l.contains("inference-failed"))
        .unwrap_or_else(|| panic!("no inference-failed entry in {log}"));
    assert!(entry.contains(r#""failure":"input-refused""#), "{entry}");
    // Every field but the time (whose digits may spell "2.5" by chance):
    // none carries the request's values.
    // The log frames each entry in binary: read the one JSON value.
    let json = entry
        .find(r#"{"kind":"#)
        .map(|at| &entry[at..])
        .unwrap_or_else(|| panic!("no JSON in {entry}"));
    let mut fields: serde_json::Value = serde_json::Deserializer::from_str(json)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    fields.as_object_mut().unwrap().remove("time");
    assert!(
        !fields.to_string().contains("2.5"),
        "the values stay out: {entry}"
    );
}

/// One request with `content_type` and `accept`, raw bytes back.
async fn call_raw(
    server: &Arc<Server>,
    content_type: &str,
    accept: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut request = Request::builder()
        .method("POST")
        .uri("/v2/models/pneumonia-cnn/infer")
        .header(header::CONTENT_TYPE, content_type);
    if let Some(accept) = accept {
        request = request.header(header::ACCEPT, accept);
    }
    let response = router(server.clone())
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let media = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, media, bytes.to_vec())
}

fn dicom_fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        medguard_tests::repo_root()
            .join("tests/dicom/fixtures")
            .join(name),
    )
    .unwrap()
}

/// A DICOM body (`Content-Type: application/dicom`) is decoded in the
/// sandbox and answered like the same pixels sent as a tensor; with `Accept:
/// application/dicom` the answer is the structured report, for a rejected
/// input too (it then reports no finding). What the model does not take is
/// 422, what is not DICOM is 400, both as JSON errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_bodies_get_the_tensors_answer_or_a_structured_report() {
    let f = fixture(None, Limits::default());
    let (status, _, body) = call_raw(
        &f.server,
        "application/dicom",
        None,
        dicom_fixture("same-pixels/pneumonia-1.dcm"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let dicom: Value = serde_json::from_slice(&body).unwrap();
    let (fp32, _) = tensors("samples/pneumonia-1.png");
    let (status, tensor) = call(
        &f.server,
        "POST",
        "/v2/models/pneumonia-cnn/infer",
        None,
        Some(infer_body("FP32", json!(fp32), 1)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dicom["outputs"][0]["data"], tensor["outputs"][0]["data"]);

    for (name, rejected) in [
        ("same-pixels/normal-1.dcm", false),
        ("same-pixels/pgd8-1.dcm", true),
    ] {
        let (status, media, report) = call_raw(
            &f.server,
            "application/dicom",
            Some("application/dicom"),
            dicom_fixture(name),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(media.as_deref(), Some("application/dicom"));
        assert!(medguard_dicom::is_part10(&report));
        let has = |needle: &[u8]| report.windows(needle.len()).any(|w| w == needle);
        assert!(
            has(b"1.2.840.10008.5.1.4.1.1.88.34"),
            "{name}: a Comprehensive 3D SR"
        );
        assert_eq!(has(b"MG-REJECT"), rejected, "{name}");
        // The withheld answer is nowhere in it: no Present/Absent code.
        assert_eq!(!has(b"52101004") && !has(b"2667000"), rejected, "{name}");
    }

    let (status, _, body) = call_raw(
        &f.server,
        "application/dicom",
        None,
        dicom_fixture("refused-mr.dcm"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("Modality is \"MR\""),
        "{error}"
    );
    let (status, _, body) = call_raw(
        &f.server,
        "application/dicom",
        None,
        b"no DICOM here".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("not a DICOM Part 10 file")
    );

    // No patient or study identity from the headers in the server's data
    // directory (ledger, keys, checkpoints).
    for file in walk(f._data.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for phi in [
            "Testpatient",
            "MGPHI",
            "MGACC5521",
            "31415926535897932384626433832795",
        ] {
            assert!(
                !bytes.windows(phi.len()).any(|w| w == phi.as_bytes()),
                "{phi} in {}",
                file.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A DICOM file that stops the decode sandbox (damaged RLE data makes
/// dicom-rs 0.10 panic) is refused with a one-line reason and, like any
/// request that produced nothing, recorded; the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dicom_file_that_stops_the_decoder_is_refused_and_on_the_record() {
    let f = fixture(None, Limits::default());
    let size = |f: &Fixture| f.guard.checkpoint().unwrap().0;
    let original = dicom_fixture("chest-rle.dcm");
    // The first prefix (cut inside the RLE pixel data) that stops the
    // decoder; most do.
    let mut found = None;
    for len in (original.len() / 2..original.len()).step_by(997) {
        let before = size(&f);
        let (status, _, body) = call_raw(
            &f.server,
            "application/dicom",
            None,
            original[..len].to_vec(),
        )
        .await;
        let error: Value = serde_json::from_slice(&body).unwrap();
        let message = error["error"].as_str().unwrap_or_default().to_owned();
        if message.contains("the sandbox contained it") {
            found = Some((status, before, message));
            break;
        }
    }
    let (status, before, message) = found.expect("a truncation that stops the decoder");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert_eq!(size(&f), before + 1, "one inference-failed entry");
    let log = std::fs::read(f._data.path().join("ledger/entries.log")).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains(r#""failure":"trap""#), "{log}");
    let (status, _, _) = call_raw(
        &f.server,
        "application/dicom",
        None,
        dicom_fixture("chest-rle.dcm"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the next file is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_model_answers_422_when_no_certificate_reaches_its_radius() {
    let f = fixture_serving(
        &medguard_tests::repo_root().join("models/pneumonia-smoothed"),
        shared_program_owned(),
        None,
        Limits::default(),
        ScreeningPolicy::Enforce,
    );
    let (normal, _) = tensors("samples/normal-1.png");
    let (pneumonia, _) = tensors("samples/pneumonia-1.png");
    // Near the decision boundary: the noised copies split and no radius
    // reaches the required 0.25 (host/tests/cli/certify.rs measures it).
    let blend: Vec<f32> = normal
        .iter()
        .zip(&pneumonia)
        .map(|(a, b)| ((0.55 * a + 0.45 * b) * 255.0).round() / 255.0)
        .collect();
    let post = |values: Vec<f32>| {
        let server = f.server.clone();
        async move {
            call(
                &server,
                "POST",
                "/v2/models/pneumonia-smoothed-cnn/infer",
                None,
                Some(infer_body("FP32", json!(values), 9)),
            )
            .await
        }
    };
    let (status, body) = post(blend).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no certificate reaches the radius"),
        "{body}"
    );
    let r = &results(&body["parameters"])[0];
    assert_eq!(r["verdict"], "flag");
    assert!(r["label"].is_null());
    assert_eq!(r["certificate"]["certified"], false, "{r}");
    assert!(
        r["certificate"]["votes"].is_null(),
        "the votes would give it away"
    );

    let (status, body) = post(pneumonia).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = &results(&body["parameters"])[0];
    assert_eq!(r["label"], "pneumonia");
    assert_eq!(r["certificate"]["certified"], true, "{r}");
    // The caller's medguard_seed (9) seeds screening, not the smoothing noise.
    assert_ne!(r["certificate"]["noise"]["seed"], 9, "{r}");
    let receipt: Receipt = serde_json::from_value(r["receipt"].clone()).unwrap();
    receipt.verify(f.guard.verifier()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_certified_model_answers_with_its_l_infinity_certificate_or_422() {
    let f = fixture_serving(
        &medguard_tests::repo_root().join("models/pneumonia-ibp"),
        shared_program_owned(),
        None,
        Limits::default(),
        ScreeningPolicy::Enforce,
    );
    let (normal, _) = tensors("samples/normal-1.png");
    let (pneumonia, _) = tensors("samples/pneumonia-1.png");
    // The same blend: its interval bounds hold to half a grey level, short
    // of the required two (host/tests/cli/intervals.rs's neighbours).
    let blend: Vec<f32> = normal
        .iter()
        .zip(&pneumonia)
        .map(|(a, b)| ((0.55 * a + 0.45 * b) * 255.0).round() / 255.0)
        .collect();
    let post = |values: Vec<f32>| {
        let server = f.server.clone();
        async move {
            call(
                &server,
                "POST",
                "/v2/models/pneumonia-ibp-cnn/infer",
                None,
                Some(infer_body("FP32", json!(values), 9)),
            )
            .await
        }
    };
    let (status, body) = post(blend).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no certificate reaches the radius"),
        "{body}"
    );
    let r = &results(&body["parameters"])[0];
    assert!(r["label"].is_null());
    let c = &r["certificate"];
    assert_eq!(c["method"], "interval-bound-propagation", "{r}");
    assert_eq!(c["certified"], false, "{r}");
    assert!(c["radius_linf"].as_f64().unwrap() < 2.0 / 255.0, "{r}");
    assert!(
        c["class"].is_null() && c["margin"].is_null(),
        "they would give it away: {r}"
    );

    let (status, body) = post(pneumonia).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = &results(&body["parameters"])[0];
    assert_eq!(r["label"], "pneumonia");
    assert_eq!(r["certificate"]["certified"], true, "{r}");
    assert_eq!(r["certificate"]["class"], 1, "{r}");
    let receipt: Receipt = serde_json::from_value(r["receipt"].clone()).unwrap();
    receipt.verify(f.guard.verifier()).unwrap();
}
