use std::path::PathBuf;

use clap::Args;

use super::Exit;
use crate::model_dir;

/// Attest a model directory without running it: exit 0 if accepted, 1 if refused.
#[derive(Debug, Args)]
pub struct VerifyCmd {
    /// Directory holding manifest.json and the model file it names.
    model_dir: PathBuf,
}

impl VerifyCmd {
    pub(super) fn execute(self) -> anyhow::Result<Exit> {
        match model_dir::load(&self.model_dir) {
            Ok(model) => {
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
            Err(e) => {
                eprintln!("medguard: refused: {e}");
                Ok(Exit::Refused)
            }
        }
    }
}
