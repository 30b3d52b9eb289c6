//! `medguard pacs`: flags to a [`Bridge`], its events to lines.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use medguard_ledger::entry::Verdict;
use serde::Serialize;

use super::predict::{ScreeningArgs, ready_guard};
use super::{Exit, SandboxArgs, StateArgs, TrustArgs, printable};
use crate::input::INPUT_MAX_BYTES;
use crate::model_dir::read_capped;
use crate::pacs::dicomweb::{ClientOptions, DicomWebClient};
use crate::pacs::{Bridge, BridgeSettings, InstanceEvent, Outcome, PacsError};

/// Watch a DICOMweb archive: find the radiographs the model accepts (QIDO-RS), retrieve each (WADO-RS), screen and classify it in the sandbox, and store its structured report back (STOW-RS).
#[derive(Debug, Args)]
pub struct PacsCmd {
    /// Signed model directory; its manifest's dicom section says which
    /// instances are searched for (the accepted modalities) and taken.
    model_dir: PathBuf,
    /// The archive's DICOMweb base URL, e.g. http://pacs:8042/dicom-web.
    #[arg(long, value_name = "URL")]
    dicomweb: String,
    /// Poll once and exit: 0 if every instance found got its report
    /// stored with an accepted verdict, 1 if any was refused, rejected or
    /// not stored.
    #[arg(long)]
    once: bool,
    /// Seconds between polls when watching.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    interval: u64,
    /// Further QIDO-RS matching, KEY=VALUE (repeatable), e.g.
    /// StudyDate=20261201- to leave older studies alone.
    #[arg(long = "match", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// File holding a bearer token for the archive.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM file of the CA certificates for an https archive [default: the
    /// system's trust store].
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Time allowed for each DICOMweb call, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    http_timeout: u64,
    /// Print one JSON object per instance per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    screening: ScreeningArgs,
    #[command(flatten)]
    trust: TrustArgs,
}

/// One instance's line with `--json`. No patient data: the instance is
/// named by its pseudonym.
#[derive(Debug, Serialize)]
struct EventJson<'a> {
    instance: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    will_retry: Option<bool>,
    timings_ms: TimingsJson,
}

#[derive(Debug, Serialize)]
struct TimingsJson {
    retrieve: f64,
    classify: f64,
    report: f64,
    store: f64,
    total: f64,
}

impl PacsCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs, state: &StateArgs) -> anyhow::Result<Exit> {
        let filters = self
            .filters
            .iter()
            .map(|f| {
                f.split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .with_context(|| format!("--match {f:?} is not KEY=VALUE"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bearer_token = self.token()?;
        let client = DicomWebClient::new(
            &self.dicomweb,
            ClientOptions {
                ca_cert: self.ca_cert.clone(),
                bearer_token,
                timeout: Duration::from_secs(self.http_timeout.max(1)),
                max_instance_bytes: usize::try_from(INPUT_MAX_BYTES).unwrap_or(usize::MAX),
            },
        )?;
        // Admission comes first: a refused model never meets the archive.
        let data_dir = state.dir()?;
        let options = self.screening.options()?;
        let Some((guard, model)) =
            ready_guard(&self.trust, sandbox, &data_dir, &self.model_dir, options)?
        else {
            return Ok(Exit::Refused);
        };
        let settings = BridgeSettings {
            filters,
            page_size: 100,
            max_scanned: 100_000,
            options,
            fixed_seed: self.screening.seed_is_fixed(),
            attempts: 3,
        };
        if let Some(why) = Bridge::unusable(&guard, &model, &settings) {
            eprintln!("medguard: refused: {}", printable(&why));
            return Ok(Exit::Refused);
        }
        let json = self.json;
        let mut exit = Exit::Ok;
        let mut on_event = |event: &InstanceEvent| {
            if !accepted(&event.outcome) {
                exit = Exit::Refused;
            }
            print_event(event, json);
        };
        if self.once {
            let mut bridge = Bridge::new(&guard, &model, &client, &data_dir, settings)?;
            let summary = bridge
                .poll(&mut on_event, &|| false)
                .with_context(|| format!("polling {}", client.base_url()))?;
            eprintln!(
                "medguard: pacs: {} instance(s) handled, {} search entries with unusable UIDs skipped",
                summary.handled, summary.invalid
            );
            return Ok(exit);
        }
        let stop = stop_on_signal();
        eprintln!(
            "medguard: pacs: watching {} every {} s for {} {}",
            client.base_url(),
            self.interval,
            model.manifest().name,
            model.manifest().version
        );
        let interval = Duration::from_secs(self.interval.max(1));
        let mut bridge = None;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            // Tokens expire: the file is read again before every poll.
            // A token being rewritten may read empty for a moment: the old
            // one stays until the file reads well again.
            if self.token_file.is_some() {
                match self.token() {
                    Ok(token) => client.set_bearer_token(token.as_deref())?,
                    Err(e) => eprintln!("medguard: pacs: keeping the current token: {e:#}"),
                }
            }
            let bridge = match &mut bridge {
                Some(bridge) => bridge,
                None => bridge.insert(Bridge::new(
                    &guard,
                    &model,
                    &client,
                    &data_dir,
                    settings.clone(),
                )?),
            };
            match bridge.poll(&mut on_event, &|| stop.load(Ordering::Relaxed)) {
                Ok(_) => {}
                // The archive (or its credentials) may be back by the next poll.
                Err(
                    e @ (PacsError::Search(_)
                    | PacsError::Unauthorized(_)
                    | PacsError::Unavailable(_)
                    | PacsError::Sandbox(_)),
                ) => {
                    eprintln!("medguard: pacs: {}", printable(&e.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
            while !stop.load(Ordering::Relaxed) && started.elapsed() < interval {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        eprintln!("medguard: pacs: stopped; every verdict is in the ledger");
        Ok(Exit::Ok)
    }
}

impl PacsCmd {
    /// The bearer token from `--token-file`, if one was given.
    fn token(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let bytes = read_capped(path, 64 << 10)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let token = String::from_utf8(bytes)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .with_context(|| format!("{} holds no token", path.display()))?;
        Ok(Some(token))
    }
}

/// Whether an outcome counts as a clean one for `--once`'s exit code.
fn accepted(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Reported {
            verdict: Verdict::Accept | Verdict::Flag | Verdict::Unscreened,
            ..
        }
    )
}

/// A flag raised by SIGINT or SIGTERM, checked between instances: the
/// instance in hand is finished (its verdict recorded, its report stored)
/// before the bridge stops. A second signal exits at once (a report being
/// sent then is looked up in the archive at the next start).
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(super::serve::shutdown_signal());
            flag.store(true, Ordering::Relaxed);
            eprintln!(
                "medguard: pacs: stopping after the instance in hand (signal again to stop now)"
            );
            runtime.block_on(super::serve::shutdown_signal());
            std::process::exit(130);
        }
    });
    stop
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn print_event(event: &InstanceEvent, json: bool) {
    let t = &event.timings;
    let mut line = EventJson {
        instance: &event.instance,
        outcome: "",
        verdict: None,
        label: None,
        p_value: None,
        ledger_index: None,
        report: None,
        error: None,
        will_retry: None,
        timings_ms: TimingsJson {
            retrieve: ms(t.retrieve),
            classify: ms(t.classify),
            report: ms(t.report),
            store: ms(t.store),
            total: ms(t.total()),
        },
    };
    match &event.outcome {
        Outcome::Reported {
            verdict,
            label,
            p_value,
            ledger_index,
            report,
        } => {
            line.outcome = "reported";
            line.verdict = Some(*verdict);
            line.label = label.as_deref();
            line.p_value = *p_value;
            line.ledger_index = Some(*ledger_index);
            line.report = Some(report);
        }
        Outcome::NotStored {
            verdict,
            ledger_index,
            report,
            error,
            will_retry,
        } => {
            line.outcome = "not-stored";
            line.verdict = Some(*verdict);
            line.ledger_index = Some(*ledger_index);
            line.report = Some(report);
            line.error = Some(printable(error));
            line.will_retry = Some(*will_retry);
        }
        Outcome::Refused { reason } => {
            line.outcome = "refused";
            line.error = Some(printable(reason));
        }
        Outcome::NotRetrieved { error, will_retry } => {
            line.outcome = "not-retrieved";
            line.error = Some(printable(error));
            line.will_retry = Some(*will_retry);
        }
        Outcome::NotClassified { error, will_retry } => {
            line.outcome = "not-classified";
            line.error = Some(printable(error));
            line.will_retry = Some(*will_retry);
        }
        Outcome::GivenUp { reason } => {
            line.outcome = "given-up";
            line.error = Some(printable(reason));
        }
    }
    if json {
        match serde_json::to_string(&line) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("medguard: pacs: {e}"),
        }
        return;
    }
    let mut text = format!("instance {}  {}", line.instance, line.outcome);
    if let Some(verdict) = line.verdict {
        text.push_str(&format!("  {verdict}"));
    }
    if let Some(label) = line.label {
        text.push_str(&format!("  {label}"));
    }
    if let Some(index) = line.ledger_index {
        text.push_str(&format!("  [ledger #{index}]"));
    }
    if let Some(report) = line.report {
        text.push_str(&format!("  report {report}"));
    }
    if let Some(error) = &line.error {
        text.push_str(&format!("  {error}"));
    }
    text.push_str(&format!("  ({:.0} ms)", line.timings_ms.total));
    println!("{text}");
}
