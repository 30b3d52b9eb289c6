//! Prepared snapshots: a session started from the snapshot answers exactly
//! as one that loaded the model, shares nothing with any other session,
//! serves only the manifest it was taken for, and is never loaded from the
//! cache unverified.

use std::fs;
use std::time::Duration;

use medguard::sandbox::{CacheUse, CompiledCache, Limits, Runtime, SandboxError, ScreenOptions};
use medguard_attest::vouch_unsigned;
use medguard_tests::{
    assert_golden_pneumonia, bundled_model, golden, load_input, model_dir, repo_root, shared_cache,
    shared_program_owned,
};

/// A cache of this test's own, seeded with the shared test cache's key and
/// entries (so nothing is compiled twice), that the test may damage.
fn private_cache_copy() -> (tempfile::TempDir, CompiledCache) {
    // The shared cache holds the guest and the bundled model's snapshot.
    let program = shared_program_owned();
    program.prepare(&bundled_model()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    for entry in fs::read_dir(repo_root().join("target/test-guest-cache")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "cache.key" || name.ends_with(".cwasm") {
            fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    let cache = CompiledCache::open(&dir).unwrap();
    (tmp, cache)
}

#[test]
fn a_prepared_session_answers_bit_for_bit_as_a_loaded_one() {
    let model = bundled_model();
    let program = shared_program_owned();
    let options = ScreenOptions {
        seed: 7,
        source_bits: 8,
        withhold_rejected: true,
    };
    let answers = |program: &medguard::sandbox::GuestProgram| {
        golden()
            .samples
            .iter()
            .map(|sample| {
                let batch = load_input(&model, &model_dir().join(&sample.file));
                let mut session = program.session(&model).unwrap();
                let probabilities = session.classify(&batch.shape, &batch.data).unwrap();
                let screened = session.screen(&batch.shape, &batch.data, options).unwrap();
                format!("{probabilities:?} {screened:?}")
            })
            .collect::<Vec<_>>()
    };
    assert!(!program.is_prepared(&model));
    let loaded = answers(&program);
    let before = program.sessions_started();
    program.prepare(&model).unwrap();
    assert!(program.is_prepared(&model));
    let prepared = answers(&program);
    assert_eq!(loaded, prepared);
    // The second round came from the snapshot, one session per sample.
    assert_eq!(
        program.sessions_from_snapshot(),
        golden().samples.len() as u64
    );
    assert!(program.sessions_started() - before >= golden().samples.len() as u64);
}

#[test]
fn a_trap_ends_one_prepared_session_and_never_the_snapshot() {
    let model = bundled_model();
    // A deadline that the largest batch, screened, cannot meet and one image
    // classified easily does (about 10 ms against 400).
    let runtime = Runtime::new(Limits {
        deadline: Duration::from_millis(400),
        ..Limits::default()
    })
    .unwrap();
    let guest = medguard::guest::bundled().unwrap();
    let (program, _) = runtime.load_guest(&guest, Some(&shared_cache())).unwrap();
    program.prepare(&model).unwrap();
    let sample = &golden().samples[0];
    let one = load_input(&model, &model_dir().join(&sample.file));
    let max_batch = model.manifest().max_batch as usize;
    let mut shape = one.shape;
    shape[0] = max_batch as u32;
    let many = one.data.repeat(max_batch);
    let options = ScreenOptions {
        seed: 1,
        source_bits: 8,
        withhold_rejected: true,
    };
    let mut doomed = program.session(&model).unwrap();
    for _ in 0..20 {
        match doomed.screen(&shape, &many, options) {
            Err(SandboxError::Deadline(_)) => break,
            Ok(_) => continue,
            Err(e) => panic!("expected the deadline, got {e}"),
        }
    }
    assert!(matches!(
        doomed.classify(&one.shape, &one.data),
        Err(SandboxError::Poisoned)
    ));
    let probabilities = program
        .session(&model)
        .unwrap()
        .classify(&one.shape, &one.data)
        .unwrap();
    assert_golden_pneumonia(&model, &probabilities[0], sample);
}

#[test]
fn a_snapshot_serves_only_the_manifest_it_was_taken_for() {
    let model = bundled_model();
    let program = shared_program_owned();
    program.prepare(&model).unwrap();
    // The same model bytes under a manifest with another screening profile:
    // a session must load them with that profile, not reuse the snapshot.
    let mut manifest = model.manifest().clone();
    let profile = &mut manifest.screening.as_mut().unwrap().profile;
    profile.targets.flag_fpr /= 2.0;
    let other = vouch_unsigned(manifest, model.model_bytes().to_vec()).unwrap();
    assert_ne!(other.manifest_digest(), model.manifest_digest());
    assert!(!program.is_prepared(&other));
    let from_snapshot = program.sessions_from_snapshot();
    assert!(program.session(&other).is_ok());
    assert_eq!(program.sessions_from_snapshot(), from_snapshot);
    assert!(program.session(&model).is_ok());
    assert_eq!(program.sessions_from_snapshot(), from_snapshot + 1);
    // Unserved models lose their snapshot.
    program.retain_prepared([&other]);
    assert!(!program.is_prepared(&model));
}

#[test]
fn a_tampered_snapshot_is_never_deserialised() {
    let model = bundled_model();
    let (_tmp, cache) = private_cache_copy();
    let runtime = Runtime::new(Limits::default()).unwrap();
    let guest = medguard::guest::bundled().unwrap();
    let (program, load) = runtime.load_guest(&guest, Some(&cache)).unwrap();
    assert_eq!(load.cache, CacheUse::Hit);
    assert_eq!(program.prepare(&model).unwrap().cache, CacheUse::Hit);

    let entry = program.snapshot_entry(&model).unwrap();
    assert!(entry.starts_with(cache.dir()) && entry.exists());
    let mut bytes = fs::read(&entry).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&entry, &bytes).unwrap();
    let again = program.prepare(&model).unwrap();
    assert!(
        matches!(again.cache, CacheUse::Rejected(ref why) if why.contains("integrity")),
        "{again:?}"
    );
    assert!(program.is_prepared(&model));
    assert_eq!(program.prepare(&model).unwrap().cache, CacheUse::Hit);

    // An entry renamed to pass for another model's snapshot fails its MAC too:
    // the MAC covers what the entry is, not only its bytes.
    // (The guest entry of this engine: the same suffix as the snapshot's.)
    let engine_suffix = {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        name.rsplit_once('-').unwrap().1.to_owned()
    };
    let guest_entry = fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("guest-") && n.ends_with(&engine_suffix)
            })
        })
        .expect("the guest was stored");
    fs::copy(&guest_entry, &entry).unwrap();
    let swapped = program.prepare(&model).unwrap();
    assert!(
        matches!(swapped.cache, CacheUse::Rejected(ref why) if why.contains("integrity")),
        "{swapped:?}"
    );
}

#[test]
fn the_manifest_digest_tells_every_float_apart_and_refuses_what_json_cannot_carry() {
    let model = bundled_model();
    let with = |change: fn(&mut medguard_attest::Manifest)| {
        let mut manifest = model.manifest().clone();
        change(&mut manifest);
        vouch_unsigned(manifest, model.model_bytes().to_vec())
            .unwrap()
            .manifest_digest()
    };
    let same = with(|_| {});
    assert!(same.is_some());
    assert_eq!(same, model.manifest_digest());
    let zero = with(|m| m.screening.as_mut().unwrap().profile.targets.flag_fpr = 0.0);
    let negative_zero = with(|m| m.screening.as_mut().unwrap().profile.targets.flag_fpr = -0.0);
    assert!(zero.is_some() && negative_zero.is_some());
    assert_ne!(zero, negative_zero);
    assert_eq!(
        with(|m| m.screening.as_mut().unwrap().profile.targets.flag_fpr = f64::INFINITY),
        None
    );
    assert_eq!(
        with(|m| m.screening.as_mut().unwrap().profile.targets.flag_fpr = f64::NAN),
        None
    );
}
