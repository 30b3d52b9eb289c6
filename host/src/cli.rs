//! The `medguard` command line: one struct per subcommand, each with `execute`.
//!
//! Exit codes: 0 ok; 1 refused (attestation) or rejected (an input); 2 usage
//! or internal error. Errors print as one line: `medguard: <what>: <why>`.

mod calibrate;
mod demo;
mod digest;
mod eval;
mod ledger;
mod predict;
mod screening;
mod sign;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::path::Path;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use medguard_attest::{AttestedModel, Provenance, Sha256Digest, TrustPolicy};
use medguard_ledger::entry::{TEXT_MAX_BYTES, bounded};
use medguard_ledger::{Entry, Ledger};

use crate::admission::{AdmissionError, admit_directory, load_policy};

use crate::guest;
use crate::sandbox::{CompiledCache, GuestLoad, GuestProgram, Limits, Runtime};

/// WebAssembly inference integrity guard for medical AI.
#[derive(Debug, Parser)]
#[command(
    name = "medguard",
    version,
    after_help = "Exit codes: 0 ok, 1 refused or rejected, 2 usage or internal error."
)]
pub struct Cli {
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(flatten)]
    state: StateArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Digest(digest::DigestCmd),
    Verify(verify::VerifyCmd),
    Sign(sign::SignCmd),
    Predict(predict::PredictCmd),
    Calibrate(calibrate::CalibrateCmd),
    Eval(eval::EvalCmd),
    Demo(demo::DemoCmd),
    Ledger(ledger::LedgerCmd),
}

/// How a command ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything was accepted.
    Ok,
    /// A model was refused or an input rejected.
    Refused,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        match e {
            Exit::Ok => ExitCode::SUCCESS,
            Exit::Refused => ExitCode::from(1),
        }
    }
}

/// Sandbox settings shared by every command that runs the guest.
#[derive(Debug, Args)]
struct SandboxArgs {
    /// Run the guest component in this file instead of the bundled one; it
    /// must be byte-identical to the guest this binary was built with.
    #[arg(long, global = true, value_name = "WASM")]
    guest: Option<PathBuf>,
    /// Where compiled guests are cached [default: $XDG_CACHE_HOME/medguard].
    #[arg(long, global = true, env = "MEDGUARD_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile the guest at every start instead of using the cache.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Cap on the guest's memory, in MiB.
    #[arg(long, global = true, default_value_t = 512, value_name = "MIB")]
    memory_mib: usize,
    /// Wall-clock budget for each call into the guest, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000, value_name = "MS")]
    deadline_ms: u64,
}

impl SandboxArgs {
    /// Pins and loads the guest in a fresh runtime.
    fn start(&self) -> anyhow::Result<(GuestProgram, GuestLoad)> {
        let limits = Limits {
            memory_bytes: self
                .memory_mib
                .checked_mul(1 << 20)
                .context("--memory-mib is too large")?,
            deadline: Duration::from_millis(self.deadline_ms),
            ..Limits::default()
        };
        let guest = match &self.guest {
            Some(path) => guest::from_file(path)?,
            None => guest::bundled()?,
        };
        let cache = match (
            self.no_cache,
            self.cache_dir.clone().or_else(CompiledCache::default_dir),
        ) {
            (false, Some(dir)) => match CompiledCache::open(&dir) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    eprintln!("medguard: warning: compiled-guest cache disabled: {e}");
                    None
                }
            },
            _ => None,
        };
        let runtime = Runtime::new(limits)?;
        Ok(runtime.load_guest(&guest, cache.as_ref())?)
    }
}

/// Where the deployment keeps its state.
#[derive(Debug, Args)]
struct StateArgs {
    /// Data directory for rollback high-water marks [default:
    /// $XDG_DATA_HOME/medguard or ~/.local/share/medguard]; created mode 0700.
    #[arg(long, global = true, env = "MEDGUARD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        self.data_dir
            .clone()
            .or_else(crate::state::default_data_dir)
            .context("no data directory: pass --data-dir or set MEDGUARD_DATA_DIR (HOME is unset)")
    }

    /// Opens (creating on first use) the deployment's audit ledger.
    fn open_ledger(&self) -> anyhow::Result<Ledger> {
        open_ledger_in(&self.dir()?)
    }
}

/// Opens (creating on first use) the audit ledger of the data directory `dir`.
fn open_ledger_in(dir: &Path) -> anyhow::Result<Ledger> {
    Ledger::open(dir).with_context(|| format!("opening the ledger in {}", dir.display()))
}

/// A parsed trust policy, its digest (text and keys), and how to name it.
struct LoadedPolicy {
    policy: TrustPolicy,
    sha256: Sha256Digest,
    name: String,
}

/// The trust policy a command admits models under.
#[derive(Debug, Args)]
struct TrustArgs {
    /// Trust policy (TOML): which keys may sign which models, minimum
    /// versions, revoked keys. Without one every model is refused.
    #[arg(long, env = "MEDGUARD_TRUST_POLICY", value_name = "TOML")]
    trust_policy: Option<PathBuf>,
}

/// A model the trust policy admitted, with the ledger that recorded it.
struct Admitted {
    model: AttestedModel,
    policy: String,
    ledger: Ledger,
}

impl TrustArgs {
    /// Admits the signed model directory `dir` under the policy (or
    /// `fallback`, the demo's bundled policy) and the rollback marks the
    /// ledger of `data_dir` holds, and records the outcome in the ledger (a
    /// policy change, then the admission or the refusal). A refusal is the
    /// command's answer: its reason is printed as one line and `None`
    /// returned (exit 1). A broken policy or ledger is an error (exit 2).
    fn admitted_or_refused(
        &self,
        data_dir: &Path,
        dir: &Path,
        fallback: Option<LoadedPolicy>,
    ) -> anyhow::Result<Option<Admitted>> {
        let loaded = match (&self.trust_policy, fallback) {
            (Some(path), _) => {
                let (policy, sha256) = load_policy(path)?;
                LoadedPolicy {
                    policy,
                    sha256,
                    name: path.display().to_string(),
                }
            }
            (None, Some(fallback)) => fallback,
            (None, None) => {
                eprintln!(
                    "medguard: refused: no trust policy (--trust-policy FILE or MEDGUARD_TRUST_POLICY); without one no model is admitted"
                );
                return Ok(None);
            }
        };
        let (policy, policy_sha256) = (&loaded.policy, loaded.sha256);
        let mut ledger = open_ledger_in(data_dir)?;
        let view = ledger.view().clone();
        let time = jiff::Timestamp::now();
        let mut entries = Vec::new();
        if view.policy != Some(policy_sha256) {
            entries.push(Entry::PolicyChanged {
                time,
                from: view.policy,
                to: policy_sha256,
            });
        }
        let outcome = admit_directory(dir, policy, |name| view.high_water.get(name).cloned(), time);
        let admitted = match outcome {
            Ok(model) => {
                if let Provenance::Signed {
                    signer,
                    manifest_sha256,
                } = model.provenance()
                {
                    let m = model.manifest();
                    entries.push(Entry::ModelAdmitted {
                        time,
                        model: m.name.clone(),
                        version: m.version.clone(),
                        model_sha256: model.model_digest(),
                        manifest_sha256: *manifest_sha256,
                        signer: signer.name.clone(),
                        signer_fingerprint: signer.fingerprint,
                        policy_sha256,
                    });
                }
                Some(model)
            }
            Err(e) => {
                // The directory's own name only: a full path says nothing
                // more about the model and may say things about the host.
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let reason = match &e {
                    AdmissionError::Refused { source, .. } => source.to_string(),
                    other => other.to_string().replace(&dir.display().to_string(), &name),
                };
                entries.push(Entry::ModelRefused {
                    time,
                    directory: bounded(&name, 255),
                    model: None,
                    version: None,
                    reason: bounded(&reason, TEXT_MAX_BYTES),
                    policy_sha256,
                });
                eprintln!("medguard: refused: {e}");
                None
            }
        };
        ledger
            .append(&entries)
            .context("recording the admission in the ledger")?;
        Ok(admitted.map(|model| Admitted {
            model,
            policy: loaded.name,
            ledger,
        }))
    }
}

/// Reads and attests a model directory whose manifest the user vouches for
/// (the vendor-side commands `calibrate` and `eval`). A refusal is the command's answer,
/// not an error: its reason is printed as one line and `None` returned, and
/// the command exits 1.
fn attested_or_refused(dir: &std::path::Path) -> Option<medguard_attest::AttestedModel> {
    match crate::model_dir::load(dir) {
        Ok(model) => Some(model),
        Err(e) => {
            eprintln!("medguard: refused: {e}");
            None
        }
    }
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Digest(cmd) => cmd.execute(),
        Command::Verify(cmd) => cmd.execute(&cli.state),
        Command::Sign(cmd) => cmd.execute(),
        Command::Predict(cmd) => cmd.execute(&cli.sandbox, &cli.state),
        Command::Calibrate(cmd) => cmd.execute(&cli.sandbox),
        Command::Eval(cmd) => cmd.execute(&cli.sandbox),
        Command::Demo(cmd) => cmd.execute(&cli.sandbox),
        Command::Ledger(cmd) => cmd.execute(&cli.state),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("medguard: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        super::Cli::command().debug_assert();
    }
}
