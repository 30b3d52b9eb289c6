//! `GET /metrics`: the server's counters in the Prometheus (OpenMetrics)
//! text format. Names follow Triton's (`nv_inference_*`) with a `medguard_`
//! prefix so that dashboards built for Triton need only the prefix changed;
//! OpenMetrics appends `_total` to counters. Labels are only the served
//! models' names and versions and fixed words: no caller, no path a client
//! chose, nothing of a patient.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::guard::{Timings, Verdict};

/// A served model.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Its name.
    pub model: String,
    /// Its version.
    pub version: String,
}

/// Why an inference request for a served model failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // Label values as Prometheus users write them.
pub enum Reason {
    /// 400, 408, 413: the request.
    bad_request,
    /// 422: the guard refused the input (screening or the guest's check).
    refused,
    /// 503: no sandbox free and the queue full, or shutting down.
    unavailable,
    /// 504: the guest ran past its deadline.
    timeout,
    /// 500: the guard itself (the ledger).
    internal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    model: String,
    version: String,
    reason: Reason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PixelLabels {
    model: String,
    version: String,
    statistic: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    model: String,
    version: String,
    verdict: String,
}

/// Requests refused before any model was looked up (no model label: the
/// name in the path is the client's).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    status: u16,
}

/// Every metric the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    success: Family<ModelLabels, Counter>,
    failure: Family<FailureLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    inferences: Family<ModelLabels, Counter>,
    executions: Family<ModelLabels, Counter>,
    request_us: Family<ModelLabels, Counter>,
    queue_us: Family<ModelLabels, Counter>,
    compute_us: Family<ModelLabels, Counter>,
    request_seconds: Family<ModelLabels, Histogram>,
    verdicts: Family<VerdictLabels, Counter>,
    sandbox_us: Family<ModelLabels, Counter>,
    sandbox_seconds: Histogram,
    ledger_us: Counter,
    ledger_seconds: Histogram,
    drift_alarm: Family<ModelLabels, Gauge>,
    drift_alarms: Family<ModelLabels, Counter>,
    input_drift_alarm: Family<PixelLabels, Gauge>,
    input_drift_alarms: Family<PixelLabels, Counter>,
}

fn latency_buckets() -> Histogram {
    // 100 us to about 13 s.
    Histogram::new(exponential_buckets(1e-4, 2.0, 18))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics at zero, registered.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            success: Family::default(),
            failure: Family::default(),
            denied: Family::default(),
            inferences: Family::default(),
            executions: Family::default(),
            request_us: Family::default(),
            queue_us: Family::default(),
            compute_us: Family::default(),
            request_seconds: Family::new_with_constructor(latency_buckets),
            verdicts: Family::default(),
            sandbox_us: Family::default(),
            sandbox_seconds: latency_buckets(),
            ledger_us: Counter::default(),
            ledger_seconds: latency_buckets(),
            drift_alarm: Family::default(),
            drift_alarms: Family::default(),
            input_drift_alarm: Family::default(),
            input_drift_alarms: Family::default(),
        };
        let r = &mut m.registry;
        let p = "medguard_";
        r.register(
            format!("{p}inference_request_success"),
            "Inference requests answered 200",
            m.success.clone(),
        );
        r.register(
            format!("{p}inference_request_failure"),
            "Inference requests for a served model that failed, by reason",
            m.failure.clone(),
        );
        r.register(
            format!("{p}request_denied"),
            "Requests refused before a model was chosen (401, 403, 404), by status",
            m.denied.clone(),
        );
        r.register(
            format!("{p}inference_count"),
            "Images classified (a batch counts each image)",
            m.inferences.clone(),
        );
        r.register(
            format!("{p}inference_exec_count"),
            "Sandbox executions (one per request)",
            m.executions.clone(),
        );
        r.register(
            format!("{p}inference_request_duration_us"),
            "Cumulative time from request to answer, in microseconds",
            m.request_us.clone(),
        );
        r.register(
            format!("{p}inference_queue_duration_us"),
            "Cumulative time waiting for a sandbox, in microseconds",
            m.queue_us.clone(),
        );
        r.register(
            format!("{p}inference_compute_infer_duration_us"),
            "Cumulative screening and inference time in the guest, in microseconds",
            m.compute_us.clone(),
        );
        r.register(
            format!("{p}inference_request_duration_seconds"),
            "Time from request to answer",
            m.request_seconds.clone(),
        );
        r.register(
            format!("{p}verdict_count"),
            "Screening verdicts, by model and verdict",
            m.verdicts.clone(),
        );
        r.register(
            format!("{p}sandbox_instantiation_duration_us"),
            "Cumulative time to instantiate a fresh sandbox with the model loaded, in microseconds",
            m.sandbox_us.clone(),
        );
        r.register(
            format!("{p}sandbox_instantiation_seconds"),
            "Time to instantiate a fresh sandbox with the model loaded",
            m.sandbox_seconds.clone(),
        );
        r.register(
            format!("{p}ledger_commit_duration_us"),
            "Cumulative time to append verdicts to the ledger durably, in microseconds",
            m.ledger_us.clone(),
        );
        r.register(
            format!("{p}ledger_commit_seconds"),
            "Time to append one request's verdicts to the ledger durably",
            m.ledger_seconds.clone(),
        );
        r.register(
            format!("{p}drift_alarm"),
            "1 while the model's screening statistics disagree with calibration (drift alarm)",
            m.drift_alarm.clone(),
        );
        r.register(
            format!("{p}drift_alarms"),
            "Drift alarms raised",
            m.drift_alarms.clone(),
        );
        r.register(
            format!("{p}input_drift_alarm"),
            "1 while the model's recent inputs' intensity or contrast disagrees with the calibration images' (input drift alarm)",
            m.input_drift_alarm.clone(),
        );
        r.register(
            format!("{p}input_drift_alarms"),
            "Input drift alarms raised",
            m.input_drift_alarms.clone(),
        );
        m
    }

    /// A classification that ran: its images' verdicts and where the time
    /// went. `queued` is the wait for a sandbox.
    pub fn classified(
        &self,
        model: &ModelLabels,
        verdicts: impl Iterator<Item = Verdict>,
        queued: Duration,
        timings: &Timings,
    ) {
        self.executions.get_or_create(model).inc();
        let mut images = 0;
        for verdict in verdicts {
            images += 1;
            self.verdicts
                .get_or_create(&VerdictLabels {
                    model: model.model.clone(),
                    version: model.version.clone(),
                    verdict: verdict.as_str().to_owned(),
                })
                .inc();
        }
        self.inferences.get_or_create(model).inc_by(images);
        self.queue_us.get_or_create(model).inc_by(micros(queued));
        self.compute_us
            .get_or_create(model)
            .inc_by(micros(timings.compute));
        self.sandbox_us
            .get_or_create(model)
            .inc_by(micros(timings.sandbox_start));
        self.sandbox_seconds
            .observe(timings.sandbox_start.as_secs_f64());
        self.ledger_us.inc_by(micros(timings.ledger_commit));
        self.ledger_seconds
            .observe(timings.ledger_commit.as_secs_f64());
    }

    /// The end of an inference request for a served model.
    pub fn answered(&self, model: &ModelLabels, outcome: Result<(), Reason>, took: Duration) {
        match outcome {
            Ok(()) => {
                self.success.get_or_create(model).inc();
            }
            Err(reason) => {
                self.failure
                    .get_or_create(&FailureLabels {
                        model: model.model.clone(),
                        version: model.version.clone(),
                        reason,
                    })
                    .inc();
            }
        }
        self.request_us.get_or_create(model).inc_by(micros(took));
        self.request_seconds
            .get_or_create(model)
            .observe(took.as_secs_f64());
    }

    /// A request refused before a model was chosen.
    pub fn denied(&self, status: u16) {
        self.denied.get_or_create(&DeniedLabels { status }).inc();
    }

    /// The drift monitor's state for `model`: `raised` when it just went
    /// into alarm.
    pub fn drift(&self, model: &ModelLabels, alarm: bool, raised: bool) {
        self.drift_alarm.get_or_create(model).set(i64::from(alarm));
        if raised {
            self.drift_alarms.get_or_create(model).inc();
        }
    }

    /// The pixel monitor's state for `model` and `statistic`: whether it
    /// is in alarm and whether it just went into alarm. (Not the window's
    /// mean rank: with a short window, scrapes around one request would
    /// tell that request's image's rank to anyone who can reach /metrics.)
    pub fn input_drift(
        &self,
        model: &ModelLabels,
        statistic: &'static str,
        alarm: bool,
        raised: bool,
    ) {
        let labels = PixelLabels {
            model: model.model.clone(),
            version: model.version.clone(),
            statistic,
        };
        self.input_drift_alarm
            .get_or_create(&labels)
            .set(i64::from(alarm));
        if raised {
            self.input_drift_alarms.get_or_create(&labels).inc();
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
