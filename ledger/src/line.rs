//! A result as medguard returns it (a `predict --json` line, the server's
//! response parameters, the C ABI's JSON) checked against the receipt it
//! carries: the receipt must verify with the ledger's key, and every field
//! shown beside it must be what the signed entry says. The CLI's
//! `ledger verify-receipt` and the browser build share this one check.

use thiserror::Error;

use crate::entry::Entry;
use crate::note::{Checkpoint, NoteVerifier};
use crate::receipt::{Receipt, ReceiptError};

/// A result whose receipt verified and whose fields match the signed entry.
#[derive(Debug, Clone)]
pub struct CheckedLine {
    /// The receipt.
    pub receipt: Receipt,
    /// The signed checkpoint it is proved against.
    pub checkpoint: Checkpoint,
    /// The entry it proves.
    pub entry: Entry,
}

/// Why a result and its receipt do not check out. Text from the line is
/// quoted as it came: escape it before a terminal shows it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A top-level key appears twice: serde_json keeps the last of two
    /// equal keys, a viewer may show the first.
    #[error("the result line has the key {0} twice")]
    DuplicateKey(String),
    /// No receipt of medguard's shape.
    #[error("not a medguard receipt: {0}")]
    NotReceipt(String),
    /// The receipt does not verify.
    #[error("receipt does not verify: {0}")]
    Receipt(#[from] ReceiptError),
    /// The receipt verifies but the line says something else.
    #[error("the result does not match its receipt: {0}")]
    Mismatch(String),
}

impl LineError {
    /// A refusal of the evidence (as opposed to input that is not a
    /// medguard result at all).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::DuplicateKey(_) | Self::Receipt(_) | Self::Mismatch(_)
        )
    }
}

/// Checks `text`, a result line with a `receipt` field or a bare receipt,
/// with only the ledger's public key.
pub fn check_line(text: &[u8], key: &NoteVerifier) -> Result<CheckedLine, LineError> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| LineError::NotJson(e.to_string()))?;
    let keys: TopLevelKeys =
        serde_json::from_slice(text).map_err(|e| LineError::NotJson(e.to_string()))?;
    if let Some(twice) = keys.duplicate() {
        return Err(LineError::DuplicateKey(twice));
    }
    let receipt: Receipt =
        serde_json::from_value(value.get("receipt").cloned().unwrap_or(value.clone()))
            .map_err(|e| LineError::NotReceipt(e.to_string()))?;
    let (checkpoint, entry) = receipt.verify(key)?;
    cross_check(&value, &entry).map_err(LineError::Mismatch)?;
    Ok(CheckedLine {
        receipt,
        checkpoint,
        entry,
    })
}

/// Checks the fields of a `predict --json` line against the entry its
/// receipt proves; a bare receipt has none of them and passes.
pub(crate) fn cross_check(line: &serde_json::Value, entry: &Entry) -> Result<(), String> {
    use serde_json::{Value, json};
    const RESULT_FIELDS: [&str; 6] = [
        "label",
        "verdict",
        "p_value",
        "probabilities",
        "seed",
        "model",
    ];
    // What a `predict --json` line may hold besides its receipt.
    const LINE_FIELDS: [&str; 8] = [
        "input",
        "statistics",
        "integrity",
        "guest_sha256",
        "receipt",
        "dicom",
        "structured_report",
        "structured_report_error",
    ];
    if line.get("receipt").is_none() {
        // A bare receipt: nothing shown beside it to check.
        return Ok(());
    }
    if let Some(obj) = line.as_object()
        && let Some(extra) = obj
            .keys()
            .find(|k| !RESULT_FIELDS.contains(&k.as_str()) && !LINE_FIELDS.contains(&k.as_str()))
    {
        return Err(format!(
            "the line has a field `{extra}` medguard never writes"
        ));
    }
    let Entry::Inference {
        model,
        version,
        model_sha256,
        guest_sha256,
        verdict,
        p_value,
        label,
        probabilities,
        seed,
        ..
    } = entry
    else {
        return Err(format!(
            "the line carries a result but the receipt is for a {} entry",
            entry.kind()
        ));
    };
    let expected = [
        ("label", json!(label)),
        ("verdict", json!(verdict)),
        ("p_value", json!(p_value)),
        ("probabilities", json!(probabilities)),
        ("seed", json!(seed)),
        (
            "model",
            json!({"name": model, "version": version.to_string(), "sha256": model_sha256.to_string()}),
        ),
        ("guest_sha256", json!(guest_sha256.to_string())),
    ];
    for (field, want) in expected {
        let got = line.get(field).cloned().unwrap_or(Value::Null);
        // Numbers are compared as the f32/f64 they were printed from.
        let same = match (field, &got, &want) {
            ("probabilities", Value::Object(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        let f = |v: &Value| v.as_f64().map(|x| x as f32);
                        b.get(k).and_then(f).is_some() && b.get(k).and_then(f) == f(v)
                    })
            }
            _ => got == want,
        };
        if !same {
            return Err(format!(
                "`{field}` is {got} in the line but {want} in the signed entry"
            ));
        }
    }
    Ok(())
}

/// The top-level keys of a JSON object, in order, duplicates kept.
struct TopLevelKeys(Vec<String>);

impl TopLevelKeys {
    fn duplicate(&self) -> Option<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.0.iter().find(|k| !seen.insert(k.as_str())).cloned()
    }
}

impl<'de> serde::Deserialize<'de> for TopLevelKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = TopLevelKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevelKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(TopLevelKeys(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::entry::{ScreeningPolicy, Verdict};

    #[test]
    fn a_result_line_must_match_its_signed_entry() {
        let entry = Entry::Inference {
            time: "2026-12-01T00:00:00Z".parse().unwrap(),
            model: "pneumonia-cnn".into(),
            version: semver::Version::new(1, 0, 0),
            model_sha256: medguard_attest::Sha256Digest::of(b"m"),
            guest_sha256: medguard_attest::Sha256Digest::of(b"g"),
            input_hmac: "00".into(),
            verdict: Verdict::Accept,
            p_value: Some(0.25),
            label: Some("normal".into()),
            probabilities: Some([("normal".into(), 0.9), ("pneumonia".into(), 0.1)].into()),
            policy: ScreeningPolicy::Enforce,
            seed: 7,
            caller: None,
        };
        let line = serde_json::json!({
            "label": "normal", "verdict": "accept", "p_value": 0.25, "seed": 7,
            "probabilities": {"normal": 0.9f32, "pneumonia": 0.1f32},
            "model": {"name": "pneumonia-cnn", "version": "1.0.0",
                      "sha256": medguard_attest::Sha256Digest::of(b"m").to_string()},
            "guest_sha256": medguard_attest::Sha256Digest::of(b"g").to_string(),
            "input": "a.png",
            "receipt": {"entry": "x"},
        });
        cross_check(&line, &entry).unwrap();
        for (field, value) in [
            ("label", serde_json::json!("pneumonia")),
            ("verdict", serde_json::json!("reject")),
            ("p_value", serde_json::json!(0.5)),
            ("seed", serde_json::json!(8)),
            (
                "probabilities",
                serde_json::json!({"normal": 0.1f32, "pneumonia": 0.9f32}),
            ),
            ("guest_sha256", serde_json::json!("sha256:00")),
            ("shown_label", serde_json::json!("pneumonia")),
        ] {
            let mut edited = line.clone();
            edited[field] = value;
            let err = cross_check(&edited, &entry).unwrap_err();
            assert!(err.contains(field), "{err}");
            // A field missing altogether is a mismatch too.
            if field != "shown_label" {
                edited.as_object_mut().unwrap().remove(field);
                assert!(cross_check(&edited, &entry).is_err(), "{field}");
            }
        }
        // A bare receipt carries no result fields and passes.
        cross_check(&serde_json::json!({"entry": "x"}), &entry).unwrap();
    }
}
