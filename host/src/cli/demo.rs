//! `medguard demo`: the bundled model under the built-in demo policy, in the
//! demo's own data directory, through the same guard as `predict`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::predict::{DEMO_OPTIONS, Format, model_runs, predict_files};
use medguard_attest::Provenance;

use super::{Exit, SandboxArgs, TrustArgs};
use crate::admission::admit_directory;
use crate::guard::NamedPolicy;
use crate::sandbox::CacheUse;
use crate::signing::{renewal_due, renewal_expiry, renewed_copy};
use medguard_attest::{SigningKey, TrustPolicy};

/// Admit the bundled demo model under the bundled demo trust policy and
/// classify its sample X-rays in the sandbox. The demo keeps its own data
/// directory (`medguard-demo` beside the default one): the demo key is public,
/// so nothing it admits may leave marks in a deployment's ledger.
#[derive(Debug, Args)]
pub struct DemoCmd {
    /// The model directory to demonstrate (relative paths are taken from
    /// the current directory, as scripts/demo.sh runs it from the repository root).
    #[arg(long, default_value = "models/pneumonia")]
    model_dir: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
}

/// The demo's policy and key, built into the binary by content (never by
/// path): it trusts only the demo key, whose private half is public in the
/// repository.
const DEMO_POLICY: &str = include_str!("../../../models/trust/demo-policy.toml");
const DEMO_PUBLIC_KEY: &str = include_str!("../../../models/trust/demo.pub.pem");
/// Its private half, public on purpose: the demo re-signs its own copy of a
/// manifest that is about to expire with it.
const DEMO_PRIVATE_KEY: &str = include_str!("../../../models/trust/demo.key.pem");

fn demo_policy() -> anyhow::Result<NamedPolicy> {
    let policy = TrustPolicy::parse(DEMO_POLICY, |file| match file {
        "demo.pub.pem" => Ok(DEMO_PUBLIC_KEY.to_owned()),
        other => Err(format!("the built-in demo policy has no key file {other}")),
    })
    .context("the built-in demo policy")?;
    Ok(NamedPolicy {
        sha256: policy.sha256(),
        policy,
        name: "the built-in demo policy (models/trust/demo-policy.toml)".into(),
    })
}

/// The demo's own data directory: `--data-dir`/`MEDGUARD_DATA_DIR` name a
/// deployment's, which the demo never writes to.
fn demo_data_dir() -> anyhow::Result<PathBuf> {
    crate::state::user_dir("XDG_DATA_HOME", ".local/share")
        .map(|d| d.with_file_name("medguard-demo"))
        .context("no place for the demo's data: HOME and XDG_DATA_HOME are unset")
}

impl DemoCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs) -> anyhow::Result<Exit> {
        if !self.model_dir.is_dir() {
            anyhow::bail!(
                "no model directory {}: run the demo from the repository root (scripts/demo.sh) or pass --model-dir",
                self.model_dir.display()
            );
        }
        // Canonical, so the paths printed below are the ones a user can open.
        let dir = std::fs::canonicalize(&self.model_dir).unwrap_or(self.model_dir);
        let demo_root = demo_data_dir()?;
        println!("medguard demo: {}", dir.display());
        // Renewal is the built-in policy's business: a policy given on the
        // command line judges the directory as it is.
        let renewal = match self.trust.trust_policy {
            None => renewed(&dir, &demo_root)?,
            Some(_) => None,
        };
        let (dir, data_dir) = match renewal {
            Some((copy, root)) => {
                // A renewed manifest is another manifest of the same version:
                // it gets a ledger of its own rather than a refusal for
                // equivocation in the demo's.
                (copy, root.join("data"))
            }
            None => (dir, demo_root),
        };
        println!("   (its own ledger in {})\n", data_dir.display());
        let Some((guard, model, _)) =
            self.trust
                .admitted_or_refused(&data_dir, &dir, Some(demo_policy()?))?
        else {
            return Ok(Exit::Refused);
        };
        let policy = guard.policy().name.clone();
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
            policy,
            model.model_digest()
        );
        let (program, load) = sandbox.start(None)?;
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
        let guard = guard.with_sandbox(program);
        let started = Instant::now();
        let options = DEMO_OPTIONS;
        if !model_runs(&guard, &model, options)? {
            return Ok(Exit::Refused);
        }
        println!(
            "3. sandbox      no imports at all; memory cap {} MiB; {} ms per call; model loaded in the guest in {:.0} ms\n",
            sandbox.memory_mib,
            sandbox.deadline_ms,
            started.elapsed().as_secs_f64() * 1e3
        );
        println!("4. clean sample X-rays, screened then classified:");
        let samples = pngs(&dir.join("samples"))?;
        let exit = predict_files(&guard, &model, &samples, Format::Human, options)?;

        // Adversarial copies made by ART's PGD (tests/adversarial): the bare
        // model calls these pneumonia X-rays normal. Their rejection is the
        // expected outcome, so it does not change the demo's exit code.
        let attacks = pngs(&dir.join("adversarial"))?;
        if !attacks.is_empty() {
            println!(
                "\n5. pneumonia X-rays with an invisible PGD perturbation (8/255) that flips the bare model:"
            );
            predict_files(&guard, &model, &attacks, Format::Human, options)?;
        }
        let (size, _) = guard.checkpoint()?;
        println!(
            "\n6. ledger       every admission and verdict above is an entry in {} ({size} entries);\n                 `medguard --data-dir {} ledger verify` checks it all, `... ledger show` lists it",
            guard.origin(),
            data_dir.display()
        );
        Ok(exit)
    }
}

/// The demo's re-signed copy of `dir` (and the directory that holds it)
/// when its manifest is due for renewal (the bundled one is signed for two
/// years at a time), so that the demo outlives it. Only a directory that
/// the built-in policy admits in every respect but its age is renewed:
/// `None` leaves anything else (tampered, unsigned, signed by another key)
/// to be refused by the admission that follows, as it would be without
/// renewal.
fn renewed(dir: &Path, demo_root: &Path) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    let path = dir.join(medguard_attest::MANIFEST_PATH);
    let bytes = crate::model_dir::read_capped(&path, medguard_attest::MANIFEST_MAX_BYTES as u64)?;
    let manifest = medguard_attest::Manifest::parse(&bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    let now = jiff::Timestamp::now();
    let Some(expires) = manifest.expires else {
        return Ok(None);
    };
    if !renewal_due(expires, now) {
        return Ok(None);
    }
    // Admission as of just before the manifest expired, without rollback
    // marks (the demo's ledger judges those after renewal).
    let before_expiry = expires - jiff::SignedDuration::from_secs(1);
    let policy = demo_policy()?;
    if admit_directory(dir, &policy.policy, |_| None, before_expiry).is_err() {
        return Ok(None);
    }
    let renewed_until = renewal_expiry(now);
    let key = SigningKey::from_pem(DEMO_PRIVATE_KEY).context("the built-in demo key")?;
    let copy = renewed_copy(dir, &demo_root.join("renewed"), &key, renewed_until)
        .with_context(|| format!("renewing the demo's copy of {}", dir.display()))?;
    println!(
        "   its manifest expires {expires}; the demo re-signed its own copy with the public demo key\n   (valid until {renewed_until}): {}\n   a deployment asks the model's signer for a fresh manifest instead",
        copy.display()
    );
    let root = copy
        .parent()
        .and_then(Path::parent)
        .context("a renewed copy sits two levels below its root")?
        .to_owned();
    Ok(Some((copy, root)))
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
