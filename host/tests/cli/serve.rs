//! `medguard serve` as a process: admission at start, a real socket, and
//! SIGTERM ending it cleanly with every verdict in the ledger.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;

use crate::{json_lines, medguard, medguard_command, model_dir, root, s, text};

/// One HTTP/1.1 request over a fresh connection; the status and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// A running `medguard serve`: the process, its address, its stderr so far.
struct Serving {
    child: std::process::Child,
    stderr: BufReader<std::process::ChildStderr>,
    addr: String,
    log: String,
    _env: tempfile::TempDir,
}

impl Serving {
    /// Starts `medguard <args>` and waits for it to listen.
    fn start(args: &[&str]) -> Self {
        let (mut cmd, env) = medguard_command(args);
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        let addr = loop {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "exited early: {log}"
            );
            log.push_str(&line);
            let line = line.trim();
            if let Some(rest) = line
                .strip_prefix("medguard: listening on http://")
                .or_else(|| line.strip_prefix("medguard: listening on https://"))
            {
                break rest.trim_end_matches("/v2").to_owned();
            }
        };
        Self {
            child,
            stderr,
            addr,
            log,
            _env: env,
        }
    }

    /// SIGTERM; the exit code and the rest of stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        let mut rest = std::mem::take(&mut self.log);
        self.stderr.read_to_string(&mut rest).unwrap();
        (status.code(), rest)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_admits_answers_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let refused = tmp.path().join("empty-model-dir");
    std::fs::create_dir(&refused).unwrap();
    let server = Serving::start(&[
        "--data-dir",
        s(&data),
        "serve",
        s(&model_dir()),
        s(&refused),
        "--listen",
        "127.0.0.1:0",
    ]);
    let (addr, log) = (server.addr.clone(), server.log.clone());
    assert!(log.contains("serving pneumonia-cnn"), "{log}");
    assert!(log.contains("not served"), "{log}");
    // Each request's fresh sandbox starts from the model's snapshot.
    assert!(log.contains("prepared in"), "{log}");

    let (status, body) = http(&addr, "GET", "/v2/health/ready", "");
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));
    let request = serde_json::json!({
        "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": vec![0.5f32; 784]}],
    })
    .to_string();
    let (status, body) = http(&addr, "POST", "/v2/models/pneumonia-cnn/infer", &request);
    assert!(status == 200 || status == 422, "{status}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["parameters"]["medguard_results"].is_string(),
        "{answer}"
    );

    let (code, rest) = server.stop();
    assert_eq!(code, Some(0), "{rest}");
    assert!(rest.contains("stopped"), "{rest}");

    // Both admissions and the inference are in a ledger that verifies.
    let out = medguard(&["--data-dir", s(&data), "ledger", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = medguard(&["--data-dir", s(&data), "ledger", "show"]);
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("refused") && shown.contains("inference"),
        "{shown}"
    );
}

/// Triton's own Python client (`tritonclient[http]`, pinned in
/// tests/interop/triton-requirements.txt) against `medguard serve`: health,
/// metadata, and inference over JSON and over the binary tensor data
/// extension, which must match `medguard predict --json` at the same seed.
/// scripts/test.sh installs the client in a venv outside the repository and
/// runs this with `--include-ignored`, MEDGUARD_TRITON_PYTHON naming its
/// python.
#[test]
#[ignore = "needs tritonclient; scripts/test.sh provides it"]
fn tritons_python_client_gets_the_clis_answers() {
    tritons_python_client(None);
}

/// The same over TLS: the client verifies the server's certificate (made
/// at test time) against the CA file it is given, with the host name, and
/// refuses a server whose certificate another CA signed.
#[test]
#[ignore = "needs tritonclient; scripts/test.sh provides it"]
fn tritons_python_client_over_tls_verifies_the_server() {
    let tls = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let write = |name: &str, text: String| {
        let path = tls.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = TlsFiles {
        cert: write("cert.pem", made.cert.pem()),
        key: write("key.pem", made.signing_key.serialize_pem()),
        other_ca: write("other-ca.pem", other.cert.pem()),
    };
    tritons_python_client(Some(&files));
}

/// The server's certificate and key, and a CA that did not sign it.
struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    other_ca: std::path::PathBuf,
}

fn tritons_python_client(tls: Option<&TlsFiles>) {
    let python = std::env::var_os("MEDGUARD_TRITON_PYTHON")
        .expect("MEDGUARD_TRITON_PYTHON must name a python with tritonclient[http]");
    let dir = model_dir();
    let samples = [
        "samples/normal-1.png",
        "samples/pneumonia-1.png",
        "adversarial/pgd8-1.png",
    ];
    let seed = 7;
    let manifest =
        medguard_attest::Manifest::parse(&std::fs::read(dir.join("manifest.json")).unwrap())
            .unwrap();
    let mut images = serde_json::Map::new();
    for sample in samples {
        let bytes = std::fs::read(dir.join(sample)).unwrap();
        let batch = medguard_input::decode(&bytes, &manifest.input, manifest.max_batch).unwrap();
        images.insert(sample.into(), serde_json::json!(batch.data));
    }
    let mut args = vec!["serve", s(&dir), "--listen", "127.0.0.1:0"];
    if let Some(tls) = tls {
        args.extend(["--tls-cert", s(&tls.cert), "--tls-key", s(&tls.key)]);
    }
    let server = Serving::start(&args);
    // The certificate names localhost: the client checks the name.
    let url = match tls {
        Some(_) => server.addr.replace("127.0.0.1", "localhost"),
        None => server.addr.clone(),
    };
    let job = serde_json::json!({
        "url": url, "model": manifest.name, "seed": seed, "images": images,
        "ca_cert": tls.map(|t| s(&t.cert)),
        "wrong_ca": tls.map(|t| s(&t.other_ca)),
    });
    let mut client = std::process::Command::new(python)
        .arg(root().join("tests/interop/triton_client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["live"], true);
    assert_eq!(said["ready"], true);
    assert_eq!(said["model_ready"], true);
    assert!(
        said["server"]["extensions"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("binary_tensor_data")),
        "{said}"
    );
    assert_eq!(said["model"]["platform"], "onnx_onnxv1");
    assert_eq!(said["unknown_model"]["status"], 404);
    if tls.is_some() {
        let refused = said["wrong_ca"].as_str().unwrap_or_default();
        assert!(refused.starts_with("refused"), "{said}");
    }

    // The CLI's answers for the same images and seed.
    let mut args = vec!["predict", "--json", "--seed", "7", s(&dir)];
    let paths: Vec<String> = samples
        .iter()
        .map(|p| dir.join(p).display().to_string())
        .collect();
    args.extend(paths.iter().map(String::as_str));
    let cli = json_lines(&medguard(&args));
    assert_eq!(cli.len(), samples.len());
    for (sample, expected) in samples.iter().zip(&cli) {
        let got = &said["images"][sample];
        for transport in ["json", "binary", "mixed"] {
            let answer = &got[transport];
            if expected["verdict"] == "reject" {
                // The standard client raises with the server's reason.
                assert_eq!(answer["status"], 422, "{sample} {transport}: {answer}");
                assert!(
                    answer["error"].as_str().unwrap().contains("rejected"),
                    "{answer}"
                );
                continue;
            }
            assert_eq!(answer["status"], 200, "{sample} {transport}: {answer}");
            let binary = match transport {
                "json" => serde_json::json!([]),
                "binary" => serde_json::json!(["logits", "probabilities"]),
                _ => serde_json::json!(["probabilities"]),
            };
            assert_eq!(answer["binary_outputs"], binary, "{sample} {transport}");
            assert_eq!(answer["verdict"], expected["verdict"], "{sample}");
            assert_eq!(answer["seed"], seed);
            assert_eq!(answer["id"], "interop");
            let labels = manifest.output.labels.iter();
            for (label, p) in labels.zip(answer["probabilities"][0].as_array().unwrap()) {
                let want = expected["probabilities"][label].as_f64().unwrap();
                let have = p.as_f64().unwrap();
                assert!(
                    (want - have).abs() < 1e-6,
                    "{sample} {transport} {label}: {have} vs the CLI's {want}"
                );
            }
            // The logits the probabilities came from.
            let logits: Vec<f64> = serde_json::from_value(answer["logits"][0].clone()).unwrap();
            let total: f64 = logits.iter().map(|l| l.exp()).sum();
            for (l, p) in logits
                .iter()
                .zip(answer["probabilities"][0].as_array().unwrap())
            {
                let p = p.as_f64().unwrap();
                assert!((l.exp() / total - p).abs() < 1e-5, "{sample} {transport}");
            }
        }
        // Each request is its own ledger entry: all but the receipts agree.
        for field in ["status", "probabilities", "logits", "verdict", "error"] {
            assert_eq!(got["json"][field], got["binary"][field], "{sample} {field}");
            assert_eq!(got["json"][field], got["mixed"][field], "{sample} {field}");
        }
    }
    assert!(
        cli.iter().any(|r| r["verdict"] == "reject"),
        "the attacked sample must be among those the server refuses"
    );
    let (code, rest) = server.stop();
    assert_eq!(code, Some(0), "{rest}");
}

/// deploy/ (the Containerfile and the KServe manifests) was never run here:
/// at least every flag and environment variable it passes must be one that
/// `medguard serve` knows, so that it cannot rot unnoticed.
#[test]
fn deploy_files_use_only_flags_serve_knows() {
    let help = medguard(&["serve", "--help"]);
    let help = text(&help.stdout);
    let mut checked = 0;
    for file in [
        "deploy/kserve/servingruntime.yaml",
        "deploy/kserve/inferenceservice.yaml",
        "deploy/Containerfile",
        "deploy/README.md",
    ] {
        let content = std::fs::read_to_string(root().join(file)).unwrap();
        for word in content.split(|c: char| c.is_whitespace() || "\"'[],`\\".contains(c)) {
            if let Some(flag) = word.strip_prefix("--").and_then(|f| f.split('=').next()) {
                // Flags of other tools (podman, cargo, useradd, Dockerfile
                // syntax) and of `medguard ledger verify` in the same files.
                let others = [
                    "read-only",
                    "release",
                    "locked",
                    "package",
                    "system",
                    "uid",
                    "gid",
                    "no-create-home",
                    "shell",
                    "help",
                    "from",
                    "checkpoint",
                ];
                let flag_shaped = flag.starts_with(|c: char| c.is_ascii_lowercase())
                    && flag
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if others.contains(&flag) || !flag_shaped {
                    continue;
                }
                assert!(
                    help.contains(&format!("--{flag}")),
                    "{file}: --{flag} is not a flag of medguard serve"
                );
                checked += 1;
            }
            if let Some(var) = word
                .strip_prefix("MEDGUARD_")
                .map(|v| v.split('=').next().unwrap())
            {
                assert!(
                    help.contains(&format!("MEDGUARD_{var}")),
                    "{file}: MEDGUARD_{var} is not read by medguard serve"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} flags found");
}
