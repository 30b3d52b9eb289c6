//! Screening many images in parallel sandboxes, shared by calibration and
//! evaluation.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use medguard_attest::AttestedModel;
use medguard_screen::Statistic;

use super::VendorError;
use crate::input::Batch;
use crate::sandbox::{GuestProgram, SandboxError, ScreenOptions, ScreenedImage, Session};
use medguard_certify::Certificate;

/// What the sessions screen with.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// Compute these statistics without a verdict (calibration).
    Measure(&'a [Statistic]),
    /// Judge with the manifest's calibrated profile.
    Judge,
}

/// Images per guest call: small enough that progress moves, large enough
/// that call overhead does not matter.
const CHUNK: usize = 16;

/// How a bulk run goes: the seed of chunk 0, the sandboxes to run in
/// parallel, and a callback told how many more images are done (a progress
/// bar at the edge).
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// Chunk `i` screens with seed `seed + i`.
    pub seed: u64,
    /// Sandboxes in parallel.
    pub threads: usize,
    /// Called with the number of images each finished chunk held.
    pub progress: &'a (dyn Fn(usize) + Sync),
}

/// Screens every image of `batch` in `run.threads` sandboxes in parallel,
/// chunk `i` with seed `run.seed + i`, so results do not depend on the
/// thread count. Predictions of rejected inputs are kept (flag-only), since
/// evaluation and calibration need them. `label` names the set in errors.
pub fn screen_all(
    program: &GuestProgram,
    model: &AttestedModel,
    mode: Mode<'_>,
    batch: &Batch,
    run: Run<'_>,
    label: &str,
) -> Result<Vec<ScreenedImage>, VendorError> {
    each_chunk(
        program,
        model,
        mode,
        batch,
        run,
        label,
        "screening",
        |session, c, seed| {
            let options = ScreenOptions {
                seed,
                source_bits: c.source_bits,
                withhold_rejected: false,
            };
            session.screen(&c.shape, &c.data, options)
        },
    )
}

/// Certifies every image of `batch` with the model's certifier, in
/// parallel sandboxes as [`screen_all`] screens (chunk `i` with seed
/// `run.seed + i`, which smoothing's noise uses).
pub fn certify_all(
    program: &GuestProgram,
    model: &AttestedModel,
    batch: &Batch,
    run: Run<'_>,
    label: &str,
) -> Result<Vec<Certificate>, VendorError> {
    let certifier = model.certifier().ok_or(VendorError::Missing(
        "certification section in the manifest",
    ))?;
    each_chunk(
        program,
        model,
        Mode::Judge,
        batch,
        run,
        label,
        "certifying",
        |session, c, seed| session.certify(&c.shape, &c.data, certifier, seed),
    )
}

/// Runs `work` on every chunk of `batch` in `run.threads` sandboxes, chunk
/// `i` with seed `run.seed + i`, and returns the results in image order.
#[allow(clippy::too_many_arguments)]
fn each_chunk<T: Send>(
    program: &GuestProgram,
    model: &AttestedModel,
    mode: Mode<'_>,
    batch: &Batch,
    run: Run<'_>,
    label: &str,
    doing: &str,
    work: impl Fn(&mut Session, &Batch, u64) -> Result<Vec<T>, SandboxError> + Sync,
) -> Result<Vec<T>, VendorError> {
    let Run {
        seed,
        threads,
        progress,
    } = run;
    let chunk = CHUNK.min(model.manifest().max_batch as usize);
    let chunks: Vec<Batch> = batch.chunks(chunk).collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Vec<T>>>> = Mutex::new((0..chunks.len()).map(|_| None).collect());
    std::thread::scope(|scope| -> Result<(), VendorError> {
        let workers: Vec<_> = (0..threads.max(1).min(chunks.len().max(1)))
            .map(|_| {
                scope.spawn(|| -> Result<(), VendorError> {
                    let mut session = open(program, model, mode)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = chunks.get(i) else {
                            return Ok(());
                        };
                        let done = work(&mut session, c, seed.wrapping_add(i as u64)).map_err(
                            |source| VendorError::Sandbox {
                                what: format!("{doing} {label}, images from {}", i * chunk),
                                source,
                            },
                        )?;
                        progress(c.len());
                        results.lock().map_err(|_| VendorError::WorkerPanicked)?[i] = Some(done);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| VendorError::WorkerPanicked)??;
        }
        Ok(())
    })?;
    let results = results
        .into_inner()
        .map_err(|_| VendorError::WorkerPanicked)?;
    Ok(results.into_iter().flatten().flatten().collect())
}

fn open(
    program: &GuestProgram,
    model: &AttestedModel,
    mode: Mode<'_>,
) -> Result<Session, VendorError> {
    match mode {
        Mode::Measure(statistics) => program.calibration_session(model, statistics),
        Mode::Judge => program.session(model),
    }
    .map_err(|source| VendorError::Sandbox {
        what: "loading the model in the sandbox".into(),
        source,
    })
}
