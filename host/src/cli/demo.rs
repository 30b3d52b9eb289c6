use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::predict::{Format, Settings, open_session, predict_files};
use medguard_attest::Provenance;

use super::{Exit, SandboxArgs, StateArgs, TrustArgs};
use crate::sandbox::CacheUse;

/// Admit the bundled demo model under the bundled demo trust policy and
/// classify its sample X-rays in the sandbox.
#[derive(Debug, Args)]
pub struct DemoCmd {
    /// The model directory to demonstrate.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/pneumonia"))]
    model_dir: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
}

/// The demo's policy: trusts only the demo key, which is public in the repository.
const DEMO_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/trust/demo-policy.toml"
);

impl DemoCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs, state: &StateArgs) -> anyhow::Result<Exit> {
        // Canonical, so the paths printed below are the ones a user can open.
        let dir = std::fs::canonicalize(&self.model_dir).unwrap_or(self.model_dir);
        let fallback = std::fs::canonicalize(DEMO_POLICY).unwrap_or(DEMO_POLICY.into());
        println!("medguard demo: {}\n", dir.display());
        let Some(admitted) = self
            .trust
            .admitted_or_refused(state, &dir, Some(&fallback))?
        else {
            return Ok(Exit::Refused);
        };
        let (model, policy, mut ledger) = (admitted.model, admitted.policy, admitted.ledger);
        let m = model.manifest();
        let signer = match model.provenance() {
            Provenance::Signed { signer, .. } => {
                format!("key {:?} ({})", signer.name, signer.fingerprint)
            }
            Provenance::Vouched => "nobody (vouched)".into(),
        };
        println!(
            "1. attestation  {} {}: every file matches model.sig, signed by {signer};\n                 admitted by {}; model sha256 {} matches the manifest",
            m.name,
            m.version,
            policy.display(),
            model.model_digest()
        );
        let (program, load) = sandbox.start()?;
        let how = match load.cache {
            CacheUse::Hit => "loaded from the verified cache".to_string(),
            CacheUse::Disabled => "compiled (cache disabled)".to_string(),
            CacheUse::Miss => "compiled, then cached".to_string(),
            CacheUse::Rejected(why) => format!("compiled afresh: {why}"),
            CacheUse::StoreFailed(why) => format!("compiled; not cached: {why}"),
        };
        println!(
            "2. guest        sha256 {} matches the pin; {how} in {:.2} s",
            program.digest(),
            load.elapsed.as_secs_f64()
        );
        let started = Instant::now();
        let settings = Settings::default();
        let Some(session) = open_session(&program, &model, settings)? else {
            return Ok(Exit::Refused);
        };
        println!(
            "3. sandbox      no imports at all; memory cap {} MiB; {} ms per call; model loaded in the guest in {:.0} ms\n",
            sandbox.memory_mib,
            sandbox.deadline_ms,
            started.elapsed().as_secs_f64() * 1e3
        );
        println!("4. clean sample X-rays, screened then classified:");
        let samples = pngs(&dir.join("samples"))?;
        let exit = predict_files(
            &program,
            &model,
            session,
            &samples,
            Format::Human,
            settings,
            &mut ledger,
        )?;

        // Adversarial copies made by ART's PGD (tests/adversarial): the bare
        // model calls these pneumonia X-rays normal. Their rejection is the
        // expected outcome, so it does not change the demo's exit code.
        let attacks = pngs(&dir.join("adversarial"))?;
        if !attacks.is_empty() {
            println!(
                "\n5. pneumonia X-rays with an invisible PGD perturbation (8/255) that flips the bare model:"
            );
            let Some(session) = open_session(&program, &model, settings)? else {
                return Ok(Exit::Refused);
            };
            predict_files(
                &program,
                &model,
                session,
                &attacks,
                Format::Human,
                settings,
                &mut ledger,
            )?;
        }
        let (checkpoint, _) = ledger.checkpoint();
        println!(
            "\n6. ledger       every admission and verdict above is an entry in {} ({} entries, root {});\n                 `medguard ledger verify` checks it all, `medguard ledger show` lists it",
            checkpoint.origin, checkpoint.size, checkpoint.root
        );
        Ok(exit)
    }
}

/// The PNG files of a directory, sorted; none if it does not exist.
fn pngs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    files.sort();
    Ok(files)
}
