//! The security review's reproductions (issue 10), run as the reviewer ran
//! them: through the `medguard` binary, one test per finding.

use std::time::{Duration, Instant};

use crate::{json_lines, medguard, model_dir, s, signed_copy, text};

/// Offsets of the `u32 length, u32 CRC, payload` records of a ledger file.
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, len));
        at += 8 + len;
    }
    out
}

#[test]
fn issue_10_1_a_forged_history_is_not_re_signed_and_a_witness_sees_the_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = model_dir();
    let samples: Vec<String> = std::fs::read_dir(model.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .chain([model.join("adversarial/pgd8-1.png").display().to_string()])
        .collect();
    let mut args = vec![
        "predict",
        "--json",
        "--seed",
        "20261128",
        "--data-dir",
        s(&data),
        s(&model),
    ];
    args.extend(samples.iter().map(String::as_str));
    let out = medguard(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let witness = tmp.path().join("witness.txt");
    let out = medguard(&["ledger", "checkpoint", "--data-dir", s(&data)]);
    std::fs::write(&witness, &out.stdout).unwrap();

    // The attack: checkpoints cut back to the first, a verdict flipped with
    // its CRC recomputed.
    let dir = data.join("ledger");
    let cps = std::fs::read(dir.join("checkpoints.log")).unwrap();
    let (first, len) = records(&cps)[0];
    std::fs::write(dir.join("checkpoints.log"), &cps[..first + 8 + len]).unwrap();
    let mut log = std::fs::read(dir.join("entries.log")).unwrap();
    let mut forged = 0;
    for (at, len) in records(&log) {
        let payload = String::from_utf8(log[at + 8..at + 8 + len].to_vec()).unwrap();
        let edited = payload.replace("\"verdict\":\"reject\"", "\"verdict\":\"accept\"");
        if edited != payload {
            log[at + 8..at + 8 + len].copy_from_slice(edited.as_bytes());
            let crc = crc32fast::hash(edited.as_bytes());
            log[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            forged += 1;
        }
    }
    assert_eq!(forged, 1);
    std::fs::write(dir.join("entries.log"), log).unwrap();

    // The view the ledger sealed when it closed proves the log was cut:
    // it stops, naming that, and keeps the view as evidence.
    let out = medguard(&["ledger", "show", "--json", "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("cut back or rewritten"),
        "{}",
        text(&out.stderr)
    );
    std::fs::rename(dir.join("view.json"), tmp.path().join("evidence.json")).unwrap();
    let out = medguard(&["ledger", "show", "--json", "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The entries before the forged one carry the ledger's MACs and are
    // signed again; the forged verdict is not: it was moved out, and the
    // last entry says so.
    let shown = json_lines(&out);
    assert_eq!(shown.len(), 10, "{}", text(&out.stdout));
    assert_eq!(shown[9]["kind"], "entries-quarantined", "{}", shown[9]);
    assert_eq!(shown[9]["forged"], 1, "{}", shown[9]);
    assert_eq!(
        shown.iter().filter(|e| e["kind"] == "inference").count(),
        6,
        "only the six clean samples' results remain"
    );
    // The audit says a forgery was found, and the witness's checkpoint
    // shows the log no longer holds what it signed.
    let out = medguard(&["ledger", "verify", "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("MAC that does not verify"),
        "{}",
        text(&out.stderr)
    );
    let out = medguard(&[
        "ledger",
        "verify",
        "--data-dir",
        s(&data),
        "--checkpoint",
        s(&witness),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("history was rewritten") || err.contains("cut back"),
        "{err}"
    );
}

/// A grayscale PNG header declaring `width` x `height`, with a few bytes of
/// image data: what a decompression bomb looks like before its data.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |png: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let body = [kind, data].concat();
        png.extend(&body);
        png.extend(crc32fast::hash(&body).to_be_bytes());
    };
    let ihdr = [
        &width.to_be_bytes()[..],
        &height.to_be_bytes(),
        &[8, 0, 0, 0, 0],
    ]
    .concat();
    chunk(&mut png, b"IHDR", &ihdr);
    // A zlib stream header and a little deflate data; the rest never comes.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0xed, 0xc1, 0x01, 0x0d, 0x00],
    );
    png
}

/// A `.npy` header declaring `shape` of float32, and no data.
fn npy_declaring(shape: &str) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out
}

#[test]
fn issue_10_3_dimension_bombs_are_refused_at_the_header_and_the_next_input_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb_png = tmp.path().join("bomb.png");
    std::fs::write(&bomb_png, png_declaring(32768, 32768)).unwrap();
    let bomb_npy = tmp.path().join("bomb.npy");
    // 2^44 elements: a 16 TiB allocation if believed.
    std::fs::write(&bomb_npy, npy_declaring("(1048576, 1, 4096, 4096)")).unwrap();
    let empty_npy = tmp.path().join("empty.npy");
    std::fs::write(&empty_npy, npy_declaring("(0, 28, 28)")).unwrap();
    let good = model_dir().join("samples/normal-1.png");
    let started = Instant::now();
    let out = medguard(&[
        "predict",
        "--json",
        "--seed",
        "20261128",
        s(&model_dir()),
        s(&bomb_png),
        s(&bomb_npy),
        s(&empty_npy),
        s(&good),
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4, "{}", text(&out.stdout));
    for (line, needle) in lines.iter().zip(["32768x32768", "4096x4096", "0 images"]) {
        let error = line["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{line}");
    }
    // The next input was classified as usual.
    assert!(lines[3]["label"].is_string(), "{}", lines[3]);
    // The review measured 22-38 s for the PNG alone; refused at the header
    // it is milliseconds, so this bound is generous, not a benchmark.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn issue_10_6_a_fifo_in_a_model_directory_is_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let model = signed_copy(tmp.path(), None, |_| {});
    std::fs::remove_file(model.join("model.sig")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(model.join("model.sig"))
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let out = medguard(&["verify", s(&model)]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn issue_10_2_a_deleted_ledger_is_an_error_until_ledger_new() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = model_dir();
    let verify = || medguard(&["verify", "--data-dir", s(&data), s(&model)]);
    assert_eq!(verify().status.code(), Some(0));
    std::fs::remove_dir_all(data.join("ledger")).unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("ledger new"),
        "{}",
        text(&out.stderr)
    );
    let out = medguard(&["ledger", "new", "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(verify().status.code(), Some(0));
}

#[test]
fn issue_10_10_a_refusal_naming_hundreds_of_files_is_recorded_without_host_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = signed_copy(tmp.path(), None, |_| {});
    for i in 0..300 {
        std::fs::write(model.join(format!("{i:03}-{}", "x".repeat(200))), b"").unwrap();
    }
    let out = medguard(&["verify", "--data-dir", s(&data), s(&model)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = medguard(&["ledger", "show", "--json", "--data-dir", s(&data)]);
    let entries = json_lines(&out);
    let refusal = entries
        .iter()
        .find(|e| e["kind"] == "model-refused")
        .expect("the refusal is recorded");
    let reason = refusal["reason"].as_str().unwrap();
    assert!(reason.contains("more differences"), "{reason}");
    assert!(reason.len() <= 2048, "{} bytes", reason.len());
    let tmp_path = tmp.path().display().to_string();
    assert!(!text(&out.stdout).contains(&tmp_path), "{reason}");
}

#[test]
fn issue_10_2_a_policy_that_pins_the_ledger_refuses_a_recreated_one() {
    // Deleting ledger/ and its marker together makes a fresh data directory
    // as far as the files tell; a policy that names its ledger's key does not
    // let a new ledger (with a new key and no marks) take its place.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = medguard(&["ledger", "key", "--data-dir", s(&data)]);
    let key = text(&out.stdout).trim().to_owned();
    let policy = tmp.path().join("policy.toml");
    let demo = std::fs::read_to_string(crate::demo_policy())
        .unwrap()
        .replace(
            "public_key_file = \"demo.pub.pem\"",
            &format!(
                "public_key_file = \"{}\"",
                crate::root().join("models/trust/demo.pub.pem").display()
            ),
        );
    std::fs::write(&policy, format!("ledger_key = \"{key}\"\n{demo}")).unwrap();
    let verify = || {
        medguard(&[
            "verify",
            "--data-dir",
            s(&data),
            "--trust-policy",
            s(&policy),
            s(&model_dir()),
        ])
    };
    assert_eq!(
        verify().status.code(),
        Some(0),
        "{}",
        text(&verify().stderr)
    );
    std::fs::remove_dir_all(&data).unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("pins the ledger"),
        "{}",
        text(&out.stderr)
    );
}
