//! `medguard calibrate`: the vendor's tool that measures clean reference
//! statistics in the sandbox and writes the screening profile into a working
//! copy's manifest (which then needs a new signature).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use medguard_attest::{CalibrationSource, Manifest, ScreeningSection};
use medguard_screen::{Targets, fit};
use serde::Deserialize;

use super::screening::{Mode, predicted_class, screen_all};
use super::{Exit, SandboxArgs, unsigned_or_refused};
use crate::input::{self, Batch};
use crate::model_dir::read_capped;
use crate::signing::SIGNATURE_FILE;
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
        let Some(model) = unsigned_or_refused(&self.model_dir) else {
            return Ok(Exit::Refused);
        };
        let images = self.load_images()?;
        let spec = &model.manifest().input.shape;
        if images.shape[1..] != [spec.channels, spec.height, spec.width] {
            bail!(
                "calibration images are {:?}, the model takes [N, {}, {}, {}]",
                images.shape,
                spec.channels,
                spec.height,
                spec.width
            );
        }
        let (program, _) = sandbox.start()?;
        let statistics = medguard_screen::Statistic::default_set();
        let screened = screen_all(
            &program,
            &model,
            Mode::Measure(&statistics),
            &images,
            self.seed,
            self.threads,
            "calibrating",
        )?;
        let samples: Vec<(usize, Vec<f64>)> = screened
            .into_iter()
            .map(|s| {
                let class = s.probabilities.as_deref().map_or(0, predicted_class);
                (class, s.statistics)
            })
            .collect();
        let labels = &model.manifest().output.labels;
        let targets = Targets {
            flag_fpr: self.flag_fpr,
            reject_fpr: self.reject_fpr,
        };
        let profile = fit(statistics, labels.len(), &samples, targets)
            .context("fitting the screening profile")?;

        let mut manifest: Manifest = model.manifest().clone();
        manifest.screening = Some(ScreeningSection {
            calibration: CalibrationSource {
                data: self.describe(),
                images: samples.len() as u32,
                guest_sha256: program.digest(),
                seed: self.seed,
            },
            profile: profile.clone(),
        });
        write_manifest(&self.model_dir, &manifest)?;

        for (c, label) in labels.iter().enumerate() {
            let n = samples.iter().filter(|(class, _)| *class == c).count();
            println!("class {label:<12} {n} clean reference images");
        }
        let flagged = samples
            .iter()
            .filter(|(c, v)| profile.judge(*c, v).verdict != medguard_screen::Verdict::Accept)
            .count();
        println!(
            "thresholds     flag at p <= {:.4} (target {}), reject at p <= {:.4} (target {})",
            profile.thresholds.flag, self.flag_fpr, profile.thresholds.reject, self.reject_fpr
        );
        println!(
            "in-sample      {flagged} of {} calibration images flagged against the full reference (leave-one-out is what the thresholds use)",
            samples.len()
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

/// Replaces the manifest atomically: a crash leaves the old or the new file,
/// never half of one. The new manifest is re-parsed first, so an invalid one
/// is never written.
fn write_manifest(dir: &std::path::Path, manifest: &Manifest) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(manifest).context("serialising the manifest")?;
    text.push(b'\n');
    Manifest::parse(&text).context("the calibrated manifest would not be valid")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(&text)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(MANIFEST_PATH))
        .with_context(|| format!("replacing {}", dir.join(MANIFEST_PATH).display()))?;
    Ok(())
}
