//! `medguard calibrate`: the vendor's tool that measures clean reference
//! statistics in the sandbox and writes the screening profile into a working
//! copy's manifest (which then needs a new signature).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use medguard_screen::Targets;
use serde::Deserialize;

use super::{Exit, SandboxArgs, progress_bar, unsigned_or_refused};
use crate::input::{self, Batch};
use crate::model_dir::read_capped;
use crate::signing::SIGNATURE_FILE;
use crate::vendor::bulk::Run;
use crate::vendor::calibration::{calibrate, write_manifest};
use medguard_attest::MANIFEST_PATH;

/// Compute clean reference statistics in the sandbox and write the screening
/// profile into the model's manifest.
#[derive(Debug, Args)]
pub struct CalibrateCmd {
    /// Directory holding manifest.json and the model file it names.
    model_dir: PathBuf,
    /// An .npz archive of clean uint8 images [N, H, W]; never the test split.
    #[arg(long, value_name = "NPZ")]
    data: PathBuf,
    /// The array in the archive to use.
    #[arg(long, default_value = "train_images")]
    array: String,
    /// A JSON file whose `calibration_indices` list selects the images to use
    /// (as models/pneumonia/splits.json does); all images when absent.
    #[arg(long, value_name = "JSON")]
    indices: Option<PathBuf>,
    /// Fraction of clean inputs that may be flagged.
    #[arg(long, default_value_t = 0.05)]
    flag_fpr: f64,
    /// Fraction of clean inputs that may be rejected.
    #[arg(long, default_value_t = 0.01)]
    reject_fpr: f64,
    /// Seed of the noise draws during calibration.
    #[arg(long, default_value_t = 20261128)]
    seed: u64,
    /// Sandboxes to run in parallel.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Deserialize)]
struct Indices {
    calibration_indices: Vec<usize>,
}

impl CalibrateCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs) -> anyhow::Result<Exit> {
        sandbox.without_request_budget("calibrate")?;
        let Some(model) = unsigned_or_refused(&self.model_dir) else {
            return Ok(Exit::Refused);
        };
        let images = self.load_images()?;
        let (program, _) = sandbox.start(None)?;
        let targets = Targets {
            flag_fpr: self.flag_fpr,
            reject_fpr: self.reject_fpr,
        };
        let bar = progress_bar(images.len(), "calibrating")?;
        let run = Run {
            seed: self.seed,
            threads: self.threads,
            progress: &|n| bar.inc(n as u64),
        };
        let calibrated = calibrate(&program, &model, &images, targets, self.describe(), run)?;
        bar.finish_and_clear();
        write_manifest(&self.model_dir, &calibrated.manifest)
            .with_context(|| format!("writing {}", self.model_dir.join(MANIFEST_PATH).display()))?;

        let labels = &model.manifest().output.labels;
        for (label, n) in labels.iter().zip(&calibrated.per_class) {
            println!("class {label:<12} {n} clean reference images");
        }
        let thresholds = &calibrated.profile.thresholds;
        println!(
            "thresholds     flag at p <= {:.4} (target {}), reject at p <= {:.4} (target {})",
            thresholds.flag, self.flag_fpr, thresholds.reject, self.reject_fpr
        );
        println!(
            "in-sample      {} of {} calibration images flagged against the full reference (leave-one-out is what the thresholds use)",
            calibrated.flagged_in_sample,
            images.len()
        );
        println!(
            "wrote          {}",
            self.model_dir.join(MANIFEST_PATH).display()
        );
        // The manifest is a signed file: any signature is now stale, and
        // the model will be refused until it is signed again.
        if self.model_dir.join(SIGNATURE_FILE).exists() {
            println!(
                "next           the manifest changed, so {SIGNATURE_FILE} no longer matches: re-sign with `medguard sign {} --key KEY` (and raise the version if this model was already deployed)",
                self.model_dir.display()
            );
        }
        Ok(Exit::Ok)
    }

    fn load_images(&self) -> anyhow::Result<Batch> {
        let bytes = read_capped(&self.data, input::ARCHIVE_MAX_BYTES)?;
        let all = input::read_npz_images(&bytes, &self.array)
            .with_context(|| format!("reading {}", self.data.display()))?;
        let Some(path) = &self.indices else {
            return Ok(all);
        };
        let text = read_capped(path, 16 << 20)?;
        let Indices {
            calibration_indices,
        } = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{}: expected {{\"calibration_indices\": [...]}}",
                path.display()
            )
        })?;
        all.select(&calibration_indices).with_context(|| {
            format!(
                "{}: an index is outside the {} images",
                path.display(),
                all.len()
            )
        })
    }

    fn describe(&self) -> String {
        let file = self.data.file_name().map_or_else(
            || self.data.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        match &self.indices {
            Some(i) => format!(
                "{file}:{} selected by {}",
                self.array,
                i.file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
            ),
            None => format!("{file}:{}", self.array),
        }
    }
}
