//! `medguard verify`: admits a signed model directory through the guard
//! without starting the sandbox, and says what was recorded.

use std::path::PathBuf;

use clap::Args;
use medguard_attest::Provenance;
use medguard_certify::Certification;

use super::{Exit, StateArgs, TrustArgs};

/// Admit a signed model directory under the trust policy without running it:
/// exit 0 if admitted, 1 if refused (with the rule that refused it).
#[derive(Debug, Args)]
pub struct VerifyCmd {
    /// Directory holding model.sig, manifest.json and the model file it names.
    model_dir: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
}

impl VerifyCmd {
    pub(super) fn execute(self, state: &StateArgs) -> anyhow::Result<Exit> {
        let Some((guard, model, receipt)) =
            self.trust
                .admitted_or_refused(&state.dir()?, &self.model_dir, None)?
        else {
            return Ok(Exit::Refused);
        };
        let policy = &guard.policy().name;
        let m = model.manifest();
        println!(
            "accepted: {} {} ({} bytes, sha256 {})",
            m.name,
            m.version,
            m.model.size,
            model.model_digest()
        );
        if let Provenance::Signed {
            signer,
            manifest_sha256,
        } = model.provenance()
        {
            println!(
                "signed by: key {:?} ({}), admitted by {}",
                signer.name, signer.fingerprint, policy
            );
            println!("manifest: sha256 {manifest_sha256}");
        }
        if let Some(expires) = m.expires {
            println!("expires: {expires}");
        }
        match &m.certification {
            None => {}
            Some(Certification::Smoothing(s)) => println!(
                "certified predictions: randomized smoothing, sigma {}, {} samples, alpha {}, \
                 required L2 radius {}",
                s.sigma, s.samples, s.alpha, s.required_radius_l2
            ),
            Some(Certification::IntervalBounds(i)) => println!(
                "certified predictions: interval bound propagation, required L-infinity radius {} \
                 ({:.2}/255)",
                i.required_radius_linf,
                i.required_radius_linf * 255.0
            ),
        }
        // Text from the manifest is signed, but still shown escaped.
        if let Some(t) = &m.training {
            for input in &t.inputs {
                println!(
                    "trained from: {} {} (sha256 {})",
                    input.role.escape_debug(),
                    input.file.escape_debug(),
                    input.sha256
                );
            }
            let pairs = |map: Vec<(String, String)>| {
                map.into_iter()
                    .map(|(k, v)| format!("{}={}", k.escape_debug(), v.escape_debug()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let seeds = t.seeds.iter().map(|(k, v)| (k.clone(), v.to_string()));
            println!("training seeds: {}", pairs(seeds.collect()));
            let libraries = t.libraries.iter().map(|(k, v)| (k.clone(), v.clone()));
            println!("training libraries: {}", pairs(libraries.collect()));
            let metrics = t.metrics.iter().map(|(k, v)| {
                let shown = if v.fract() == 0.0 && v.abs() < 1e15 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.4}")
                };
                (k.clone(), shown)
            });
            println!("training metrics: {}", pairs(metrics.collect()));
        }
        println!(
            "recorded: ledger entry {} of {}",
            receipt.index,
            guard.origin()
        );
        Ok(Exit::Ok)
    }
}
