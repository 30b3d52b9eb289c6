//! The C example and the contract test, compiled with the system C compiler
//! against the committed header and the library, under AddressSanitizer:
//! the example's answers are `medguard predict --json`'s. The C side is
//! instrumented (no invalid access to what the library returns, no use
//! after free); the sanitizer's allocator and LeakSanitizer cover every
//! allocation of the process, the library's included (no leak, no double
//! or invalid free). The Rust side's own accesses are not instrumented.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::*;

/// Compiles `source` with AddressSanitizer (and LeakSanitizer, its
/// default on Linux) into `dir`, linked to the library with an rpath.
fn compile(source: &Path, dir: &Path) -> PathBuf {
    let lib_dir = library().parent().unwrap().to_owned();
    let exe = dir.join(source.file_stem().unwrap());
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .args(["-fsanitize=address", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(repo_root().join("embed/include"))
        .arg(source)
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lmedguard_embed", "-lpthread", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compiling {}: {}",
        source.display(),
        text(&out.stderr)
    );
    exe
}

/// Runs a sanitized program: any ASan or LSan report fails it (exitcode 86,
/// distinct from the programs' own 0, 1, 2).
fn run_sanitized(exe: &Path, args: &[&Path], data: &Path) -> Output {
    let out = Command::new(exe)
        .args(args)
        .env("MEDGUARD_CACHE_DIR", guest_cache())
        .env("XDG_DATA_HOME", data)
        // wasmtime handles its own SIGSEGV (guard pages): ASan must leave
        // that signal to it. Leaks are checked at exit.
        .env(
            "ASAN_OPTIONS",
            "handle_segv=0:handle_sigbus=0:detect_leaks=1:exitcode=86:abort_on_error=0",
        )
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        out.status.code() != Some(86)
            && !stderr.contains("AddressSanitizer")
            && !stderr.contains("LeakSanitizer"),
        "{} under AddressSanitizer: {stderr}",
        exe.display()
    );
    out
}

#[test]
fn the_c_example_gives_the_clis_answers_without_leaking() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile(&repo_root().join("embed/examples/c/classify.c"), tmp.path());
    let files = inputs(tmp.path());
    let seed = 20261203;
    let (data, policy, model) = (tmp.path().join("data"), demo_policy(), model_dir());
    let seed_text = seed.to_string();
    let mut args: Vec<&Path> = vec![
        &data,
        &policy,
        &model,
        "--seed".as_ref(),
        seed_text.as_ref(),
    ];
    args.extend(files.iter().map(PathBuf::as_path));
    let out = run_sanitized(&exe, &args, tmp.path());
    // Attacked images are rejected: exit 1, as the CLI.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // Prepared: every answer below came from a sandbox started from the
    // model's snapshot, the CLI's from one that loaded the model.
    assert!(
        !text(&out.stderr).contains("classify: note:"),
        "{}",
        text(&out.stderr)
    );
    let c_answers: Vec<(String, Value)> = text(&out.stdout)
        .lines()
        .map(|line| {
            let (file, json) = line.split_once('\t').unwrap();
            (file.to_owned(), serde_json::from_str(json).unwrap())
        })
        .collect();
    assert_eq!(c_answers.len(), files.len(), "{}", text(&out.stdout));

    // The CLI reads PGM as no format it knows; it gets the PNG or .npy the
    // frame buffer came from.
    let source = |f: &Path| match f.extension().and_then(|e| e.to_str()) {
        Some("pgm") if f.to_string_lossy().contains("pgd8") => f.with_extension("npy"),
        Some("pgm") => model_dir()
            .join("samples")
            .join(f.with_extension("png").file_name().unwrap()),
        _ => f.to_owned(),
    };
    let cli_files: Vec<PathBuf> = files.iter().map(|f| source(f)).collect();
    let (cli_answers, cli) = predict(&cli_files, seed, &[]);
    assert_eq!(cli.status.code(), Some(1), "{}", text(&cli.stderr));
    assert_eq!(cli_answers.len(), files.len());

    let mut rejected = 0;
    for ((file, c), (_, cli)) in c_answers.iter().zip(&cli_answers) {
        assert_eq!(comparable(c), comparable(cli), "{file}: C and CLI disagree");
        assert!(
            c["receipt"]["checkpoint"].as_str().is_some(),
            "{file}: no receipt"
        );
        if file.contains("pgd8") {
            assert_eq!(
                (c["verdict"].as_str(), &c["label"]),
                (Some("reject"), &Value::Null)
            );
            rejected += 1;
        } else {
            assert!(c["label"].is_string(), "{file}: {c}");
        }
    }
    assert_eq!(rejected, 4);
    // A frame buffer and its PNG are the same image to the guard.
    assert_eq!(comparable(&c_answers[0].1), comparable(&c_answers[4].1));
}

#[test]
fn the_c_example_refuses_a_tampered_model_with_the_clis_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile(&repo_root().join("embed/examples/c/classify.c"), tmp.path());
    let tampered = tampered_model(tmp.path());
    let sample = model_dir().join("samples/normal-1.png");
    let data = tmp.path().join("data");
    let out = run_sanitized(
        &exe,
        &[&data, &demo_policy(), &tampered, &sample],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let c_reason = text(&out.stderr)
        .strip_prefix("classify: refused: ")
        .unwrap_or_else(|| panic!("{}", text(&out.stderr)))
        .trim_end()
        .to_owned();
    assert!(c_reason.contains("model.onnx"), "{c_reason}");

    let cli = Command::new(medguard_bin())
        .args(["predict", "--json"])
        .arg(&tampered)
        .arg(&sample)
        .env("MEDGUARD_CACHE_DIR", guest_cache())
        .env("MEDGUARD_TRUST_POLICY", demo_policy())
        .env("MEDGUARD_DATA_DIR", tmp.path().join("cli-data"))
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert_eq!(
        text(&cli.stderr).trim_end(),
        format!("medguard: refused: {c_reason}")
    );
}

#[test]
fn the_contract_holds_under_address_sanitizer() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = compile(&repo_root().join("embed/tests/c/contract.c"), tmp.path());
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    // The demo policy with one more comment: the same keys, another digest.
    let other = tmp.path().join("other-policy");
    std::fs::create_dir(&other).unwrap();
    let trust = repo_root().join("models/trust");
    std::fs::copy(trust.join("demo.pub.pem"), other.join("demo.pub.pem")).unwrap();
    let policy_text = std::fs::read_to_string(demo_policy()).unwrap();
    let other_policy = other.join("policy.toml");
    std::fs::write(&other_policy, format!("{policy_text}\n# another policy\n")).unwrap();
    let out = run_sanitized(
        &exe,
        &[&first, &second, &demo_policy(), &model_dir(), &other_policy],
        tmp.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).ends_with("contract: all checks passed\n"));
}
