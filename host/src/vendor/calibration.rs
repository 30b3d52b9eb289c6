//! Calibration: clean reference statistics measured in the sandbox, fitted
//! into the screening profile that goes into the manifest.

use std::io::Write;
use std::path::Path;

use medguard_attest::{
    AttestedModel, CalibrationSource, MANIFEST_PATH, Manifest, ScreeningSection,
};
use medguard_screen::{PixelReference, Profile, Statistic, Targets, Verdict, fit, predicted_class};

use super::VendorError;
use super::bulk::{Mode, Run, screen_all};
use crate::input::Batch;
use crate::sandbox::GuestProgram;

/// The most calibration images whose pixel statistics go into the manifest
/// (about 57 bytes each; the ranks' precision gains little past this).
pub const PIXEL_REFERENCE_MAX: usize = 2_000;

/// What calibration produced.
#[derive(Debug)]
pub struct Calibrated {
    /// The model's manifest with the new screening section; unsigned.
    pub manifest: Manifest,
    /// The fitted profile (also in `manifest`).
    pub profile: Profile,
    /// Reference images per class, in the manifest's label order.
    pub per_class: Vec<usize>,
    /// Calibration images the profile flags against the full reference
    /// (in-sample; the thresholds themselves come from leave-one-out).
    pub flagged_in_sample: usize,
}

/// Measures the default statistics on the clean `images` in the sandbox,
/// fits a profile for `targets`, and returns the model's manifest with it.
/// `data` describes the images' source for the manifest's record.
pub fn calibrate(
    program: &GuestProgram,
    model: &AttestedModel,
    images: &Batch,
    targets: Targets,
    data: String,
    run: Run<'_>,
) -> Result<Calibrated, VendorError> {
    let spec = &model.manifest().input.shape;
    if images.shape[1..] != [spec.channels, spec.height, spec.width] {
        return Err(VendorError::Data(format!(
            "calibration images are {:?}, the model takes [N, {}, {}, {}]",
            images.shape, spec.channels, spec.height, spec.width
        )));
    }
    let statistics = Statistic::default_set();
    let screened = screen_all(
        program,
        model,
        Mode::Measure(&statistics),
        images,
        run,
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
    let profile = fit(statistics, labels.len(), &samples, targets)
        .map_err(|e| VendorError::Fit(e.to_string()))?;
    let mut manifest = model.manifest().clone();
    manifest.screening = Some(ScreeningSection {
        calibration: CalibrationSource {
            data,
            images: samples.len() as u32,
            guest_sha256: program.digest(),
            seed: run.seed,
        },
        profile: profile.clone(),
        // At most PIXEL_REFERENCE_MAX images' values: a manifest stays small.
        pixels: Some(pixel_reference(images)),
    });
    let per_class = (0..labels.len())
        .map(|c| samples.iter().filter(|(class, _)| *class == c).count())
        .collect();
    let flagged_in_sample = samples
        .iter()
        .filter(|(c, v)| profile.judge(*c, v).verdict != Verdict::Accept)
        .count();
    Ok(Calibrated {
        manifest,
        profile,
        per_class,
        flagged_in_sample,
    })
}

/// The pixel reference of `images`: all of them, or every k-th image for k
/// that leaves at most [`PIXEL_REFERENCE_MAX`] (a subset chosen by position,
/// never by value, keeps the ranks exact, and a stride keeps a class-sorted
/// archive's mix).
fn pixel_reference(images: &Batch) -> PixelReference {
    let per_image = images.shape[1..].iter().product::<u32>().max(1) as usize;
    let step = images.len().div_ceil(PIXEL_REFERENCE_MAX).max(1);
    PixelReference::fit(images.data.chunks_exact(per_image).step_by(step))
}

/// Replaces `dir`'s manifest atomically: a crash leaves the old or the new
/// file, never half of one. The new manifest is re-parsed first, so an
/// invalid one is never written.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    text.push(b'\n');
    Manifest::parse(&text).map_err(|e| {
        std::io::Error::other(format!("the calibrated manifest would not be valid: {e}"))
    })?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&text)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(MANIFEST_PATH)).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_sorted_archive_keeps_its_mix_in_the_pixel_reference() {
        // 4,001 images, the dark half first (a class-sorted archive).
        let n = 4_001usize;
        let data: Vec<f32> = (0..n)
            .flat_map(|i| [if i < n / 2 { 0.1 } else { 0.9 }; 4])
            .collect();
        let images = Batch {
            shape: [n as u32, 1, 2, 2],
            data,
            source_bits: 0,
        };
        let reference = pixel_reference(&images);
        assert!(reference.images() <= PIXEL_REFERENCE_MAX);
        assert_eq!(reference.images(), n.div_ceil(3));
        let dark = reference.intensity.iter().filter(|&&v| v < 0.5).count();
        let share = dark as f64 / reference.images() as f64;
        assert!((share - 0.5).abs() < 0.01, "{share}");
        // A small archive goes in whole.
        let few = Batch {
            shape: [3, 1, 2, 2],
            data: vec![0.5; 12],
            source_bits: 0,
        };
        assert_eq!(pixel_reference(&few).images(), 3);
    }
}
