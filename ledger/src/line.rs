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
    /// The line's fields that the receipt does not cover (`input`,
    /// `statistics`, ...), in `predict --json`'s order: shown as the line has them,
    /// unverified. The ledger signs no patient data and no evidence
    /// detail, so a reader must not take these as checked.
    pub unsigned: Vec<String>,
}

/// Why a result and its receipt do not check out. Text from the line is
/// quoted as it came: escape it before a terminal shows it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// Longer than any result medguard writes ([`LINE_MAX_BYTES`]).
    #[error("the result is {0} bytes, more than the {LINE_MAX_BYTES} a medguard result can be")]
    TooLarge(usize),
    /// A key appears twice in one object (its path, `probabilities.normal`):
    /// serde_json keeps the last of two equal keys, a viewer may show the
    /// first.
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

/// The largest result line [`check_line`] reads: a result with its receipt
/// is a few kilobytes; the cap keeps a hostile paste from tying up the
/// checker (the CLI reads no more than this from a file).
pub const LINE_MAX_BYTES: usize = 1 << 20;

/// Checks `text`, a result line with a `receipt` field or a bare receipt,
/// with only the ledger's public key.
pub fn check_line(text: &[u8], key: &NoteVerifier) -> Result<CheckedLine, LineError> {
    if text.len() > LINE_MAX_BYTES {
        return Err(LineError::TooLarge(text.len()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| LineError::NotJson(e.to_string()))?;
    let keys: FirstDuplicateKey =
        serde_json::from_slice(text).map_err(|e| LineError::NotJson(e.to_string()))?;
    if let Some(twice) = keys.0 {
        return Err(LineError::DuplicateKey(twice));
    }
    let receipt: Receipt =
        serde_json::from_value(value.get("receipt").cloned().unwrap_or(value.clone()))
            .map_err(|e| LineError::NotReceipt(e.to_string()))?;
    let (checkpoint, entry) = receipt.verify(key)?;
    cross_check(&value, &entry).map_err(LineError::Mismatch)?;
    // Present at all counts: `"dicom": null` is a claim too.
    let unsigned = match value.get("receipt") {
        Some(_) => UNSIGNED_FIELDS
            .iter()
            .filter(|field| value.get(**field).is_some())
            .map(|field| field.to_string())
            .collect(),
        None => Vec::new(),
    };
    Ok(CheckedLine {
        receipt,
        checkpoint,
        entry,
        unsigned,
    })
}

/// What a result line may show that its receipt does not cover.
const UNSIGNED_FIELDS: [&str; 6] = [
    "input",
    "statistics",
    "integrity",
    "dicom",
    "structured_report",
    "structured_report_error",
];

/// Checks the fields of a `predict --json` line against the entry its
/// receipt proves; a bare receipt has none of them and passes.
pub(crate) fn cross_check(line: &serde_json::Value, entry: &Entry) -> Result<(), String> {
    use serde_json::{Value, json};
    const RESULT_FIELDS: [&str; 7] = [
        "certificate",
        "label",
        "verdict",
        "p_value",
        "probabilities",
        "seed",
        "model",
    ];

    if line.get("receipt").is_none() {
        // A bare receipt: nothing shown beside it to check.
        return Ok(());
    }
    if let Some(obj) = line.as_object()
        && let Some(extra) = obj.keys().find(|k| {
            let k = k.as_str();
            !RESULT_FIELDS.contains(&k)
                && !UNSIGNED_FIELDS.contains(&k)
                && !["guest_sha256", "receipt"].contains(&k)
        })
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
        certificate,
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
        // Absent and null both mean "no certificate", as the entry omits it.
        ("certificate", json!(certificate)),
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

/// The path of the first key that appears twice in one object, at any depth
/// of a JSON document (`None` when there is none).
struct FirstDuplicateKey(Option<String>);

impl<'de> serde::Deserialize<'de> for FirstDuplicateKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let steps = serde::de::DeserializeSeed::deserialize(Walk, d)?;
        Ok(FirstDuplicateKey(steps.map(|steps| path(&steps))))
    }
}

/// One step from a value to the one inside it.
enum Step {
    Key(String),
    Index(usize),
}

/// `steps` (innermost first, as the walk returns them) as a path a reader
/// can follow: `probabilities.normal`, `statistics[1].name`, and a key that
/// is not a plain name quoted, `model["a.b"]`, cut to 64 characters.
fn path(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps.iter().rev() {
        match step {
            Step::Index(i) => out.push_str(&format!("[{i}]")),
            Step::Key(k)
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Key(k) => {
                let shown: String = k.chars().take(64).collect();
                let ellipsis = if shown.len() < k.len() { "..." } else { "" };
                let quoted = serde_json::Value::from(shown).to_string();
                out.push_str(&format!("[{quoted}{ellipsis}]"));
            }
        }
    }
    out
}

/// Walks one JSON value. Answers the steps to the first duplicate key below
/// it, innermost first; a path is only built for the duplicate found, so
/// the walk stays linear in the document whatever its keys' lengths.
struct Walk;

impl<'de> serde::de::DeserializeSeed<'de> for Walk {
    type Value = Option<Vec<Step>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk {
    type Value = Option<Vec<Step>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        let mut first: Option<Vec<Step>> = None;
        while let Some(key) = map.next_key::<String>()? {
            let below = map.next_value_seed(Walk)?;
            if first.is_some() {
                continue;
            }
            first = match below {
                Some(mut steps) => {
                    steps.push(Step::Key(key));
                    Some(steps)
                }
                None if seen.contains(&key) => Some(vec![Step::Key(key)]),
                None => {
                    seen.insert(key);
                    None
                }
            };
        }
        Ok(first)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut first: Option<Vec<Step>> = None;
        let mut index = 0usize;
        while let Some(below) = seq.next_element_seed(Walk)? {
            if first.is_none()
                && let Some(mut steps) = below
            {
                steps.push(Step::Index(index));
                first = Some(steps);
            }
            index += 1;
        }
        Ok(first)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
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
            certificate: None,
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

    #[test]
    fn a_line_longer_than_any_result_is_refused_before_parsing() {
        let key = crate::note::NoteSigner::new("medguard.example/ledger", &[7; 32]).verifier();
        let long = vec![b' '; LINE_MAX_BYTES + 1];
        assert_eq!(
            check_line(&long, &key).unwrap_err(),
            LineError::TooLarge(LINE_MAX_BYTES + 1)
        );
    }

    #[test]
    fn a_duplicate_is_named_by_a_path_a_reader_can_follow() {
        assert_eq!(
            first_duplicate(r#"{"model": {"a.b": {"x": 1, "x": 2}}}"#),
            Some(r#"model["a.b"].x"#.into())
        );
        let long = "k".repeat(100) + ".";
        let found = first_duplicate(&format!(r#"{{"{long}": 1, "{long}": 2}}"#)).unwrap();
        assert_eq!(found, format!("[\"{}\"...]", "k".repeat(64)));
        // Escaped and plain spellings are one key.
        assert_eq!(
            first_duplicate(r#"{"a": 1, "\u0061": 2}"#),
            Some("a".into())
        );
    }

    fn first_duplicate(json: &str) -> Option<String> {
        serde_json::from_str::<FirstDuplicateKey>(json)
            .expect("valid JSON")
            .0
    }

    #[test]
    fn finds_a_key_given_twice_at_any_depth() {
        assert_eq!(first_duplicate(r#"{"a": 1, "b": 2}"#), None);
        assert_eq!(first_duplicate(r#"{"a": 1, "a": 2}"#), Some("a".into()));
        assert_eq!(
            first_duplicate(
                r#"{"label": "normal", "probabilities": {"normal": 0.9, "normal": 0.1}}"#
            ),
            Some("probabilities.normal".into())
        );
        assert_eq!(
            first_duplicate(r#"{"model": {"name": "m", "sha256": "x", "sha256": "y"}}"#),
            Some("model.sha256".into())
        );
        assert_eq!(
            first_duplicate(r#"{"statistics": [{"name": "a"}, {"name": "b", "name": "c"}]}"#),
            Some("statistics[1].name".into())
        );
        // Equal keys in different objects are no duplicate.
        assert_eq!(
            first_duplicate(r#"{"a": {"x": 1}, "b": {"x": 1}, "x": [{"x": 2}]}"#),
            None
        );
        // Scalars and arrays at the top hold no keys.
        assert_eq!(first_duplicate(r#"[1, "a", null, true, 2.5, -3]"#), None);
    }
}
