//! `medguard serve`: the guard behind the Open Inference Protocol (KServe
//! v2) REST API, the protocol Triton and KServe clients already speak. The
//! one module that touches axum and tokio.
//!
//! Every inference runs through [`Guard::classify_batch`]: a fresh sandbox
//! session per request, screening, the ledger entry (naming the caller) and
//! its receipt. The sandbox work runs on tokio's blocking pool, at most
//! `concurrency` at a time; up to `queue` more wait, and past that the
//! answer is 503 with `Retry-After`.
//!
//! Status codes: 200 with outputs; 400 for a request that does not fit
//! the model; 401 without a known token, 403 for a model the token may not
//! use; 404 for an unknown model or version; 413 for a body over the limit;
//! 422 for an input the guard refused (screening rejected it under the
//! enforce policy, or the guest refused its values), with the verdict and
//! receipts in `parameters`; 503 when the queue is full or the server is
//! not ready; 504 when the guest ran past its deadline; 500 when the guard
//! itself failed (the ledger); 408 when a body does not arrive in time.
//! Health and server metadata need no token. Connections (TLS, limits,
//! header deadline, drain) are `listen`'s.

pub mod auth;
pub mod listen;
pub mod metrics;
pub mod oip;
mod repository;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medguard_attest::AttestedModel;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::drift::{DriftConfig, DriftEvent, DriftMonitor, PixelDriftEvent, PixelMonitor};
use crate::guard::{
    ClassifyError, ClassifyOptions, Guard, GuardError, InputRefusal, ScreeningPolicy, Verdict,
};
use crate::sandbox::SandboxError;
use auth::{Caller, Denied, Tokens};
use medguard_screen::PixelStatistic;
use oip::{ErrorBody, InferRequest, InferResponse, ModelMetadata, OutputTensor, ServerMetadata};

/// How the server runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Sandboxes running at once.
    pub concurrency: usize,
    /// Requests waiting for one, beyond which the answer is 503.
    pub queue: usize,
    /// Time a client has to send a request's body once its headers are in
    /// (408 after); a slow sender must not hold a connection for ever.
    pub body_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue: 64,
            body_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Everything the handlers share.
pub struct Server {
    guard: Arc<Guard>,
    /// By model name, the versions served, oldest first. Written only by
    /// the model repository extension's load and unload.
    models: std::sync::RwLock<BTreeMap<String, Vec<AttestedModel>>>,
    /// By model name, the directory `load` admits it from again.
    repository: BTreeMap<String, std::path::PathBuf>,
    /// One load or unload at a time.
    loading: Arc<tokio::sync::Mutex<()>>,
    drift_config: DriftConfig,
    tokens: Option<Tokens>,
    policy: ScreeningPolicy,
    limits: Limits,
    permits: Arc<Semaphore>,
    /// Inference requests past authentication, reading a body or holding
    /// one: at most `concurrency + queue`, so that bodies in memory are
    /// bounded by the sandboxes and the queue, not by the connections.
    admitted: Arc<Semaphore>,
    waiting: AtomicUsize,
    ready: AtomicBool,
    metrics: metrics::Metrics,
    /// The drift alarms of every served model and version that has a
    /// screening profile.
    drift: std::sync::Mutex<BTreeMap<(String, String), Watch>>,
}

/// One served model's drift alarms: the flag rate of its verdicts, and
/// where its inputs' intensity and contrast fall among the calibration
/// images' (when its manifest records them).
#[derive(Debug)]
struct Watch {
    verdicts: Option<DriftMonitor>,
    pixels: Option<PixelMonitor>,
}

impl Server {
    /// Keeps the sandbox snapshots of the models in `served` and no others.
    fn retain_prepared(&self, served: &BTreeMap<String, Vec<AttestedModel>>) {
        if let Some(program) = self.guard.program() {
            program.retain_prepared(served.values().flatten());
        }
    }

    /// A server for the admitted `models` through `guard` (which must have
    /// a sandbox). `tokens: None` serves anyone who can reach the address.
    pub fn new(
        guard: Arc<Guard>,
        models: Vec<AttestedModel>,
        tokens: Option<Tokens>,
        policy: ScreeningPolicy,
        limits: Limits,
    ) -> Self {
        let mut by_name: BTreeMap<String, Vec<AttestedModel>> = BTreeMap::new();
        for m in models {
            by_name
                .entry(m.manifest().name.clone())
                .or_default()
                .push(m);
        }
        for versions in by_name.values_mut() {
            versions.sort_by(|a, b| a.manifest().version.cmp(&b.manifest().version));
        }
        Self {
            guard,
            models: std::sync::RwLock::new(by_name),
            repository: BTreeMap::new(),
            loading: Arc::new(tokio::sync::Mutex::new(())),
            drift_config: DriftConfig::default(),
            tokens,
            policy,
            permits: Arc::new(Semaphore::new(
                limits.concurrency.clamp(1, Semaphore::MAX_PERMITS),
            )),
            admitted: Arc::new(Semaphore::new(
                limits
                    .concurrency
                    .max(1)
                    .saturating_add(limits.queue)
                    .min(Semaphore::MAX_PERMITS),
            )),
            limits,
            waiting: AtomicUsize::new(0),
            ready: AtomicBool::new(true),
            metrics: metrics::Metrics::new(),
            drift: std::sync::Mutex::default(),
        }
        .with_drift(DriftConfig::default())
    }

    /// The drift alarm set to `config` for every screened model (a model
    /// whose calibration cannot support it is logged and left unwatched).
    pub fn with_drift(mut self, config: DriftConfig) -> Self {
        self.drift_config = config;
        let served: Vec<AttestedModel> = self.served().values().flatten().cloned().collect();
        let mut monitors = BTreeMap::new();
        for m in &served {
            if let Some((key, monitor)) = drift_monitor(config, m) {
                monitors.insert(key, monitor);
            }
        }
        *self.drift.lock().unwrap_or_else(|e| e.into_inner()) = monitors;
        self
    }

    /// The directories the model repository extension loads from, by
    /// model name (the directories the models were admitted from at start).
    pub fn with_repository(mut self, directories: BTreeMap<String, std::path::PathBuf>) -> Self {
        self.repository = directories;
        self
    }

    fn served(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<AttestedModel>>> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds a classification's verdicts and pixel statistics to its
    /// model's drift monitors; an alarm goes to the metrics, the log and the
    /// ledger.
    fn watch_drift(&self, model: &AttestedModel, classified: &crate::guard::Classified) {
        let m = model.manifest();
        let labels = metrics::ModelLabels {
            model: m.name.clone(),
            version: m.version.to_string(),
        };
        let mut raised = Vec::new();
        let mut input_raised = Vec::new();
        {
            let mut watches = self.drift.lock().unwrap_or_else(|e| e.into_inner());
            let Some(watch) = watches.get_mut(&(labels.model.clone(), labels.version.clone()))
            else {
                return;
            };
            // At most one alarm per monitor (and statistic) and request, the
            // first it raised, even if the request's later images cleared it
            // again: a batch cannot write an alarm to the ledger per image,
            // nor raise and clear one unseen.
            if let Some(monitor) = &mut watch.verdicts {
                let mut first = None;
                let mut cleared = false;
                for image in &classified.images {
                    // Screening's verdict: certificate flags are not drift.
                    let flagged = match image.screening_verdict {
                        Verdict::Unscreened => continue,
                        Verdict::Accept => false,
                        Verdict::Flag | Verdict::Reject => true,
                    };
                    match monitor.observe(flagged) {
                        Some(DriftEvent::Raised(alarm)) => {
                            first.get_or_insert(alarm);
                        }
                        Some(DriftEvent::Cleared) => cleared = true,
                        None => {}
                    }
                }
                if cleared && !monitor.alarm() {
                    tracing::info!(model = %labels.model, version = %labels.version, "drift alarm cleared");
                }
                self.metrics
                    .drift(&labels, monitor.alarm(), first.is_some());
                raised.extend(first);
            }
            if let Some(monitor) = &mut watch.pixels {
                let mut first = [None; 2];
                let mut cleared = [false; 2];
                for image in &classified.images {
                    for event in monitor.observe(image.pixels) {
                        match event {
                            PixelDriftEvent::Raised(alarm) => {
                                first[alarm.statistic as usize].get_or_insert(alarm);
                            }
                            PixelDriftEvent::Cleared(statistic) => {
                                cleared[statistic as usize] = true;
                            }
                        }
                    }
                }
                for (i, statistic) in PixelStatistic::ALL.into_iter().enumerate() {
                    let now = monitor.alarm(statistic);
                    if cleared[i] && !now {
                        tracing::info!(model = %labels.model, version = %labels.version, statistic = statistic.name(), "input drift alarm cleared");
                    }
                    self.metrics
                        .input_drift(&labels, statistic.name(), now, first[i].is_some());
                    input_raised.extend(first[i]);
                }
            }
        }
        for alarm in raised {
            tracing::warn!(
                model = %labels.model,
                version = %labels.version,
                flagged = alarm.flagged,
                window = alarm.window,
                expected = alarm.expected_rate * alarm.window as f64,
                "drift alarm: far more inputs flagged than calibration promised (an attack campaign, or inputs unlike the calibration images)"
            );
            if let Err(e) = self.guard.record_drift(model, &alarm) {
                tracing::error!("recording the drift alarm: {e}");
            }
        }
        for alarm in input_raised {
            tracing::warn!(
                model = %labels.model,
                version = %labels.version,
                statistic = alarm.statistic.name(),
                window = alarm.window,
                mean_rank = alarm.mean_rank,
                threshold = alarm.threshold,
                "input drift alarm: the inputs' {} no longer matches the calibration images' (a new scanner or a changed preprocessing?)",
                alarm.statistic.name()
            );
            if let Err(e) = self.guard.record_input_drift(model, &alarm) {
                tracing::error!("recording the input drift alarm: {e}");
            }
        }
    }

    /// Marks the server not ready (draining before shutdown).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    fn model(&self, name: &str, version: Option<&str>) -> Result<AttestedModel, Failure> {
        let served = self.served();
        let versions = served
            .get(name)
            .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, format!("no model {name:?}")))?;
        match version {
            None => versions.last(),
            Some(v) => versions
                .iter()
                .find(|m| m.manifest().version.to_string() == v),
        }
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("model {name:?} has no version {:?}", version.unwrap_or("")),
            )
        })
    }

    /// Who may load and unload `model`: a token marked `repository = true`
    /// for it. Without a token file nobody may.
    fn manager(&self, headers: &HeaderMap, model: &str) -> Result<Caller, Failure> {
        let Some(tokens) = &self.tokens else {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "loading and unloading models needs --tokens and a token with repository = true"
                    .into(),
            ));
        };
        tokens
            .check_repository(authorization(headers), model)
            .map_err(|d| denied(d, &format!("load or unload model {model:?}")))
    }

    /// Who may use `model`: anyone without a token file, else a token that
    /// lists it.
    fn caller(&self, headers: &HeaderMap, model: &str) -> Result<Caller, Failure> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::Anyone);
        };
        tokens
            .check(authorization(headers), model)
            .map_err(|d| denied(d, &format!("use model {model:?}")))
    }

    /// Anyone without a token file, else any known token.
    fn known_caller(&self, headers: &HeaderMap) -> Result<Caller, Failure> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::Anyone);
        };
        tokens
            .identify(authorization(headers))
            .map_err(|d| denied(d, "do that"))
    }
}

/// The routes of the Open Inference Protocol that medguard serves.
pub fn router(server: Arc<Server>) -> Router {
    let limit = server.limits.max_body_bytes;
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/metrics", get(metrics_text))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{model}/load", post(repository::load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository::unload),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .method_not_allowed_fallback(|| async {
            Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route of the Open Inference Protocol".into(),
            )
        })
        .fallback(|| async {
            Failure::new(
                StatusCode::NOT_FOUND,
                "no such endpoint of the Open Inference Protocol".into(),
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        // Outermost last: every request gets an id (the client's
        // x-request-id, or a fresh UUID), its log span carries it, and the
        // answer returns it. Spans hold the method, path and status only:
        // no header, no body, nothing of a patient.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        id,
                        method = %request.method(),
                        path = request.uri().path(),
                    )
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::map_request(plain_request_id))
        .with_state(server)
}

/// The drift monitors for `model` under `config`, keyed by name and
/// version; none for an unscreened model. A calibration too small to
/// support a monitor is logged and that monitor left out.
fn drift_monitor(config: DriftConfig, model: &AttestedModel) -> Option<((String, String), Watch)> {
    let manifest = model.manifest();
    let screening = manifest.screening.as_ref()?;
    let unwatched = |what: &str, e: crate::drift::DriftError| {
        tracing::warn!(
            "{} {}: {e}; {what} not watched",
            manifest.name,
            manifest.version
        );
    };
    let target = screening.profile.targets.flag_fpr;
    let verdicts = DriftMonitor::new(config, target, screening.calibration.images)
        .map_err(|e| unwatched("verdicts", e))
        .ok();
    let pixels = match &screening.pixels {
        Some(reference) => PixelMonitor::new(config, reference)
            .map_err(|e| unwatched("the inputs' intensity and contrast", e))
            .ok(),
        None => {
            tracing::warn!(
                "{} {}: its manifest records no pixel statistics (calibrated before they existed; recalibrate to add them); the inputs' intensity and contrast not watched",
                manifest.name,
                manifest.version
            );
            None
        }
    };
    if verdicts.is_none() && pixels.is_none() {
        return None;
    }
    Some((
        (manifest.name.clone(), manifest.version.to_string()),
        Watch { verdicts, pixels },
    ))
}

/// Keeps a client's `x-request-id` only if it is a plain id (at most 64 of
/// `[A-Za-z0-9._-]`); otherwise it is removed and a fresh UUID takes its
/// place, so a client can neither flood the log nor dress its lines as
/// another request's beyond reusing an id it knows.
async fn plain_request_id<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let plain = |v: &header::HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 64
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
    };
    if request
        .headers()
        .get("x-request-id")
        .is_some_and(|v| !plain(v))
    {
        request.headers_mut().remove("x-request-id");
    }
    request
}

fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())
}

/// 401 for an unknown caller, 403 for one that may not `act`.
fn denied(denied: Denied, act: &str) -> Failure {
    match denied {
        Denied::Unauthenticated => Failure::new(
            StatusCode::UNAUTHORIZED,
            "a bearer token from the server's token file is required".into(),
        ),
        Denied::Forbidden => {
            Failure::new(StatusCode::FORBIDDEN, format!("this token may not {act}"))
        }
    }
}

/// An error answer: `{"error": ...}` with its status.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    body: ErrorBody,
    retry_after: bool,
}

impl Failure {
    /// 503 with `Retry-After`: no sandbox free and no place in the queue.
    fn busy() -> Self {
        let mut failure = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "every sandbox is busy and the queue is full; retry shortly".into(),
        );
        failure.retry_after = true;
        failure
    }

    fn new(status: StatusCode, error: String) -> Self {
        Self {
            status,
            body: ErrorBody {
                error,
                parameters: BTreeMap::new(),
            },
            retry_after: false,
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

async fn ready(State(server): State<Arc<Server>>) -> Response {
    if server.ready.load(Ordering::SeqCst) {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response()
    }
}

async fn metrics_text(State(server): State<Arc<Server>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        server.metrics.encode(),
    )
        .into_response()
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "medguard",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec![oip::BINARY_EXTENSION, oip::REPOSITORY_EXTENSION],
    })
}

fn metadata(
    server: &Server,
    name: &str,
    version: Option<&str>,
) -> Result<Json<ModelMetadata>, Failure> {
    let model = server.model(name, version)?;
    let versions = match version {
        Some(v) => vec![v.to_owned()],
        None => server
            .served()
            .get(name)
            .into_iter()
            .flatten()
            .map(|m| m.manifest().version.to_string())
            .collect(),
    };
    Ok(Json(ModelMetadata::of(model.manifest(), versions)))
}

async fn model_metadata(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, Failure> {
    server.caller(&headers, &name)?;
    metadata(&server, &name, None)
}

async fn model_version_metadata(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, Failure> {
    server.caller(&headers, &name)?;
    metadata(&server, &name, Some(&version))
}

fn model_is_ready(
    server: &Server,
    name: &str,
    version: Option<&str>,
) -> Result<Json<Value>, Failure> {
    server.model(name, version)?;
    Ok(Json(
        json!({"name": name, "ready": server.ready.load(Ordering::SeqCst)}),
    ))
}

async fn model_ready(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, Failure> {
    server.caller(&headers, &name)?;
    model_is_ready(&server, &name, None)
}

async fn model_version_ready(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, Failure> {
    server.caller(&headers, &name)?;
    model_is_ready(&server, &name, Some(&version))
}

/// The request body, read only once the caller is known and only up to
/// what the model can take.
type Body = axum::body::Body;

/// JSON text per tensor value an honest client may need (`-0.123456789e-10,`
/// and nesting), and room for the rest of the request.
const BYTES_PER_VALUE: usize = 32;
const REQUEST_OVERHEAD: usize = 64 << 10;

/// The largest body a request for `model` can need, within `limit`: a
/// bigger one is refused (413) before it is buffered.
fn body_limit(model: &AttestedModel, limit: usize) -> usize {
    let m = model.manifest();
    let s = &m.input.shape;
    let values = u64::from(m.max_batch)
        .saturating_mul(u64::from(s.channels))
        .saturating_mul(u64::from(s.height))
        .saturating_mul(u64::from(s.width));
    let bytes = usize::try_from(values)
        .unwrap_or(usize::MAX)
        .saturating_mul(BYTES_PER_VALUE)
        .saturating_add(REQUEST_OVERHEAD);
    bytes.min(limit)
}

async fn infer(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    run_inference(server, name, None, headers, body).await
}

async fn infer_version(
    State(server): State<Arc<Server>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    run_inference(server, name, Some(version), headers, body).await
}

async fn run_inference(
    server: Arc<Server>,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    if !server.ready.load(Ordering::SeqCst) {
        return Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        ));
    }
    let started = std::time::Instant::now();
    // Who asks comes before what: an unknown caller learns nothing about
    // which models exist.
    let chosen = server
        .caller(&headers, &name)
        .and_then(|caller| Ok((caller, server.model(&name, version.as_deref())?)));
    let (caller, model) = chosen.inspect_err(|f| server.metrics.denied(f.status.as_u16()))?;
    let labels = metrics::ModelLabels {
        model: model.manifest().name.clone(),
        version: model.manifest().version.to_string(),
    };
    let answer = infer_model(&server, model, caller, &labels, headers, body).await;
    let outcome = match &answer {
        Ok(_) => Ok(()),
        Err(f) => Err(match f.status {
            StatusCode::UNPROCESSABLE_ENTITY => metrics::Reason::refused,
            StatusCode::SERVICE_UNAVAILABLE => metrics::Reason::unavailable,
            StatusCode::GATEWAY_TIMEOUT => metrics::Reason::timeout,
            StatusCode::INTERNAL_SERVER_ERROR => metrics::Reason::internal,
            _ => metrics::Reason::bad_request,
        }),
    };
    server.metrics.answered(&labels, outcome, started.elapsed());
    answer
}

/// The inference for a caller and model already checked.
async fn infer_model(
    server: &Arc<Server>,
    model: AttestedModel,
    caller: Caller,
    labels: &metrics::ModelLabels,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let _admitted = server
        .admitted
        .clone()
        .try_acquire_owned()
        .map_err(|_| Failure::busy())?;
    // A DICOM Part 10 body is decoded in the sandbox; anything else is an
    // Open Inference Protocol request.
    let dicom = content_type_is(&headers, header::CONTENT_TYPE, DICOM);
    if dicom && model.manifest().dicom.is_none() {
        // Refused before a byte of the body is read.
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{} {} takes no DICOM: its signed manifest has no dicom section",
                model.manifest().name,
                model.manifest().version
            ),
        ));
    }
    let limit = if dicom {
        // The decoder's own input cap is the most a DICOM body may be.
        let cap = usize::try_from(crate::input::INPUT_MAX_BYTES).unwrap_or(usize::MAX);
        server.limits.max_body_bytes.min(cap)
    } else {
        body_limit(&model, server.limits.max_body_bytes)
    };
    let body = tokio::time::timeout(
        server.limits.body_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    .map_err(|_| {
        Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {:?}",
                server.limits.body_timeout
            ),
        )
    })?
    .map_err(|_| {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over the {limit} bytes this model can need, or was cut off"
            ),
        )
    })?;
    let (input, requested, id, seed) = if dicom {
        let probabilities = oip::Requested {
            output: oip::Output::Probabilities,
            binary: false,
        };
        (Input::Dicom(body), vec![probabilities], None, None)
    } else {
        let bad_request = |e: oip::TensorError| Failure::new(StatusCode::BAD_REQUEST, e.0);
        let header_length = headers.get(oip::HEADER_LENGTH).map(|v| v.as_bytes());
        let (request, binary) = oip::parse_request(&body, header_length).map_err(bad_request)?;
        let batch = oip::batch_of(&request, binary, model.manifest()).map_err(bad_request)?;
        let requested = oip::requested_outputs(&request).map_err(bad_request)?;
        drop(body);
        // Nothing of the request but its tensor waits in the queue.
        let InferRequest {
            id,
            parameters,
            inputs,
            outputs,
        } = request;
        drop((inputs, outputs));
        (
            Input::Tensor(batch),
            requested,
            id,
            parameters.medguard_seed,
        )
    };
    let seed = match seed {
        Some(seed) => seed,
        None => crate::guard::fresh_seed().map_err(|e| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("drawing a seed: {e}"),
            )
        })?,
    };
    let queued = std::time::Instant::now();
    let permit = acquire(server).await?;
    let queued = queued.elapsed();
    let options = ClassifyOptions {
        seed,
        policy: server.policy,
        allow_unscreened: false,
    };
    let watcher = server.clone();
    let classify_model = model.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let outcome = match input {
            Input::Tensor(batch) => {
                watcher
                    .guard
                    .classify_batch(&classify_model, &batch, options, caller.name())
            }
            Input::Dicom(bytes) => {
                watcher
                    .guard
                    .classify_dicom(&classify_model, &bytes, options, caller.name())
            }
        };
        if let Ok(classified) = &outcome {
            watcher.watch_drift(&classify_model, classified);
        }
        outcome
    })
    .await
    .map_err(|_| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the inference worker panicked".into(),
        )
    })?;
    let classified = outcome.map_err(classify_failure)?;
    server.metrics.classified(
        labels,
        classified.images.iter().map(|r| r.verdict),
        queued,
        &classified.timings,
    );

    // A PACS asks for the structured report: it carries the verdict, and
    // for a rejected input says that no finding is reported.
    if content_type_is(&headers, header::ACCEPT, DICOM) && classified.dicom.is_some() {
        let program = server
            .guard
            .program()
            .ok_or_else(|| Failure::new(StatusCode::SERVICE_UNAVAILABLE, "no sandbox".into()))?;
        let report = crate::report::structured_report(
            &model,
            &program.digest(),
            &classified,
            &classified.images[0],
        );
        return match report {
            Some(Ok((_, bytes))) => {
                Ok(([(header::CONTENT_TYPE, DICOM.to_owned())], bytes).into_response())
            }
            Some(Err(e)) => Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
            )),
            None => Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this model's manifest has no DICOM profile to report with".into(),
            )),
        };
    }
    let labels = &model.manifest().output.labels;
    let mut parameters = BTreeMap::new();
    let results: Vec<Value> = classified
        .images
        .iter()
        .map(|r| {
            // Under enforce a withheld prediction stays withheld: the
            // evidence (margin, per-class p-values) would rebuild it.
            // The certificate of a withheld one carries no votes
            // (`Certificate::redacted`): its radius says why.
            if r.probabilities.is_none() {
                return json!({
                    "verdict": r.verdict,
                    "label": null,
                    "certificate": r.certificate,
                    "receipt": r.receipt,
                });
            }
            json!({
                "verdict": r.verdict,
                "p_value": r.p_value,
                "label": r.label,
                "certificate": r.certificate,
                "statistics": r.statistics.iter().map(|s| json!({
                    "name": s.statistic.name(),
                    "value": s.value,
                    "p_value": s.p_value,
                })).collect::<Vec<_>>(),
                "receipt": r.receipt,
            })
        })
        .collect();
    let worst = classified
        .images
        .iter()
        .map(|r| r.verdict)
        .max_by_key(|v| match v {
            Verdict::Accept | Verdict::Unscreened => 0,
            Verdict::Flag => 1,
            Verdict::Reject => 2,
        })
        .unwrap_or(Verdict::Accept);
    parameters.insert("medguard_verdict".into(), json!(worst.as_str()));
    parameters.insert("medguard_seed".into(), json!(classified.seed));
    // Parameter values are scalars in the protocol: the per-image evidence
    // and receipts travel as one JSON string.
    parameters.insert(
        "medguard_results".into(),
        Value::String(Value::Array(results).to_string()),
    );
    let withheld = classified.images.iter().any(|r| r.probabilities.is_none());
    if withheld {
        // Withheld without a reject: only a certificate withholds a flag.
        let uncertified = classified
            .images
            .iter()
            .any(|r| r.probabilities.is_none() && r.verdict != Verdict::Reject);
        let why = if worst == Verdict::Reject || !uncertified {
            format!("input rejected by screening ({})", worst.as_str())
        } else {
            "no certificate reaches the radius the model's manifest requires".to_owned()
        };
        let mut failure = Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{why}: the prediction is withheld; the verdicts, evidence and receipts are in parameters.medguard_results"
            ),
        );
        failure.body.parameters = parameters;
        return Err(failure);
    }
    let shape = vec![classified.images.len() as i64, labels.len() as i64];
    let mut bytes: Vec<u8> = Vec::new();
    let mut outputs = Vec::with_capacity(requested.len());
    for r in &requested {
        let data: Vec<f32> = match r.output {
            oip::Output::Probabilities => classified
                .images
                .iter()
                .flat_map(|r| {
                    let p = r.probabilities.as_ref();
                    labels
                        .iter()
                        .map(move |l| p.and_then(|p| p.get(l).copied()).unwrap_or(f32::NAN))
                })
                .collect(),
            // Every served model is screened, and the sandbox checked that
            // a screened answer's logits came with its probabilities.
            oip::Output::Logits => classified
                .images
                .iter()
                .map(|r| r.logits.as_deref().filter(|l| l.len() == labels.len()))
                .collect::<Option<Vec<&[f32]>>>()
                .ok_or_else(|| {
                    Failure::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the sandbox returned no logits".into(),
                    )
                })?
                .concat(),
        };
        let mut output = OutputTensor {
            name: r.output.name().into(),
            shape: shape.clone(),
            datatype: "FP32",
            data: None,
            parameters: BTreeMap::new(),
        };
        if r.binary {
            output
                .parameters
                .insert("binary_data_size".into(), json!(data.len() * 4));
            bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        } else {
            output.data = Some(data);
        }
        outputs.push(output);
    }
    let binary_output = requested.iter().any(|r| r.binary);
    let response = InferResponse {
        model_name: model.manifest().name.clone(),
        model_version: model.manifest().version.to_string(),
        id,
        parameters,
        outputs,
    };
    if !binary_output {
        return Ok(Json(response).into_response());
    }
    // The binary tensor data extension: the JSON, then the tensor's bytes,
    // and a header that says where one ends.
    let mut body = serde_json::to_vec(&response).map_err(|e| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the response: {e}"),
        )
    })?;
    let json_length = body.len();
    body.extend_from_slice(&bytes);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::HeaderName::from_static(oip::HEADER_LENGTH),
                json_length.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// A sandbox permit, waiting in the bounded queue; 503 past it.
async fn acquire(server: &Server) -> Result<tokio::sync::OwnedSemaphorePermit, Failure> {
    if let Ok(permit) = server.permits.clone().try_acquire_owned() {
        return Ok(permit);
    }
    // Counted out on drop: a client that hangs up while queued drops this
    // future, and its place must come back.
    struct Waiting<'a>(&'a AtomicUsize);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let waiting = server.waiting.fetch_add(1, Ordering::SeqCst);
    let _place = Waiting(&server.waiting);
    if waiting >= server.limits.queue {
        return Err(Failure::busy());
    }
    server.permits.clone().acquire_owned().await.map_err(|_| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        )
    })
}

/// The media type of DICOM Part 10 files (PS3.18).
const DICOM: &str = "application/dicom";

/// What an inference request carries.
enum Input {
    /// An Open Inference Protocol tensor.
    Tensor(crate::input::Batch),
    /// A DICOM Part 10 file, still undecoded.
    Dicom(axum::body::Bytes),
}

/// True when `name` (Content-Type or Accept) names `media` (case ignored;
/// Accept may list several, and one with `q=0` is declined).
fn content_type_is(headers: &HeaderMap, name: header::HeaderName, media: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let mut parts = v.split(';');
            let named = parts
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(media));
            let declined = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            named && !declined
        })
}

fn classify_failure(e: ClassifyError) -> Failure {
    match e {
        // A file that is not DICOM, or broken: the request is bad.
        ClassifyError::Refused(InputRefusal::Dicom(
            why @ (medguard_dicom::DicomError::NotDicom(_)
            | medguard_dicom::DicomError::Malformed(_)),
        )) => Failure::new(StatusCode::BAD_REQUEST, format!("input refused: {why}")),
        ClassifyError::Refused(InputRefusal::Sandbox(
            e @ (SandboxError::Deadline(_) | SandboxError::Budget(_)),
        ))
        | ClassifyError::Guard(GuardError::Sandbox(
            e @ (SandboxError::Deadline(_) | SandboxError::Budget(_)),
        )) => Failure::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        ClassifyError::Refused(why) => Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("input refused: {why}"),
        ),
        other => {
            // The guard's own failure (the ledger): its detail, with host
            // paths, goes to the operator's log, not to the client.
            tracing::error!("inference failed: {other:#}");
            eprintln!("medguard: error: inference failed: {other}");
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the guard failed to record the result; the operator's log says why".into(),
            )
        }
    }
}
