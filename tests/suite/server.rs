//! `medguard serve`'s Open Inference Protocol routes, in process: the
//! router is driven request by request (tower's `oneshot`), over the real
//! guard, sandbox and ledger.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use medguard::admission::load_policy;
use medguard::guard::Receipt;
use medguard::guard::{Admission, Guard, NamedPolicy, ScreeningPolicy};
use medguard::guest::GuestModule;
use medguard::sandbox::{GuestProgram, Runtime};
use medguard::server::auth::Tokens;
use medguard::server::{Limits, Server, router};
use medguard_attest::Sha256Digest;
use medguard_tests::{model_dir, repo_root, shared_program_owned};
use serde_json::{Value, json};
use tower::ServiceExt as _;

struct Fixture {
    server: Arc<Server>,
    guard: Arc<Guard>,
    _data: tempfile::TempDir,
}

fn fixture(tokens: Option<Tokens>, limits: Limits) -> Fixture {
    fixture_with(shared_program_owned(), tokens, limits)
}

fn fixture_with(program: GuestProgram, tokens: Option<Tokens>, limits: Limits) -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let path = repo_root().join("models/trust/demo-policy.toml");
    let (policy, sha256) = load_policy(&path).unwrap();
    let guard = Guard::open(
        data.path(),
        NamedPolicy {
            policy,
            sha256,
            name: "demo".into(),
        },
    )
    .unwrap();
    let Admission::Admitted { model, .. } = guard.admit(&model_dir()).unwrap() else {
        panic!("the bundled model is admitted");
    };
    let guard = Arc::new(guard.with_sandbox(program));
    let server = Arc::new(Server::new(
        guard.clone(),
        vec![*model],
        tokens,
        ScreeningPolicy::Enforce,
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
    let (status, model) = call(&f.server, "GET", "/v2/models/pneumonia-cnn", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(model["platform"], "onnx_onnxv1");
    assert_eq!(model["inputs"][0]["shape"], json!([-1, 1, 28, 28]));
    assert_eq!(
        model["outputs"][0],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]})
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
