//! The wasmtime sandbox: the only module that touches wasmtime.
//!
//! Shape: one [`Runtime`] (engine + epoch ticker) per process, one pre-linked
//! [`GuestProgram`] per guest, and a short-lived [`Session`] (a fresh `Store`
//! and instance) per request, so nothing of one patient's input survives into
//! the next. The guest imports nothing: the linker is empty, so there is no
//! capability (file, clock, random, environment, network, stdio) to grant.

mod cache;
mod snapshot;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use medguard_attest::{AttestedModel, Sha256Digest};
use medguard_certify::{Certificate, Certifier, IntervalBounds, RadiusTable};
use medguard_dicom::{DicomError, DicomProfile, Radiograph};

use crate::guest::GuestModule;
use medguard_screen::{Profile, Screening, Statistic, StatisticReport, Verdict};
pub use medguard_screen::{ScreenOptions, ScreenedImage};
use thiserror::Error;
use wasmtime::component::{Component, Instance, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};

pub use cache::{Artifact, CacheError, CompiledCache};

#[allow(missing_docs)] // Generated from the WIT file, which carries the docs.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest/wit",
        world: "sandboxed-classifier",
    });
}

use bindings::exports::medguard::guest::classifier as wit;
use bindings::exports::medguard::guest::dicom as wit_dicom;
use bindings::{SandboxedClassifier, SandboxedClassifierPre};

/// Resource limits applied to every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the guest's linear memory, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget for one call into the guest (load or classify).
    pub deadline: Duration,
    /// Wall-clock budget for all the calls of one session, however many
    /// images its request holds, counted from when the sandbox is ready
    /// (started, the model loaded); `None`
    /// leaves each call its own deadline only. A certified model spends
    /// about half a second per image, so without it a large request holds a
    /// sandbox (and a server's permit) for as many deadlines as it has images.
    pub session_budget: Option<Duration>,
    /// Cap on the native stack that wasm frames may use, in bytes.
    pub wasm_stack_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            deadline: Duration::from_secs(10),
            session_budget: None,
            wasm_stack_bytes: 1 << 20,
        }
    }
}

/// How often the epoch advances: the deadline's resolution.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why the sandbox could not compile, link or run the guest.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// wasmtime rejected the engine configuration, or the epoch ticker
    /// could not start.
    #[error("sandbox configuration rejected")]
    Config(#[source] Cause),
    /// The guest bytes are not a valid component.
    #[error("guest could not be compiled")]
    Compile(#[source] Cause),
    /// The guest imports something the sandbox does not grant, or lacks the classifier world.
    #[error(
        "guest does not fit the sandbox (it may import nothing and must export medguard:guest/classifier)"
    )]
    Link(#[source] Cause),
    /// The guest exceeded its wall-clock budget and was stopped.
    #[error("guest ran past its {0:?} deadline and was stopped")]
    Deadline(Duration),
    /// The session's calls together exceeded its budget
    /// ([`Limits::session_budget`]) and the guest was stopped.
    #[error(
        "the request ran past its {0:?} time budget (all its images together) and was stopped; a request with fewer images, or a larger budget, fits"
    )]
    Budget(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("guest tried to grow its memory to {requested} bytes, over the {cap}-byte cap")]
    MemoryCap {
        /// Bytes the guest asked for.
        requested: usize,
        /// The cap.
        cap: usize,
    },
    /// The guest overflowed its stack.
    #[error("guest overflowed its stack")]
    StackOverflow,
    /// Any other trap (unreachable, out-of-bounds access, a panic in the
    /// guest): its kind when wasmtime names one, and the whole error with the
    /// guest's stack as the source.
    #[error("guest trapped{}", match .kind { Some(k) => format!(": {k}"), None => String::new() })]
    Trap {
        /// wasmtime's trap code, if the error is a trap.
        kind: Option<Trap>,
        /// The error, with wasm frames.
        #[source]
        source: Cause,
    },
    /// An earlier trap ended this session; start a new one.
    #[error("this sandbox session was ended by an earlier trap; start a new session")]
    Poisoned,
    /// The guest ran and refused the model or the input.
    #[error(transparent)]
    Guest(#[from] GuestFailure),
    /// The guest answered with the wrong number of values.
    #[error("guest returned {got} probabilities for {images} image(s) of {classes} classes")]
    MalformedOutput {
        /// Values returned.
        got: usize,
        /// Images sent.
        images: usize,
        /// Classes expected per image.
        classes: usize,
    },
    /// The guest's screening answer contradicts the detector it was given.
    #[error("guest returned malformed screening evidence: {0}")]
    MalformedScreening(String),
    /// The guest's smoothing votes are not counts of the samples drawn.
    #[error("guest returned malformed smoothing votes: {0}")]
    MalformedVotes(#[source] medguard_certify::VoteError),
    /// The guest's interval bounds are not one ordered, finite pair per
    /// class and radius.
    #[error("guest returned malformed interval bounds: {0}")]
    MalformedBounds(#[source] medguard_certify::BoundsError),
    /// The guest's DICOM answer breaks the contract (a string longer than
    /// any attribute may be): a guest that misbehaves, never the file.
    #[error("guest returned a malformed DICOM answer: {0}")]
    MalformedDicom(String),
    /// A snapshot of the loaded guest could not be taken.
    #[error("the sandbox snapshot could not be prepared")]
    Snapshot(#[source] Cause),
}

/// A wasmtime error with its chain of causes (`source()`), kept whole so
/// that a caller can walk or print it.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The guest's own refusal, as defined in the WIT world.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GuestFailure {
    /// The guest could not use the model.
    #[error("guest refused the model: {0}")]
    InvalidModel(String),
    /// The input did not match the model's spec.
    #[error("input refused: {0}")]
    InvalidInput(String),
    /// Inference failed inside the guest.
    #[error("inference failed in the guest: {0}")]
    InferenceFailed(String),
    /// `classify` before `load`: a host bug.
    #[error("guest has no model loaded")]
    NotLoaded,
    /// The DICOM file gave no image.
    #[error(transparent)]
    Dicom(#[from] DicomError),
}

impl From<wit::GuestError> for GuestFailure {
    fn from(e: wit::GuestError) -> Self {
        match e {
            wit::GuestError::InvalidModel(m) => Self::InvalidModel(m),
            wit::GuestError::InvalidInput(m) => Self::InvalidInput(m),
            wit::GuestError::InferenceFailed(m) => Self::InferenceFailed(m),
            wit::GuestError::NotLoaded => Self::NotLoaded,
        }
    }
}

/// One engine and its epoch ticker; cheap to clone, shared by every guest.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    limits: Limits,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Runtime {
    /// Builds the engine with deterministic, deny-by-default settings and
    /// starts the epoch ticker that enforces deadlines.
    pub fn new(limits: Limits) -> Result<Self, SandboxError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Deadlines: the ticker advances the epoch; a store past its
            // deadline traps with `Trap::Interrupt`.
            .epoch_interruption(true)
            .max_wasm_stack(limits.wasm_stack_bytes)
            // Determinism: the same input gives bit-identical output on every
            // host (wasmtime docs, "deterministic execution"). The one part
            // of wasm arithmetic that differs between CPUs is the bits of a
            // NaN it makes. The guest fixes them itself, after every
            // operator and in everything it returns
            // (guest/core/src/runtime.rs, `execute`); wasmtime's own
            // canonicalisation, after every float instruction, would cut the
            // guest's matrix-product kernel from 28 to 16 GFLOP/s (README,
            // Measurements, the kernel microbenchmark).
            .cranelift_nan_canonicalization(false)
            .wasm_relaxed_simd(true)
            .relaxed_simd_deterministic(true)
            // What start-up reads, checks and maps is only what the sandbox
            // uses: no ELF symbol table (guest function names for profiles
            // come from the wasm name section) and no native unwind tables
            // (wasmtime walks wasm frames itself, and host panics never
            // unwind through guest code).
            .debug_symbols(false)
            .native_unwind_info(false);
        // Threads and shared memory are not compiled into this wasmtime
        // (the `threads` feature is off), so a guest cannot ask for them.
        let engine = Engine::new(&config).map_err(|e| SandboxError::Config(e.into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("medguard-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| SandboxError::Config(e.into()))?
        };
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                limits,
                stop,
                ticker: Some(ticker),
            }),
        })
    }

    /// The limits every session of this runtime gets.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Compiles (or loads from `cache`) the pinned guest and pre-links it.
    pub fn load_guest(
        &self,
        guest: &GuestModule,
        cache: Option<&CompiledCache>,
    ) -> Result<(GuestProgram, GuestLoad), SandboxError> {
        let started = Instant::now();
        let (component, cache_use) =
            self.cached_or_compiled(cache, &Artifact::Guest(guest.digest()), || {
                Ok(guest.bytes().to_vec())
            })?;
        let pre = self.pre_link(&component)?;
        let program = GuestProgram {
            runtime: self.clone(),
            pre,
            guest: guest.clone(),
            instrumented: std::sync::Mutex::new(None),
            cache: cache.cloned(),
            prepared: RwLock::new(Vec::new()),
            sessions: AtomicU64::new(0),
            from_snapshot: AtomicU64::new(0),
        };
        Ok((
            program,
            GuestLoad {
                cache: cache_use,
                elapsed: started.elapsed(),
            },
        ))
    }

    /// `artifact` from `cache` when a verified copy is there, else compiled
    /// from the bytes `source` gives and stored. A `source` failure is
    /// [`SandboxError::Snapshot`].
    fn cached_or_compiled(
        &self,
        cache: Option<&CompiledCache>,
        artifact: &Artifact,
        source: impl FnOnce() -> Result<Vec<u8>, Cause>,
    ) -> Result<(Component, CacheUse), SandboxError> {
        let engine = &self.inner.engine;
        let mut cache_use = CacheUse::Disabled;
        if let Some(cache) = cache {
            match cache.load(engine, artifact) {
                Ok(Some(c)) => return Ok((c, CacheUse::Hit)),
                Ok(None) => cache_use = CacheUse::Miss,
                Err(e) => cache_use = CacheUse::Rejected(e.to_string()),
            }
        }
        let bytes = source().map_err(SandboxError::Snapshot)?;
        let component =
            Component::new(engine, &bytes).map_err(|e| SandboxError::Compile(e.into()))?;
        if let Some(cache) = cache
            && let Err(e) = cache.store(engine, artifact, &component)
        {
            cache_use = CacheUse::StoreFailed(e.to_string());
        }
        Ok((component, cache_use))
    }

    fn pre_link(
        &self,
        component: &Component,
    ) -> Result<SandboxedClassifierPre<RequestState>, SandboxError> {
        let linker: Linker<RequestState> = Linker::new(&self.inner.engine);
        linker
            .instantiate_pre(component)
            .and_then(SandboxedClassifierPre::new)
            .map_err(|e| SandboxError::Link(e.into()))
    }
}

/// How a guest (or a model's snapshot) came to be ready, for logs and
/// measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLoad {
    /// What the compiled-guest cache did.
    pub cache: CacheUse,
    /// Time to compile or load, and pre-link (for a snapshot, also to take it).
    pub elapsed: Duration,
}

/// What the compiled-guest cache did on one load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// No cache configured.
    Disabled,
    /// A verified artifact was loaded.
    Hit,
    /// No artifact yet; compiled and stored.
    Miss,
    /// An artifact was there but failed verification; compiled afresh.
    Rejected(String),
    /// Compiled, but the artifact could not be stored.
    StoreFailed(String),
}

/// A compiled, pre-linked guest. Sessions are instantiated from it.
pub struct GuestProgram {
    runtime: Runtime,
    /// The pinned guest as it is: what every session without a snapshot runs.
    pre: SandboxedClassifierPre<RequestState>,
    guest: GuestModule,
    /// The guest instrumented for snapshots, compiled on the first
    /// [`GuestProgram::prepare`]; it only ever runs there, never for a request.
    instrumented: std::sync::Mutex<Option<SandboxedClassifierPre<RequestState>>>,
    cache: Option<CompiledCache>,
    prepared: RwLock<Vec<Arc<Prepared>>>,
    sessions: AtomicU64,
    from_snapshot: AtomicU64,
}

/// A snapshot of the guest with one model loaded, compiled and pre-linked.
struct Prepared {
    model: Sha256Digest,
    /// The canonical digest of the manifest it was taken under: the tensor
    /// spec and screening profile come from it.
    manifest: Sha256Digest,
    pre: SandboxedClassifierPre<RequestState>,
}

/// How a model's snapshot came to be ready: the same account as a guest's.
pub type Preparation = GuestLoad;

/// Room above the memory cap while a snapshot is read: wizer's accessors
/// grow the memory by a page to hand it over.
const SNAPSHOT_HEADROOM: usize = 1 << 20;

impl GuestProgram {
    /// SHA-256 of the guest component that runs.
    pub fn digest(&self) -> Sha256Digest {
        self.guest.digest()
    }

    /// How many sessions (fresh stores and instances) were started from
    /// this program: what shows that every input got its own.
    pub fn sessions_started(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// How many of those started from a prepared snapshot.
    pub fn sessions_from_snapshot(&self) -> u64 {
        self.from_snapshot.load(Ordering::Relaxed)
    }

    /// Prepares `model` so that its sessions start with the model already
    /// loaded: a fresh sandbox of the guest, instrumented for the purpose,
    /// loads it, the loaded state is written into a new component (the
    /// snapshot), and that is compiled (or loaded from the HMAC-verified
    /// cache, keyed by guest, model and manifest) and pre-linked. Every
    /// later [`GuestProgram::session`] for the same model bytes and
    /// manifest instantiates the snapshot: a fresh instance with
    /// copy-on-write memory, nothing shared with any other session.
    ///
    /// Errors: the guest's refusal of the model or a trap while loading it,
    /// as for a session; anything else that keeps the snapshot from being
    /// taken, compiled or linked is [`SandboxError::Snapshot`], and the
    /// model's sessions then load it as before.
    pub fn prepare(&self, model: &AttestedModel) -> Result<Preparation, SandboxError> {
        let started = Instant::now();
        let snapshot_failed = |why: &str| SandboxError::Snapshot(why.to_owned().into());
        let manifest = model
            .manifest_digest()
            .ok_or_else(|| snapshot_failed("the manifest has no canonical encoding"))?;
        let artifact = Artifact::Snapshot {
            guest: self.guest.digest(),
            model: model.model_digest(),
            manifest,
        };
        let (component, cache_use) = self
            .runtime
            .cached_or_compiled(self.cache.as_ref(), &artifact, || self.take_snapshot(model))
            .map_err(as_snapshot_failure)?;
        let pre = self
            .runtime
            .pre_link(&component)
            .map_err(as_snapshot_failure)?;
        let prepared = Arc::new(Prepared {
            model: model.model_digest(),
            manifest,
            pre,
        });
        let mut all = self.prepared.write().unwrap_or_else(|p| p.into_inner());
        all.retain(|p| !(p.model == prepared.model && p.manifest == prepared.manifest));
        all.push(prepared);
        Ok(GuestLoad {
            cache: cache_use,
            elapsed: started.elapsed(),
        })
    }

    /// Loads `model` into a fresh instance of the instrumented guest and
    /// returns the guest rewritten to start in that state.
    fn take_snapshot(&self, model: &AttestedModel) -> Result<Vec<u8>, Cause> {
        let pre = {
            let mut slot = self.instrumented.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(pre) => pre.clone(),
                None => {
                    let artifact = Artifact::Instrumented(self.guest.digest());
                    let (component, _) = self
                        .runtime
                        .cached_or_compiled(self.cache.as_ref(), &artifact, || {
                            snapshot::instrument(self.guest.bytes())
                        })
                        .map_err(Cause::from)?;
                    let pre = self.runtime.pre_link(&component).map_err(Cause::from)?;
                    *slot = Some(pre.clone());
                    pre
                }
            }
        };
        let detector = detector(model);
        let (mut session, instance) = self.start(&pre, model, &detector).map_err(Cause::from)?;
        session.load(model, &detector).map_err(Cause::from)?;
        // Reading the state is calls into the guest: a full deadline of their
        // own, and room for the page each accessor call grows the memory by.
        session.arm().map_err(Cause::from)?;
        session.store.data_mut().memory.cap = session
            .store
            .data()
            .memory
            .cap
            .saturating_add(SNAPSHOT_HEADROOM);
        snapshot::take(self.guest.bytes(), &mut session.store, instance)
    }

    /// Keeps the prepared snapshots of `models` and drops every other (their
    /// sessions load the model afresh): what the server does when the set of
    /// models it serves changes, so that snapshots do not pile up in memory.
    pub fn retain_prepared<'a>(&self, models: impl IntoIterator<Item = &'a AttestedModel>) {
        let kept: Vec<(Sha256Digest, Sha256Digest)> = models
            .into_iter()
            .filter_map(|m| Some((m.model_digest(), m.manifest_digest()?)))
            .collect();
        self.prepared
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| kept.contains(&(p.model, p.manifest)));
    }

    /// Whether `model`'s sessions start from a prepared snapshot.
    pub fn is_prepared(&self, model: &AttestedModel) -> bool {
        self.prepared_for(model).is_some()
    }

    /// Where `model`'s compiled snapshot is cached (whether or not it is there
    /// yet); `None` without a cache or a canonical manifest digest.
    pub fn snapshot_entry(&self, model: &AttestedModel) -> Option<std::path::PathBuf> {
        let artifact = Artifact::Snapshot {
            guest: self.guest.digest(),
            model: model.model_digest(),
            manifest: model.manifest_digest()?,
        };
        Some(
            self.cache
                .as_ref()?
                .entry_path(&self.runtime.inner.engine, &artifact),
        )
    }

    fn prepared_for(&self, model: &AttestedModel) -> Option<Arc<Prepared>> {
        let manifest = model.manifest_digest()?;
        let digest = model.model_digest();
        let all = self.prepared.read().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .find(|p| p.model == digest && p.manifest == manifest)
            .cloned()
    }

    /// A fresh sandbox with `model` loaded: new store, new instance, new memory.
    /// Screening uses the manifest's calibrated profile when it has one. A
    /// prepared model ([`GuestProgram::prepare`]) starts from its snapshot;
    /// any other is loaded into the fresh instance.
    pub fn session(&self, model: &AttestedModel) -> Result<Session, SandboxError> {
        if let Some(prepared) = self.prepared_for(model) {
            let (mut session, _) = self.start(&prepared.pre, model, &detector(model))?;
            self.from_snapshot.fetch_add(1, Ordering::Relaxed);
            session.loaded = true;
            session.start_budget(self.runtime.limits().session_budget);
            return Ok(session);
        }
        self.session_with(model, detector(model))
    }

    /// A session whose `screen` computes `statistics` without judging them:
    /// what calibration needs before there is a profile.
    pub fn calibration_session(
        &self,
        model: &AttestedModel,
        statistics: &[Statistic],
    ) -> Result<Session, SandboxError> {
        self.session_with(model, Detector::Uncalibrated(statistics))
    }

    fn session_with(
        &self,
        model: &AttestedModel,
        detector: Detector<'_>,
    ) -> Result<Session, SandboxError> {
        let (mut session, _) = self.start(&self.pre, model, &detector)?;
        session.load(model, &detector)?;
        session.start_budget(self.runtime.limits().session_budget);
        Ok(session)
    }

    /// Decodes an untrusted DICOM file in a fresh sandbox of its own (no
    /// model in it) and preprocesses its image to `height x width` as
    /// `profile` says. The instance ends with the call.
    pub fn decode_dicom(
        &self,
        file: &[u8],
        profile: &DicomProfile,
        height: u32,
        width: u32,
    ) -> Result<Radiograph, SandboxError> {
        let (mut session, _) = self.start_bare(&self.pre, 0, 0, &[], false)?;
        session.start_budget(self.runtime.limits().session_budget);
        session.arm()?;
        let bindings = match (&session.bindings, session.poisoned) {
            (Some(b), false) => b,
            _ => return Err(SandboxError::Poisoned),
        };
        let wit_profile = dicom_profile_to_wit(profile, height, width);
        let radiograph = bindings
            .medguard_guest_dicom()
            .call_decode(&mut session.store, file, &wit_profile)
            .map_err(|e| session.trapped(e))?
            .map_err(|e| GuestFailure::Dicom(dicom_error_from_wit(e)))?;
        // Pixels first: nothing else is looked at if their count is wrong.
        let expected = u64::from(height) * u64::from(width);
        if (radiograph.height, radiograph.width) != (height, width)
            || radiograph.pixels.len() as u64 != expected
        {
            return Err(SandboxError::MalformedOutput {
                got: radiograph.pixels.len(),
                images: 1,
                classes: expected as usize,
            });
        }
        radiograph_from_wit(radiograph).map_err(SandboxError::MalformedDicom)
    }

    /// A fresh store and instance of `pre`, nothing loaded by the host yet.
    fn start(
        &self,
        pre: &SandboxedClassifierPre<RequestState>,
        model: &AttestedModel,
        detector: &Detector<'_>,
    ) -> Result<(Session, Instance), SandboxError> {
        self.start_bare(
            pre,
            model.manifest().output.labels.len(),
            model_values(model),
            detector.statistics(),
            matches!(detector, Detector::Calibrated(_)),
        )
    }

    /// A fresh store and instance of `pre` for a model of `classes` outputs
    /// taking at most `max_values` per call.
    fn start_bare(
        &self,
        pre: &SandboxedClassifierPre<RequestState>,
        classes: usize,
        max_values: usize,
        statistics: &[Statistic],
        judges: bool,
    ) -> Result<(Session, Instance), SandboxError> {
        let limits = self.runtime.limits();
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(
            &self.runtime.inner.engine,
            RequestState {
                memory: MemoryCap {
                    cap: limits.memory_bytes,
                },
            },
        );
        store.limiter(|s| &mut s.memory);
        let mut session = Session {
            bindings: None,
            store,
            deadline: limits.deadline,
            // Started once the session is ready for the request's inputs.
            budget: None,
            budget_binds: false,
            classes,
            max_values,
            statistics: statistics.to_vec(),
            judges,
            loaded: false,
            poisoned: false,
        };
        session.arm()?;
        let instance = pre
            .instance_pre()
            .instantiate(&mut session.store)
            .map_err(|e| session.trapped(e))?;
        let bindings = SandboxedClassifier::new(&mut session.store, &instance)
            .map_err(|e| session.trapped(e))?;
        session.bindings = Some(bindings);
        Ok((session, instance))
    }
}

/// Compiling or linking the snapshot failed: the model still runs, loaded
/// per session.
fn as_snapshot_failure(e: SandboxError) -> SandboxError {
    match e {
        SandboxError::Compile(cause) | SandboxError::Link(cause) => SandboxError::Snapshot(cause),
        other => other,
    }
}

/// The detector a model's sessions screen with: the manifest's calibrated
/// profile when it has one.
fn detector(model: &AttestedModel) -> Detector<'_> {
    match &model.manifest().screening {
        Some(section) => Detector::Calibrated(&section.profile),
        None => Detector::None,
    }
}

/// What a session screens with.
enum Detector<'a> {
    None,
    Uncalibrated(&'a [Statistic]),
    Calibrated(&'a Profile),
}

impl Detector<'_> {
    fn statistics(&self) -> &[Statistic] {
        match self {
            Detector::None => &[],
            Detector::Uncalibrated(s) => s,
            Detector::Calibrated(p) => &p.statistics,
        }
    }

    fn to_wit(&self) -> Option<wit::Detector> {
        let statistics = self.statistics().iter().map(statistic_to_wit).collect();
        match self {
            Detector::None => None,
            Detector::Uncalibrated(_) => Some(wit::Detector {
                statistics,
                calibration: None,
            }),
            Detector::Calibrated(p) => Some(wit::Detector {
                statistics,
                calibration: Some(wit::Calibration {
                    classes: p
                        .classes
                        .iter()
                        .map(|c| wit::ClassReference {
                            reference: c.reference.clone(),
                        })
                        .collect(),
                    flag_at: p.thresholds.flag,
                    reject_at: p.thresholds.reject,
                    flag_target: p.targets.flag_fpr,
                    reject_target: p.targets.reject_fpr,
                }),
            }),
        }
    }
}

fn statistic_to_wit(s: &Statistic) -> wit::Statistic {
    match *s {
        Statistic::Margin => wit::Statistic::Margin,
        Statistic::SqueezeMedian { window } => wit::Statistic::SqueezeMedian(window),
        Statistic::NoiseResponse { sigma, draws } => {
            wit::Statistic::NoiseResponse(wit::Noise { sigma, draws })
        }
    }
}

fn dicom_profile_to_wit(profile: &DicomProfile, height: u32, width: u32) -> wit_dicom::Profile {
    use medguard_dicom::{Crop, Intensity, Resize};
    let a = &profile.accepts;
    let p = profile.preprocessing;
    wit_dicom::Profile {
        accepts: wit_dicom::Acceptance {
            modality: a.modality.clone(),
            photometric_interpretation: a.photometric_interpretation.clone(),
            body_part_examined: a.body_part_examined.clone(),
            view_position: a.view_position.clone(),
        },
        intensity: match p.intensity {
            Intensity::VoiElseStoredRange => wit_dicom::Intensity::VoiElseStoredRange,
        },
        crop: match p.crop {
            Crop::None => wit_dicom::Crop::None,
            Crop::CenterSquare => wit_dicom::Crop::CenterSquare,
        },
        resize: match p.resize {
            Resize::Area => wit_dicom::Resize::Area,
        },
        height,
        width,
    }
}

/// The longest refusal message taken from the guest; longer ones are cut.
const GUEST_MESSAGE_MAX_BYTES: usize = 512;

/// A guest's message, cut to [`GUEST_MESSAGE_MAX_BYTES`]: it is the guest's
/// text, echoed into logs and answers.
fn bounded_message(m: String) -> String {
    medguard_ledger::entry::bounded(&m, GUEST_MESSAGE_MAX_BYTES)
}

fn dicom_error_from_wit(e: wit_dicom::DicomError) -> DicomError {
    let e = match e {
        wit_dicom::DicomError::NotDicom(m) => wit_dicom::DicomError::NotDicom(bounded_message(m)),
        wit_dicom::DicomError::NotAccepted(m) => {
            wit_dicom::DicomError::NotAccepted(bounded_message(m))
        }
        wit_dicom::DicomError::Malformed(m) => wit_dicom::DicomError::Malformed(bounded_message(m)),
        wit_dicom::DicomError::Unsupported(m) => {
            wit_dicom::DicomError::Unsupported(bounded_message(m))
        }
        wit_dicom::DicomError::UnsupportedTransferSyntax(ts) => {
            wit_dicom::DicomError::UnsupportedTransferSyntax(wit_dicom::TransferSyntax {
                uid: bounded_message(ts.uid),
                name: bounded_message(ts.name),
            })
        }
    };
    match e {
        wit_dicom::DicomError::NotDicom(m) => DicomError::NotDicom(m),
        wit_dicom::DicomError::UnsupportedTransferSyntax(ts) => {
            DicomError::UnsupportedTransferSyntax {
                uid: ts.uid,
                name: ts.name,
            }
        }
        wit_dicom::DicomError::NotAccepted(m) => DicomError::NotAccepted(m),
        wit_dicom::DicomError::Malformed(m) => DicomError::Malformed(m),
        wit_dicom::DicomError::Unsupported(m) => DicomError::Unsupported(m),
    }
}

fn radiograph_from_wit(r: wit_dicom::Radiograph) -> Result<Radiograph, String> {
    let (s, i) = (r.source, r.identity);
    let strings = [
        &s.transfer_syntax,
        &s.modality,
        &s.photometric_interpretation,
        &s.body_part_examined,
        &s.view_position,
        &s.intensity,
        &i.sop_class_uid,
        &i.sop_instance_uid,
        &i.study_instance_uid,
        &i.series_instance_uid,
        &i.patient_name,
        &i.patient_id,
        &i.patient_birth_date,
        &i.patient_sex,
        &i.study_date,
        &i.study_time,
        &i.study_id,
        &i.accession_number,
        &i.referring_physician_name,
    ];
    if let Some(long) = strings
        .iter()
        .find(|v| v.len() > medguard_dicom::TEXT_MAX_BYTES)
    {
        return Err(format!(
            "a {}-byte attribute value (the decoder returns at most {})",
            long.len(),
            medguard_dicom::TEXT_MAX_BYTES
        ));
    }
    Ok(Radiograph {
        pixels: r.pixels,
        height: r.height,
        width: r.width,
        source: medguard_dicom::SourceImage {
            rows: s.rows,
            columns: s.columns,
            bits_stored: s.bits_stored,
            transfer_syntax: s.transfer_syntax,
            modality: s.modality,
            photometric_interpretation: s.photometric_interpretation,
            body_part_examined: s.body_part_examined,
            view_position: s.view_position,
            intensity: s.intensity,
        },
        identity: medguard_dicom::SourceIdentity {
            sop_class_uid: i.sop_class_uid,
            sop_instance_uid: i.sop_instance_uid,
            study_instance_uid: i.study_instance_uid,
            series_instance_uid: i.series_instance_uid,
            patient_name: i.patient_name,
            patient_id: i.patient_id,
            patient_birth_date: i.patient_birth_date,
            patient_sex: i.patient_sex,
            study_date: i.study_date,
            study_time: i.study_time,
            study_id: i.study_id,
            accession_number: i.accession_number,
            referring_physician_name: i.referring_physician_name,
        },
    })
}

/// The most values one call may carry: `max_batch` whole images.
fn model_values(model: &AttestedModel) -> usize {
    let m = model.manifest();
    // Saturating: a vouched manifest's three u32s can overflow a u64.
    let per_image = u64::from(m.input.shape.channels)
        .saturating_mul(u64::from(m.input.shape.height))
        .saturating_mul(u64::from(m.input.shape.width));
    usize::try_from(per_image.saturating_mul(m.max_batch as u64)).unwrap_or(usize::MAX)
}

fn model_spec(model: &AttestedModel) -> wit::ModelSpec {
    let m = model.manifest();
    wit::ModelSpec {
        input_name: m.input.tensor.clone(),
        output_name: m.output.tensor.clone(),
        channels: m.input.shape.channels,
        height: m.input.shape.height,
        width: m.input.shape.width,
        min_value: m.input.range.min,
        max_value: m.input.range.max,
        classes: m.output.labels.len() as u32,
        max_batch: m.max_batch,
    }
}

/// One request's sandbox: a store with one guest instance and one loaded model.
pub struct Session {
    store: Store<RequestState>,
    bindings: Option<SandboxedClassifier>,
    deadline: Duration,
    /// The session budget and when it runs out.
    budget: Option<(Duration, Instant)>,
    /// The budget, not the call's deadline, is what the current call can
    /// run into.
    budget_binds: bool,
    classes: usize,
    max_values: usize,
    statistics: Vec<Statistic>,
    /// The detector is calibrated: every screened image must come back
    /// with a verdict.
    judges: bool,
    /// The model is in the guest (loaded here, or in the snapshot).
    loaded: bool,
    poisoned: bool,
}

impl Session {
    /// Has the guest load `model`, screening with `detector`.
    fn load(&mut self, model: &AttestedModel, detector: &Detector<'_>) -> Result<(), SandboxError> {
        self.arm()?;
        let bindings = match (&self.bindings, self.poisoned) {
            (Some(b), false) => b,
            _ => return Err(SandboxError::Poisoned),
        };
        let spec = model_spec(model);
        let detector = detector.to_wit();
        let intervals = matches!(model.certifier(), Some(Certifier::IntervalBounds(_)));
        bindings
            .medguard_guest_classifier()
            .call_load(
                &mut self.store,
                model.model_bytes(),
                &spec,
                detector.as_ref(),
                intervals,
            )
            .map_err(|e| self.trapped(e))?
            .map_err(GuestFailure::from)?;
        self.loaded = true;
        Ok(())
    }

    /// Classifies `[batch, channels, height, width]` values; returns one
    /// probability vector per image.
    pub fn classify(&mut self, shape: &[u32], data: &[f32]) -> Result<Vec<Vec<f32>>, SandboxError> {
        self.fits(data)?;
        self.arm()?;
        let bindings = ready(&self.bindings, self.loaded, self.poisoned)?;
        let flat = bindings
            .medguard_guest_classifier()
            .call_classify(&mut self.store, shape, data)
            .map_err(|e| self.trapped(e))?
            .map_err(GuestFailure::from)?;
        let images = shape.first().copied().unwrap_or(0) as usize;
        if flat.len() != images * self.classes {
            return Err(SandboxError::MalformedOutput {
                got: flat.len(),
                images,
                classes: self.classes,
            });
        }
        Ok(flat
            .chunks_exact(self.classes)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Screens and classifies `[batch, channels, height, width]` values in one
    /// guest call; returns one [`ScreenedImage`] per image. The guest's answer
    /// is checked for shape before it is believed.
    pub fn screen(
        &mut self,
        shape: &[u32],
        data: &[f32],
        options: ScreenOptions,
    ) -> Result<Vec<ScreenedImage>, SandboxError> {
        self.fits(data)?;
        self.arm()?;
        let bindings = ready(&self.bindings, self.loaded, self.poisoned)?;
        let wit_options = wit::ScreenOptions {
            seed: options.seed,
            source_bits: options.source_bits,
            withhold_rejected: options.withhold_rejected,
        };
        let answers = bindings
            .medguard_guest_classifier()
            .call_screen(&mut self.store, shape, data, wit_options)
            .map_err(|e| self.trapped(e))?
            .map_err(GuestFailure::from)?;
        let images = shape.first().copied().unwrap_or(0) as usize;
        if answers.len() != images {
            return Err(SandboxError::MalformedOutput {
                got: answers.len(),
                images,
                classes: self.classes,
            });
        }
        answers
            .into_iter()
            .map(|a| self.check_screened(a, options))
            .collect()
    }

    /// Certifies each image of `[batch, channels, height, width]` values
    /// by the model's `certifier`: [`Session::certify_smoothed`] with the
    /// noise seeded by `seed`, or [`Session::certify_intervals`] (which
    /// takes no seed).
    pub fn certify(
        &mut self,
        shape: &[u32],
        data: &[f32],
        certifier: &Certifier,
        seed: u64,
    ) -> Result<Vec<Certificate>, SandboxError> {
        match certifier {
            Certifier::Smoothing(table) => self.certify_smoothed(shape, data, table, seed),
            Certifier::IntervalBounds(intervals) => self.certify_intervals(shape, data, intervals),
        }
    }

    /// Classifies `table`'s samples of Gaussian-noised copies of each image
    /// of `[batch, channels, height, width]` values in one guest call, with
    /// the noise seeded by `seed`, and certifies each image's votes with
    /// `table`. The guest only counts: a count that is not one per class
    /// adding up to the samples is refused, never certified.
    pub fn certify_smoothed(
        &mut self,
        shape: &[u32],
        data: &[f32],
        table: &RadiusTable,
        seed: u64,
    ) -> Result<Vec<Certificate>, SandboxError> {
        self.fits(data)?;
        let smoothing = table.smoothing();
        let images = shape.first().copied().unwrap_or(0) as usize;
        let per_image = data.len() / images.max(1);
        let mut one = shape.to_vec();
        if let Some(batch) = one.first_mut() {
            *batch = 1;
        }
        let mut certificates = Vec::with_capacity(images);
        // One call per image, so that each image's samples get the whole
        // deadline; image `i` keeps noise stream `i` of the request's seed.
        for (i, image) in data.chunks(per_image.max(1)).enumerate() {
            self.arm()?;
            let bindings = ready(&self.bindings, self.loaded, self.poisoned)?;
            let options = wit::SmoothOptions {
                sigma: smoothing.noise_sigma(),
                samples: smoothing.samples,
                seed,
                first_stream: i as u64,
            };
            let votes = bindings
                .medguard_guest_classifier()
                .call_smooth(&mut self.store, &one, image, options)
                .map_err(|e| self.trapped(e))?
                .map_err(GuestFailure::from)?;
            let [votes] = votes.as_slice() else {
                return Err(SandboxError::MalformedOutput {
                    got: votes.len(),
                    images: 1,
                    classes: self.classes,
                });
            };
            let noise = medguard_certify::Noise {
                seed,
                stream: i as u64,
            };
            certificates.push(
                table
                    .certify(votes, noise)
                    .map_err(SandboxError::MalformedVotes)?,
            );
        }
        Ok(certificates)
    }

    /// Bounds the logits of each image of `[batch, channels, height, width]`
    /// values over the L-infinity boxes of `intervals`' radii, one guest
    /// call per image (so each gets the whole deadline), and certifies each
    /// image's bounds with `intervals`. Bounds that are not one ordered,
    /// finite pair per class and radius are refused, never certified.
    fn certify_intervals(
        &mut self,
        shape: &[u32],
        data: &[f32],
        intervals: &IntervalBounds,
    ) -> Result<Vec<Certificate>, SandboxError> {
        self.fits(data)?;
        let radii = intervals.radii();
        let images = shape.first().copied().unwrap_or(0) as usize;
        let per_image = data.len() / images.max(1);
        let mut one = shape.to_vec();
        if let Some(batch) = one.first_mut() {
            *batch = 1;
        }
        let mut certificates = Vec::with_capacity(images);
        for image in data.chunks(per_image.max(1)) {
            self.arm()?;
            let bindings = ready(&self.bindings, self.loaded, self.poisoned)?;
            let answer = bindings
                .medguard_guest_classifier()
                .call_bound(&mut self.store, &one, image, &radii)
                .map_err(|e| self.trapped(e))?
                .map_err(GuestFailure::from)?;
            let [per_radius] = answer.as_slice() else {
                return Err(SandboxError::MalformedOutput {
                    got: answer.len(),
                    images: 1,
                    classes: self.classes,
                });
            };
            let bounds: Vec<medguard_certify::Bounds> = per_radius
                .iter()
                .map(|b| medguard_certify::Bounds {
                    lower: b.lower.clone(),
                    upper: b.upper.clone(),
                    scale: b.scale,
                })
                .collect();
            certificates.push(
                intervals
                    .certify(&bounds, self.classes)
                    .map_err(SandboxError::MalformedBounds)?,
            );
        }
        Ok(certificates)
    }

    fn check_screened(
        &self,
        a: wit::ScreenedImage,
        options: ScreenOptions,
    ) -> Result<ScreenedImage, SandboxError> {
        let malformed = |why: &str| SandboxError::MalformedScreening(why.to_owned());
        if a.statistics.len() != self.statistics.len() {
            return Err(malformed("wrong number of statistics"));
        }
        if let Some(p) = &a.probabilities
            && p.len() != self.classes
        {
            return Err(malformed("wrong number of probabilities"));
        }
        // The logits travel with the probabilities and must be the ones
        // they came from: a client reading either sees the same answer.
        match (&a.probabilities, &a.logits) {
            (None, None) => {}
            (Some(p), Some(l)) if logits_give(l, p, self.classes) => {}
            (Some(_), Some(_)) => {
                return Err(malformed("the logits do not give the probabilities"));
            }
            _ => {
                return Err(malformed(
                    "probabilities without logits, or logits without probabilities",
                ));
            }
        }
        let screening = match a.screening {
            // A calibrated detector judges every image: an answer without
            // a verdict would pass as "unscreened", with its label.
            None if self.judges => {
                return Err(malformed(
                    "an image came back without a verdict from a calibrated detector",
                ));
            }
            None => None,
            Some(s) => {
                if s.statistics.len() != self.statistics.len() || !(0.0..=1.0).contains(&s.p_value)
                {
                    return Err(malformed("screening evidence does not fit the detector"));
                }
                let verdict = match s.verdict {
                    wit::Verdict::Accept => Verdict::Accept,
                    wit::Verdict::Flag => Verdict::Flag,
                    wit::Verdict::Reject => Verdict::Reject,
                };
                if verdict == Verdict::Reject
                    && options.withhold_rejected
                    && a.probabilities.is_some()
                {
                    return Err(malformed("a rejected input came back with a prediction"));
                }
                Some(Screening {
                    verdict,
                    p_value: s.p_value,
                    statistics: self
                        .statistics
                        .iter()
                        .zip(s.statistics)
                        .map(|(&statistic, r)| StatisticReport {
                            statistic,
                            value: r.value,
                            p_value: r.p_value,
                        })
                        .collect(),
                })
            }
        };
        if screening.is_none() && a.probabilities.is_none() {
            return Err(malformed("no prediction and no verdict"));
        }
        Ok(ScreenedImage {
            probabilities: a.probabilities,
            logits: a.logits,
            statistics: a.statistics,
            screening,
            off_grid: a.off_grid,
        })
    }

    /// Runs `classify` `calls` times while sampling the guest's call stack at
    /// every epoch tick; returns each sample's function names, innermost
    /// first. Where the guest's time goes, for the latency benchmark's
    /// profile. Each call keeps its deadline: the sampler counts the ticks.
    #[doc(hidden)]
    pub fn profile_classify(
        &mut self,
        shape: &[u32],
        data: &[f32],
        calls: usize,
    ) -> Result<Vec<Vec<String>>, SandboxError> {
        self.fits(data)?;
        ready(&self.bindings, self.loaded, self.poisoned)?;
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ticks = Arc::new(AtomicU64::new(0));
        let budget = deadline_ticks(self.deadline);
        // The sampler interrupts on the call's own deadline, never the
        // session budget's.
        self.budget_binds = false;
        let (sink, elapsed) = (samples.clone(), ticks.clone());
        self.store.epoch_deadline_callback(move |ctx| {
            if elapsed.fetch_add(1, Ordering::Relaxed) >= budget {
                return Err(Trap::Interrupt.into());
            }
            let trace = wasmtime::WasmBacktrace::capture(&ctx);
            let names = trace
                .frames()
                .iter()
                .map(|f| f.func_name().unwrap_or("?").to_owned())
                .collect();
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(names);
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });
        let mut result = Ok(());
        for _ in 0..calls {
            let bindings = match ready(&self.bindings, self.loaded, self.poisoned) {
                Ok(b) => b,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            ticks.store(0, Ordering::Relaxed);
            self.store.set_epoch_deadline(1);
            if let Err(e) = bindings
                .medguard_guest_classifier()
                .call_classify(&mut self.store, shape, data)
                .map_err(|e| self.trapped(e))
                .and_then(|r| r.map_err(|e| GuestFailure::from(e).into()))
            {
                result = Err(e);
                break;
            }
        }
        self.store.epoch_deadline_trap();
        result?;
        let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(samples)
    }

    /// Refuses, without entering the guest, more values than the model
    /// takes in one call: copying them into the guest's memory could only
    /// hit the memory cap or overflow the canonical ABI's 32-bit lengths and
    /// trap. The guest checks the exact shape itself.
    fn fits(&self, data: &[f32]) -> Result<(), SandboxError> {
        if data.len() > self.max_values {
            return Err(GuestFailure::InvalidInput(format!(
                "{} values in one call; this model takes at most {}",
                data.len(),
                self.max_values
            ))
            .into());
        }
        Ok(())
    }

    /// Starts the session's budget ([`Limits::session_budget`]): from here,
    /// all calls together get at most `budget`. Starting the sandbox and
    /// loading the model are the same for every request and are not
    /// counted; each has its call's deadline.
    fn start_budget(&mut self, budget: Option<Duration>) {
        // A budget past the end of time is no budget.
        self.budget = budget.and_then(|budget| {
            Instant::now()
                .checked_add(budget)
                .map(|ends| (budget, ends))
        });
    }

    /// Gives the next call a full deadline, or what is left of the
    /// session's budget if that is less; a spent budget ends the session
    /// without entering the guest.
    fn arm(&mut self) -> Result<(), SandboxError> {
        let mut limit = self.deadline;
        self.budget_binds = false;
        if let Some((budget, ends)) = self.budget {
            let left = ends.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.poisoned = true;
                return Err(SandboxError::Budget(budget));
            }
            if left < limit {
                limit = left;
                self.budget_binds = true;
            }
        }
        self.store.set_epoch_deadline(deadline_ticks(limit));
        Ok(())
    }

    /// Maps a wasmtime error to a typed one and ends the session: after a trap
    /// the instance may be in any state, so it is never entered again.
    fn trapped(&mut self, e: wasmtime::Error) -> SandboxError {
        self.poisoned = true;
        if let Some(cap) = e.downcast_ref::<MemoryCapExceeded>() {
            return SandboxError::MemoryCap {
                requested: cap.requested,
                cap: cap.cap,
            };
        }
        match e.downcast_ref::<Trap>().copied() {
            Some(Trap::Interrupt) => match self.budget {
                Some((budget, _)) if self.budget_binds => SandboxError::Budget(budget),
                _ => SandboxError::Deadline(self.deadline),
            },
            Some(Trap::StackOverflow) => SandboxError::StackOverflow,
            kind => SandboxError::Trap {
                kind,
                source: e.into(),
            },
        }
    }
}

/// A session's bindings, if its model is loaded and no trap ended it.
fn ready(
    bindings: &Option<SandboxedClassifier>,
    loaded: bool,
    poisoned: bool,
) -> Result<&SandboxedClassifier, SandboxError> {
    match (bindings, loaded, poisoned) {
        (Some(b), true, false) => Ok(b),
        (_, false, false) => Err(GuestFailure::NotLoaded.into()),
        _ => Err(SandboxError::Poisoned),
    }
}

/// Epoch ticks that cover `deadline`.
fn deadline_ticks(deadline: Duration) -> u64 {
    let ticks = deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

struct RequestState {
    memory: MemoryCap,
}

/// Refuses memory growth past the cap with an error the host can name.
struct MemoryCap {
    cap: usize,
}

#[derive(Debug, Error)]
#[error("memory growth to {requested} bytes refused (cap {cap})")]
struct MemoryCapExceeded {
    requested: usize,
    cap: usize,
}

/// Tables hold function references; a legitimate guest needs a few thousand.
const TABLE_ELEMENTS_MAX: usize = 1 << 20;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            return Err(MemoryCapExceeded {
                requested: desired,
                cap: self.cap,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// Whether `logits` are what `probabilities` came from: one per class, and
/// their softmax (the guest's own arithmetic, in f64, rounded to f32) within
/// two units in the last place of every probability. An honest guest's
/// differs from the host's by at most the one-ulp disagreements of two
/// `exp`s; a distance between logits the probabilities do not show, or
/// probabilities that do not add up, is refused. Logits are fixed only up to
/// a constant per row, and only as finely as f32 probabilities resolve (a
/// logit more than about 100 below the top gives 0 whatever it is): that is
/// all a softmax output can vouch for. It ties the guest to this softmax
/// (`medguard_screen::softmax`): a guest computing it otherwise is refused.
fn logits_give(logits: &[f32], probabilities: &[f32], classes: usize) -> bool {
    // Probabilities are never negative: the bits of non-negative floats
    // count ulps in order (-0.0 is 0).
    let bits = |v: f32| (v >= 0.0 && v.is_finite()).then(|| if v == 0.0 { 0 } else { v.to_bits() });
    logits.len() == classes
        && probabilities.len() == classes
        && medguard_screen::softmax(logits).is_some_and(|q| {
            q.iter()
                .zip(probabilities)
                .all(|(&q, &p)| match (bits(q), bits(p)) {
                    (Some(q), Some(p)) => q.abs_diff(p) <= 2,
                    _ => false,
                })
        })
}

#[cfg(test)]
mod tests {
    use super::logits_give;

    #[test]
    fn logits_must_be_what_the_probabilities_came_from() {
        let honest = [12.0f32, 0.0];
        let p = medguard_screen::softmax(&honest).unwrap();
        assert!(logits_give(&honest, &p, 2));
        // A constant per row is all a softmax output fixes.
        assert!(logits_give(&[15.0, 3.0], &p, 2));
        // Another distance between the logits, however small its effect on
        // the probabilities in f32: refused.
        assert!(!logits_give(&[10_000.0, 0.0], &p, 2));
        assert!(!logits_give(&[12.01, 0.0], &p, 2));
        assert!(!logits_give(&[0.0, 12.0], &p, 2));
        // Shape, finiteness and range.
        assert!(!logits_give(&[12.0], &p, 2));
        assert!(!logits_give(&[12.0, f32::NAN], &p, 2));
        assert!(!logits_give(&honest, &[p[0], -p[1]], 2));
        // Probabilities that do not add up, whatever the logits' ratios.
        assert!(!logits_give(&[0.0, 0.0], &[0.2, 0.2], 2));
        assert!(!logits_give(&[5.0, 5.0], &[1.0, 1.0], 2));
        // Within 1e-5 of the probabilities but not theirs.
        let near = [0.0f32, 1.098_612_3 + 3e-5];
        let honest = medguard_screen::softmax(&[0.0, 1.098_612_3]).unwrap();
        assert!(!logits_give(&near, &honest, 2));
        // Tiny probabilities are compared as exactly.
        let far = [200.0f32, 0.0];
        let q = medguard_screen::softmax(&far).unwrap();
        assert_eq!(q[1], 0.0);
        assert!(logits_give(&far, &q, 2));
        assert!(!logits_give(&[80.0, 0.0], &q, 2));
        let subnormal = [0.0f32, -92.1];
        let q = medguard_screen::softmax(&subnormal).unwrap();
        assert!(q[1] > 0.0 && q[1] < f32::MIN_POSITIVE);
        assert!(logits_give(&subnormal, &q, 2));
        assert!(!logits_give(&[0.0, -92.3], &q, 2));
    }
}
