//! What the deployment derives from its ledger: the highest version admitted
//! per model (the rollback high-water marks) and the trust policy in force.
//! The ledger is the one source of truth; `view.json` only caches the result
//! with the ledger size it was computed at, so opening reads just the entries
//! appended since. A missing, damaged or newer-than-the-ledger cache is
//! rebuilt from the entries.

use std::collections::BTreeMap;

use medguard_attest::{HighWater, Sha256Digest};
use serde::{Deserialize, Serialize};

use crate::entry::Entry;

/// The derived state as of `size` entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// How many entries it reflects.
    pub size: u64,
    /// Highest admitted version per model name, with its manifest digest.
    pub high_water: BTreeMap<String, HighWater>,
    /// SHA-256 of the trust policy of the latest admission or policy change.
    pub policy: Option<Sha256Digest>,
}

impl View {
    /// Folds one more entry in.
    pub fn apply(&mut self, entry: &Entry) {
        self.size += 1;
        match entry {
            Entry::ModelAdmitted {
                model,
                version,
                manifest_sha256,
                policy_sha256,
                ..
            } => {
                let raise = self
                    .high_water
                    .get(model)
                    .is_none_or(|hw| *version > hw.version);
                if raise {
                    self.high_water.insert(
                        model.clone(),
                        HighWater {
                            version: version.clone(),
                            manifest_sha256: *manifest_sha256,
                        },
                    );
                }
                self.policy = Some(*policy_sha256);
            }
            Entry::PolicyChanged { to, .. } => self.policy = Some(*to),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn admitted(version: &str, digest: u8) -> Entry {
        Entry::ModelAdmitted {
            time: "2026-11-28T00:00:00Z".parse().unwrap(),
            model: "m".into(),
            version: version.parse().unwrap(),
            model_sha256: Sha256Digest::from_bytes([0; 32]),
            manifest_sha256: Sha256Digest::from_bytes([digest; 32]),
            signer: "k".into(),
            signer_fingerprint: Sha256Digest::from_bytes([0; 32]),
            policy_sha256: Sha256Digest::from_bytes([digest; 32]),
        }
    }

    #[test]
    fn marks_only_rise() {
        let mut v = View::default();
        v.apply(&admitted("1.2.0", 1));
        v.apply(&admitted("1.1.0", 2));
        assert_eq!(v.high_water["m"].version.to_string(), "1.2.0");
        assert_eq!(
            v.high_water["m"].manifest_sha256,
            Sha256Digest::from_bytes([1; 32])
        );
        v.apply(&admitted("2.0.0", 3));
        assert_eq!(v.high_water["m"].version.to_string(), "2.0.0");
        assert_eq!(v.size, 3);
        assert_eq!(v.policy, Some(Sha256Digest::from_bytes([3; 32])));
    }
}
