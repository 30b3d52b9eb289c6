//! The Python package's pytest suite (`python/tests`), run with the pinned
//! venv's interpreter against this build's library and `medguard` binary.
//! `scripts/test.sh` runs it with `--include-ignored`, MEDGUARD_EMBED_PYTHON
//! naming the venv's python (`scripts/python-tool.sh embed`); a bare
//! `cargo test` needs no Python.

use std::process::Command;

use super::*;

fn venv_python() -> std::ffi::OsString {
    std::env::var_os("MEDGUARD_EMBED_PYTHON")
        .expect("MEDGUARD_EMBED_PYTHON must name a python with numpy, pytest and mypy")
}

#[test]
#[ignore = "needs the pinned venv: MEDGUARD_EMBED_PYTHON=$(scripts/python-tool.sh embed)"]
fn the_python_package_passes_its_tests() {
    let out = Command::new(venv_python())
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "python/tests",
        ])
        .current_dir(repo_root())
        .env("MEDGUARD_LIBRARY", library())
        .env("MEDGUARD_BIN", medguard_bin())
        .env("MEDGUARD_TEST_MODEL", model_dir())
        .env("MEDGUARD_CACHE_DIR", guest_cache())
        // The example's subprocess imports the package from the checkout.
        .env("PYTHONPATH", repo_root().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pytest failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The type hints the package ships (`py.typed`) hold: `mypy --strict`.
#[test]
#[ignore = "needs the pinned venv: MEDGUARD_EMBED_PYTHON=$(scripts/python-tool.sh embed)"]
fn the_python_package_type_checks_strictly() {
    let out = Command::new(venv_python())
        .args(["-m", "mypy", "--strict", "--no-incremental", "medguard"])
        .current_dir(repo_root().join("python"))
        // The package loads the library at import; mypy does not import it.
        .env("MEDGUARD_LIBRARY", library())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mypy --strict:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
