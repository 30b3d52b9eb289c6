//! Screening.

use medguard_guest_core::{Detector, GuestError, InputBatch, ScreenOptions};
use medguard_screen::{Statistic, Targets, Verdict, fit};

use crate::classifier;

/// Smooth synthetic images on the 8-bit grid, different per index.
fn images(n: usize, offset: usize) -> InputBatch {
    let mut data = Vec::with_capacity(n * 784);
    for i in offset..offset + n {
        for y in 0..28 {
            for x in 0..28 {
                let v = (40 + (i * 7) % 90 + x * 3 + y * ((i % 5) + 1)) % 256;
                data.push(v as f32 / 255.0);
            }
        }
    }
    InputBatch {
        shape: vec![n as u32, 1, 28, 28],
        data,
    }
}

const OPTIONS: ScreenOptions = ScreenOptions {
    seed: 7,
    source_bits: 8,
    withhold_rejected: true,
};

fn stats() -> Vec<Statistic> {
    vec![
        Statistic::Margin,
        Statistic::SqueezeMedian { window: 2 },
        Statistic::NoiseResponse {
            sigma: 4.0 / 255.0,
            draws: 2,
        },
    ]
}

#[test]
fn screening_predicts_exactly_what_classify_does() {
    let c = classifier();
    let batch = images(5, 0);
    let bare = c.classify(&batch).unwrap();
    let screened = c
        .screen(&batch, &Detector::Uncalibrated(stats()), OPTIONS)
        .unwrap();
    assert_eq!(screened.len(), 5);
    for (s, p) in screened.iter().zip(&bare) {
        // One batch of variants, same plan: the image's own row is the same computation.
        let got = s.probabilities.as_ref().unwrap();
        for (a, b) in got.iter().zip(p) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {p:?}");
        }
        assert_eq!(s.statistics.len(), 3);
        assert!(s.statistics.iter().all(|v| v.is_finite()));
        assert!(s.screening.is_none());
        assert_eq!(s.off_grid, 0);
        // The margin is the log-odds of the predicted class: its sigmoid is
        // the winning probability.
        let p_max = got.iter().copied().fold(0.0f32, f32::max) as f64;
        let sigmoid = 1.0 / (1.0 + (-s.statistics[0]).exp());
        assert!(s.statistics[0] >= 0.0 && (sigmoid - p_max).abs() < 1e-5);
    }
}

#[test]
fn noise_draws_follow_the_seed_and_only_the_seed() {
    let c = classifier();
    let batch = images(3, 10);
    let detector = Detector::Uncalibrated(stats());
    let a = c.screen(&batch, &detector, OPTIONS).unwrap();
    let b = c.screen(&batch, &detector, OPTIONS).unwrap();
    assert_eq!(a, b);
    let other = ScreenOptions { seed: 8, ..OPTIONS };
    let d = c.screen(&batch, &detector, other).unwrap();
    assert_eq!(a[0].statistics[..2], d[0].statistics[..2]);
    assert_ne!(a[0].statistics[2], d[0].statistics[2]);
}

#[test]
fn a_calibrated_detector_judges_and_the_policy_decides_what_a_reject_returns() {
    let c = classifier();
    let measured: Vec<_> = (0..8)
        .flat_map(|k| {
            c.screen(
                &images(50, 100 + 50 * k),
                &Detector::Uncalibrated(stats()),
                OPTIONS,
            )
            .unwrap()
        })
        .collect();
    // Every clean value serves as a reference for both classes, so the
    // profile's mechanics are tested whatever class the synthetic images get.
    let samples: Vec<(usize, Vec<f64>)> = measured
        .iter()
        .flat_map(|s| [(0, s.statistics.clone()), (1, s.statistics.clone())])
        .collect();
    let targets = Targets {
        flag_fpr: 0.05,
        reject_fpr: 0.01,
    };
    let mut profile = fit(stats(), 2, &samples, targets).unwrap();
    let judged = c
        .screen(
            &images(4, 100),
            &Detector::Calibrated(profile.clone()),
            OPTIONS,
        )
        .unwrap();
    for s in &judged {
        let screening = s.screening.as_ref().unwrap();
        assert!((0.0..=1.0).contains(&screening.p_value));
        assert_eq!(screening.statistics.len(), 3);
    }
    // Thresholds at 1 reject everything: enforce withholds, flag-only returns.
    profile.thresholds.reject = 1.0;
    profile.thresholds.flag = 1.0;
    let all_rejected = Detector::Calibrated(profile);
    let enforced = c.screen(&images(2, 0), &all_rejected, OPTIONS).unwrap();
    for s in &enforced {
        assert_eq!(s.screening.as_ref().unwrap().verdict, Verdict::Reject);
        assert!(s.probabilities.is_none());
    }
    let flag_only = ScreenOptions {
        withhold_rejected: false,
        ..OPTIONS
    };
    let returned = c.screen(&images(2, 0), &all_rejected, flag_only).unwrap();
    assert!(returned.iter().all(|s| s.probabilities.is_some()));
}

#[test]
fn bad_inputs_and_detectors_are_refused_without_panicking() {
    let c = classifier();
    let detector = Detector::Uncalibrated(stats());
    let mut batch = images(1, 0);
    batch.data[5] = f32::NAN;
    assert!(matches!(
        c.screen(&batch, &detector, OPTIONS),
        Err(GuestError::InvalidInput(_))
    ));
    let bad = Detector::Uncalibrated(vec![Statistic::SqueezeMedian { window: 0 }]);
    assert!(matches!(
        c.screen(&images(1, 0), &bad, OPTIONS),
        Err(GuestError::InvalidModel(_))
    ));
    assert!(
        c.screen(&images(1, 0), &Detector::Uncalibrated(vec![]), OPTIONS)
            .is_err()
    );
    // Off-grid values are counted, not refused.
    let mut batch = images(1, 0);
    batch.data[0] += 0.5 / 255.0;
    let s = c.screen(&batch, &detector, OPTIONS).unwrap();
    assert_eq!(s[0].off_grid, 1);
}
