//! `medguard serve` as a process: admission at start, a real socket, and
//! SIGTERM ending it cleanly with every verdict in the ledger.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;

use crate::{medguard, medguard_command, model_dir, s, text};

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

#[test]
fn serve_admits_answers_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let refused = tmp.path().join("empty-model-dir");
    std::fs::create_dir(&refused).unwrap();
    let (mut cmd, _env) = medguard_command(&[
        "--data-dir",
        s(&data),
        "serve",
        s(&model_dir()),
        s(&refused),
        "--listen",
        "127.0.0.1:0",
    ]);
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
        if let Some(rest) = line.trim().strip_prefix("medguard: listening on http://") {
            break rest.trim_end_matches("/v2").to_owned();
        }
    };
    assert!(log.contains("serving pneumonia-cnn"), "{log}");
    assert!(log.contains("not served"), "{log}");

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

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{log}{rest}");
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
