//! The `medguard` command line: one struct per subcommand, each with `execute`.
//!
//! Exit codes: 0 ok; 1 refused (attestation) or rejected (an input); 2 usage
//! or internal error. Errors print as one line: `medguard: <what>: <why>`.

mod calibrate;
mod demo;
mod digest;
mod eval;
mod ledger;
mod pacs;
mod predict;
mod serve;
mod sign;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::path::Path;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use medguard_attest::AttestedModel;
use medguard_ledger::{Ledger, Receipt};

use crate::admission::load_policy;
use crate::guard::{Admission, Guard, NamedPolicy};

use crate::guest::SandboxSettings;
use crate::sandbox::{CompiledCache, GuestLoad, GuestProgram, Limits};

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
    Serve(serve::ServeCmd),
    Pacs(pacs::PacsCmd),
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
    /// Wall-clock budget for all the guest calls of one request (one
    /// sandbox, however many images), in milliseconds [default: none; for
    /// `serve`, 60000].
    #[arg(long, global = true, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    request_budget_ms: Option<u64>,
}

impl SandboxArgs {
    /// Refuses `--request-budget-ms` for a command whose sandboxes each run
    /// many inputs (a budget there would cap a whole worker's run).
    fn without_request_budget(&self, command: &str) -> anyhow::Result<()> {
        if self.request_budget_ms.is_some() {
            anyhow::bail!(
                "--request-budget-ms applies to predict, serve and pacs, where a sandbox serves one request; {command} runs many images in each sandbox"
            );
        }
        Ok(())
    }

    /// Pins and loads the guest in a fresh runtime; `default_budget` is the
    /// command's request budget when `--request-budget-ms` is not given.
    fn start(&self, default_budget: Option<Duration>) -> anyhow::Result<(GuestProgram, GuestLoad)> {
        let settings = SandboxSettings {
            limits: Limits {
                memory_bytes: self
                    .memory_mib
                    .checked_mul(1 << 20)
                    .context("--memory-mib is too large")?,
                deadline: Duration::from_millis(self.deadline_ms),
                session_budget: self
                    .request_budget_ms
                    .map(Duration::from_millis)
                    .or(default_budget),
                ..Limits::default()
            },
            guest: self.guest.clone(),
            cache_dir: match self.no_cache {
                true => None,
                false => self.cache_dir.clone().or_else(CompiledCache::default_dir),
            },
        };
        let started = settings.start()?;
        if let Some(warning) = started.cache_warning {
            eprintln!("medguard: warning: {warning}");
        }
        Ok((started.program, started.load))
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
        let dir = self.dir()?;
        Ledger::open(&dir).with_context(|| format!("opening the ledger in {}", dir.display()))
    }
}

/// The trust policy a command admits models under.
#[derive(Debug, Args)]
struct TrustArgs {
    /// Trust policy (TOML): which keys may sign which models, minimum
    /// versions, revoked keys. Without one every model is refused.
    #[arg(long, env = "MEDGUARD_TRUST_POLICY", value_name = "TOML")]
    trust_policy: Option<PathBuf>,
}

impl TrustArgs {
    /// The policy given (or `fallback`, the demo's built-in one). Without
    /// one the refusal is printed and `None` returned (exit 1); a policy that
    /// does not load is an error (exit 2).
    fn policy(&self, fallback: Option<NamedPolicy>) -> anyhow::Result<Option<NamedPolicy>> {
        match (&self.trust_policy, fallback) {
            (Some(path), _) => {
                let (policy, sha256) = load_policy(path)?;
                Ok(Some(NamedPolicy {
                    policy,
                    sha256,
                    name: path.display().to_string(),
                }))
            }
            (None, Some(fallback)) => Ok(Some(fallback)),
            (None, None) => {
                eprintln!(
                    "medguard: refused: no trust policy (--trust-policy FILE or MEDGUARD_TRUST_POLICY); without one no model is admitted"
                );
                Ok(None)
            }
        }
    }

    /// Opens the guard on `data_dir` and admits `dir` with it (recorded
    /// either way). A refusal is the command's answer: printed as one line,
    /// `None` returned (exit 1). A broken policy or ledger is an error.
    fn admitted_or_refused(
        &self,
        data_dir: &Path,
        dir: &Path,
        fallback: Option<NamedPolicy>,
    ) -> anyhow::Result<Option<(Guard, AttestedModel, Receipt)>> {
        let Some(policy) = self.policy(fallback)? else {
            return Ok(None);
        };
        let guard = Guard::open(data_dir, policy)
            .with_context(|| format!("opening the ledger in {}", data_dir.display()))?;
        match guard
            .admit(dir)
            .context("recording the admission in the ledger")?
        {
            Admission::Admitted { model, receipt } => Ok(Some((guard, *model, receipt))),
            Admission::Refused { error, .. } => {
                eprintln!("medguard: refused: {}", printable(&error.to_string()));
                Ok(None)
            }
        }
    }
}

// What a terminal or a page may show of text someone else chose: shared
// with the browser build, which shows a server's entries.
pub use medguard_ledger::text::{hostile, printable};

/// JSON text with [`hostile`] characters written as JSON escapes
/// (`\u001b`): still the same JSON value, safe on a terminal. Outside strings
/// valid JSON holds no such character, so every one is inside a string.
pub(crate) fn json_printable(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if hostile(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A progress bar for a bulk run over `n` images, labelled `label`.
fn progress_bar(n: usize, label: &str) -> anyhow::Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(n as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>28} [{bar:30}] {pos}/{len} images, {eta} left",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    Ok(bar)
}

/// Reads and attests a model directory whose manifest the user vouches for
/// (the vendor-side commands `calibrate` and `eval`). A refusal is the command's answer,
/// not an error: its reason is printed as one line and `None` returned, and
/// the command exits 1.
fn unsigned_or_refused(dir: &std::path::Path) -> Option<medguard_attest::AttestedModel> {
    match crate::model_dir::load_unsigned(dir) {
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
        Command::Serve(cmd) => cmd.execute(&cli.sandbox, &cli.state),
        Command::Pacs(cmd) => cmd.execute(&cli.sandbox, &cli.state),
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
