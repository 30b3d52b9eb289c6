//! Builds the sandbox guest for wasm32, turns it into a component, and pins it.
//!
//! The guest is compiled by a nested cargo with its own target directory (as
//! wasmtime's test-programs do), so `cargo build`/`cargo test` on the host
//! need no separate step. The component's SHA-256 is compiled into the host as
//! `MEDGUARD_GUEST_SHA256`: the host refuses to run any other guest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use sha2::{Digest, Sha256};

const GUEST_TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let host_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = host_dir.parent().expect("host/ sits in the workspace root");
    // Every input of the guest build: its crates, the crates they depend on
    // in this workspace (screen, certify, dicom), the lock file and the build
    // settings.
    for watched in [
        "guest",
        "screen",
        "certify",
        "dicom",
        "Cargo.lock",
        "Cargo.toml",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");

    let mut core = build_guest_core_module(root, &target_dir);
    // Experiments only (scripts/wasm-opt-report.sh): a binaryen `wasm-opt`
    // command run over the core module before it becomes a component. The
    // pin follows whatever was built, so a host built this way runs only
    // the optimised guest.
    println!("cargo:rerun-if-env-changed=MEDGUARD_GUEST_WASM_OPT");
    if let Some(command) = env::var_os("MEDGUARD_GUEST_WASM_OPT").filter(|c| !c.is_empty()) {
        core = wasm_opt(&command, &core, &target_dir);
    }
    let component = wit_component::ComponentEncoder::default()
        .module(&core)
        .and_then(|e| e.validate(true).encode())
        .unwrap_or_else(|e| panic!("turning the guest into a component failed: {e:#}"));

    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("medguard_guest.wasm");
    fs::write(&out, &component).expect("write the guest component");
    println!("cargo:rustc-env=MEDGUARD_GUEST_WASM={}", out.display());
    println!(
        "cargo:rustc-env=MEDGUARD_GUEST_SHA256={}",
        hex::encode(Sha256::digest(&component))
    );
}

fn build_guest_core_module(root: &Path, target_dir: &Path) -> Vec<u8> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            // The lock file decides the guest's dependencies, as the host's.
            "--locked",
            "--package",
            "medguard-guest",
            "--profile",
            "guest",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // The outer build's flags and wrappers (clippy-driver, coverage) are for
        // the host; the guest takes its flags from .cargo/config.toml.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo to build the guest");
    if !status.success() {
        panic!(
            "building the sandbox guest failed; if the error above says the target is missing, \
             run `rustup target add {GUEST_TARGET}` (scripts/demo.sh and scripts/test.sh do)"
        );
    }
    let wasm = target_dir
        .join(GUEST_TARGET)
        .join("guest")
        .join("medguard_guest.wasm");
    fs::read(&wasm).unwrap_or_else(|e| panic!("read {}: {e}", wasm.display()))
}

/// Runs `command` (a wasm-opt invocation, its flags included, split on
/// whitespace) as `command in.wasm -o out.wasm` and returns out.wasm.
fn wasm_opt(command: &std::ffi::OsStr, core: &[u8], target_dir: &Path) -> Vec<u8> {
    let command = command.to_string_lossy();
    let mut words = command.split_whitespace();
    let program = words.next().expect("MEDGUARD_GUEST_WASM_OPT is not empty");
    let input = target_dir.join("medguard_guest.pre-opt.wasm");
    let output = target_dir.join("medguard_guest.opt.wasm");
    fs::write(&input, core).expect("write the core module for wasm-opt");
    let status = Command::new(program)
        .args(words)
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .status()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(status.success(), "{command} failed");
    fs::read(&output).unwrap_or_else(|e| panic!("read {}: {e}", output.display()))
}
