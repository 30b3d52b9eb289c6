//! The drift alarm: is a model's flag rate still the one calibration
//! promised?
//!
//! Screening flags an input when its combined p-value is at or below the
//! calibrated threshold, the k-th smallest of the n calibration images'
//! own, with k = floor(target * (n + 1)). For clean inputs exchangeable with
//! the calibration images the chance of a flag is then a draw from
//! Beta(k, n + 1 - k) (mean about the target; the spread is what n
//! calibration images leave), and the number of flags among the last W
//! inputs is beta-binomial. The monitor keeps that window per model and
//! raises the alarm when the count reaches the smallest c with
//! P(count >= c) <= `false_alarm`: on clean traffic any one check alarms with
//! probability at most `false_alarm`, so an operator knows the rate of false
//! alarms to expect. An attack campaign raises it: attacked images are
//! flagged far more often than clean ones.
//!
//! What it cannot see: a shift the screening statistics are blind to. A
//! contrast change (a "new scanner") leaves the margin and squeeze p-values
//! where clean images put them (README, "Serving"). [`PixelMonitor`] sees
//! it: it watches where the inputs' own intensity and contrast fall among
//! the calibration images' ([`PixelReference`]).

use std::collections::VecDeque;

use medguard_screen::{PixelReference, PixelStatistic, PixelStatistics};

/// How the alarm is set.
#[derive(Debug, Clone, Copy)]
pub struct DriftConfig {
    /// Inputs in the sliding window.
    pub window: usize,
    /// Largest chance that one check on clean traffic alarms.
    pub false_alarm: f64,
    /// How far a window's mean pixel rank may stray from 1/2 beyond chance
    /// before the pixel alarm goes off: the smallest shift worth an alarm.
    /// Real clean traffic is never quite the calibration images (this
    /// week's share of pneumonia moves the contrast rank by about 0.03 per
    /// 10 points); a new scanner's contrast at 0.8 moves it by 0.25.
    pub pixel_tolerance: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            window: 200,
            false_alarm: 1e-3,
            pixel_tolerance: 0.05,
        }
    }
}

impl DriftConfig {
    fn validate(&self) -> Result<(), DriftError> {
        let bad = |why: String| Err(DriftError::Invalid(why));
        if self.window == 0 || self.window > 1_000_000 {
            return bad(format!("window {} must be 1 to 1000000", self.window));
        }
        if !(self.false_alarm > 0.0 && self.false_alarm < 1.0) {
            return bad(format!(
                "false-alarm rate {} must be between 0 and 1",
                self.false_alarm
            ));
        }
        if !(0.0..0.5).contains(&self.pixel_tolerance) {
            return bad(format!(
                "pixel tolerance {} must be at least 0 and below 0.5",
                self.pixel_tolerance
            ));
        }
        Ok(())
    }
}

/// Why a monitor could not be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriftError {
    /// A configuration or calibration value out of range.
    #[error("drift alarm: {0}")]
    Invalid(String),
}

/// A change of the alarm's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DriftEvent {
    /// The window's flags reached the threshold.
    Raised(DriftAlarm),
    /// The window's flags fell below the threshold again.
    Cleared,
}

/// The evidence of an alarm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftAlarm {
    /// Inputs in the window.
    pub window: usize,
    /// Of them flagged or rejected.
    pub flagged: usize,
    /// The count at which the alarm goes off.
    pub threshold: usize,
    /// The flag rate calibration promised.
    pub expected_rate: f64,
}

/// One model's sliding window of screening outcomes.
#[derive(Debug, Clone)]
pub struct DriftMonitor {
    window: usize,
    outcomes: VecDeque<bool>,
    flagged: usize,
    threshold: usize,
    expected_rate: f64,
    alarm: bool,
}

impl DriftMonitor {
    /// A monitor for a model calibrated on `calibration_images` clean images
    /// for a flag rate of `target`.
    pub fn new(
        config: DriftConfig,
        target: f64,
        calibration_images: u32,
    ) -> Result<Self, DriftError> {
        let bad = |why: String| Err(DriftError::Invalid(why));
        config.validate()?;
        let n = f64::from(calibration_images);
        let k = (target * (n + 1.0)).floor();
        if !(target > 0.0 && target < 1.0) || k < 1.0 {
            return bad(format!(
                "a flag target of {target} on {calibration_images} calibration images sets no threshold"
            ));
        }
        let threshold = upper_quantile(config.window, k, n + 1.0 - k, config.false_alarm);
        if threshold > config.window {
            return bad(format!(
                "no count of flags in a window of {} is unlikely enough for a false-alarm rate of {}: widen the window",
                config.window, config.false_alarm
            ));
        }
        Ok(Self {
            window: config.window,
            outcomes: VecDeque::with_capacity(config.window),
            flagged: 0,
            threshold,
            expected_rate: k / (n + 1.0),
            alarm: false,
        })
    }

    /// The count of flags in a full window at which the alarm goes off (at
    /// most the window: [`DriftMonitor::new`] refuses a monitor whose
    /// threshold no window could reach).
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Whether the alarm is up.
    pub fn alarm(&self) -> bool {
        self.alarm
    }

    /// One screened input: `flagged` if its verdict was flag or reject.
    /// Checks only full windows.
    pub fn observe(&mut self, flagged: bool) -> Option<DriftEvent> {
        if self.outcomes.len() == self.window && self.outcomes.pop_front() == Some(true) {
            self.flagged -= 1;
        }
        self.outcomes.push_back(flagged);
        self.flagged += usize::from(flagged);
        if self.outcomes.len() < self.window {
            return None;
        }
        let alarm = self.flagged >= self.threshold;
        if alarm == self.alarm {
            return None;
        }
        self.alarm = alarm;
        Some(if alarm {
            DriftEvent::Raised(DriftAlarm {
                window: self.window,
                flagged: self.flagged,
                threshold: self.threshold,
                expected_rate: self.expected_rate,
            })
        } else {
            DriftEvent::Cleared
        })
    }
}

/// One model's sliding windows of where its inputs' pixel statistics fall
/// among the calibration images'.
///
/// Each input's rank among the n clean values of a statistic,
/// (R + 1/2) / (n + 1), has mean exactly 1/2 for inputs exchangeable with
/// the calibration images (R is uniform on 0..=n), so the mean rank S of a
/// window of W inputs has mean 1/2 too. Its variance is what W draws and
/// the n calibration images leave: given the calibration values, the chance
/// of each rank is a Dirichlet(1, ..., 1) spacing, so
/// Var S = V ((n + 1) / ((n + 2) W) + 1 / (n + 2)), with V the variance of
/// a rank drawn uniformly. The alarm goes off when |S - 1/2| reaches
/// z sd(S) plus the configured tolerance, z the normal quantile that leaves
/// `false_alarm / 4` above (two statistics, two sides): on traffic
/// exchangeable with the calibration images any one check alarms with about
/// that chance at most, even with no tolerance (the tests measure it). That
/// chance is an average over the calibration sets the vendor could have
/// drawn; for the one it did draw it is higher if that set happens to sit
/// off centre (about 2e-3 per statistic for one 2 sd off, against 5e-4),
/// and the tolerance keeps that and the small shifts of real clean traffic
/// from raising it. A new scanner's lower contrast or a changed
/// preprocessing's brightness moves S by far more. A raised alarm clears
/// some way inside the threshold (`hysteresis`).
#[derive(Debug, Clone)]
pub struct PixelMonitor {
    reference: PixelReference,
    window: usize,
    /// Per input, twice (n + 1) times its ranks: whole numbers, so that the
    /// running sums stay exact however long the server runs.
    ranks: VecDeque<[u64; 2]>,
    sums: [u64; 2],
    /// The distance of the mean rank from 1/2 at which the alarm goes off.
    threshold: f64,
    /// How far inside the threshold a raised alarm clears: sd(S), or two
    /// images' worth of the window if more, at most half the threshold; so
    /// that inputs chosen to hold the window at the edge need several
    /// images to flip it (and write an alarm to the ledger).
    hysteresis: f64,
    alarm: [bool; 2],
}

/// A change of one pixel statistic's alarm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PixelDriftEvent {
    /// The window's mean rank moved to the threshold or past it.
    Raised(PixelDriftAlarm),
    /// It came back inside.
    Cleared(PixelStatistic),
}

/// The evidence of a pixel-statistic alarm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelDriftAlarm {
    /// The statistic whose distribution moved.
    pub statistic: PixelStatistic,
    /// Inputs in the window.
    pub window: usize,
    /// Their mean rank among the clean values; 1/2 expected.
    pub mean_rank: f64,
    /// The distance from 1/2 at which the alarm goes off.
    pub threshold: f64,
}

impl PixelMonitor {
    /// A monitor against the calibration images' `reference`.
    pub fn new(config: DriftConfig, reference: &PixelReference) -> Result<Self, DriftError> {
        config.validate()?;
        reference
            .validate()
            .map_err(|e| DriftError::Invalid(e.to_string()))?;
        let n = reference.images() as f64;
        let w = config.window as f64;
        let v = ((n + 1.0).powi(2) - 1.0) / (12.0 * (n + 1.0).powi(2));
        let sd = (v * ((n + 1.0) / ((n + 2.0) * w) + 1.0 / (n + 2.0))).sqrt();
        let threshold =
            normal_upper_quantile(config.false_alarm / 4.0) * sd + config.pixel_tolerance;
        // The mean rank lies in [1 / (2 (n + 1)), 1 - 1 / (2 (n + 1))]: a
        // threshold at or past its edge would be a monitor that never goes
        // off, so say so instead.
        let reachable = 0.5 - 1.0 / (2.0 * (n + 1.0));
        if threshold >= reachable {
            return Err(DriftError::Invalid(format!(
                "a window of {} inputs against {} calibration images cannot move the mean rank the {threshold:.3} from 1/2 the alarm needs (at most {reachable:.3}): widen the window, lower the tolerance or calibrate on more images",
                config.window,
                reference.images()
            )));
        }
        Ok(Self {
            reference: reference.clone(),
            window: config.window,
            ranks: VecDeque::with_capacity(config.window),
            sums: [0; 2],
            threshold,
            // At least two images' worth of the window (a short window moves
            // more per image than sd), at most half the way back to 1/2.
            hysteresis: sd.max(2.0 / w).min(threshold / 2.0),
            alarm: [false; 2],
        })
    }

    /// The distance of a full window's mean rank from 1/2 at which the
    /// alarm goes off.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether `statistic`'s alarm is up.
    pub fn alarm(&self, statistic: PixelStatistic) -> bool {
        self.alarm[statistic as usize]
    }

    /// The window's mean rank per statistic, in [`PixelStatistic::ALL`]
    /// order; none until the window is full.
    pub fn mean_ranks(&self) -> Option<[f64; 2]> {
        (self.ranks.len() == self.window).then(|| self.sums.map(|s| self.mean(s)))
    }

    fn scale(&self) -> f64 {
        2.0 * (self.reference.images() as f64 + 1.0)
    }

    fn mean(&self, sum: u64) -> f64 {
        sum as f64 / (self.window as f64 * self.scale())
    }

    /// One classified input's pixel statistics. Checks only full windows;
    /// answers the alarms that changed.
    pub fn observe(&mut self, pixels: PixelStatistics) -> Vec<PixelDriftEvent> {
        let scale = self.scale();
        // (2 R' + 1) exactly: the rank times 2 (n + 1), whole by construction.
        let ranks = self
            .reference
            .ranks(pixels)
            .map(|r| (r * scale).round() as u64);
        if self.ranks.len() == self.window
            && let Some(old) = self.ranks.pop_front()
        {
            for (sum, old) in self.sums.iter_mut().zip(old) {
                *sum -= old;
            }
        }
        for (sum, new) in self.sums.iter_mut().zip(ranks) {
            *sum += new;
        }
        self.ranks.push_back(ranks);
        let Some(means) = self.mean_ranks() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for (i, statistic) in PixelStatistic::ALL.into_iter().enumerate() {
            let distance = (means[i] - 0.5).abs();
            let alarm = if self.alarm[i] {
                distance > self.threshold - self.hysteresis
            } else {
                distance >= self.threshold
            };
            if alarm == self.alarm[i] {
                continue;
            }
            self.alarm[i] = alarm;
            events.push(if alarm {
                PixelDriftEvent::Raised(PixelDriftAlarm {
                    statistic,
                    window: self.window,
                    mean_rank: means[i],
                    threshold: self.threshold,
                })
            } else {
                PixelDriftEvent::Cleared(statistic)
            });
        }
        events
    }
}

/// The z with P(Z >= z) = `p` for a standard normal Z, 0 < p <= 1/2: by
/// bisection on the tail, `erfc(z / sqrt 2) / 2`, to well below f64's
/// resolution of the threshold.
fn normal_upper_quantile(p: f64) -> f64 {
    let tail = |z: f64| 0.5 * libm::erfc(z / std::f64::consts::SQRT_2);
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if tail(mid) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// The smallest c with P(X >= c) <= `alpha` for X ~ BetaBinomial(w, a, b).
fn upper_quantile(w: usize, a: f64, b: f64, alpha: f64) -> usize {
    // pmf(0) = prod_{i<w} (b + i) / (a + b + i); then the ratio
    // pmf(j+1)/pmf(j) = (w - j)(j + a) / ((j + 1)(w - j - 1 + b)). In logs:
    // a window of a million stays finite.
    let wf = w as f64;
    let mut log_pmf: f64 = (0..w)
        .map(|i| ((b + i as f64) / (a + b + i as f64)).ln())
        .sum();
    let mut pmf = Vec::with_capacity(w + 1);
    pmf.push(log_pmf);
    for j in 0..w {
        let j = j as f64;
        log_pmf += ((wf - j) * (j + a) / ((j + 1.0) * (wf - j - 1.0 + b))).ln();
        pmf.push(log_pmf);
    }
    let mut tail = 0.0;
    for c in (0..=w).rev() {
        let with_c = tail + pmf[c].exp();
        if with_c > alpha {
            return c + 1;
        }
        tail = with_c;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_the_beta_binomial_quantile() {
        // Beta(1, 1) makes the count uniform on 0..=w: P(X >= c) = (w+1-c)/(w+1).
        assert_eq!(upper_quantile(9, 1.0, 1.0, 0.25), 8); // P(X >= 8) = 0.2
        assert_eq!(upper_quantile(9, 1.0, 1.0, 0.15), 9); // P(X >= 9) = 0.1
        assert_eq!(upper_quantile(9, 1.0, 1.0, 0.05), 10); // never
        // The bundled model: 627 images, target 0.05, k = 31.
        let m = DriftMonitor::new(DriftConfig::default(), 0.05, 627).unwrap();
        assert!((20..30).contains(&m.threshold()), "{}", m.threshold());
    }

    #[test]
    fn it_raises_and_clears_on_full_windows_only() {
        let mut m = DriftMonitor::new(
            DriftConfig {
                window: 10,
                false_alarm: 0.01,
                ..DriftConfig::default()
            },
            0.05,
            627,
        )
        .unwrap();
        let t = m.threshold();
        assert!(t <= 10, "{t}");
        for _ in 0..9 {
            assert_eq!(m.observe(true), None);
        }
        match m.observe(true) {
            Some(DriftEvent::Raised(a)) => assert_eq!((a.flagged, a.threshold), (10, t)),
            other => panic!("{other:?}"),
        }
        assert!(m.alarm());
        let mut events = Vec::new();
        for _ in 0..10 {
            events.extend(m.observe(false));
        }
        assert_eq!(events, vec![DriftEvent::Cleared]);
    }

    fn reference(n: usize) -> PixelReference {
        let values: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
        PixelReference {
            intensity: values.clone(),
            contrast: values,
        }
    }

    #[test]
    fn the_pixel_alarm_raises_on_full_windows_and_clears_inside_the_threshold() {
        let config = DriftConfig {
            window: 100,
            ..DriftConfig::default()
        };
        // 1,000 clean values 0.000..0.999: an input at x ranks about x.
        let mut m = PixelMonitor::new(config, &reference(1000)).unwrap();
        let at = |x: f64| PixelStatistics {
            intensity: 0.5,
            contrast: x,
        };
        let (threshold, margin) = (m.threshold(), m.hysteresis);
        assert!(margin > 0.0 && margin < threshold, "{margin} {threshold}");
        // A window of mid-rank images: no event until it is full, none after.
        for _ in 0..100 {
            assert_eq!(m.observe(at(0.5)), vec![]);
        }
        // Then the flattest contrast: the alarm goes off on the image that
        // takes the mean rank past the threshold, and only then.
        let crossing = (threshold * 100.0 / 0.5).ceil() as usize;
        for i in 1..=100 {
            let events = m.observe(at(-1.0));
            let mean = m.mean_ranks().unwrap()[1];
            if i < crossing - 1 {
                assert_eq!(events, vec![], "image {i}, mean rank {mean}");
            }
            if let [PixelDriftEvent::Raised(alarm)] = events.as_slice() {
                assert_eq!(alarm.statistic, PixelStatistic::Contrast);
                assert!((0.5 - alarm.mean_rank) >= threshold, "{alarm:?}");
                assert!(i + 1 >= crossing, "raised early, at {i}");
            }
        }
        assert!(m.alarm(PixelStatistic::Contrast) && !m.alarm(PixelStatistic::Intensity));
        // Back towards 1/2: still raised while the mean rank is inside the
        // threshold but not yet `margin` inside it; cleared once it is.
        let mut cleared_at = None;
        for i in 1..=100 {
            let events = m.observe(at(0.5));
            let distance = 0.5 - m.mean_ranks().unwrap()[1];
            if distance > threshold - margin + 0.01 {
                assert_eq!(events, vec![], "cleared early at distance {distance}");
            }
            if events == vec![PixelDriftEvent::Cleared(PixelStatistic::Contrast)] {
                assert!(distance <= threshold - margin, "{distance}");
                cleared_at.get_or_insert(i);
            }
        }
        assert!(cleared_at.is_some() && !m.alarm(PixelStatistic::Contrast));
    }

    #[test]
    fn a_pixel_alarm_that_could_never_go_off_is_refused() {
        let c = DriftConfig::default();
        // Six clean images leave the mean rank within 1/14 of the edge.
        assert!(PixelMonitor::new(c, &reference(5)).is_err());
        let one = DriftConfig { window: 1, ..c };
        assert!(PixelMonitor::new(one, &reference(627)).is_err());
        let lax = DriftConfig {
            pixel_tolerance: 0.45,
            ..c
        };
        assert!(PixelMonitor::new(lax, &reference(627)).is_err());
        assert!(PixelMonitor::new(c, &reference(627)).is_ok());
        let t = PixelMonitor::new(c, &reference(627)).unwrap().threshold();
        assert!((t - 0.1315).abs() < 5e-4, "{t}");
        assert!((normal_upper_quantile(0.025) - 1.959_964).abs() < 1e-5);
    }

    #[test]
    fn nonsense_settings_are_refused() {
        let c = DriftConfig::default();
        assert!(DriftMonitor::new(c, 0.05, 10).is_err()); // k = 0
        assert!(DriftMonitor::new(c, 0.0, 627).is_err());
        let zero = DriftConfig { window: 0, ..c };
        assert!(DriftMonitor::new(zero, 0.05, 627).is_err());
        let never = DriftConfig {
            false_alarm: 1.0,
            ..c
        };
        assert!(DriftMonitor::new(never, 0.05, 627).is_err());
        // One input per window: a single flag is not unlikely enough.
        let one = DriftConfig { window: 1, ..c };
        assert!(DriftMonitor::new(one, 0.05, 627).is_err());
    }
}
