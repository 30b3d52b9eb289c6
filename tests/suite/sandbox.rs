//! Hostile guests: each misbehaviour ends in a typed error, and the same
//! runtime then serves a normal request with the real guest.

use std::time::{Duration, Instant};

use medguard::guest::GuestModule;
use medguard::sandbox::{GuestProgram, Limits, Runtime, SandboxError, ScreenOptions};
use medguard_tests::{
    assert_golden_pneumonia, bundled_model, golden, hostile_component, hostile_screening_component,
    hostile_smoothing_component, load_input, model_dir, shared_cache,
};

const DEADLINE: Duration = Duration::from_millis(300);
const MEMORY_CAP: usize = 128 << 20;

fn tight_runtime() -> Runtime {
    Runtime::new(Limits {
        memory_bytes: MEMORY_CAP,
        deadline: DEADLINE,
        ..Limits::default()
    })
    .unwrap()
}

fn load(runtime: &Runtime, component: Vec<u8>) -> GuestProgram {
    runtime
        .load_guest(&GuestModule::hostile_for_tests(component), None)
        .unwrap()
        .0
}

/// After a hostile guest failed, the same runtime must still serve the real
/// guest and give the golden answer.
fn assert_runtime_still_serves(runtime: &Runtime) {
    let guest = medguard::guest::bundled().unwrap();
    let program = runtime.load_guest(&guest, Some(&shared_cache())).unwrap().0;
    let model = bundled_model();
    let sample = &golden().samples[0];
    let batch = load_input(&model, &model_dir().join(&sample.file));
    let probs = program
        .session(&model)
        .unwrap()
        .classify(&batch.shape, &batch.data)
        .unwrap();
    assert_golden_pneumonia(&model, &probs[0], sample);
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let runtime = tight_runtime();
    let spin = load(
        &runtime,
        hostile_component("(loop $l (br $l)) unreachable", "unreachable", ""),
    );
    let model = bundled_model();
    for _ in 0..2 {
        let started = Instant::now();
        let err = spin
            .session(&model)
            .err()
            .expect("the loop must not return");
        let elapsed = started.elapsed();
        assert!(
            matches!(err, SandboxError::Deadline(d) if d == DEADLINE),
            "{err}"
        );
        // Epoch ticks are 5 ms; allow generous slack for a loaded CI machine.
        assert!(
            elapsed >= DEADLINE - Duration::from_millis(10),
            "stopped early: {elapsed:?}"
        );
        assert!(
            elapsed < DEADLINE + Duration::from_millis(700),
            "stopped late: {elapsed:?}"
        );
    }
    assert_runtime_still_serves(&runtime);
}

#[test]
fn growing_memory_past_the_cap_is_refused() {
    let runtime = tight_runtime();
    let hog = load(
        &runtime,
        hostile_component(
            "(loop $l (drop (memory.grow (i32.const 64))) (br $l)) unreachable",
            "unreachable",
            "",
        ),
    );
    let err = hog
        .session(&bundled_model())
        .err()
        .expect("the hog must not return");
    match err {
        SandboxError::MemoryCap { requested, cap } => {
            assert_eq!(cap, MEMORY_CAP);
            assert!(requested > MEMORY_CAP);
        }
        other => panic!("expected a memory-cap error, got {other}"),
    }
    assert_runtime_still_serves(&runtime);
}

#[test]
fn a_memory_grow_that_the_guest_checks_still_cannot_pass_the_cap() {
    // A guest that tests memory.grow's result and keeps trying gets no memory
    // past the cap either: the first refused grow ends the call.
    let runtime = tight_runtime();
    let careful = load(
        &runtime,
        hostile_component(
            "(block $done (loop $l (br_if $done (i32.eq (memory.grow (i32.const 1024)) (i32.const -1))) (br $l))) (i32.const 0)",
            "unreachable",
            "",
        ),
    );
    assert!(matches!(
        careful.session(&bundled_model()),
        Err(SandboxError::MemoryCap { .. })
    ));
}

#[test]
fn a_stack_overflow_is_a_typed_error() {
    let runtime = tight_runtime();
    let recurse = load(
        &runtime,
        hostile_component(
            "(call $down (i32.const 0))",
            "unreachable",
            "(func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))",
        ),
    );
    let err = recurse
        .session(&bundled_model())
        .err()
        .expect("recursion must not return");
    assert!(matches!(err, SandboxError::StackOverflow), "{err}");
    assert_runtime_still_serves(&runtime);
}

#[test]
fn a_trap_is_a_typed_error_and_ends_only_its_session() {
    let runtime = tight_runtime();
    let crash = load(
        &runtime,
        hostile_component("unreachable", "unreachable", ""),
    );
    let err = crash
        .session(&bundled_model())
        .err()
        .expect("unreachable traps");
    assert!(matches!(err, SandboxError::Trap { .. }), "{err}");
    // The trap's kind is named, and its cause (with the guest's stack) kept.
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    assert_runtime_still_serves(&runtime);
}

#[test]
fn a_guest_that_imports_anything_is_not_linked() {
    // The sandbox grants no imports at all; a guest with the real world plus
    // one host function is refused at link time, before it runs, and the
    // error names what it asked for.
    let component = medguard_tests::component_importing_log();
    let runtime = tight_runtime();
    let err = runtime
        .load_guest(&GuestModule::hostile_for_tests(component), None)
        .err()
        .expect("must not link");
    match &err {
        SandboxError::Link(cause) => {
            // The cause is kept whole, not flattened: walk its chain.
            let mut chain = cause.to_string();
            let mut next = cause.source();
            while let Some(e) = next {
                chain.push_str(&format!(": {e}"));
                next = e.source();
            }
            assert!(chain.contains("log"), "{chain}");
        }
        other => panic!("expected a link error, got {other}"),
    }
}

#[test]
fn the_real_guest_imports_nothing() {
    let guest = medguard::guest::bundled().unwrap();
    let imports = imports_of(guest.bytes());
    assert!(imports.is_empty(), "the guest imports {imports:?}");
}

/// Names of a component's imports, read back through wit-component.
fn imports_of(component: &[u8]) -> Vec<String> {
    match wit_component::decode(component).expect("the guest decodes") {
        wit_component::DecodedWasm::Component(resolve, world) => resolve.worlds[world]
            .imports
            .keys()
            .map(|k| resolve.name_world_key(k))
            .collect(),
        wit_component::DecodedWasm::WitPackage(..) => {
            panic!("the guest is a WIT package, not a component")
        }
    }
}

/// A data segment that lays out, at 256, `screen`'s answer for one image:
/// a prediction (0.25, 0.75) with `logits`, `statistics` zero values, and
/// no verdict (the canonical ABI's layout of `result<list<screened-image>>`).
/// Below 1024, where the guest's bump allocator never puts the host's
/// arguments.
fn unjudged_answer(statistics: usize, logits: [f32; 2]) -> String {
    answer_with(statistics, true, logits)
}

/// The same answer, with or without its probabilities.
fn answer_with(statistics: usize, probabilities_present: bool, logits: [f32; 2]) -> String {
    const BASE: u32 = 256;
    let (record, probabilities, logit_values, values) =
        (BASE + 64, BASE + 256, BASE + 272, BASE + 512);
    assert!(statistics <= 32, "the answer must stay below 1024");
    let mut memory = vec![0u8; 512 + 8 * statistics];
    let mut put = |at: u32, bytes: &[u8]| {
        let at = (at - BASE) as usize;
        memory[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // result::ok, the list (pointer, length 1).
    put(BASE + 4, &record.to_le_bytes());
    put(BASE + 8, &1u32.to_le_bytes());
    // probabilities: some(list) at 0; logits: some(list) at 12; statistics:
    // list at 24; screening: none at 32 (the byte stays 0); off-grid at 64.
    put(record, &[u8::from(probabilities_present)]);
    put(record + 4, &probabilities.to_le_bytes());
    put(record + 8, &2u32.to_le_bytes());
    put(record + 12, &[1]);
    put(record + 16, &logit_values.to_le_bytes());
    put(record + 20, &2u32.to_le_bytes());
    put(record + 24, &values.to_le_bytes());
    put(record + 28, &(statistics as u32).to_le_bytes());
    put(probabilities, &0.25f32.to_le_bytes());
    put(probabilities + 4, &0.75f32.to_le_bytes());
    put(logit_values, &logits[0].to_le_bytes());
    put(logit_values + 4, &logits[1].to_le_bytes());
    let escaped: String = memory.iter().map(|b| format!("\\{b:02x}")).collect();
    format!(r#"(data (i32.const {BASE}) "{escaped}")"#)
}

/// Logits whose softmax is (0.25, 0.75): 0 and ln 3.
const COHERENT_LOGITS: [f32; 2] = [0.0, 1.098_612_3];

/// The bundled model, its screening statistics, its first golden sample and
/// the screening options of the hostile-answer tests below.
fn screening_call() -> (
    medguard_attest::AttestedModel,
    Vec<medguard_screen::Statistic>,
    medguard::input::Batch,
    ScreenOptions,
) {
    let model = bundled_model();
    let statistics = model
        .manifest()
        .screening
        .as_ref()
        .unwrap()
        .profile
        .statistics
        .clone();
    let batch = load_input(&model, &model_dir().join(&golden().samples[0].file));
    let options = ScreenOptions {
        seed: 1,
        source_bits: 8,
        withhold_rejected: true,
    };
    (model, statistics, batch, options)
}

#[test]
fn an_image_without_a_verdict_from_a_calibrated_detector_is_refused() {
    // Otherwise it would pass as "unscreened", with its label, under enforce.
    let (model, statistics, batch, options) = screening_call();
    let lying = load(
        &tight_runtime(),
        hostile_screening_component(
            "(i32.const 256)",
            &unjudged_answer(statistics.len(), COHERENT_LOGITS),
        ),
    );
    let err = lying
        .session(&model)
        .unwrap()
        .screen(&batch.shape, &batch.data, options)
        .expect_err("an unjudged image must not pass");
    assert!(
        matches!(err, SandboxError::MalformedScreening(ref why) if why.contains("without a verdict")),
        "{err}"
    );
    // The same answer is what calibration expects: statistics, no verdict.
    let measured = lying
        .calibration_session(&model, &statistics)
        .unwrap()
        .screen(&batch.shape, &batch.data, options)
        .unwrap();
    assert!(measured[0].screening.is_none());
    assert_eq!(
        measured[0].probabilities.as_deref(),
        Some(&[0.25f32, 0.75][..])
    );
    assert_eq!(measured[0].logits.as_deref(), Some(&COHERENT_LOGITS[..]));
}

#[test]
fn logits_that_do_not_give_the_probabilities_are_refused() {
    // A client reading the logits would see another answer than the
    // probabilities (and the recorded label) say.
    let (model, statistics, batch, options) = screening_call();
    let cases = [
        (true, [1.098_612_3f32, 0.0]),
        (true, [0.0, 2.0]),
        (true, [0.0, f32::NAN]),
        // Within 1e-5 of (0.25, 0.75) after softmax, but not these logits.
        (true, [0.0, 1.098_612_3 + 3e-5]),
        // Logits without the probabilities they give.
        (false, COHERENT_LOGITS),
    ];
    for (probabilities, logits) in cases {
        let lying = load(
            &tight_runtime(),
            hostile_screening_component(
                "(i32.const 256)",
                &answer_with(statistics.len(), probabilities, logits),
            ),
        );
        let err = lying
            .calibration_session(&model, &statistics)
            .unwrap()
            .screen(&batch.shape, &batch.data, options)
            .expect_err("incoherent logits must not pass");
        assert!(
            matches!(err, SandboxError::MalformedScreening(ref why) if why.contains("logits")),
            "{probabilities} {logits:?}: {err}"
        );
    }
}

/// The smoothing certificate inside `c`.
fn smoothed(c: &medguard_certify::Certificate) -> &medguard_certify::SmoothedCertificate {
    match c {
        medguard_certify::Certificate::RandomizedSmoothing(c) => c,
        other => panic!("not a smoothing certificate: {other:?}"),
    }
}

/// The bundled model with a certification section (vouched: these tests
/// are about the sandbox's answer, not admission).
fn certified_bundled_model(samples: u32) -> medguard_attest::AttestedModel {
    let model = bundled_model();
    let mut manifest = model.manifest().clone();
    manifest.certification = Some(medguard_certify::Certification::Smoothing(
        medguard_certify::Smoothing {
            sigma: 0.25,
            samples,
            alpha: 0.001,
            required_radius_l2: 0.0,
        },
    ));
    medguard_attest::vouch_unsigned(manifest, model.model_bytes().to_vec()).unwrap()
}

/// A `smooth` answer: `result::ok` of one vote list per entry of `images`.
fn votes_answer(images: &[&[u32]]) -> String {
    const BASE: u32 = 256;
    let outer = BASE + 16;
    let mut memory = vec![0u8; 16 + 8 * images.len()];
    memory[4..8].copy_from_slice(&outer.to_le_bytes());
    memory[8..12].copy_from_slice(&(images.len() as u32).to_le_bytes());
    let mut inner = outer + 8 * images.len() as u32;
    for (i, votes) in images.iter().enumerate() {
        let at = 16 + 8 * i;
        memory[at..at + 4].copy_from_slice(&inner.to_le_bytes());
        memory[at + 4..at + 8].copy_from_slice(&(votes.len() as u32).to_le_bytes());
        memory.extend(votes.iter().flat_map(|v| v.to_le_bytes()));
        inner += 4 * votes.len() as u32;
    }
    assert!(inner < 1024, "the answer must stay below 1024");
    let escaped: String = memory.iter().map(|b| format!("\\{b:02x}")).collect();
    format!(r#"(data (i32.const {BASE}) "{escaped}")"#)
}

#[test]
fn votes_that_are_not_counts_of_the_samples_are_never_certified() {
    // A guest that inflates, splits or invents votes must not buy a radius.
    let model = certified_bundled_model(100);
    let table = model.radius_table().unwrap();
    let batch = load_input(&model, &model_dir().join(&golden().samples[0].file));
    let runtime = tight_runtime();
    for (answer, why) in [
        (votes_answer(&[&[60, 41]]), "one vote too many"),
        (votes_answer(&[&[0, 99]]), "one vote short"),
        (votes_answer(&[&[u32::MAX, 101]]), "a sum that wraps in u32"),
        (
            votes_answer(&[&[50, 25, 25]]),
            "a class the model does not have",
        ),
        (votes_answer(&[&[100]]), "a class missing"),
        (
            votes_answer(&[&[0, 100], &[0, 100]]),
            "two images' votes for one",
        ),
        (votes_answer(&[]), "no votes"),
    ] {
        let lying = load(
            &runtime,
            hostile_smoothing_component("(i32.const 256)", &answer),
        );
        let err = lying
            .session(&model)
            .unwrap()
            .certify_smoothed(&batch.shape, &batch.data, table, 1)
            .expect_err(why);
        assert!(
            matches!(
                err,
                SandboxError::MalformedVotes(_) | SandboxError::MalformedOutput { .. }
            ),
            "{why}: {err}"
        );
    }
    // The honest count of the same shape certifies.
    let honest = load(
        &runtime,
        hostile_smoothing_component("(i32.const 256)", &votes_answer(&[&[0, 100]])),
    );
    let certificates = honest
        .session(&model)
        .unwrap()
        .certify_smoothed(&batch.shape, &batch.data, table, 1)
        .unwrap();
    assert_eq!(smoothed(&certificates[0]).votes, Some(vec![0, 100]));
    assert!(certificates[0].radius().is_some());
    assert_runtime_still_serves(&runtime);
}

#[test]
fn a_session_budget_stops_a_long_request_and_the_next_starts_afresh() {
    const BUDGET: Duration = Duration::from_millis(150);
    // Each call keeps the default 10 s deadline: only the budget can stop it.
    let runtime = Runtime::new(Limits {
        session_budget: Some(BUDGET),
        ..Limits::default()
    })
    .unwrap();
    let guest = medguard::guest::bundled().unwrap();
    let program = runtime.load_guest(&guest, Some(&shared_cache())).unwrap().0;
    let model = certified_bundled_model(64);
    let table = model.radius_table().unwrap();
    // 32 images of 64 noised copies each: seconds of guest time, one call
    // per image, every one of them well inside its own deadline.
    let one = load_input(&model, &model_dir().join(&golden().samples[0].file));
    let images = 32;
    let data: Vec<f32> = one
        .data
        .iter()
        .copied()
        .cycle()
        .take(images * one.data.len())
        .collect();
    let started = Instant::now();
    let err = program
        .session(&model)
        .unwrap()
        .certify_smoothed(&[images as u32, 1, 28, 28], &data, table, 1)
        .expect_err("the budget must stop the request");
    let elapsed = started.elapsed();
    assert!(
        matches!(err, SandboxError::Budget(b) if b == BUDGET),
        "{err}"
    );
    assert!(err.to_string().contains("fewer images"), "{err}");
    assert!(
        elapsed < BUDGET + Duration::from_millis(700),
        "stopped late: {elapsed:?}"
    );
    // The budget is the session's: the next request has all of it again.
    assert_runtime_still_serves(&runtime);
}

#[test]
fn the_real_guest_votes_reproducibly_from_the_seed_alone() {
    // Same seed, same votes: the noise comes from the seed alone, so a
    // caller who replays a reported seed gets the answer back.
    let model = certified_bundled_model(64);
    let table = model.radius_table().unwrap();
    let program = medguard_tests::shared_program();
    let samples = &golden().samples;
    let mut data = Vec::new();
    for sample in &samples[..2] {
        data.extend(load_input(&model, &model_dir().join(&sample.file)).data);
    }
    let shape = [2, 1, 28, 28];
    let certify = |seed| {
        program
            .session(&model)
            .unwrap()
            .certify_smoothed(&shape, &data, table, seed)
            .unwrap()
    };
    let first = certify(7);
    assert_eq!(first, certify(7));
    for c in &first {
        assert_eq!(smoothed(c).votes.as_ref().unwrap().iter().sum::<u32>(), 64);
        assert_eq!(smoothed(c).samples, 64);
    }
    // Image i draws from stream i whatever else is in the batch: the
    // first image alone gets its votes in the pair.
    let alone = program
        .session(&model)
        .unwrap()
        .certify_smoothed(&[1, 1, 28, 28], &data[..784], table, 7)
        .unwrap();
    assert_eq!(alone[0], first[0]);
}

#[test]
fn the_smoothing_noise_follows_the_seed() {
    // A guest that ignored the seed (fixed noise an attacker could learn)
    // would vote the same under every seed. Near the decision boundary
    // (normal-1 and pneumonia-1 blended, as the CLI test measures) the
    // certifiable model's 400 votes split about 230 to 170: five seeds
    // giving five identical counts would be a one-in-millions accident.
    let model = medguard::model_dir::load_unsigned(
        &medguard_tests::repo_root().join("models/pneumonia-smoothed"),
    )
    .unwrap();
    let table = model.radius_table().unwrap();
    let samples = &golden().samples;
    let pixels = |label: &str| {
        let sample = samples.iter().find(|s| s.file.ends_with(label)).unwrap();
        load_input(&model, &model_dir().join(&sample.file)).data
    };
    let (normal, pneumonia) = (pixels("normal-1.png"), pixels("pneumonia-1.png"));
    let blend: Vec<f32> = normal
        .iter()
        .zip(&pneumonia)
        .map(|(a, b)| ((0.55 * a + 0.45 * b) * 255.0).round() / 255.0)
        .collect();
    let program = medguard_tests::shared_program();
    let votes: Vec<_> = (1..=5)
        .map(|seed| {
            let c = program
                .session(&model)
                .unwrap()
                .certify_smoothed(&[1, 1, 28, 28], &blend, table, seed)
                .unwrap();
            smoothed(&c[0]).votes.clone().unwrap()
        })
        .collect();
    assert!(votes.windows(2).any(|w| w[0] != w[1]), "{votes:?}");
    // And the same seed repeats them.
    let again = program
        .session(&model)
        .unwrap()
        .certify_smoothed(&[1, 1, 28, 28], &blend, table, 1)
        .unwrap();
    assert_eq!(smoothed(&again[0]).votes.as_ref(), Some(&votes[0]));
}
