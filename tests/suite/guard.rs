//! The guard library as the server, PACS bridge and embeddings use it:
//! admit, classify in a fresh sandbox, record, return with a receipt.

use std::sync::Arc;

use medguard::admission::load_policy;
use medguard::guard::{
    Admission, ClassifyError, ClassifyOptions, Guard, InputRefusal, NamedPolicy, ScreeningPolicy,
    Verdict,
};
use medguard_tests::{model_dir, repo_root, shared_program_owned};

fn demo_policy() -> NamedPolicy {
    let path = repo_root().join("models/trust/demo-policy.toml");
    let (policy, sha256) = load_policy(&path).unwrap();
    NamedPolicy {
        policy,
        sha256,
        name: path.display().to_string(),
    }
}

const OPTIONS: ClassifyOptions = ClassifyOptions {
    seed: 20261128,
    policy: ScreeningPolicy::Enforce,
    allow_unscreened: false,
};

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(model_dir().join(name)).unwrap()
}

/// Issue 10, item 4: one `predict` call used to run every input through one
/// instance. Each input now gets a session of its own.
#[test]
fn every_input_gets_a_fresh_sandbox_session_and_a_receipt() {
    let data = tempfile::tempdir().unwrap();
    let guard = Guard::open(data.path(), demo_policy())
        .unwrap()
        .with_sandbox(shared_program_owned());
    let Admission::Admitted { model, .. } = guard.admit(&model_dir()).unwrap() else {
        panic!("the bundled model is admitted")
    };
    let program = guard.program().unwrap();
    let before = program.sessions_started();
    for name in [
        "samples/normal-1.png",
        "samples/pneumonia-1.png",
        "samples/normal-2.png",
    ] {
        let out = guard.classify(&model, &sample(name), OPTIONS).unwrap();
        assert_eq!(out.images.len(), 1);
        let image = &out.images[0];
        assert_ne!(image.verdict, Verdict::Reject, "{name}");
        assert!(image.label.is_some());
        image.receipt.verify(guard.verifier()).unwrap();
    }
    assert_eq!(program.sessions_started() - before, 3);
}

#[test]
fn a_rejected_input_gets_no_prediction_and_a_bad_one_does_not_stop_the_next() {
    let data = tempfile::tempdir().unwrap();
    let guard = Guard::open(data.path(), demo_policy())
        .unwrap()
        .with_sandbox(shared_program_owned());
    let Admission::Admitted { model, .. } = guard.admit(&model_dir()).unwrap() else {
        panic!("the bundled model is admitted")
    };
    let attacked = guard
        .classify(&model, &sample("adversarial/pgd8-1.png"), OPTIONS)
        .unwrap();
    let image = &attacked.images[0];
    assert_eq!(image.verdict, Verdict::Reject);
    assert!(image.label.is_none() && image.probabilities.is_none());
    match guard.classify(&model, b"not an image", OPTIONS) {
        Err(ClassifyError::Refused(InputRefusal::Decode(_))) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        guard
            .classify(&model, &sample("samples/normal-3.png"), OPTIONS)
            .is_ok()
    );
}

#[test]
fn one_guard_serves_many_threads() {
    let data = tempfile::tempdir().unwrap();
    let guard = Arc::new(
        Guard::open(data.path(), demo_policy())
            .unwrap()
            .with_sandbox(shared_program_owned()),
    );
    let Admission::Admitted { model, .. } = guard.admit(&model_dir()).unwrap() else {
        panic!("the bundled model is admitted")
    };
    let model = Arc::new(*model);
    let bytes = Arc::new(sample("samples/pneumonia-2.png"));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (guard, model, bytes) = (guard.clone(), model.clone(), bytes.clone());
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| {
                        guard.classify(&model, &bytes, OPTIONS).unwrap().images[0]
                            .receipt
                            .index
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut indices: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), 12, "every result has its own entry");
}
