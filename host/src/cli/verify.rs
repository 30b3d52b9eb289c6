use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use medguard_attest::VerifyingKey;

use super::{Exit, attested_or_refused};
use crate::signing::verify_directory;

/// Attest a model directory without running it: exit 0 if accepted, 1 if refused.
#[derive(Debug, Args)]
pub struct VerifyCmd {
    /// Directory holding manifest.json and the model file it names.
    model_dir: PathBuf,
    /// Also require MODEL_DIR/model.sig to be a valid model-signing signature
    /// by this PEM public key (P-256 or P-384) over every file of the directory.
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
}

impl VerifyCmd {
    pub(super) fn execute(self) -> anyhow::Result<Exit> {
        if let Some(path) = &self.key {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let key = VerifyingKey::from_pem(&pem).with_context(|| path.display().to_string())?;
            match verify_directory(&self.model_dir, &key) {
                Ok(signed) => println!(
                    "signature: {} files signed by key {}",
                    signed.files().len(),
                    signed.key()
                ),
                Err(e) => {
                    eprintln!("medguard: refused: {e}");
                    return Ok(Exit::Refused);
                }
            }
        }
        let Some(model) = attested_or_refused(&self.model_dir) else {
            return Ok(Exit::Refused);
        };
        let m = model.manifest();
        println!(
            "accepted: {} {} ({} bytes, sha256 {})",
            m.name,
            m.version,
            m.model.size,
            model.model_digest()
        );
        Ok(Exit::Ok)
    }
}
