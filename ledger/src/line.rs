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
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
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

/// Checks `text`, a result line with a `receipt` field or a bare receipt,
/// with only the ledger's public key.
pub fn check_line(text: &[u8], key: &NoteVerifier) -> Result<CheckedLine, LineError> {
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
    let unsigned = match value.get("receipt") {
        Some(_) => UNSIGNED_FIELDS
            .iter()
            .filter(|field| value.get(**field).is_some_and(|v| !v.is_null()))
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

/// The path of the first key that appears twice in one object, at any depth
/// of a JSON document (`None` when there is none).
struct FirstDuplicateKey(Option<String>);

impl<'de> serde::Deserialize<'de> for FirstDuplicateKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::DeserializeSeed::deserialize(Walk { path: "" }, d).map(FirstDuplicateKey)
    }
}

/// Walks one JSON value at `path`; answers the first duplicate key below it.
struct Walk<'p> {
    path: &'p str,
}

impl Walk<'_> {
    fn child(&self, step: &str) -> String {
        if self.path.is_empty() {
            step.to_owned()
        } else if step.starts_with('[') {
            format!("{}{step}", self.path)
        } else {
            format!("{}.{step}", self.path)
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        let mut first = None;
        while let Some(key) = map.next_key::<String>()? {
            let path = self.child(&key);
            let below = map.next_value_seed(Walk { path: &path })?;
            if first.is_none() {
                first = if seen.insert(key) { below } else { Some(path) };
            }
        }
        Ok(first)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut first = None;
        let mut index = 0usize;
        loop {
            let path = self.child(&format!("[{index}]"));
            let Some(below) = seq.next_element_seed(Walk { path: &path })? else {
                return Ok(first);
            };
            first = first.or(below);
            index += 1;
        }
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
    use super::FirstDuplicateKey;

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
