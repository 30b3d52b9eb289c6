//! What the deployment derives from its ledger: the highest version admitted
//! per model (the rollback high-water marks) and the trust policy in force.
//! The ledger is the one source of truth; `view.json` only caches the result
//! with the ledger size it was computed at, so opening reads just the entries
//! appended since. The cache is sealed ([`SealedView`]): an HMAC under a key
//! derived from the ledger's own signing key, over the view and the Merkle
//! root of the entries it was computed from. A cache someone edited (say, to
//! clear the marks) fails the MAC; an old genuine one replayed is still
//! right for its prefix of the log, and one that does not match the log's
//! root at its size is for another history. Any of these is ignored and the
//! view rebuilt from the entries.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use medguard_attest::{HighWater, Sha256Digest};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::entry::Entry;
use crate::merkle::Hash;

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

/// The cache file: a view, the root of the entries it reflects, and a MAC
/// over both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedView {
    /// The cached view.
    pub view: View,
    /// Hex Merkle root of the first `view.size` entries.
    pub root: String,
    /// Hex HMAC-SHA256 of `view` and `root` under the ledger's view key.
    pub mac: String,
}

/// The key that seals the view cache, derived from the checkpoint signing
/// seed so that only the ledger (whoever can sign checkpoints anyway) can
/// write a cache it will believe.
pub(crate) fn view_key(signing_seed: &[u8; 32]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(signing_seed).expect("HMAC takes any key length");
    mac.update(b"medguard-ledger view-cache key v1");
    mac.finalize().into_bytes().into()
}

fn view_mac(key: &[u8; 32], view: &View, root: &str) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(&serde_json::to_vec(&(view, root)).ok()?);
    Some(mac)
}

impl SealedView {
    /// Seals `view`, which reflects the entries whose root is `root`.
    pub(crate) fn seal(key: &[u8; 32], view: View, root: Hash) -> Option<Self> {
        let root = root.to_string();
        let mac = hex::encode(view_mac(key, &view, &root)?.finalize().into_bytes());
        Some(Self { view, root, mac })
    }

    /// Opens the cache: the view if the MAC verifies under `key` and
    /// `root_at(size)` is the root it was sealed with. A cache this ledger
    /// sealed that the log no longer matches (larger than the log, or
    /// another root at its size) is evidence that the log was cut back or
    /// rewritten: it is reported, never silently replaced.
    pub(crate) fn open(self, key: &[u8; 32], root_at: impl FnOnce(u64) -> Option<Hash>) -> Opened {
        let sealed_here = hex::decode(&self.mac).ok().is_some_and(|tag| {
            view_mac(key, &self.view, &self.root).is_some_and(|mac| mac.verify_slice(&tag).is_ok())
        });
        if !sealed_here {
            return Opened::Ignored;
        }
        match root_at(self.view.size) {
            Some(root) if root.to_string() == self.root => Opened::View(self.view),
            _ => Opened::Contradicts {
                size: self.view.size,
                root: self.root,
            },
        }
    }
}

/// What opening the cache found.
#[derive(Debug, PartialEq)]
pub(crate) enum Opened {
    /// A cache this ledger sealed, for a prefix of this log.
    View(View),
    /// Not sealed by this ledger (edited, foreign, old format): rebuild.
    Ignored,
    /// Sealed by this ledger at `size` entries with `root`, which this log
    /// does not have.
    Contradicts {
        /// The size it was sealed at.
        size: u64,
        /// The root it was sealed with.
        root: String,
    },
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
            training: None,
        }
    }

    #[test]
    fn a_sealed_view_opens_only_unedited_and_for_its_root() {
        let key = view_key(&[7; 32]);
        let mut v = View::default();
        v.apply(&admitted("1.2.0", 1));
        let root = Hash([9; 32]);
        let sealed = SealedView::seal(&key, v.clone(), root).unwrap();
        assert_eq!(sealed.clone().open(&key, |_| Some(root)), Opened::View(v));
        // Marks cleared by hand, or another key.
        let mut edited = sealed.clone();
        edited.view.high_water.clear();
        assert_eq!(edited.open(&key, |_| Some(root)), Opened::Ignored);
        assert_eq!(
            sealed.clone().open(&view_key(&[6; 32]), |_| Some(root)),
            Opened::Ignored
        );
        // Genuine, but for another history or a longer log.
        assert!(matches!(
            sealed.clone().open(&key, |_| Some(Hash([8; 32]))),
            Opened::Contradicts { size: 1, .. }
        ));
        assert!(matches!(
            sealed.open(&key, |_| None),
            Opened::Contradicts { .. }
        ));
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
