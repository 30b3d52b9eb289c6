//! Where the deployment keeps its state. The data directory holds the audit
//! ledger (`ledger/`), which is also the one source of the rollback
//! high-water marks; see `medguard_ledger`.

use std::path::PathBuf;

/// `$XDG_<kind>_HOME/medguard`, else `$HOME/<fallback>/medguard`: where
/// per-user files go when no directory is given.
pub fn user_dir(xdg_var: &str, home_fallback: &str) -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(xdg_var)
        .map(|d| d.join("medguard"))
        .or_else(|| var("HOME").map(|d| d.join(home_fallback).join("medguard")))
}

/// The default data directory: `$XDG_DATA_HOME/medguard` or
/// `~/.local/share/medguard`.
pub fn default_data_dir() -> Option<PathBuf> {
    user_dir("XDG_DATA_HOME", ".local/share")
}

/// The deployment's data directory when the caller names none:
/// `$MEDGUARD_DATA_DIR` (what the CLI's `--data-dir` falls back to, and
/// what the container image sets), else [`default_data_dir`]. The C ABI
/// uses it, so that an embedded guard records into the deployment's
/// audited ledger, not a second one (one writer at a time: the ledger is
/// locked while a guard holds it).
pub fn configured_data_dir() -> Option<PathBuf> {
    std::env::var_os("MEDGUARD_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(default_data_dir)
}
