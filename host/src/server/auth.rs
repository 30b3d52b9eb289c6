//! Who may ask: bearer tokens from a file of names, SHA-256 digests of the
//! tokens and the models each may use. The file never holds a token, and
//! the ledger records the name, never the token.
//!
//! ```toml
//! [[tokens]]
//! name = "pacs-reader-1"                 # what the ledger records
//! sha256 = "9f86d0...0f00a08"            # printf %s "$TOKEN" | sha256sum
//! models = ["pneumonia-cnn"]             # or ["*"] for every model served
//! repository = false                     # true: may also load and unload them
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use medguard_attest::Sha256Digest;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// The token file, parsed.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

#[derive(Debug, Clone)]
struct TokenEntry {
    name: String,
    sha256: Sha256Digest,
    models: BTreeSet<String>,
    repository: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    models: Vec<String>,
    #[serde(default)]
    repository: bool,
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
#[error("token file {path}: {reason}")]
pub struct TokensError {
    path: String,
    reason: String,
}

/// What a request's credentials allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A token from the file: its name.
    Named(String),
    /// Tokens are off (no token file): anyone on the listening address.
    Anyone,
}

impl Caller {
    /// The name the ledger records: the token's, or none.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Named(name) => Some(name),
            Self::Anyone => None,
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No bearer token, or one the file does not know: 401.
    Unauthenticated,
    /// A known token that may not use this model: 403.
    Forbidden,
}

impl Tokens {
    /// Reads the token file at `path` (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let err = |reason: String| TokensError {
            path: path.display().to_string(),
            reason,
        };
        let bytes = crate::model_dir::read_capped(path, 1 << 20).map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8".into()))?;
        Self::parse(&text).map_err(err)
    }

    /// Parses a token file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = BTreeSet::new();
        let mut entries = Vec::with_capacity(file.tokens.len());
        for e in file.tokens {
            if e.name.is_empty() || e.name.len() > 128 || e.name.chars().any(crate::cli::hostile) {
                return Err(format!(
                    "token name {:?} must be 1 to 128 printable characters",
                    e.name
                ));
            }
            if !names.insert(e.name.clone()) {
                return Err(format!("token name {:?} is listed twice", e.name));
            }
            let sha256 = e.sha256.parse::<Sha256Digest>().map_err(|why| {
                format!(
                    "token {:?}: sha256 {why}; write the SHA-256 of the token, not the token",
                    e.name
                )
            })?;
            if entries.iter().any(|t: &TokenEntry| t.sha256 == sha256) {
                return Err(format!(
                    "token {:?} has the same digest as another: one token, one name",
                    e.name
                ));
            }
            if e.models.is_empty() {
                return Err(format!(
                    "token {:?} may use no model; list models or \"*\"",
                    e.name
                ));
            }
            entries.push(TokenEntry {
                name: e.name,
                sha256,
                models: e.models.into_iter().collect(),
                repository: e.repository,
            });
        }
        Ok(Self { entries })
    }

    /// Checks an `Authorization` header value for `model`. Every entry is
    /// compared, in constant time, whatever matches: the time taken says
    /// nothing about which digest came close.
    pub fn check(&self, authorization: Option<&[u8]>, model: &str) -> Result<Caller, Denied> {
        self.find(authorization, model)
            .map(|e| Caller::Named(e.name.clone()))
    }

    /// As [`Tokens::check`], for loading or unloading `model`: the token
    /// must also be marked `repository = true`.
    pub fn check_repository(
        &self,
        authorization: Option<&[u8]>,
        model: &str,
    ) -> Result<Caller, Denied> {
        let entry = self.find(authorization, model)?;
        if entry.repository {
            Ok(Caller::Named(entry.name.clone()))
        } else {
            Err(Denied::Forbidden)
        }
    }

    /// A known token, whatever it may use (`Unauthenticated` otherwise):
    /// who asks for the repository index.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<Caller, Denied> {
        self.entry(authorization)
            .map(|e| Caller::Named(e.name.clone()))
    }

    fn find(&self, authorization: Option<&[u8]>, model: &str) -> Result<&TokenEntry, Denied> {
        let entry = self.entry(authorization)?;
        if entry.models.contains("*") || entry.models.contains(model) {
            Ok(entry)
        } else {
            Err(Denied::Forbidden)
        }
    }

    fn entry(&self, authorization: Option<&[u8]>) -> Result<&TokenEntry, Denied> {
        let token = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthenticated)?;
        let digest = Sha256Digest::of(token);
        let mut found: Option<&TokenEntry> = None;
        for entry in &self.entries {
            if bool::from(entry.sha256.as_bytes().ct_eq(digest.as_bytes())) {
                found = Some(entry);
            }
        }
        found.ok_or(Denied::Unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tokens() -> Tokens {
        let a = Sha256Digest::of(b"secret-a");
        let b = Sha256Digest::of(b"secret-b");
        Tokens::parse(&format!(
            "[[tokens]]\nname = \"reader\"\nsha256 = \"{a}\"\nmodels = [\"pneumonia-cnn\"]\n\
             [[tokens]]\nname = \"admin\"\nsha256 = \"{b}\"\nmodels = [\"*\"]\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_known_token_gets_its_name_and_only_its_models() {
        let t = tokens();
        assert_eq!(
            t.check(Some(b"Bearer secret-a"), "pneumonia-cnn"),
            Ok(Caller::Named("reader".into()))
        );
        assert_eq!(
            t.check(Some(b"Bearer secret-a"), "other"),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            t.check(Some(b"Bearer secret-b"), "other"),
            Ok(Caller::Named("admin".into()))
        );
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_unauthenticated() {
        let t = tokens();
        for header in [
            None,
            Some(&b"secret-a"[..]),
            Some(b"Basic secret-a"),
            Some(b"Bearer "),
            Some(b"Bearer secret-c"),
            Some(b"bearer secret-a"),
        ] {
            assert_eq!(
                t.check(header, "pneumonia-cnn"),
                Err(Denied::Unauthenticated),
                "{header:?}"
            );
        }
    }

    #[test]
    fn a_file_with_a_token_instead_of_its_digest_is_refused() {
        let err = Tokens::parse(
            "[[tokens]]\nname = \"x\"\nsha256 = \"my-secret-token\"\nmodels = [\"*\"]\n",
        )
        .unwrap_err();
        assert!(err.contains("not the token"), "{err}");
        let dup = Sha256Digest::of(b"t");
        let err = Tokens::parse(&format!(
            "[[tokens]]\nname = \"x\"\nsha256 = \"{dup}\"\nmodels = [\"*\"]\n\
             [[tokens]]\nname = \"x\"\nsha256 = \"{dup}\"\nmodels = [\"*\"]\n"
        ))
        .unwrap_err();
        assert!(err.contains("twice"), "{err}");
        // Two names for one token would let the ledger name the wrong one.
        let err = Tokens::parse(&format!(
            "[[tokens]]\nname = \"x\"\nsha256 = \"{dup}\"\nmodels = [\"*\"]\n\
             [[tokens]]\nname = \"y\"\nsha256 = \"{dup}\"\nmodels = [\"*\"]\n"
        ))
        .unwrap_err();
        assert!(err.contains("same digest"), "{err}");
        // A name that would reorder what an auditor's terminal shows.
        let err = Tokens::parse(&format!(
            "[[tokens]]\nname = \"evil\u{202e}\"\nsha256 = \"{dup}\"\nmodels = [\"*\"]\n"
        ))
        .unwrap_err();
        assert!(err.contains("printable"), "{err}");
    }
}
