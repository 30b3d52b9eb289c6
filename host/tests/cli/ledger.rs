//! The audit ledger through the CLI: receipts that check offline, the full
//! audit, and the PHI test: identifiers fed in never appear in the ledger.

use std::path::Path;

use crate::{json_lines, medguard, model_dir, s, text};

fn data_args(dir: &Path) -> [&str; 2] {
    ["--data-dir", s(dir)]
}

#[test]
fn every_prediction_carries_a_receipt_that_checks_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = model_dir();
    let sample = model.join("samples/pneumonia-1.png");
    let mut args = vec!["predict", "--json", "--seed", "3"];
    args.extend(data_args(&data));
    args.extend([s(&model), s(&sample)]);
    let out = medguard(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = &json_lines(&out)[0];
    let receipt_path = tmp.path().join("result.json");
    std::fs::write(&receipt_path, serde_json::to_vec(line).unwrap()).unwrap();

    // The public key, exported once; the check needs nothing else.
    let out = medguard(&["ledger", "key", "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(0));
    let key_path = tmp.path().join("ledger.pub");
    std::fs::write(&key_path, &out.stdout).unwrap();
    let check = |receipt: &Path| {
        medguard(&[
            "ledger",
            "verify-receipt",
            s(receipt),
            "--key",
            s(&key_path),
        ])
    };
    let out = check(&receipt_path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("valid: entry "), "{shown}");
    assert!(
        shown.contains("inference pneumonia-cnn 1.0.0: accept"),
        "{shown}"
    );
    // What the ledger does not sign is named, not passed off as checked.
    assert!(
        shown.contains(
            "unverified: the receipt does not cover the line's input, statistics, integrity"
        ),
        "{shown}"
    );

    // A key given twice inside an object: serde_json keeps the last, a
    // viewer may show the first, so the line is refused.
    let twice = serde_json::to_string(line).unwrap().replacen(
        "\"probabilities\":{",
        "\"probabilities\":{\"normal\":0.99,",
        1,
    );
    assert_ne!(twice, serde_json::to_string(line).unwrap());
    std::fs::write(&receipt_path, twice).unwrap();
    let out = check(&receipt_path);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("has the key probabilities.normal twice"),
        "{}",
        text(&out.stderr)
    );

    // A receipt whose verdict was edited, and one checked with another
    // ledger's key, are refused.
    let mut edited = line.clone();
    let entry = edited["receipt"]["entry"]
        .as_str()
        .unwrap()
        .replace("accept", "reject");
    edited["receipt"]["entry"] = entry.into();
    std::fs::write(&receipt_path, serde_json::to_vec(&edited).unwrap()).unwrap();
    let out = check(&receipt_path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not in the signed tree"),
        "{}",
        text(&out.stderr)
    );
    let other = tmp.path().join("other");
    let out = medguard(&["ledger", "key", "--data-dir", s(&other)]);
    std::fs::write(&key_path, &out.stdout).unwrap();
    std::fs::write(&receipt_path, serde_json::to_vec(line).unwrap()).unwrap();
    assert_eq!(check(&receipt_path).status.code(), Some(1));

    // The whole ledger audits clean, and shows what happened.
    let out = medguard(&["ledger", "verify", "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("intact: 4 entries"),
        "{}",
        text(&out.stdout)
    );
    let out = medguard(&["ledger", "show", "--data-dir", s(&data)]);
    let shown = text(&out.stdout);
    for what in [
        "ledger created",
        "trust policy in force",
        "admitted pneumonia-cnn 1.0.0",
        "inference pneumonia-cnn",
    ] {
        assert!(shown.contains(what), "{what}: {shown}");
    }
}

#[test]
fn an_edited_ledger_is_reported_with_the_first_entry_affected() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = medguard(&["verify", "--data-dir", s(&data), s(&model_dir())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let log = data.join("ledger/entries.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes.windows(7).position(|w| w == b"1.0.0\",").unwrap();
    bytes[at] = b'2';
    std::fs::write(&log, bytes).unwrap();
    let out = medguard(&["ledger", "verify", "--data-dir", s(&data)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("first entry affected: 2"), "{err}");
}

#[test]
fn no_patient_identifier_reaches_the_ledger() {
    // DICOM-style identifiers in the input's name and inside the PNG (a
    // tEXt chunk, where DICOM-to-PNG converters put tags).
    let identifiers = [
        "DOE^JANE",
        "PID-4711-0815",
        "1.2.840.113619.2.55.3.604688119.971.1234567890.123",
        "ACC20261128001",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let name = format!(
        "{}_{}_{}_{}.png",
        identifiers[0], identifiers[1], identifiers[2], identifiers[3]
    );
    let input = tmp.path().join(&name);
    let pixels = image_with_text(&identifiers);
    std::fs::write(&input, pixels).unwrap();
    let model = model_dir();
    for format in [&["--json"][..], &[][..]] {
        let mut args = vec!["predict"];
        args.extend_from_slice(format);
        args.extend(data_args(&data));
        args.extend([s(&model), s(&input)]);
        let out = medguard(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let mut scanned = 0;
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap();
        scanned += bytes.len();
        for id in &identifiers {
            assert!(
                !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
                "{id} found in {}",
                entry.display()
            );
        }
    }
    assert!(scanned > 1000, "the ledger was written");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A 28x28 8-bit gray PNG (a bundled sample's pixels) with the identifiers
/// in a tEXt chunk.
fn image_with_text(identifiers: &[&str]) -> Vec<u8> {
    let sample = std::fs::read(model_dir().join("samples/normal-2.png")).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(sample));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, info.width, info.height);
        encoder.set_color(info.color_type);
        encoder.set_depth(info.bit_depth);
        encoder
            .add_text_chunk("PatientName".into(), identifiers.join(" "))
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&buf[..info.buffer_size()]).unwrap();
    }
    out
}
