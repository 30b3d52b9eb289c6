use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use medguard_attest::AttestedModel;
use serde::Serialize;

use super::{Exit, SandboxArgs};
use crate::input::{self, INPUT_MAX_BYTES};
use crate::model_dir::{self, read_capped};
use crate::sandbox::{GuestFailure, GuestProgram, SandboxError, Session};

/// Attest a model, then classify images with it inside the sandbox.
#[derive(Debug, Args)]
pub struct PredictCmd {
    /// Directory holding manifest.json and the model file it names.
    model_dir: PathBuf,
    /// PNG images (8- or 16-bit, gray or RGB) or .npy arrays ([H,W], [N,H,W] or [N,C,H,W]).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Print one JSON object per image per line.
    #[arg(long)]
    json: bool,
}

impl PredictCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs) -> anyhow::Result<Exit> {
        let model = match model_dir::load(&self.model_dir) {
            Ok(model) => model,
            Err(e) => {
                eprintln!("medguard: refused: {e}");
                return Ok(Exit::Refused);
            }
        };
        let (program, _) = sandbox.start()?;
        let Some(session) = open_session(&program, &model)? else {
            return Ok(Exit::Refused);
        };
        let format = if self.json {
            Format::Json
        } else {
            Format::Human
        };
        predict_files(&program, &model, session, &self.inputs, format)
    }
}

/// How predictions are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// One JSON object per image per line.
    Json,
    /// An aligned line per image.
    Human,
}

/// One image's result, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Prediction<'a> {
    input: String,
    label: &'a str,
    probabilities: BTreeMap<&'a str, f32>,
    model: ModelRef<'a>,
    guest_sha256: &'a str,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct ModelRef<'a> {
    name: &'a str,
    version: &'a str,
    sha256: &'a str,
}

#[derive(Debug, Serialize)]
struct Rejection<'a> {
    input: &'a str,
    error: String,
}

/// Loads the attested model into a fresh sandbox. The guest refusing the
/// model (its tensors or shapes contradict the manifest) is a refusal: the
/// reason is printed and `None` returned.
pub(super) fn open_session(
    program: &GuestProgram,
    model: &AttestedModel,
) -> anyhow::Result<Option<Session>> {
    match program.session(model) {
        Ok(session) => Ok(Some(session)),
        Err(SandboxError::Guest(GuestFailure::InvalidModel(why))) => {
            eprintln!("medguard: refused: the guest cannot run the attested model: {why}");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context("loading the model in the sandbox")),
    }
}

/// Classifies every file with one loaded model, one session shared by all
/// inputs of this call; a trap ends the session and the next input gets a new one.
pub(super) fn predict_files(
    program: &GuestProgram,
    model: &AttestedModel,
    session: Session,
    files: &[PathBuf],
    format: Format,
) -> anyhow::Result<Exit> {
    let labels = &model.manifest().output.labels;
    let (version, sha256) = (
        model.manifest().version.to_string(),
        model.model_digest().to_string(),
    );
    let guest_sha256 = program.digest().to_string();
    let model_ref = ModelRef {
        name: &model.manifest().name,
        version: &version,
        sha256: &sha256,
    };
    let width = files
        .iter()
        .map(|f| f.display().to_string().len())
        .max()
        .unwrap_or(0);
    let mut session = Some(session);
    let mut exit = Exit::Ok;
    for file in files {
        let name = file.display().to_string();
        match classify_file(program, model, &mut session, file) {
            Ok(rows) => {
                let many = rows.len() > 1;
                for (i, probabilities) in rows.into_iter().enumerate() {
                    let input = if many {
                        format!("{name}[{i}]")
                    } else {
                        name.clone()
                    };
                    let best = probabilities
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    let p = Prediction {
                        input,
                        label: &labels[best],
                        probabilities: labels
                            .iter()
                            .map(String::as_str)
                            .zip(probabilities)
                            .collect(),
                        model: model_ref,
                        guest_sha256: &guest_sha256,
                    };
                    match format {
                        Format::Json => println!("{}", serde_json::to_string(&p)?),
                        Format::Human => println!("{}", human_line(&p, width)),
                    }
                }
            }
            Err(Failure::Rejected(why)) => {
                exit = Exit::Refused;
                match format {
                    Format::Json => println!(
                        "{}",
                        serde_json::to_string(&Rejection {
                            input: &name,
                            error: why.clone()
                        })?
                    ),
                    Format::Human => eprintln!("medguard: rejected {name}: {why}"),
                }
            }
            Err(Failure::Internal(e)) => return Err(e.context(format!("classifying {name}"))),
        }
    }
    Ok(exit)
}

fn human_line(p: &Prediction<'_>, width: usize) -> String {
    let probs: Vec<String> = p
        .probabilities
        .iter()
        .map(|(l, v)| format!("{l} {v:.3}"))
        .collect();
    format!(
        "{:<width$}  {:<12} ({})",
        p.input,
        p.label,
        probs.join(", ")
    )
}

enum Failure {
    /// The input was refused; other inputs go on.
    Rejected(String),
    /// The sandbox or host failed; stop.
    Internal(anyhow::Error),
}

fn classify_file(
    program: &GuestProgram,
    model: &AttestedModel,
    session: &mut Option<Session>,
    file: &Path,
) -> Result<Vec<Vec<f32>>, Failure> {
    let bytes = read_capped(file, INPUT_MAX_BYTES).map_err(|e| Failure::Rejected(e.to_string()))?;
    let batch = input::decode(&bytes, &model.manifest().input)
        .map_err(|e| Failure::Rejected(e.to_string()))?;
    let mut rows = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(model.manifest().max_batch as usize) {
        let s = match session {
            Some(s) => s,
            None => session.insert(
                program
                    .session(model)
                    .context("starting a sandbox session")
                    .map_err(Failure::Internal)?,
            ),
        };
        match s.classify(&chunk.shape, &chunk.data) {
            Ok(r) => rows.extend(r),
            Err(SandboxError::Guest(GuestFailure::InvalidInput(why))) => {
                return Err(Failure::Rejected(why));
            }
            Err(e) => {
                // A trap poisons the session; the next input starts a fresh one.
                *session = None;
                return Err(match e {
                    SandboxError::Deadline(_) | SandboxError::MemoryCap { .. } => {
                        Failure::Rejected(e.to_string())
                    }
                    other => Failure::Internal(other.into()),
                });
            }
        }
    }
    Ok(rows)
}
