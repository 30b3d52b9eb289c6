//! Classifies one PNG with the medguard library alone: admit the signed
//! model under a trust policy, screen and classify in the sandbox, print the
//! verdict, the label and the ledger receipt's index.
//!
//! cargo run --release --example classify -- DATA_DIR POLICY.toml MODEL_DIR IMAGE.png

use anyhow::{Context, bail};
use medguard::guard::{
    Admission, ClassifyOptions, Guard, NamedPolicy, ScreeningPolicy, fresh_seed,
};
use medguard::sandbox::{Limits, Runtime};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, policy_path, model_dir, image] = args.as_slice() else {
        bail!("usage: classify DATA_DIR POLICY.toml MODEL_DIR IMAGE.png");
    };
    let (policy, sha256) = medguard::admission::load_policy(policy_path.as_ref())?;
    let name = policy_path.clone();
    let guard = Guard::open(
        data_dir.as_ref(),
        NamedPolicy {
            policy,
            sha256,
            name,
        },
    )?;
    let model = match guard.admit(model_dir.as_ref())? {
        Admission::Admitted { model, .. } => model,
        Admission::Refused { error, .. } => bail!("refused: {error}"),
    };
    let guest = medguard::guest::bundled()?;
    let (program, _) = Runtime::new(Limits::default())?.load_guest(&guest, None)?;
    let guard = guard.with_sandbox(program);
    let options = ClassifyOptions {
        seed: fresh_seed().context("drawing a seed")?,
        policy: ScreeningPolicy::Enforce,
        allow_unscreened: false,
    };
    let bytes = std::fs::read(image).with_context(|| format!("reading {image}"))?;
    for result in guard.classify(&model, &bytes, options)?.images {
        let label = result.label.as_deref().unwrap_or("withheld");
        println!(
            "{}: {label} (ledger entry {})",
            result.verdict, result.receipt.index
        );
    }
    Ok(())
}
