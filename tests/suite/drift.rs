//! The drift alarms (`medguard::drift`, wired into `medguard serve`): on
//! clean traffic they alarm no more often than configured, measured over
//! many windows; a stream with 20% PGD images raises the verdicts' alarm,
//! and a "new scanner" (less contrast) or a changed gamma the pixel alarm,
//! within one window (200 requests). The verdicts come from the real guard
//! on committed images: 300 clean test X-rays and 60 PGD 8/255 ones
//! (tests/adversarial/ci/); the shifted images from the corruption sets
//! (tests/adversarial/sets/, 500 each).

use medguard::drift::{DriftConfig, DriftEvent, DriftMonitor, PixelDriftEvent, PixelMonitor};
use medguard::guard::{Admission, ClassifyOptions, Guard, ScreeningPolicy, Verdict};
use medguard_screen::{PixelReference, PixelStatistic, PixelStatistics};
use medguard_tests::{bundled_model, model_dir, repo_root, shared_program_owned};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution};

/// The bundled model's calibration: 627 images for a 5% flag rate.
fn monitor(config: DriftConfig) -> DriftMonitor {
    let model = bundled_model();
    let screening = model.manifest().screening.as_ref().unwrap();
    DriftMonitor::new(
        config,
        screening.profile.targets.flag_fpr,
        screening.calibration.images,
    )
    .unwrap()
}

/// Whether the guard flags (or rejects) each image of an .npz set.
fn flags(set: &str, array: &str) -> Vec<bool> {
    let bytes = std::fs::read(repo_root().join(set)).unwrap();
    let images = medguard::input::read_npz_images(&bytes, array).unwrap();
    let data = tempfile::tempdir().unwrap();
    let guard = Guard::open(data.path(), medguard_tests::demo_policy())
        .unwrap()
        .with_sandbox(shared_program_owned());
    let Admission::Admitted { model, .. } = guard.admit(&model_dir()).unwrap() else {
        panic!("the bundled model is admitted");
    };
    let [n, c, h, w] = images.shape;
    let per_image = (c * h * w) as usize;
    let mut flagged = Vec::new();
    for start in (0..n).step_by(50) {
        let count = (n - start).min(50);
        let batch = medguard::input::Batch {
            shape: [count, c, h, w],
            data: images.data[start as usize * per_image..(start + count) as usize * per_image]
                .to_vec(),
            source_bits: images.source_bits,
        };
        let options = ClassifyOptions {
            seed: 1,
            policy: ScreeningPolicy::FlagOnly,
            allow_unscreened: false,
        };
        let classified = guard.classify_batch(&model, &batch, options, None).unwrap();
        flagged.extend(
            classified
                .images
                .iter()
                .map(|r| matches!(r.verdict, Verdict::Flag | Verdict::Reject)),
        );
    }
    flagged
}

#[test]
fn clean_windows_alarm_no_more_often_than_configured() {
    let config = DriftConfig::default();
    let m = monitor(config);
    // 1. The threshold against the model the monitor assumes: each window
    //    with its own flag rate drawn from Beta(k, n + 1 - k), as
    //    calibration on 627 images leaves it. 20,000 independent windows.
    let (k, n) = (31.0, 627.0);
    let rates = Beta::new(k, n + 1.0 - k).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let windows = 20_000;
    let mut alarms = 0;
    for _ in 0..windows {
        let p: f64 = rates.sample(&mut rng);
        let flagged = (0..config.window).filter(|_| rng.random_bool(p)).count();
        alarms += usize::from(flagged >= m.threshold());
    }
    let rate = alarms as f64 / windows as f64;
    // At most the configured 0.001, with room for the sampling error of
    // 20,000 windows (3 standard deviations).
    let slack = 3.0 * (config.false_alarm / windows as f64).sqrt();
    assert!(
        rate <= config.false_alarm + slack,
        "{alarms} of {windows} windows alarmed; threshold {}",
        m.threshold()
    );
    // And not so high a threshold that it could never go off.
    assert!(m.threshold() < 40, "threshold {}", m.threshold());

    // 2. The real guard's verdicts on clean test images, resampled into 50
    //    streams of 2,000: the share of checks in alarm.
    let clean = flags("tests/adversarial/ci/clean.npz", "test_images");
    let realised = clean.iter().filter(|&&f| f).count() as f64 / clean.len() as f64;
    let mut checks = 0;
    let mut in_alarm = 0;
    for seed in 0..50 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut m = monitor(config);
        for i in 0..2_000 {
            m.observe(clean[rng.random_range(0..clean.len())]);
            if i + 1 >= config.window {
                checks += 1;
                in_alarm += usize::from(m.alarm());
            }
        }
    }
    let rate = in_alarm as f64 / checks as f64;
    assert!(
        rate <= config.false_alarm,
        "{in_alarm} of {checks} checks in alarm on clean images (flag rate {realised:.3})"
    );
}

#[test]
fn a_stream_with_20_percent_pgd_raises_it_within_one_window() {
    let config = DriftConfig::default();
    let clean = flags("tests/adversarial/ci/clean.npz", "test_images");
    let attacked = flags("tests/adversarial/ci/sets/pgd-8.npz", "images");
    let mut delays = Vec::new();
    for seed in 0..50 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut m = monitor(config);
        // A full window of clean traffic first: no alarm.
        for _ in 0..config.window {
            assert_eq!(m.observe(clean[rng.random_range(0..clean.len())]), None);
        }
        let mut delay = None;
        for i in 1..=1_000 {
            let flagged = if rng.random_bool(0.2) {
                attacked[rng.random_range(0..attacked.len())]
            } else {
                clean[rng.random_range(0..clean.len())]
            };
            if let Some(DriftEvent::Raised(alarm)) = m.observe(flagged) {
                assert!(alarm.flagged >= alarm.threshold);
                delay = Some(i);
                break;
            }
        }
        delays.push(delay.expect("a 20% PGD stream must raise the alarm"));
    }
    delays.sort_unstable();
    let (median, worst) = (delays[delays.len() / 2], delays[delays.len() - 1]);
    eprintln!(
        "20% PGD 8/255: alarm after median {median}, worst {worst} of 50 streams (window {}, threshold {})",
        config.window,
        monitor(config).threshold()
    );
    assert!(worst <= config.window, "{delays:?}");
}

/// The bundled model's pixel monitor: the 627 calibration images' intensity
/// and contrast, from its signed manifest.
fn pixel_monitor(config: DriftConfig) -> PixelMonitor {
    let model = bundled_model();
    let screening = model.manifest().screening.as_ref().unwrap();
    PixelMonitor::new(config, screening.pixels.as_ref().unwrap()).unwrap()
}

/// The pixel statistics of each image of a committed .npz set.
fn pixels(set: &str, array: &str) -> Vec<PixelStatistics> {
    let bytes = std::fs::read(repo_root().join(set)).unwrap();
    let images = medguard::input::read_npz_images(&bytes, array).unwrap();
    images
        .data
        .chunks_exact(784)
        .map(PixelStatistics::of)
        .collect()
}

#[test]
fn clean_pixel_windows_alarm_no_more_often_than_configured() {
    // The statistics alone: no tolerance for shifts smaller than chance.
    let exact = DriftConfig {
        pixel_tolerance: 0.0,
        ..DriftConfig::default()
    };
    // 1. The threshold against what it assumes, exactly: calibration images
    //    and a window of inputs all drawn from one distribution (ranks are
    //    all that matter, so uniform draws stand for any continuous one),
    //    a fresh calibration for each of 20,000 windows.
    let mut rng = StdRng::seed_from_u64(11);
    let windows = 20_000;
    let mut alarms = 0;
    let draw = |rng: &mut StdRng| PixelStatistics {
        intensity: rng.random(),
        contrast: rng.random(),
    };
    for _ in 0..windows {
        let calibration: Vec<PixelStatistics> = (0..627).map(|_| draw(&mut rng)).collect();
        let mut intensity: Vec<f64> = calibration.iter().map(|s| s.intensity).collect();
        let mut contrast: Vec<f64> = calibration.iter().map(|s| s.contrast).collect();
        intensity.sort_by(f64::total_cmp);
        contrast.sort_by(f64::total_cmp);
        let reference = PixelReference {
            intensity,
            contrast,
        };
        let mut m = PixelMonitor::new(exact, &reference).unwrap();
        let mut events = Vec::new();
        for _ in 0..exact.window {
            events = m.observe(draw(&mut rng));
        }
        alarms += usize::from(!events.is_empty());
    }
    let rate = alarms as f64 / windows as f64;
    let slack = 3.0 * (exact.false_alarm / windows as f64).sqrt();
    let threshold = pixel_monitor(exact).threshold();
    assert!(
        rate <= exact.false_alarm + slack,
        "{alarms} of {windows} windows alarmed; threshold {threshold}"
    );
    // And not a threshold so wide that it could never go off.
    assert!(threshold < 0.1, "threshold {threshold}");
    eprintln!(
        "pixel alarm, no tolerance: {alarms} of {windows} exchangeable windows alarmed (threshold {threshold:.4})"
    );

    // 2. The committed clean test images (another split than calibration's,
    //    with fewer normal images and the contrast rank 0.03 higher),
    //    resampled into 50 streams of 2,000, under the default tolerance:
    //    no more checks in alarm than configured.
    let config = DriftConfig::default();
    let clean = pixels("tests/adversarial/ci/clean.npz", "test_images");
    let mut checks = 0;
    let mut in_alarm = 0;
    for seed in 0..50 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut m = pixel_monitor(config);
        for i in 0..2_000 {
            m.observe(clean[rng.random_range(0..clean.len())]);
            if i + 1 >= config.window {
                checks += 1;
                in_alarm += usize::from(PixelStatistic::ALL.iter().any(|&s| m.alarm(s)));
            }
        }
    }
    eprintln!(
        "pixel alarm, default tolerance: {in_alarm} of {checks} checks on clean test images in alarm"
    );
    assert!(
        in_alarm as f64 / checks as f64 <= config.false_alarm,
        "{in_alarm} of {checks} checks in alarm on clean images"
    );
}

/// Requests after a shift starts (a full clean window before it) until the
/// pixel alarm for `statistic` goes off, over 50 resampled streams: sorted.
fn pixel_delays(shifted: &[PixelStatistics], statistic: PixelStatistic) -> Vec<usize> {
    let config = DriftConfig::default();
    let clean = pixels("tests/adversarial/ci/clean.npz", "test_images");
    let mut delays: Vec<usize> = (0..50)
        .map(|seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut m = pixel_monitor(config);
            for _ in 0..config.window {
                let events = m.observe(clean[rng.random_range(0..clean.len())]);
                assert_eq!(events, vec![], "a clean window raised the alarm");
            }
            (1..=1_000)
                .find(|_| {
                    let events = m.observe(shifted[rng.random_range(0..shifted.len())]);
                    events.iter().any(|e| {
                        matches!(e, PixelDriftEvent::Raised(a)
                            if a.statistic == statistic
                                && (a.mean_rank - 0.5).abs() >= a.threshold)
                    })
                })
                .expect("the shifted stream must raise the alarm")
        })
        .collect();
    delays.sort_unstable();
    delays
}

#[test]
fn a_new_scanner_with_less_contrast_raises_the_pixel_alarm_within_one_window() {
    // The "new scanner" the screening statistics cannot see (README,
    // "Serving"): contrast scaled to 0.8 and 0.6 about each image's mean.
    let window = DriftConfig::default().window;
    for (set, factor) in [("contrast-0.8", 0.8), ("contrast-0.6", 0.6)] {
        let shifted = pixels(
            &format!("tests/adversarial/sets/corruption-{set}.npz"),
            "images",
        );
        let delays = pixel_delays(&shifted, PixelStatistic::Contrast);
        let (median, worst) = (delays[delays.len() / 2], delays[delays.len() - 1]);
        eprintln!(
            "contrast x{factor}: pixel alarm after median {median}, worst {worst} of 50 streams (window {window}, threshold {:.4})",
            pixel_monitor(DriftConfig::default()).threshold()
        );
        assert!(worst <= window, "{set}: {delays:?}");
    }
    // A changed gamma (another preprocessing) moves the intensity.
    for set in ["gamma-0.8", "gamma-1.25"] {
        let shifted = pixels(
            &format!("tests/adversarial/sets/corruption-{set}.npz"),
            "images",
        );
        let delays = pixel_delays(&shifted, PixelStatistic::Intensity);
        let (median, worst) = (delays[delays.len() / 2], delays[delays.len() - 1]);
        eprintln!("{set}: intensity alarm after median {median}, worst {worst} of 50 streams");
        assert!(worst <= window, "{set}: {delays:?}");
    }
}
