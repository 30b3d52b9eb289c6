//! Screening many images with the real guard, shared by `calibrate` and `eval`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use medguard_attest::AttestedModel;
use medguard_screen::Statistic;

use crate::input::Batch;
use crate::sandbox::{GuestProgram, ScreenOptions, ScreenedImage, Session};

/// What the sessions screen with.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode<'a> {
    /// Compute these statistics without a verdict (calibration).
    Measure(&'a [Statistic]),
    /// Judge with the manifest's calibrated profile.
    Judge,
}

/// Images per guest call: small enough that progress moves, large enough
/// that call overhead does not matter.
const CHUNK: usize = 16;

/// Screens every image of `batch` in `threads` sandboxes in parallel, chunk
/// `i` with seed `seed + i`, so results do not depend on the thread count.
/// Predictions of rejected inputs are kept (flag-only), since evaluation and
/// calibration need them.
pub(super) fn screen_all(
    program: &GuestProgram,
    model: &AttestedModel,
    mode: Mode<'_>,
    batch: &Batch,
    seed: u64,
    threads: usize,
    label: &str,
) -> anyhow::Result<Vec<ScreenedImage>> {
    let chunk = CHUNK.min(model.manifest().max_batch as usize);
    let chunks: Vec<Batch> = batch.chunks(chunk).collect();
    let bar = ProgressBar::new(batch.len() as u64).with_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} images, {eta} left")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Vec<ScreenedImage>>>> = Mutex::new(vec![None; chunks.len()]);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads.max(1).min(chunks.len().max(1)))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let mut session = open(program, model, mode)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = chunks.get(i) else {
                            return Ok(());
                        };
                        let options = ScreenOptions {
                            seed: seed.wrapping_add(i as u64),
                            source_bits: c.source_bits,
                            withhold_rejected: false,
                        };
                        let screened =
                            session
                                .screen(&c.shape, &c.data, options)
                                .with_context(|| {
                                    format!("screening {label}, images from {}", i * chunk)
                                })?;
                        bar.inc(c.len() as u64);
                        results
                            .lock()
                            .map_err(|_| anyhow::anyhow!("a worker panicked"))?[i] = Some(screened);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a screening worker panicked"))??;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a worker panicked"))?;
    Ok(results.into_iter().flatten().flatten().collect())
}

fn open(program: &GuestProgram, model: &AttestedModel, mode: Mode<'_>) -> anyhow::Result<Session> {
    match mode {
        Mode::Measure(statistics) => program.calibration_session(model, statistics),
        Mode::Judge => program.session(model),
    }
    .context("loading the model in the sandbox")
}

pub(super) use medguard_screen::predicted_class;
