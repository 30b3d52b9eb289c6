//! `medguard sign`: signs a model directory in the OpenSSF model-signing format.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use medguard_attest::SigningKey;

use super::Exit;
use crate::signing::{SIGNATURE_FILE, sign_directory};

/// Sign every file of a model directory with an ECDSA key, writing an OpenSSF
/// model-signing bundle that `model_signing verify key` accepts.
#[derive(Debug, Args)]
pub struct SignCmd {
    /// The model directory to sign (its manifest is one of the signed files).
    model_dir: PathBuf,
    /// Unencrypted PEM ECDSA private key on P-256 or P-384: SEC1 (`BEGIN EC
    /// PRIVATE KEY`, as `openssl ecparam -genkey` writes) or PKCS#8 (`BEGIN
    /// PRIVATE KEY`). Decrypt an encrypted key first (`openssl pkey`).
    #[arg(long, value_name = "PEM")]
    key: PathBuf,
    /// Where to write the bundle [default: MODEL_DIR/model.sig].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

impl SignCmd {
    pub(super) fn execute(self) -> anyhow::Result<Exit> {
        let pem = std::fs::read_to_string(&self.key)
            .with_context(|| format!("reading {}", self.key.display()))?;
        let key = SigningKey::from_pem(&pem).with_context(|| self.key.display().to_string())?;
        let out = self
            .out
            .unwrap_or_else(|| self.model_dir.join(SIGNATURE_FILE));
        sign_directory(&self.model_dir, &key, &out)
            .with_context(|| format!("signing {}", self.model_dir.display()))?;
        println!(
            "signed {} with key {}; wrote {}",
            self.model_dir.display(),
            key.verifying_key().fingerprint(),
            out.display()
        );
        Ok(Exit::Ok)
    }
}
