//! Shared pieces of the fuzz targets: fixed test keys, the signing the
//! harnesses do so that fuzzed bytes reach the parsers *behind* a signature
//! check, the template ledger, and the byte layouts of the structured
//! targets. Also used by `examples/seeds.rs`, which writes the seed corpus.
//!
//! Nothing here is a second implementation of a parser: every target feeds
//! the crates' own public entry points.

use std::path::Path;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use medguard_attest::VerifyingKey;
#[cfg(feature = "guest")]
use medguard_guest_core::{InputBatch, ModelSpec};
use medguard_ledger::entry::{ScreeningPolicy, Verdict};
use medguard_ledger::note::{Checkpoint, NoteSigner};
use medguard_ledger::{Entry, Ledger, NoteVerifier, merkle};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------- attest

/// The demo P-256 key pair (models/trust/): test keys, committed on purpose.
pub const DEMO_PUB_PEM: &str = include_str!("../../models/trust/demo.pub.pem");
/// Its private half.
pub const DEMO_KEY_PEM: &str = include_str!("../../models/trust/demo.key.pem");
/// The P-384 fixture key (tests/fixtures/signing/).
pub const P384_PUB_PEM: &str = include_str!("../../tests/fixtures/signing/p384.pub.pem");

/// The keys bundles are verified against: the demo key (P-256) and the
/// P-384 fixture, so that both curves' verification paths run.
pub fn verifying_keys() -> &'static [VerifyingKey; 2] {
    static KEYS: OnceLock<[VerifyingKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [DEMO_PUB_PEM, P384_PUB_PEM].map(|pem| VerifyingKey::from_pem(pem).expect("fixture key"))
    })
}

/// The bundled model's manifest, as the targets that need one use it.
pub fn bundled_manifest() -> &'static medguard_attest::Manifest {
    static M: OnceLock<medguard_attest::Manifest> = OnceLock::new();
    M.get_or_init(|| {
        medguard_attest::Manifest::parse(include_bytes!("../../models/pneumonia/manifest.json"))
            .expect("the bundled manifest parses")
    })
}

// ---------------------------------------------------------------- ledger

/// The fixed checkpoint key seed of every fuzzed ledger (test key).
pub const NOTE_SEED: [u8; 32] = [0x5e; 32];
/// Its name, the log's origin.
pub const NOTE_ORIGIN: &str = "medguard.invalid/ledger/fuzz";

/// The fixed checkpoint signer.
pub fn note_signer() -> NoteSigner {
    NoteSigner::new(NOTE_ORIGIN, &NOTE_SEED)
}

/// Its verifier.
pub fn note_verifier() -> &'static NoteVerifier {
    static V: OnceLock<NoteVerifier> = OnceLock::new();
    V.get_or_init(|| note_signer().verifier())
}

/// Signs arbitrary checkpoint `text` as a C2SP signed note with the fixed
/// key (`NoteSigner::sign` only signs well-formed checkpoints), so that the
/// text reaches the checkpoint parser behind the signature check.
pub fn sign_note_text(text: &str) -> String {
    use ed25519_dalek::Signer as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&NOTE_SEED);
    let mut id = Sha256::new();
    id.update(NOTE_ORIGIN.as_bytes());
    id.update([b'\n', 0x01]);
    id.update(key.verifying_key().as_bytes());
    let mut blob = id.finalize()[..4].to_vec();
    blob.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
    format!("{text}\n\u{2014} {NOTE_ORIGIN} {}\n", BASE64.encode(blob))
}

/// A directory for scratch ledgers: tmpfs when there is one, so that the
/// ledger's fsyncs cost nothing.
pub fn scratch_root() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// Writes the files of an empty ledger with the fixed key into
/// `data_dir/ledger`: key, origin, HMAC secret and the signed checkpoint of
/// the empty tree (framed `u32 length, u32 CRC-32, payload`, little endian).
/// `Ledger::open` then opens it as it opens any existing ledger.
pub fn write_empty_ledger(data_dir: &Path) -> std::io::Result<()> {
    let dir = data_dir.join(medguard_ledger::store::LEDGER_DIR);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("key"), hex::encode(NOTE_SEED))?;
    std::fs::write(dir.join("origin"), format!("{NOTE_ORIGIN}\n"))?;
    std::fs::write(dir.join("input-hmac.key"), hex::encode([0x11; 32]))?;
    let note = note_signer().sign(&Checkpoint {
        origin: NOTE_ORIGIN.into(),
        size: 0,
        root: merkle::empty_root(),
    });
    std::fs::write(dir.join("checkpoints.log"), frame(note.as_bytes()))
}

/// One record as the ledger frames it.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The entries of the template ledger: one of each kind, at fixed times.
pub fn sample_entries() -> Vec<Entry> {
    let time: jiff::Timestamp = "2026-11-28T12:00:00Z".parse().expect("time");
    let digest = |b: u8| medguard_attest::Sha256Digest::from_bytes([b; 32]);
    let version: semver::Version = "1.2.0".parse().expect("version");
    vec![
        Entry::LedgerCreated {
            time,
            key: note_verifier().to_string(),
            replaces: None,
        },
        Entry::PolicyChanged {
            time,
            from: None,
            to: digest(1),
        },
        Entry::ModelAdmitted {
            time,
            model: "pneumonia-cnn".into(),
            version: version.clone(),
            model_sha256: digest(2),
            manifest_sha256: digest(3),
            signer: "medguard-demo".into(),
            signer_fingerprint: digest(4),
            policy_sha256: digest(1),
            training: None,
        },
        Entry::ModelRefused {
            time,
            directory: "pneumonia".into(),
            model: Some("pneumonia-cnn".into()),
            version: Some("1.0.0".parse().expect("version")),
            reason: "rollback".into(),
            policy_sha256: digest(1),
        },
        Entry::Inference {
            time,
            model: "pneumonia-cnn".into(),
            version: version.clone(),
            model_sha256: digest(2),
            guest_sha256: digest(5),
            input_hmac: hex::encode([6; 32]),
            verdict: Verdict::Accept,
            p_value: Some(0.42),
            label: Some("normal".into()),
            probabilities: Some([("normal".into(), 0.9), ("pneumonia".into(), 0.1)].into()),
            policy: ScreeningPolicy::Enforce,
            seed: 7,
            caller: None,
            certificate: None,
        },
        Entry::Inference {
            time,
            model: "pneumonia-cnn".into(),
            version,
            model_sha256: digest(2),
            guest_sha256: digest(5),
            input_hmac: hex::encode([8; 32]),
            verdict: Verdict::Reject,
            p_value: Some(1e-6),
            label: None,
            probabilities: None,
            policy: ScreeningPolicy::Enforce,
            seed: 9,
            caller: Some("pacs-reader".into()),
            certificate: None,
        },
    ]
}

/// The files of the template ledger the `ledger_files` target fuzzes, in
/// selector order.
pub const LEDGER_FILES: [&str; 7] = [
    "entries.log",
    "entries.mac",
    "checkpoints.log",
    "entries.idx",
    "tree-00.hashes",
    "tree-01.hashes",
    "view.json",
];

/// Every file of a real ledger with the fixed key holding
/// [`sample_entries`], appended in three group commits (so that there are
/// several checkpoints), as `(name, bytes)`; plus the receipts it returned.
pub fn template_ledger() -> &'static (Vec<(String, Vec<u8>)>, Vec<medguard_ledger::Receipt>) {
    static T: OnceLock<(Vec<(String, Vec<u8>)>, Vec<medguard_ledger::Receipt>)> = OnceLock::new();
    T.get_or_init(|| {
        let tmp = tempfile::tempdir_in(scratch_root()).expect("scratch dir");
        write_empty_ledger(tmp.path()).expect("empty ledger");
        let mut receipts = Vec::new();
        {
            let mut ledger = Ledger::open(tmp.path()).expect("open the template ledger");
            let entries = sample_entries();
            for batch in [&entries[..1], &entries[1..4], &entries[4..]] {
                receipts.extend(ledger.append(batch).expect("append"));
            }
        }
        let dir = tmp.path().join(medguard_ledger::store::LEDGER_DIR);
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("ledger dir")
            .map(|e| {
                let e = e.expect("dir entry");
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).expect("ledger file"))
            })
            .filter(|(name, _)| name != "lock")
            .collect();
        files.sort();
        (files, receipts)
    })
}

// ---------------------------------------------------------------- guest

/// The byte layout of a `guest_input` case: the spec's `channels, height,
/// width, classes, max_batch` (`u32` each), `min, max` (`f32`), then the
/// number of shape dimensions (`u8`, modulo 8), the dimensions (`u32` each)
/// and the data (`f32` each, a trailing partial value dropped). All little
/// endian. Returns `None` when the bytes run out before the data.
#[cfg(feature = "guest")]
pub fn decode_input_case(bytes: &[u8]) -> Option<(ModelSpec, InputBatch)> {
    let mut r = bytes;
    let mut u32_ = || -> Option<u32> {
        let (head, rest) = r.split_first_chunk::<4>()?;
        r = rest;
        Some(u32::from_le_bytes(*head))
    };
    let [channels, height, width, classes, max_batch] =
        [u32_()?, u32_()?, u32_()?, u32_()?, u32_()?];
    let [min_value, max_value] = [f32::from_bits(u32_()?), f32::from_bits(u32_()?)];
    let (&ndims, rest) = r.split_first()?;
    r = rest;
    let mut shape = Vec::new();
    for _ in 0..ndims % 8 {
        let (head, rest) = r.split_first_chunk::<4>()?;
        shape.push(u32::from_le_bytes(*head));
        r = rest;
    }
    let data = r
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((
        ModelSpec {
            input_name: "image".into(),
            output_name: "logits".into(),
            channels,
            height,
            width,
            min_value,
            max_value,
            classes,
            max_batch,
        },
        InputBatch { shape, data },
    ))
}

/// The inverse of [`decode_input_case`], for seeds.
#[cfg(feature = "guest")]
pub fn encode_input_case(spec: &ModelSpec, batch: &InputBatch) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [
        spec.channels,
        spec.height,
        spec.width,
        spec.classes,
        spec.max_batch,
        spec.min_value.to_bits(),
        spec.max_value.to_bits(),
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(batch.shape.len() as u8);
    for d in &batch.shape {
        out.extend_from_slice(&d.to_le_bytes());
    }
    for v in &batch.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The spec every `guest_onnx` case is loaded with: small images so that
/// the seed models (and what the fuzzer makes of them) load fast.
#[cfg(feature = "guest")]
pub fn onnx_spec() -> ModelSpec {
    ModelSpec {
        input_name: "image".into(),
        output_name: "logits".into(),
        channels: 1,
        height: 4,
        width: 4,
        min_value: 0.0,
        max_value: 1.0,
        classes: 2,
        max_batch: 4,
    }
}
