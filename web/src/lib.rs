//! medguard in the browser: the wasm-bindgen surface over [`guard`], the one
//! module of this crate that touches wasm-bindgen.
//!
//! The page's worker (`web/package/worker.js`) calls these; nothing here
//! reaches the network, storage or the DOM. Values cross as JavaScript
//! objects built from the same serde types the native tests check.

pub mod guard;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use wasm_bindgen::prelude::*;

/// The digest of the wasm module the worker instantiated, set once by
/// [`set_module_digest`] and reported as each result's `guest_sha256`.
static MODULE_DIGEST: OnceLock<String> = OnceLock::new();

/// `Number.MAX_SAFE_INTEGER`.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** What was admitted. */
export interface Attestation {
  name: string; version: string; signer: string; key_fingerprint: string;
  model_sha256: string; manifest_sha256: string; policy_sha256: string;
  expires: string | null; labels: string[]; height: number; width: number;
  takes_dicom: boolean; statistics: string[];
}
/** One image's result: `medguard predict --json` without the receipt. */
export interface Prediction {
  input?: string;
  label: string | null;
  probabilities: Record<string, number> | null;
  verdict: "accept" | "flag" | "reject" | "unscreened";
  p_value: number | null;
  statistics: Record<string, { value: number; p_value: number }>;
  integrity: { source_bits: number; off_grid: number };
  seed: number;
  model: { name: string; version: string; sha256: string };
  guest_sha256: string;
  dicom?: {
    transfer_syntax: string; rows: number; columns: number; bits_stored: number;
    photometric_interpretation: string; intensity: string;
  };
}
/** An image beside its median-squeezed copy, row-major values in [0, 1]. */
export interface Squeezed {
  height: number; width: number; window: number; image: number[]; squeezed: number[];
}
/** A server's result whose receipt verified. */
export interface VerifiedResult {
  index: number; kind: string; origin: string; tree_size: number; root: string;
  description: string;
  /** The line's fields the receipt does not cover: shown unverified. */
  unsigned: string[];
}
"#;

/// Records the SHA-256 of the wasm module bytes the worker instantiated
/// (hashed here, in Rust). Returns the digest. A second call keeps the first.
#[wasm_bindgen(js_name = setModuleDigest)]
pub fn set_module_digest(module_bytes: &[u8]) -> String {
    MODULE_DIGEST
        .get_or_init(|| medguard_attest::Sha256Digest::of(module_bytes).to_string())
        .clone()
}

/// A parsed trust policy.
#[wasm_bindgen]
pub struct Policy(guard::Policy);

#[wasm_bindgen]
impl Policy {
    /// Parses policy TOML. `keyFiles` maps each `public_key_file` the policy
    /// names to its PEM text.
    #[wasm_bindgen(constructor)]
    pub fn new(toml: &str, key_files: Option<js_sys::Map>) -> Result<Policy, JsError> {
        let key_files = key_files.map(string_map).transpose()?.unwrap_or_default();
        let policy = guard::Policy::parse(toml, |name| {
            key_files
                .get(name)
                .cloned()
                .ok_or_else(|| format!("{name} was not provided with the policy"))
        })
        .map_err(refusal)?;
        Ok(Policy(policy))
    }

    /// The policy's digest, as the ledger records it.
    #[wasm_bindgen(getter)]
    pub fn sha256(&self) -> String {
        self.0.sha256().to_string()
    }
}

/// An admitted, loaded model.
#[wasm_bindgen]
pub struct Model(guard::Model);

#[wasm_bindgen]
impl Model {
    /// Admits a model directory under `policy`: `files` maps each relative
    /// path (`/`-separated) to its bytes. Throws with the refusal's reason.
    pub fn admit(policy: &Policy, files: js_sys::Map) -> Result<Model, JsError> {
        let mut bytes = BTreeMap::new();
        for entry in files.entries() {
            let pair: js_sys::Array = entry.map_err(js_error)?.into();
            let name = pair
                .get(0)
                .as_string()
                .ok_or_else(|| JsError::new("file names must be strings"))?;
            let data = pair.get(1);
            if !data.is_instance_of::<js_sys::Uint8Array>() {
                return Err(JsError::new(&format!(
                    "{name}: contents must be a Uint8Array"
                )));
            }
            bytes.insert(name, js_sys::Uint8Array::from(data).to_vec());
        }
        guard::Model::admit(&policy.0, &bytes, jiff::Timestamp::now())
            .map(Model)
            .map_err(refusal)
    }

    /// What was admitted.
    #[wasm_bindgen(getter, unchecked_return_type = "Attestation")]
    pub fn attestation(&self) -> Result<JsValue, JsError> {
        to_js(self.0.attestation())
    }

    /// Screens and classifies every image in `bytes` (PNG, `.npy` or DICOM)
    /// with noise seed `seed` (fresh entropy from the page for each request;
    /// the same seed reproduces the answer).
    #[wasm_bindgen(unchecked_return_type = "Prediction[]")]
    pub fn classify(
        &self,
        name: Option<String>,
        bytes: &[u8],
        seed: u64,
    ) -> Result<JsValue, JsError> {
        // The seed comes back as a JavaScript number in the result: above
        // 2^53 - 1 it would not be the seed that was used.
        if seed > MAX_SAFE_INTEGER {
            return Err(JsError::new(&format!(
                "seed {seed} is above 2^53 - 1, which a JavaScript number cannot hold exactly"
            )));
        }
        let digest = MODULE_DIGEST.get().map(String::as_str).unwrap_or("");
        to_js(
            &self
                .0
                .classify(name.as_deref(), bytes, seed, digest)
                .map_err(refusal)?,
        )
    }

    /// The first image in `bytes` and its median-squeezed copy.
    #[wasm_bindgen(unchecked_return_type = "Squeezed")]
    pub fn squeezed(&self, bytes: &[u8]) -> Result<JsValue, JsError> {
        to_js(&self.0.squeezed(bytes).map_err(refusal)?)
    }
}

/// Checks a medguard result line (or a bare receipt) against the ledger's
/// public key, as `medguard ledger verify-receipt` does. Throws with why it
/// does not check out.
#[wasm_bindgen(js_name = verifyResult, unchecked_return_type = "VerifiedResult")]
pub fn verify_result(line: &str, ledger_key: &str) -> Result<JsValue, JsError> {
    to_js(&guard::verify_result(line.as_bytes(), ledger_key).map_err(refusal)?)
}

/// A refusal as the page shows it: names in it (a file a hostile signature
/// lists, an entry's fields) are someone else's text, so no control or bidi
/// character reaches the page as such.
fn refusal(e: guard::WebError) -> JsError {
    JsError::new(&medguard_ledger::text::printable(&e.to_string()))
}

/// Serialises through JSON text: the numbers are exactly those
/// `predict --json` prints for the same values.
fn to_js(value: &impl serde::Serialize) -> Result<JsValue, JsError> {
    let text = serde_json::to_string(value).map_err(|e| JsError::new(&e.to_string()))?;
    js_sys::JSON::parse(&text).map_err(js_error)
}

fn string_map(map: js_sys::Map) -> Result<BTreeMap<String, String>, JsError> {
    let mut out = BTreeMap::new();
    for entry in map.entries() {
        let pair: js_sys::Array = entry.map_err(js_error)?.into();
        match (pair.get(0).as_string(), pair.get(1).as_string()) {
            (Some(k), Some(v)) => out.insert(k, v),
            _ => return Err(JsError::new("key files must map names to PEM text")),
        };
    }
    Ok(out)
}

fn js_error(e: JsValue) -> JsError {
    JsError::new(&e.as_string().unwrap_or_else(|| format!("{e:?}")))
}
