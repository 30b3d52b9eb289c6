//! DICOM in the sandbox, measured for the README in one run:
//!
//! 1. decode and preprocess a 2048x2048 16-bit DX (12 bits stored) in the
//!    sandbox against the same code run natively (median of interleaved
//!    runs, as a ratio);
//! 2. writing the structured report;
//! 3. what downscaling does to attacks made at full resolution: the CI's
//!    flipped PGD and DeepFool images lifted to 2044x2044 (73x73 blocks, the
//!    attack an adversary who knows the area resize makes), and clean images
//!    with +-8/255 noise on every full-resolution pixel (a perturbation not
//!    planned for the resize), each decoded, screened and classified;
//! 4. with `MEDGUARD_ORTHANC` naming an Orthanc binary (scripts/test.sh
//!    installs it): the round trip per instance through a real Orthanc,
//!    the same radiograph stored a dozen times, one poll of the PACS bridge.
//!
//! Figures are also written as JSON to `$MEDGUARD_BENCH_JSON`, default
//! `target/bench/dicom.json`.
//!
//! Run: `cargo bench -p medguard-tests --bench dicom`

use std::time::{Duration, Instant};

use medguard::sandbox::ScreenOptions;
use medguard_dicom::sr::{self, Outcome, Report, Verdict};
use medguard_dicom::{DicomProfile, SourceIdentity};
use medguard_tests::{bundled_model, repo_root, shared_program};

const ROUNDS: usize = 15;

fn identity() -> SourceIdentity {
    SourceIdentity {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
        sop_instance_uid: "2.25.7001".into(),
        study_instance_uid: "2.25.7002".into(),
        series_instance_uid: "2.25.7003".into(),
        patient_name: "Bench^Patient".into(),
        patient_id: "BENCH-1".into(),
        ..SourceIdentity::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut figures = Vec::new();
    let mut add = |name: &str, value: f64, unit: &str| {
        println!("{name}: {value:.4} {unit}");
        figures.push(serde_json::json!({"name": name, "value": value, "unit": unit}));
    };
    let model = bundled_model();
    let manifest = model.manifest();
    let profile: &DicomProfile = manifest
        .dicom
        .as_ref()
        .expect("the bundled model takes DICOM");
    let program = shared_program();
    let (h, w) = (manifest.input.shape.height, manifest.input.shape.width);

    // 1. A 2048x2048 12-bit radiograph: a real sample, upsampled, with a
    //    gradient so that no two neighbouring values are equal.
    let sample = std::fs::read(repo_root().join("models/pneumonia/samples/pneumonia-2.png"))
        .expect("sample");
    let small = medguard::input::decode(&sample, &manifest.input, 1).expect("decodes");
    let side = 2048usize;
    let pixels: Vec<u16> = (0..side * side)
        .map(|i| {
            let (r, c) = (i / side, i % side);
            let v = small.data[(r * 28 / side) * 28 + c * 28 / side];
            ((v * 4000.0) as u16 + ((r + c) % 64) as u16).min(4095)
        })
        .collect();
    let file = medguard_dicom::synthetic::radiograph(2048, 2048, 12, &pixels, &identity());
    add(
        "dicom file, 2048x2048 16-bit",
        file.len() as f64 / 1e6,
        "MB",
    );
    let (mut native, mut sandboxed) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let a = medguard_dicom::decode(&file, &profile.accepts, &profile.preprocessing, h, w)
            .expect("native decode");
        native.push(t.elapsed());
        let t = Instant::now();
        let b = program
            .decode_dicom(&file, profile, h, w)
            .expect("sandboxed decode");
        sandboxed.push(t.elapsed());
        assert_eq!(a, b, "the sandbox decodes as native code does");
    }
    let (native, sandboxed) = (median(native), median(sandboxed));
    add(
        "decode+preprocess native, median",
        native.as_secs_f64() * 1e3,
        "ms",
    );
    add(
        "decode+preprocess in a fresh sandbox, median",
        sandboxed.as_secs_f64() * 1e3,
        "ms",
    );
    add(
        "sandbox/native",
        sandboxed.as_secs_f64() / native.as_secs_f64(),
        "x",
    );

    // 2. The structured report.
    let source = identity();
    let receipt = "{\"entry\":\"{}\",\"index\":1,\"tree_size\":2,\"inclusion_proof\":[],\"checkpoint\":\"x\"}";
    let report = Report {
        source: &source,
        profile: &profile.report,
        outcome: Outcome::Reported {
            present: true,
            probability: 0.9,
        },
        verdict: Verdict::Accept,
        p_value: Some(0.4),
        model_name: &manifest.name,
        model_version: "1.0.0",
        model_sha256: "00",
        guest_sha256: "00",
        seed: 1,
        ledger_index: 1,
        receipt_json: receipt,
        software_version: "0",
        content_date: "20261202",
        content_time: "120000",
        sop_instance_uid: "2.25.1",
        series_instance_uid: "2.25.2",
        device_uid: "2.25.3",
    };
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        std::hint::black_box(sr::write(&report).expect("writes"));
        times.push(t.elapsed());
    }
    add(
        "structured report write, median",
        median(times).as_secs_f64() * 1e6,
        "us",
    );

    // 3. Attacks made at full resolution.
    let block = 73usize;
    let full = 28 * block;
    let clean = std::fs::read(repo_root().join("tests/adversarial/ci/clean.npz")).expect("clean");
    let clean = medguard::input::read_npz_images(&clean, "test_images").expect("clean images");
    for attack in ["pgd-8", "pgd-4", "deepfool"] {
        let bytes =
            std::fs::read(repo_root().join(format!("tests/adversarial/ci/sets/{attack}.npz")))
                .expect("attack set");
        let attacked = medguard::input::read_npz_images(&bytes, "images").expect("images");
        let n = attacked.len();
        let (mut rejected_small, mut rejected_lifted) = (0, 0);
        let mut max_diff_lifted = 0f32;
        for i in 0..n {
            let adv = &attacked.data[i * 784..(i + 1) * 784];
            // The attack lifted to full resolution: each pixel a 73x73 block.
            let lifted: Vec<u16> = (0..full * full)
                .map(|k| (adv[(k / full / block) * 28 + (k % full) / block] * 255.0).round() as u16)
                .collect();
            let dicom = medguard_dicom::synthetic::radiograph(
                full as u16,
                full as u16,
                8,
                &lifted,
                &identity(),
            );
            let decoded = program
                .decode_dicom(&dicom, profile, h, w)
                .expect("decodes");
            for (a, b) in decoded.pixels.iter().zip(adv) {
                max_diff_lifted = max_diff_lifted.max((a - b).abs());
            }
            let mut session = program.session(&model).expect("session");
            let options = ScreenOptions {
                seed: 7,
                source_bits: 0,
                withhold_rejected: true,
            };
            let verdict =
                |s: &medguard::sandbox::ScreenedImage| s.screening.as_ref().map(|x| x.verdict);
            let small = session
                .screen(&[1, 1, 28, 28], adv, options)
                .expect("screens");
            let mut session = program.session(&model).expect("session");
            let big = session
                .screen(&[1, 1, 28, 28], &decoded.pixels, options)
                .expect("screens");
            let reject = Some(medguard_screen::Verdict::Reject);
            rejected_small += usize::from(verdict(&small[0]) == reject);
            rejected_lifted += usize::from(verdict(&big[0]) == reject);
        }
        add(&format!("{attack}: images"), n as f64, "");
        add(
            &format!("{attack}: rejected at 28x28"),
            rejected_small as f64,
            "images",
        );
        add(
            &format!("{attack}: rejected, lifted to 2044x2044 and downscaled"),
            rejected_lifted as f64,
            "images",
        );
        add(
            &format!("{attack}: lifted, max |tensor difference| after downscale"),
            f64::from(max_diff_lifted),
            "",
        );
    }
    // Full-resolution noise the resize was not planned for: every pixel of
    // a clean image moved by +-8/255 at random (the size of PGD-8, but not
    // aligned with the 73x73 blocks).
    let (mut max_change, mut label_changes, mut rejected) = (0f32, 0, 0);
    let images = 60;
    for i in 0..images {
        let c = &clean.data[i * 784..(i + 1) * 784];
        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ i as u64;
        let noisy: Vec<u16> = (0..full * full)
            .map(|k| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let v = c[(k / full / block) * 28 + (k % full) / block] * 255.0;
                let step = if state & 1 == 0 { -8.0 } else { 8.0 };
                (v + step).clamp(0.0, 255.0).round() as u16
            })
            .collect();
        let dicom =
            medguard_dicom::synthetic::radiograph(full as u16, full as u16, 8, &noisy, &identity());
        let decoded = program
            .decode_dicom(&dicom, profile, h, w)
            .expect("decodes");
        for (a, b) in decoded.pixels.iter().zip(c) {
            max_change = max_change.max((a - b).abs());
        }
        let options = ScreenOptions {
            seed: 7,
            source_bits: 0,
            withhold_rejected: false,
        };
        let label = |p: &Option<Vec<f32>>| {
            p.as_ref()
                .map(|p| usize::from(p[1] > p[0]))
                .expect("probabilities")
        };
        let mut session = program.session(&model).expect("session");
        let before = session
            .screen(&[1, 1, 28, 28], c, options)
            .expect("screens");
        let mut session = program.session(&model).expect("session");
        let after = session
            .screen(&[1, 1, 28, 28], &decoded.pixels, options)
            .expect("screens");
        label_changes +=
            usize::from(label(&before[0].probabilities) != label(&after[0].probabilities));
        rejected += usize::from(
            after[0].screening.as_ref().map(|x| x.verdict)
                == Some(medguard_screen::Verdict::Reject),
        );
    }
    add("full-res +-8/255 noise: clean images", images as f64, "");
    add(
        "full-res +-8/255 noise: max |tensor change| after downscale",
        f64::from(max_change),
        "",
    );
    add(
        "full-res +-8/255 noise: labels changed",
        label_changes as f64,
        "images",
    );
    add(
        "full-res +-8/255 noise: rejected",
        rejected as f64,
        "images",
    );
    // 4. The PACS round trip through a real Orthanc, when MEDGUARD_ORTHANC
    //    names one (scripts/test.sh installs it): the 2048x2048 radiograph
    //    stored N times by STOW-RS, then one poll of the bridge.
    if std::env::var_os("MEDGUARD_ORTHANC").is_some() {
        let figures = pacs_round_trip(&pixels);
        for (name, value, unit) in figures {
            add(&name, value, unit);
        }
    } else {
        println!("PACS round trip: skipped (MEDGUARD_ORTHANC names no Orthanc binary)");
    }
    let path = std::env::var_os("MEDGUARD_BENCH_JSON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bench/dicom.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the figures directory");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&figures).expect("JSON")).expect("write");
    println!("figures written to {}", path.display());
}

/// Section 4: (name, value, unit) figures of one bridge poll over `n`
/// stored radiographs.
fn pacs_round_trip(pixels: &[u16]) -> Vec<(String, f64, &'static str)> {
    use medguard::guard::{Admission, ClassifyOptions, Guard, ScreeningPolicy};
    use medguard::pacs::dicomweb::{ClientOptions, DicomWebClient};
    use medguard::pacs::{Bridge, BridgeSettings, InstanceEvent, Outcome};
    let n = 12;
    let orthanc = medguard_tests::orthanc::Orthanc::start();
    for i in 0..n {
        let identity = SourceIdentity {
            sop_instance_uid: format!("2.25.71{i:03}"),
            ..identity()
        };
        orthanc.store(&medguard_dicom::synthetic::radiograph(
            2048, 2048, 12, pixels, &identity,
        ));
    }
    let data = tempfile::tempdir().expect("data dir");
    let guard = Guard::open(data.path(), medguard_tests::demo_policy())
        .expect("guard")
        .with_sandbox(medguard_tests::shared_program_owned());
    let Admission::Admitted { model, .. } = guard
        .admit(&medguard_tests::model_dir())
        .expect("admission")
    else {
        panic!("the bundled model is admitted")
    };
    let client = DicomWebClient::new(
        &orthanc.base(),
        ClientOptions {
            ca_cert: None,
            bearer_token: None,
            timeout: Duration::from_secs(60),
            max_instance_bytes: 64 << 20,
        },
    )
    .expect("client");
    let settings = BridgeSettings {
        filters: Vec::new(),
        page_size: 100,
        max_scanned: 1000,
        options: ClassifyOptions {
            seed: 7,
            policy: ScreeningPolicy::Enforce,
            allow_unscreened: false,
        },
        fixed_seed: true,
        attempts: 1,
    };
    let mut bridge = Bridge::new(&guard, &model, &client, data.path(), settings).expect("bridge");
    let mut events: Vec<InstanceEvent> = Vec::new();
    let started = Instant::now();
    bridge
        .poll(&mut |e: &InstanceEvent| events.push(e.clone()), &|| false)
        .expect("poll");
    let wall = started.elapsed();
    assert_eq!(events.len(), n, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| matches!(e.outcome, Outcome::Reported { .. })),
        "{events:?}"
    );
    let ms = |f: fn(&InstanceEvent) -> Duration| {
        median(events.iter().map(f).collect()).as_secs_f64() * 1e3
    };
    vec![
        ("PACS round trip: instances".into(), n as f64, ""),
        (
            "PACS round trip per instance (retrieve to stored), median".into(),
            ms(|e| e.timings.total()),
            "ms",
        ),
        (
            "PACS round trip: WADO-RS retrieve, median".into(),
            ms(|e| e.timings.retrieve),
            "ms",
        ),
        (
            "PACS round trip: decode, screen, classify, ledger, median".into(),
            ms(|e| e.timings.classify),
            "ms",
        ),
        (
            "PACS round trip: structured report, median".into(),
            ms(|e| e.timings.report),
            "ms",
        ),
        (
            "PACS round trip: STOW-RS store, median".into(),
            ms(|e| e.timings.store),
            "ms",
        ),
        (
            "PACS round trip: whole poll per instance (QIDO-RS included)".into(),
            wall.as_secs_f64() * 1e3 / n as f64,
            "ms",
        ),
    ]
}
