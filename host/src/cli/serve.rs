//! `medguard serve`: admits every model directory, then serves them over
//! the Open Inference Protocol until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{Exit, SandboxArgs, StateArgs, TrustArgs, printable};
use crate::drift::DriftConfig;
use crate::guard::{Admission, Guard, Readiness, ScreeningPolicy};
use crate::server::auth::Tokens;
use crate::server::listen::{self, Connections};
use crate::server::{self, Limits, Server};

/// A request's budget when `--request-budget-ms` is not given. A certified
/// model spends about half a second per image on an idle core of the
/// development machine (over a second on a busy one), so a full batch of 64
/// fits with room to spare, and no request holds one of the server's
/// sandboxes for longer (without it, up to 64 deadlines of 10 s).
const DEFAULT_REQUEST_BUDGET: Duration = Duration::from_secs(120);

/// Serve admitted models over the Open Inference Protocol (KServe v2 REST):
/// a fresh sandbox per request, every verdict in the ledger.
#[derive(Debug, Args)]
pub struct ServeCmd {
    /// Model directories to serve; each is admitted under the trust policy
    /// at start, and a refused one is recorded and not served.
    #[arg(required = true)]
    model_dirs: Vec<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Bearer tokens (TOML: name, SHA-256 of the token, models); without
    /// it every caller who reaches the address may infer.
    #[arg(long, value_name = "TOML")]
    tokens: Option<PathBuf>,
    /// Largest request body, in MiB (413 above).
    #[arg(long, default_value_t = 64)]
    max_body_mib: usize,
    /// Sandboxes running at once [default: the number of CPUs].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Requests that may wait for a sandbox before the answer is 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Return rejected predictions with their verdict instead of withholding them.
    #[arg(long)]
    flag_only: bool,
    /// Serve HTTPS with this certificate chain (PEM, leaf first).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections open at once; more wait in the backlog [default: 1024,
    /// or fewer when the open-file limit would not allow them].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections open at once from one client address.
    #[arg(long, default_value_t = 64)]
    max_connections_per_client: usize,
    /// Seconds a client has for the TLS handshake and each request's headers
    /// (an idle connection is closed after it too), and again for its body.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    client_timeout_secs: u64,
    /// Inputs in each model's drift window: the alarm compares their flag
    /// rate with the one calibration promised.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    drift_window: u32,
    /// Chance that one check of a clean window raises a drift alarm.
    #[arg(long, default_value_t = 1e-3)]
    drift_false_alarm: f64,
    /// How far the window's mean rank of the inputs' intensity or contrast
    /// among the calibration images' may stray from 0.5 beyond chance
    /// before the input drift alarm goes off (0 to below 0.5).
    #[arg(long, default_value_t = 0.05)]
    drift_pixel_tolerance: f64,
    /// Seconds that requests in flight may take to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
}

impl ServeCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs, state: &StateArgs) -> anyhow::Result<Exit> {
        if !(self.drift_false_alarm > 0.0 && self.drift_false_alarm < 1.0) {
            anyhow::bail!(
                "--drift-false-alarm {} must be between 0 and 1",
                self.drift_false_alarm
            );
        }
        if !(0.0..0.5).contains(&self.drift_pixel_tolerance) {
            anyhow::bail!(
                "--drift-pixel-tolerance {} must be at least 0 and below 0.5",
                self.drift_pixel_tolerance
            );
        }
        let Some(policy) = self.trust.policy(None)? else {
            return Ok(Exit::Refused);
        };
        // Before anything is admitted: a bad certificate is the operator's
        // mistake, not a ledger event.
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(listen::tls_config(cert, key)?),
            _ => None,
        };
        let tokens = self.tokens.as_deref().map(Tokens::load).transpose()?;
        if tokens.is_none() {
            eprintln!(
                "medguard: warning: no --tokens: anyone who reaches {} may run inferences",
                self.listen
            );
        }
        let data_dir = state.dir()?;
        let guard = Guard::open(&data_dir, policy)
            .with_context(|| format!("opening the ledger in {}", data_dir.display()))?;
        let mut models = Vec::new();
        let mut repository = std::collections::BTreeMap::new();
        for dir in &self.model_dirs {
            match guard
                .admit(dir)
                .context("recording an admission in the ledger")?
            {
                Admission::Admitted { model, .. } => {
                    let m = model.manifest();
                    // Two directories with one name and version would make
                    // `/infer` and `/versions/{v}/infer` run different bytes.
                    if let Some(twin) = models.iter().find(|o: &&medguard_attest::AttestedModel| {
                        o.manifest().name == m.name && o.manifest().version == m.version
                    }) {
                        anyhow::bail!(
                            "{} {} is given twice ({} and another directory, model sha256 {} and {}); serve each version once",
                            m.name,
                            m.version,
                            dir.display(),
                            twin.model_digest(),
                            model.model_digest()
                        );
                    }
                    eprintln!(
                        "medguard: serving {} {} from {}",
                        m.name,
                        m.version,
                        dir.display()
                    );
                    repository.insert(m.name.clone(), dir.clone());
                    models.push(*model);
                }
                Admission::Refused { error, .. } => {
                    eprintln!(
                        "medguard: refused {}: {}; not served",
                        dir.display(),
                        printable(&error.to_string())
                    );
                }
            }
        }
        if models.is_empty() {
            eprintln!("medguard: refused: no model was admitted; nothing to serve");
            return Ok(Exit::Refused);
        }
        let (program, load) = sandbox.start(Some(DEFAULT_REQUEST_BUDGET))?;
        let guard = guard.with_sandbox(program);
        // Ready only once every served model loads in the sandbox, and its
        // snapshot (what each request's fresh sandbox starts from) is ready.
        for model in &models {
            let m = model.manifest();
            match guard.prepare(model)? {
                Err(why) => anyhow::bail!("{} does not run in the sandbox: {why}", m.name),
                Ok(Readiness::Prepared(p)) => eprintln!(
                    "medguard: {} {} prepared in {:.2} s ({:?})",
                    m.name,
                    m.version,
                    p.elapsed.as_secs_f64(),
                    p.cache
                ),
                Ok(Readiness::LoadedPerSession(why)) => eprintln!(
                    "medguard: {} {}: no snapshot ({why}); each request loads the model",
                    m.name, m.version
                ),
            }
        }
        eprintln!(
            "medguard: guest ready in {:.2} s ({:?})",
            load.elapsed.as_secs_f64(),
            load.cache
        );
        let limits = Limits {
            max_body_bytes: self
                .max_body_mib
                .checked_mul(1 << 20)
                .context("--max-body-mib is too large")?,
            concurrency: self.concurrency.unwrap_or(Limits::default().concurrency),
            queue: self.queue,
            body_timeout: Duration::from_secs(self.client_timeout_secs),
        };
        let connections = Connections {
            max_open: self.max_connections.unwrap_or_else(default_max_connections),
            max_per_client: self.max_connections_per_client,
            header_timeout: Duration::from_secs(self.client_timeout_secs),
            drain: Duration::from_secs(self.drain_secs),
            tls,
        };
        let scheme = if connections.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let policy = if self.flag_only {
            ScreeningPolicy::FlagOnly
        } else {
            ScreeningPolicy::Enforce
        };
        let drift = DriftConfig {
            window: self.drift_window as usize,
            false_alarm: self.drift_false_alarm,
            pixel_tolerance: self.drift_pixel_tolerance,
        };
        let server = Arc::new(
            Server::new(Arc::new(guard), models, tokens, policy, limits)
                .with_drift(drift)
                .with_repository(repository),
        );
        init_logging();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(self.listen)
                .await
                .with_context(|| format!("listening on {}", self.listen))?;
            let local = listener.local_addr()?;
            eprintln!("medguard: listening on {scheme}://{local}/v2");
            let draining = server.clone();
            let shutdown = async move {
                shutdown_signal().await;
                draining.set_ready(false);
                eprintln!("medguard: shutting down: finishing requests in flight");
            };
            listen::serve(listener, server::router(server), connections, shutdown)
                .await
                .context("serving")
        })?;
        eprintln!("medguard: stopped; every verdict is in the ledger");
        Ok(Exit::Ok)
    }
}

/// SIGTERM (what container runtimes send) or SIGINT.
pub(super) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Request logs (`tracing`) to stderr: one line per answer, with its id,
/// method, path, status and latency.
fn init_logging() {
    use std::io::IsTerminal;
    // A second server in one process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// 1024 connections, or as many as the open-file limit leaves room for
/// beside the ledger, the guest cache and the runtime (64 descriptors):
/// past the limit `accept` fails and so would the ledger's next file.
fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let room = limit.map_or(usize::MAX, |n| {
        usize::try_from(n.saturating_sub(64)).unwrap_or(usize::MAX)
    });
    room.clamp(16, 1024)
}
