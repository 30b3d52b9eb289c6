//! `medguard digest`: the SHA-256 of a file, as manifests record it.

use std::path::PathBuf;

use clap::Args;
use medguard_attest::Sha256Digest;
use sha2::{Digest, Sha256};

use super::Exit;

/// Print the SHA-256 of a file.
#[derive(Debug, Args)]
pub struct DigestCmd {
    /// The file to hash.
    file: PathBuf,
}

impl DigestCmd {
    pub(super) fn execute(self) -> anyhow::Result<Exit> {
        let file = std::fs::File::open(&self.file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.file.display()))?;
        // Streamed: a digest needs no size cap.
        let mut hasher = Sha256::new();
        std::io::copy(&mut std::io::BufReader::new(file), &mut hasher)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.file.display()))?;
        let digest = Sha256Digest::from_bytes(hasher.finalize().into());
        println!("{digest}  {}", self.file.display());
        Ok(Exit::Ok)
    }
}
