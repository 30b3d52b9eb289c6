//! The drift alarm (`medguard::drift`, wired into `medguard serve`): on
//! clean traffic it alarms no more often than configured, measured over many
//! windows; a stream with 20% PGD images raises it within one window (200
//! requests). The verdicts come from the real guard on committed images: 300
//! clean test X-rays and 60 PGD 8/255 ones (tests/adversarial/ci/).

use medguard::drift::{DriftConfig, DriftEvent, DriftMonitor};
use medguard::guard::{Admission, ClassifyOptions, Guard, ScreeningPolicy, Verdict};
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
