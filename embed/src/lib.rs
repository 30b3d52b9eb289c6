//! medguard's C ABI: the guard library for programs that are not Rust. A
//! native PACS viewer (C, C++, Qt, .NET and Java through their C interop)
//! and the Python package (`python/`, through ctypes) call these functions;
//! every one of them is a thin wrapper over [`medguard::guard::Guard`], so
//! admission, the sandbox, screening and the ledger are the CLI's own.
//!
//! # The contract (also in `include/medguard.h`)
//! - **Handles are opaque and owned by the caller.** Every `*_out` handle a
//!   call returns is freed with its own `*_free` function, exactly once;
//!   freeing `NULL` does nothing. Strings a handle returns are owned by the
//!   handle and valid until it is freed: never free them.
//! - **Status, not exceptions.** Calls that can fail return a
//!   [`medguard_status`]; on anything but `MEDGUARD_OK`,
//!   [`medguard_last_error`] holds the one-line reason, in the words of the
//!   CLI. `MEDGUARD_REFUSED` is an answer (the model or the input was
//!   refused), not a failure of the guard.
//! - **No panic crosses the boundary.** Every call that does work (open,
//!   admit, classify, free) runs under `catch_unwind`; a panic, which would
//!   be a bug, becomes `MEDGUARD_PANIC` with its message (a free function
//!   leaks instead). Accessors only read fields and cannot panic.
//! - **One process, one writer.** A guard holds its data directory's ledger
//!   exclusively, as `medguard serve` does: another guard, the CLI or the
//!   server cannot open the same data directory meanwhile. A guard and its
//!   models belong to the process that opened them: after `fork()` the
//!   child's copies answer `MEDGUARD_INVALID_ARGUMENT` and their free
//!   functions leak, because the child shares the parent's ledger lock (it
//!   holds it until it exits) but not its sandbox threads.
//! - **Threads.** A guard and its admitted models may be used from any
//!   number of threads at once: every classification runs in a sandbox of
//!   its own, and the ledger serialises its own commits. A result may be
//!   read from several threads, and freed by one once they are done. The
//!   last error is kept per thread.

// The C names: lower snake case types and upper case constants are what a
// C programmer expects in a header (rustls-ffi, wasmtime's C API).
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, OsStr, c_char};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use medguard::admission::load_policy;
use medguard::cli::printable;
use medguard::guard::{
    Admission, Classified, ClassifyError, ClassifyOptions, Guard, NamedPolicy, Readiness,
    ScreeningPolicy, Verdict, fresh_seed,
};
use medguard::guest::SandboxSettings;
use medguard::input::{SampleType, from_samples};
use medguard::prediction::{ModelRef, Prediction};
use medguard_attest::{AttestedModel, Provenance, Sha256Digest};

/// The version of this ABI: a caller built against another one must not
/// call in (the Python package checks it before anything else).
pub const MEDGUARD_ABI_VERSION: u32 = 1;

/// What a call did.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum medguard_status {
    /// It did what was asked.
    MEDGUARD_OK = 0,
    /// An answer, not a failure: the model was not admitted under the trust
    /// policy, or the input is not one the model takes. The reason is in
    /// [`medguard_last_error`]; the guard goes on.
    MEDGUARD_REFUSED = 1,
    /// The caller broke the contract: a `NULL` where a value is needed, a
    /// constant out of range, a model admitted by another guard.
    MEDGUARD_INVALID_ARGUMENT = 2,
    /// The guard could not do its work (the ledger or the sandbox failed).
    /// Stop using this guard; the reason says what to fix.
    MEDGUARD_ERROR = 3,
    /// A bug in medguard, caught at the boundary. Please report it with
    /// the message.
    MEDGUARD_PANIC = 4,
}

/// The screening verdict of one image.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum medguard_verdict {
    /// Nothing unusual at the calibrated thresholds.
    MEDGUARD_VERDICT_ACCEPT = 0,
    /// Unusual enough for a person to look; the prediction is returned.
    MEDGUARD_VERDICT_FLAG = 1,
    /// Too unusual to trust; under the enforce policy there is no label.
    MEDGUARD_VERDICT_REJECT = 2,
    /// Not screened (the model has no screening profile).
    MEDGUARD_VERDICT_UNSCREENED = 3,
}

/// `medguard_options.policy`: a rejected input gets no label (the default).
pub const MEDGUARD_POLICY_ENFORCE: u32 = 0;
/// `medguard_options.policy`: every input gets its label and its verdict.
pub const MEDGUARD_POLICY_FLAG_ONLY: u32 = 1;

/// `sample_type` of [`medguard_classify_pixels`]: 8-bit gray levels.
pub const MEDGUARD_SAMPLES_U8: u32 = 0;
/// `sample_type` of [`medguard_classify_pixels`]: 16-bit gray levels, host byte order.
pub const MEDGUARD_SAMPLES_U16: u32 = 1;
/// `sample_type` of [`medguard_classify_pixels`]: tensor values (`float`), as
/// the model's manifest maps pixels; the sandbox checks their range.
pub const MEDGUARD_SAMPLES_F32: u32 = 2;

/// How one classification runs; `NULL` for the defaults (a fresh seed from
/// the operating system, the enforce policy).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct medguard_options {
    /// Non-zero: use `seed` (to reproduce an earlier verdict); zero: draw a
    /// fresh one.
    pub fixed_seed: u8,
    /// The seed of the screening's noise draws when `fixed_seed` is set.
    pub seed: u64,
    /// `MEDGUARD_POLICY_ENFORCE` or `MEDGUARD_POLICY_FLAG_ONLY`.
    pub policy: u32,
}

/// A guard: a data directory (its ledger and rollback marks), a trust
/// policy and a started sandbox.
pub struct medguard_guard {
    guard: Guard,
    ledger_key: CString,
    /// The process that opened it.
    pid: u32,
}

/// A model the guard admitted, ready to classify with.
pub struct medguard_model {
    model: AttestedModel,
    /// The process that admitted it.
    pid: u32,
    /// Which guard admitted it: its ledger and its policy.
    admitted_by: (String, Sha256Digest),
    name: CString,
    version: CString,
    sha256: CString,
    signer: CString,
    receipt_json: CString,
}

/// The results of one classification: one per image, in order.
pub struct medguard_result {
    seed: u64,
    images: Vec<medguard_image_result>,
}

/// One image's result, owned by its [`medguard_result`].
pub struct medguard_image_result {
    verdict: medguard_verdict,
    p_value: f64,
    label: Option<CString>,
    classes: Vec<(CString, f32)>,
    ledger_index: u64,
    json: CString,
    receipt_json: CString,
}

/// Why a call did not return `MEDGUARD_OK`.
enum Failure {
    Refused(String),
    Invalid(String),
    Error(String),
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(message: &str) {
    // Escaped, so a file name in a refusal cannot drive a terminal or a
    // log viewer; NUL is a control character, so the CString holds.
    let text = CString::new(printable(message)).unwrap_or_default();
    // `try_with`: during thread-local destruction there is nowhere to keep
    // it, and panicking there would abort the caller.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = Some(text));
}

/// Runs one call's body: its failure or panic becomes a status and the
/// thread's last error.
fn call(body: impl FnOnce() -> Result<(), Failure>) -> medguard_status {
    use medguard_status::*;
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MEDGUARD_OK,
        Ok(Err(failure)) => {
            let (status, message) = match failure {
                Failure::Refused(m) => (MEDGUARD_REFUSED, m),
                Failure::Invalid(m) => (MEDGUARD_INVALID_ARGUMENT, m),
                Failure::Error(m) => (MEDGUARD_ERROR, m),
            };
            set_last_error(&message);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            set_last_error(&format!(
                "medguard panicked ({what}); this is a bug, please report it"
            ));
            MEDGUARD_PANIC
        }
    }
}

/// An error with its causes, one line: what the CLI prints after `error:`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn c_string(text: impl Into<String>) -> CString {
    // Text from the guard never holds NUL; a manifest field could.
    CString::new(text.into().replace('\0', "\u{fffd}")).unwrap_or_default()
}

/// `text` as a path; `what` names the argument in the error.
///
/// # Safety
/// `text` is `NULL` or a NUL-terminated string valid for this call.
unsafe fn path_arg(text: *const c_char, what: &str) -> Result<PathBuf, Failure> {
    if text.is_null() {
        return Err(Failure::Invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(text) }.to_bytes();
    if bytes.is_empty() {
        // Not "the current directory": a ledger or model there by accident
        // would be a fresh one, with no rollback marks.
        return Err(Failure::Invalid(format!("{what} is empty")));
    }
    Ok(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// Checks an out pointer before any work is done (a call whose answer
/// nobody can receive must not admit, classify or record anything) and
/// clears it, so that a caller who ignores the status never reads a stale
/// handle.
///
/// # Safety
/// `out` is `NULL` or valid for one pointer write.
unsafe fn out_arg<T>(out: *mut *mut T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::Invalid("the output pointer is NULL".into()));
    }
    // SAFETY: not NULL, writable by the caller's contract.
    unsafe { out.write(std::ptr::null_mut()) };
    Ok(())
}

/// Stores `value` through `out`, which [`out_arg`] checked.
///
/// # Safety
/// `out` is valid for one pointer write.
unsafe fn give<T>(out: *mut *mut T, value: T) -> Result<(), Failure> {
    // SAFETY: checked by `out_arg`, writable by the caller's contract.
    unsafe { out.write(Box::into_raw(Box::new(value))) };
    Ok(())
}

/// A guard or model handle of this process, as a reference.
///
/// # Safety
/// `handle` is `NULL` or a live handle of this type from this library.
unsafe fn owned_here<'a, T: Owned>(handle: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller's contract.
    let value =
        unsafe { handle.as_ref() }.ok_or_else(|| Failure::Invalid(format!("{what} is NULL")))?;
    if value.pid() != std::process::id() {
        return Err(Failure::Invalid(format!(
            "this {what} was opened in another process (before a fork); open a guard in this one"
        )));
    }
    Ok(value)
}

/// Handles that belong to the process that made them.
trait Owned {
    fn pid(&self) -> u32;
}

impl Owned for medguard_guard {
    fn pid(&self) -> u32 {
        self.pid
    }
}

impl Owned for medguard_model {
    fn pid(&self) -> u32 {
        self.pid
    }
}

/// Frees a handle from [`give`]: dropped under `catch_unwind` (a panic in
/// a destructor leaks the rest instead of unwinding into C); a guard or
/// model of another process is leaked untouched.
///
/// # Safety
/// `handle` is `NULL` or from [`give`], freed once.
unsafe fn free<T: 'static>(handle: *mut T, pid: impl FnOnce(&T) -> Option<u32>) {
    if handle.is_null() {
        return;
    }
    // SAFETY: from Box::into_raw in `give`, freed once by contract.
    let boxed = unsafe { Box::from_raw(handle) };
    if pid(&boxed).is_some_and(|p| p != std::process::id()) {
        std::mem::forget(boxed);
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

/// [`MEDGUARD_ABI_VERSION`] as this library was built: compare it with the
/// header's before the first call.
#[unsafe(no_mangle)]
pub extern "C" fn medguard_abi_version() -> u32 {
    MEDGUARD_ABI_VERSION
}

/// This library's version (the medguard release), a static string.
#[unsafe(no_mangle)]
pub extern "C" fn medguard_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The one-line reason of the last call on this thread that did not return
/// `MEDGUARD_OK`, or `NULL` if there was none. Owned by the library; valid
/// until the next such call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn medguard_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| {
            e.borrow()
                .as_ref()
                .map_or(std::ptr::null(), |text| text.as_ptr())
        })
        .unwrap_or(std::ptr::null())
}

/// Opens a guard on `data_dir` (its ledger and rollback marks, created mode
/// 0700 on first use; `NULL` for `$MEDGUARD_DATA_DIR`, else
/// `$XDG_DATA_HOME/medguard`, as the CLI) under the trust
/// policy file `trust_policy` (TOML), and starts the sandbox (compiled
/// guests are cached under `$MEDGUARD_CACHE_DIR` or
/// `$XDG_CACHE_HOME/medguard`). On `MEDGUARD_OK`, `*guard_out` is the guard,
/// freed with [`medguard_guard_free`].
///
/// # Safety
/// Strings are `NULL` or NUL-terminated; `guard_out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_guard_open(
    data_dir: *const c_char,
    trust_policy: *const c_char,
    guard_out: *mut *mut medguard_guard,
) -> medguard_status {
    call(|| {
        // SAFETY: the caller's contract.
        unsafe { out_arg(guard_out) }?;
        let data_dir = match data_dir.is_null() {
            // SAFETY: not NULL; the caller's contract.
            false => unsafe { path_arg(data_dir, "data_dir") }?,
            true => medguard::state::configured_data_dir().ok_or_else(|| {
                Failure::Invalid(
                    "no data directory: pass one or set MEDGUARD_DATA_DIR (HOME is unset)".into(),
                )
            })?,
        };
        // SAFETY: the caller's contract.
        let policy_path = unsafe { path_arg(trust_policy, "trust_policy") }?;
        let (policy, sha256) = load_policy(&policy_path).map_err(|e| Failure::Error(chain(&e)))?;
        let policy = NamedPolicy {
            policy,
            sha256,
            name: policy_path.display().to_string(),
        };
        let guard = Guard::open(&data_dir, policy).map_err(|e| {
            Failure::Error(format!(
                "opening the ledger in {}: {}",
                data_dir.display(),
                chain(&e)
            ))
        })?;
        let started = SandboxSettings::with_default_cache()
            .start()
            .map_err(|e| Failure::Error(chain(&e)))?;
        let guard = guard.with_sandbox(started.program);
        let ledger_key = c_string(guard.verifier().to_string());
        // SAFETY: the caller's contract.
        unsafe {
            give(
                guard_out,
                medguard_guard {
                    guard,
                    ledger_key,
                    pid: std::process::id(),
                },
            )
        }
    })
}

/// Frees a guard. Its models and results stay valid (they own what they
/// need) but can no longer be classified with it.
///
/// # Safety
/// `guard` is `NULL` or a guard from [`medguard_guard_open`], not yet freed
/// and not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_guard_free(guard: *mut medguard_guard) {
    // SAFETY: the caller's contract.
    unsafe { free(guard, |g| Some(g.pid)) }
}

/// The ledger's public key (a C2SP verifier key, as `medguard ledger key`
/// prints it): what `medguard ledger verify-receipt` checks this guard's
/// receipts with. Owned by the guard; `NULL` for `NULL`.
///
/// # Safety
/// `guard` is `NULL` or a live guard.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_guard_ledger_key(guard: *const medguard_guard) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { guard.as_ref() }.map_or(std::ptr::null(), |g| g.ledger_key.as_ptr())
}

/// Admits the signed model directory `model_dir` under the guard's trust
/// policy (signature, signer, digests, expiry, rollback), records the
/// outcome in the ledger, and loads the model into a sandbox once. On
/// `MEDGUARD_OK`, `*model_out` is the model, freed with
/// [`medguard_model_free`]; `MEDGUARD_REFUSED` says why it was not admitted.
///
/// # Safety
/// `guard` is a live guard; `model_dir` NUL-terminated; `model_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_admit(
    guard: *const medguard_guard,
    model_dir: *const c_char,
    model_out: *mut *mut medguard_model,
) -> medguard_status {
    call(|| {
        // SAFETY: the caller's contract.
        unsafe { out_arg(model_out) }?;
        // SAFETY: the caller's contract.
        let guard = &unsafe { owned_here(guard, "guard") }?.guard;
        // SAFETY: the caller's contract.
        let dir = unsafe { path_arg(model_dir, "model_dir") }?;
        let model = admit(guard, &dir)?;
        // SAFETY: the caller's contract.
        unsafe { give(model_out, model) }
    })
}

fn admit(guard: &Guard, dir: &Path) -> Result<medguard_model, Failure> {
    let error = |e: medguard::guard::GuardError| {
        Failure::Error(format!("recording the admission: {}", chain(&e)))
    };
    let (model, receipt) = match guard.admit(dir).map_err(error)? {
        Admission::Admitted { model, receipt } => (*model, receipt),
        Admission::Refused { error, .. } => return Err(Failure::Refused(error.to_string())),
    };
    // As `medguard predict` does: a model the guard could never screen with,
    // or that the guest cannot run, is refused before any image.
    if model.manifest().screening.is_none() {
        return Err(Failure::Refused(
            ClassifyError::Unscreened {
                model: model.manifest().name.clone(),
            }
            .to_string(),
        ));
    }
    guard
        .check_model_runs(&model)
        .map_err(|e| Failure::Error(chain(&e)))?
        .map_err(Failure::Refused)?;
    let reference = ModelRef::of(&model);
    let signer = match model.provenance() {
        Provenance::Signed { signer, .. } => format!("{} ({})", signer.name, signer.fingerprint),
        Provenance::Vouched => String::new(),
    };
    let receipt_json = serde_json::to_string(&receipt)
        .map_err(|e| Failure::Error(format!("writing the receipt: {e}")))?;
    Ok(medguard_model {
        pid: std::process::id(),
        admitted_by: (guard.origin().to_owned(), guard.policy().sha256),
        name: c_string(reference.name),
        version: c_string(reference.version),
        sha256: c_string(reference.sha256),
        signer: c_string(signer),
        receipt_json: c_string(receipt_json),
        model,
    })
}

/// Readies `model` so that every later classification with it starts from
/// a snapshot of a sandbox with the model already loaded (microseconds,
/// instead of loading the model into each fresh sandbox). Optional: without
/// it, classification loads the model every time. The first preparation of
/// a model with this guest takes tens of seconds (the snapshot is taken and
/// compiled); the result is cached like compiled guests (HMAC-verified), so
/// later ones, in any process, take a fraction of a second. Every
/// classification still gets a fresh sandbox of its own.
///
/// `MEDGUARD_OK` when the snapshot is ready; `MEDGUARD_REFUSED` when it
/// could not be taken (the reason in [`medguard_last_error`]), in which case
/// the model still classifies, loading itself each time.
///
/// # Safety
/// `guard` and `model` are `NULL` or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_model_prepare(
    guard: *const medguard_guard,
    model: *const medguard_model,
) -> medguard_status {
    call(|| {
        // SAFETY: the caller's contract.
        let (guard, model) = unsafe { admitted_here(guard, model) }?;
        match guard
            .prepare(&model.model)
            .map_err(|e| Failure::Error(chain(&e)))?
        {
            Ok(Readiness::Prepared(_)) => Ok(()),
            Ok(Readiness::LoadedPerSession(why)) => Err(Failure::Refused(format!(
                "no snapshot of {}: {why}; it is loaded into every sandbox instead",
                model.model.manifest().name
            ))),
            Err(why) => Err(Failure::Refused(why)),
        }
    })
}

/// Frees a model.
///
/// # Safety
/// `model` is `NULL` or a model from [`medguard_admit`], not yet freed and
/// not in use by another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_model_free(model: *mut medguard_model) {
    // SAFETY: the caller's contract.
    unsafe { free(model, |m| Some(m.pid)) }
}

/// Reads a string field of a model; `NULL` for a `NULL` model.
///
/// # Safety
/// `model` is `NULL` or a live model.
unsafe fn model_text(
    model: *const medguard_model,
    field: fn(&medguard_model) -> &CString,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { model.as_ref() }.map_or(std::ptr::null(), |m| field(m).as_ptr())
}

/// The model's name, from its signed manifest (owned by the model).
///
/// # Safety
/// `model` is `NULL` or a live model.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_model_name(model: *const medguard_model) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { model_text(model, |m| &m.name) }
}

/// The model's version, from its signed manifest (owned by the model).
///
/// # Safety
/// `model` is `NULL` or a live model.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_model_version(model: *const medguard_model) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { model_text(model, |m| &m.version) }
}

/// SHA-256 (hex) of the model file that was admitted (owned by the model).
///
/// # Safety
/// `model` is `NULL` or a live model.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_model_sha256(model: *const medguard_model) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { model_text(model, |m| &m.sha256) }
}

/// The key that signed it: the trust policy's name for it and the SHA-256
/// of its public key, as `name (fingerprint)` (owned by the model).
///
/// # Safety
/// `model` is `NULL` or a live model.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_model_signer(model: *const medguard_model) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { model_text(model, |m| &m.signer) }
}

/// The receipt of the ledger entry that records the admission, as JSON
/// (`medguard ledger verify-receipt` checks it offline; owned by the model).
///
/// # Safety
/// `model` is `NULL` or a live model.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_model_receipt_json(
    model: *const medguard_model,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { model_text(model, |m| &m.receipt_json) }
}

/// The image size the model takes, which `medguard_classify_pixels` wants:
/// writes the height and width (0 for a `NULL` model) and returns the most
/// images one call takes.
///
/// # Safety
/// `model` is `NULL` or a live model; `height` and `width` are `NULL` or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_model_input_size(
    model: *const medguard_model,
    height: *mut u32,
    width: *mut u32,
) -> u32 {
    // SAFETY: the caller's contract.
    let (h, w, n) = unsafe { model.as_ref() }.map_or((0, 0, 0), |m| {
        let manifest = m.model.manifest();
        let shape = manifest.input.shape;
        (shape.height, shape.width, manifest.max_batch)
    });
    // SAFETY: NULL or writable by the caller's contract.
    unsafe {
        if let Some(out) = height.as_mut() {
            *out = h;
        }
        if let Some(out) = width.as_mut() {
            *out = w;
        }
    }
    n
}

/// Screens and classifies `count` images of `height` x `width` pixels
/// (row-major, no padding between rows or images) in a sandbox of their
/// own, records each result in the ledger, and returns them. `sample_type`
/// says what `pixels` holds: `MEDGUARD_SAMPLES_U8` (8-bit gray),
/// `MEDGUARD_SAMPLES_U16` (16-bit gray, host byte order) or
/// `MEDGUARD_SAMPLES_F32` (tensor values); `pixels_len` is its length in
/// bytes. Gray levels map exactly as a PNG of the same pixels would. On
/// `MEDGUARD_OK`, `*result_out` is the result, freed with
/// [`medguard_result_free`]. A rejected image is a result (its verdict says
/// so), not a refusal; `MEDGUARD_REFUSED` means the input could not be
/// screened at all (wrong size, out of range).
///
/// # Safety
/// `guard` and `model` are live; `pixels` is valid for `pixels_len` bytes;
/// `options` is `NULL` or valid; `result_out` is writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // A C signature: flat, no struct to version.
pub unsafe extern "C" fn medguard_classify_pixels(
    guard: *const medguard_guard,
    model: *const medguard_model,
    pixels: *const u8,
    pixels_len: usize,
    sample_type: u32,
    count: u32,
    height: u32,
    width: u32,
    options: *const medguard_options,
    result_out: *mut *mut medguard_result,
) -> medguard_status {
    let classify = |guard: &Guard, model: &AttestedModel, options| {
        // SAFETY: the caller's contract.
        let bytes = unsafe { byte_arg(pixels, pixels_len, "pixels") }?;
        let kind = match sample_type {
            MEDGUARD_SAMPLES_U8 => SampleType::U8,
            MEDGUARD_SAMPLES_U16 => SampleType::U16,
            MEDGUARD_SAMPLES_F32 => SampleType::F32,
            other => {
                return Err(Failure::Invalid(format!(
                    "sample_type {other} is not a MEDGUARD_SAMPLES_ constant"
                )));
            }
        };
        let manifest = model.manifest();
        let batch = from_samples(
            bytes,
            kind,
            count,
            height,
            width,
            &manifest.input,
            manifest.max_batch,
        )
        .map_err(|e| Failure::Refused(e.to_string()))?;
        guard
            .classify_batch(model, &batch, options, None)
            .map_err(classify_failure)
    };
    // SAFETY: the caller's contract.
    unsafe { classify_call(guard, model, options, result_out, classify) }
}

/// Screens and classifies the file `bytes` (PNG, `.npy` or DICOM Part 10,
/// told apart by content; DICOM is decoded in the sandbox as the model's
/// manifest says), exactly as `medguard predict` does a file. Otherwise as
/// [`medguard_classify_pixels`].
///
/// # Safety
/// `guard` and `model` are live; `bytes` is valid for `len` bytes;
/// `options` is `NULL` or valid; `result_out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_classify_file(
    guard: *const medguard_guard,
    model: *const medguard_model,
    bytes: *const u8,
    len: usize,
    options: *const medguard_options,
    result_out: *mut *mut medguard_result,
) -> medguard_status {
    let classify = |guard: &Guard, model: &AttestedModel, options| {
        // SAFETY: the caller's contract.
        let bytes = unsafe { byte_arg(bytes, len, "bytes") }?;
        guard
            .classify(model, bytes, options)
            .map_err(classify_failure)
    };
    // SAFETY: the caller's contract.
    unsafe { classify_call(guard, model, options, result_out, classify) }
}

/// What both classify calls do around `classify`: the out pointer checked
/// first, the handles of this process and the model this guard's, the
/// options read, then the result recorded into a handle for the caller.
///
/// # Safety
/// As for the classify calls.
unsafe fn classify_call(
    guard: *const medguard_guard,
    model: *const medguard_model,
    options: *const medguard_options,
    result_out: *mut *mut medguard_result,
    classify: impl FnOnce(&Guard, &AttestedModel, ClassifyOptions) -> Result<Classified, Failure>,
) -> medguard_status {
    call(|| {
        // SAFETY: the caller's contract.
        unsafe { out_arg(result_out) }?;
        // SAFETY: the caller's contract.
        let (guard, model) = unsafe { admitted_here(guard, model) }?;
        // SAFETY: the caller's contract.
        let options = unsafe { options_arg(options) }?;
        let classified = classify(guard, &model.model, options)?;
        let result = into_result(guard, model, &classified)?;
        // SAFETY: the caller's contract.
        unsafe { give(result_out, result) }
    })
}

/// `len` bytes at `data` (`NULL` is allowed for an empty buffer).
///
/// # Safety
/// `data` is valid for `len` bytes unless `len` is 0.
unsafe fn byte_arg<'a>(data: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    match (data.is_null(), len) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(Failure::Invalid(format!("{what} is NULL"))),
        (false, _) if len > isize::MAX as usize => Err(Failure::Invalid(format!(
            "{what}: {len} bytes is not a length"
        ))),
        // SAFETY: not NULL, valid for `len` bytes by the caller's contract.
        (false, _) => Ok(unsafe { std::slice::from_raw_parts(data, len) }),
    }
}

/// The options, or the defaults for `NULL`.
///
/// # Safety
/// `options` is `NULL` or valid for one read.
unsafe fn options_arg(options: *const medguard_options) -> Result<ClassifyOptions, Failure> {
    // SAFETY: the caller's contract.
    let given = unsafe { options.as_ref() }.copied();
    let seed = match given {
        Some(o) if o.fixed_seed != 0 => o.seed,
        _ => fresh_seed()
            .map_err(|e| Failure::Error(format!("drawing a screening seed from the OS: {e}")))?,
    };
    let policy = match given.map_or(MEDGUARD_POLICY_ENFORCE, |o| o.policy) {
        MEDGUARD_POLICY_ENFORCE => ScreeningPolicy::Enforce,
        MEDGUARD_POLICY_FLAG_ONLY => ScreeningPolicy::FlagOnly,
        other => {
            return Err(Failure::Invalid(format!(
                "policy {other} is not a MEDGUARD_POLICY_ constant"
            )));
        }
    };
    Ok(ClassifyOptions {
        seed,
        policy,
        allow_unscreened: false,
    })
}

/// The guard and model handles, both of this process, the model admitted
/// by this guard: another guard's ledger never recorded the admission, and
/// its policy may not trust the signer.
///
/// # Safety
/// Both are `NULL` or live handles.
unsafe fn admitted_here<'a>(
    guard: *const medguard_guard,
    model: *const medguard_model,
) -> Result<(&'a Guard, &'a medguard_model), Failure> {
    // SAFETY: the caller's contract, for both.
    let (guard, model) = unsafe {
        (
            &owned_here(guard, "guard")?.guard,
            owned_here(model, "model")?,
        )
    };
    if model.admitted_by != (guard.origin().to_owned(), guard.policy().sha256) {
        return Err(Failure::Invalid(
            "this model was admitted by another guard (another ledger or trust policy); admit it with this one".into(),
        ));
    }
    Ok((guard, model))
}

fn classify_failure(e: ClassifyError) -> Failure {
    match e {
        ClassifyError::Refused(why) => Failure::Refused(why.to_string()),
        ClassifyError::Unsigned { .. } | ClassifyError::Unscreened { .. } => {
            Failure::Refused(e.to_string())
        }
        ClassifyError::Guard(e) => Failure::Error(chain(&e)),
    }
}

fn into_result(
    guard: &Guard,
    model: &medguard_model,
    classified: &Classified,
) -> Result<medguard_result, Failure> {
    let guest = guard
        .program()
        .map(|p| p.digest().to_string())
        .unwrap_or_default();
    let reference = ModelRef::of(&model.model);
    let labels = &model.model.manifest().output.labels;
    let json_error = |e: serde_json::Error| Failure::Error(format!("writing the result: {e}"));
    let images = classified
        .images
        .iter()
        .map(|image| {
            let prediction = Prediction::new(None, image, classified, reference.clone(), &guest);
            Ok(medguard_image_result {
                verdict: match image.verdict {
                    Verdict::Accept => medguard_verdict::MEDGUARD_VERDICT_ACCEPT,
                    Verdict::Flag => medguard_verdict::MEDGUARD_VERDICT_FLAG,
                    Verdict::Reject => medguard_verdict::MEDGUARD_VERDICT_REJECT,
                    Verdict::Unscreened => medguard_verdict::MEDGUARD_VERDICT_UNSCREENED,
                },
                p_value: image.p_value.unwrap_or(f64::NAN),
                label: image.label.clone().map(c_string),
                // In the model's output order (the manifest's labels), as
                // a caller indexing by class expects.
                classes: image
                    .probabilities
                    .iter()
                    .flat_map(|probabilities| {
                        labels
                            .iter()
                            .filter_map(|l| Some((c_string(l.clone()), *probabilities.get(l)?)))
                    })
                    .collect(),
                ledger_index: image.receipt.index,
                json: c_string(serde_json::to_string(&prediction).map_err(json_error)?),
                receipt_json: c_string(serde_json::to_string(&image.receipt).map_err(json_error)?),
            })
        })
        .collect::<Result<_, Failure>>()?;
    Ok(medguard_result {
        seed: classified.seed,
        images,
    })
}

/// Frees a result and every string and image result it returned.
///
/// # Safety
/// `result` is `NULL` or a result from a classify call, not yet freed, and
/// no other thread still reads it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_result_free(result: *mut medguard_result) {
    // SAFETY: the caller's contract.
    unsafe { free(result, |_| None) }
}

/// How many images the result holds (0 for `NULL`).
///
/// # Safety
/// `result` is `NULL` or a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_result_count(result: *const medguard_result) -> usize {
    // SAFETY: the caller's contract.
    unsafe { result.as_ref() }.map_or(0, |r| r.images.len())
}

/// The seed the screening used: pass it in `medguard_options` to reproduce
/// the verdicts (0 for `NULL`).
///
/// # Safety
/// `result` is `NULL` or a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_result_seed(result: *const medguard_result) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { result.as_ref() }.map_or(0, |r| r.seed)
}

/// The `index`-th image's result, owned by `result`; `NULL` when `index` is
/// out of range.
///
/// # Safety
/// `result` is `NULL` or a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_result_image(
    result: *const medguard_result,
    index: usize,
) -> *const medguard_image_result {
    // SAFETY: the caller's contract.
    unsafe { result.as_ref() }
        .and_then(|r| r.images.get(index))
        .map_or(std::ptr::null(), |image| image as *const _)
}

/// The image's screening verdict (`MEDGUARD_VERDICT_REJECT` for `NULL`, so
/// that a careless caller never shows an unscreened label).
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_verdict(
    image: *const medguard_image_result,
) -> medguard_verdict {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }.map_or(medguard_verdict::MEDGUARD_VERDICT_REJECT, |i| i.verdict)
}

/// The combined p-value in [0, 1] (lower is more suspicious); NaN when
/// unscreened or for `NULL`.
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_p_value(image: *const medguard_image_result) -> f64 {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }.map_or(f64::NAN, |i| i.p_value)
}

/// The predicted label, or `NULL` when it was withheld (a rejected image
/// under the enforce policy).
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_label(
    image: *const medguard_image_result,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }
        .and_then(|i| i.label.as_ref())
        .map_or(std::ptr::null(), |l| l.as_ptr())
}

/// How many class probabilities there are: the model's labels, or 0 when
/// the prediction was withheld.
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_class_count(image: *const medguard_image_result) -> usize {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }.map_or(0, |i| i.classes.len())
}

/// The `index`-th class's label, in the model's output order (the signed
/// manifest's labels), or `NULL` out of range.
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_class_label(
    image: *const medguard_image_result,
    index: usize,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }
        .and_then(|i| i.classes.get(index))
        .map_or(std::ptr::null(), |(label, _)| label.as_ptr())
}

/// The `index`-th class's probability, or NaN out of range.
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_probability(
    image: *const medguard_image_result,
    index: usize,
) -> f32 {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }
        .and_then(|i| i.classes.get(index))
        .map_or(f32::NAN, |&(_, p)| p)
}

/// The index of the ledger entry that records this result (0 for `NULL`).
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_ledger_index(image: *const medguard_image_result) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }.map_or(0, |i| i.ledger_index)
}

/// The whole result as the JSON object `medguard predict --json` prints
/// (without `input`): label, probabilities, verdict, p-value, statistics,
/// integrity, seed, model, guest, receipt.
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_json(image: *const medguard_image_result) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }.map_or(std::ptr::null(), |i| i.json.as_ptr())
}

/// The receipt alone, as JSON: the ledger entry, its inclusion proof and
/// the signed checkpoint (`medguard ledger verify-receipt` checks it).
///
/// # Safety
/// `image` is `NULL` or an image of a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medguard_image_receipt_json(
    image: *const medguard_image_result,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { image.as_ref() }.map_or(std::ptr::null(), |i| i.receipt_json.as_ptr())
}
