//! The PACS bridge against a hostile archive: a DICOMweb server (axum, in
//! this process) that answers what an attacker who controls the archive
//! would. The real Orthanc round trip is host/tests/cli/pacs.rs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use medguard::guard::{Admission, ClassifyOptions, Guard, ScreeningPolicy};
use medguard::pacs::dicomweb::{ClientOptions, DicomWebClient};
use medguard::pacs::{Bridge, BridgeSettings, InstanceEvent, Outcome, PacsError, SEEN_FILE};
use medguard_dicom::SourceIdentity;
use medguard_tests::{demo_policy, model_dir, shared_program_owned};
use serde_json::{Value, json};

/// One answer of the fake archive.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = Arc<dyn Fn(&Method, &str, &[u8]) -> Reply + Send + Sync>;

/// One request the fake archive received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    target: String,
    body: Vec<u8>,
    authorization: Option<String>,
}

/// A DICOMweb server answering with `handler`, recording every request
/// (method, path and query, body). Stops when dropped.
struct FakeArchive {
    base: String,
    requests: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeArchive {
    fn start(handler: impl Fn(&Method, &str, &[u8]) -> Reply + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log = requests.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let target = uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            log.lock().unwrap().push(Received {
                                method: method.to_string(),
                                target: target.clone(),
                                body: body.to_vec(),
                                authorization: headers
                                    .get(header::AUTHORIZATION)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned),
                            });
                            let reply = handler(&method, &target, &body);
                            tokio::time::sleep(reply.delay).await;
                            let status = StatusCode::from_u16(reply.status).unwrap();
                            let response: Response = (
                                status,
                                [(header::CONTENT_TYPE, reply.content_type)],
                                reply.body,
                            )
                                .into_response();
                            response
                        }
                    },
                );
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            base: format!("http://{addr}/dicom-web"),
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The requests so far.
    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// The WADO-RS requests' targets.
    fn retrievals(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.target.contains("/studies/"))
            .map(|r| r.target)
            .collect()
    }
}

impl Drop for FakeArchive {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A QIDO-RS answer listing `(study, series, instance)` UIDs.
fn qido(entries: &[(&str, &str, &str)]) -> Vec<u8> {
    let list: Vec<Value> = entries
        .iter()
        .map(|(st, se, i)| {
            json!({
                "0020000D": {"vr": "UI", "Value": [st]},
                "0020000E": {"vr": "UI", "Value": [se]},
                "00080018": {"vr": "UI", "Value": [i]},
            })
        })
        .collect();
    serde_json::to_vec(&list).unwrap()
}

/// A WADO-RS answer holding `part` with `content_type`.
fn multipart(part: &[u8], content_type: &str) -> Vec<u8> {
    let mut body = format!("--b0undary\r\nContent-Type: {content_type}\r\n\r\n").into_bytes();
    body.extend_from_slice(part);
    body.extend_from_slice(b"\r\n--b0undary--\r\n");
    body
}

const MULTIPART: &str = "multipart/related; type=\"application/dicom\"; boundary=b0undary";

fn settings() -> BridgeSettings {
    BridgeSettings {
        filters: Vec::new(),
        page_size: 100,
        max_scanned: 1000,
        options: ClassifyOptions {
            seed: 7,
            policy: ScreeningPolicy::Enforce,
            allow_unscreened: false,
        },
        fixed_seed: true,
        attempts: 3,
    }
}

fn client(base: &str, timeout: Duration) -> DicomWebClient {
    DicomWebClient::new(
        base,
        ClientOptions {
            ca_cert: None,
            bearer_token: Some("s3cret-token".into()),
            timeout,
            max_instance_bytes: 256 << 10,
        },
    )
    .unwrap()
}

/// Runs `polls` polls of a bridge on `archive`; every event.
fn run(
    archive: &FakeArchive,
    data: &std::path::Path,
    settings: BridgeSettings,
    timeout: Duration,
    polls: usize,
) -> Vec<Vec<InstanceEvent>> {
    run_with_errors(archive, data, settings, timeout, polls)
        .into_iter()
        .map(|(events, error)| {
            assert!(error.is_none(), "{error:?}");
            events
        })
        .collect()
}

/// [`run`], keeping each poll's error.
fn run_with_errors(
    archive: &FakeArchive,
    data: &std::path::Path,
    settings: BridgeSettings,
    timeout: Duration,
    polls: usize,
) -> Vec<(Vec<InstanceEvent>, Option<PacsError>)> {
    let guard = Guard::open(data, demo_policy())
        .unwrap()
        .with_sandbox(shared_program_owned());
    let Admission::Admitted { model, .. } = guard.admit(&model_dir()).unwrap() else {
        panic!("the bundled model is admitted")
    };
    let client = client(&archive.base, timeout);
    let mut bridge = Bridge::new(&guard, &model, &client, data, settings).unwrap();
    (0..polls)
        .map(|_| {
            let mut events = Vec::new();
            let error = bridge
                .poll(&mut |e: &InstanceEvent| events.push(e.clone()), &|| false)
                .err();
            (events, error)
        })
        .collect()
}

/// UIDs from the archive go into request paths only when they are UIDs: a
/// path segment like `..` or a slash cannot steer the bridge elsewhere on
/// the server, and entries without the three UIDs are skipped.
#[test]
fn hostile_uids_never_reach_a_request_path() {
    let archive = FakeArchive::start(|_, path, _| {
        if path.contains("/instances?") {
            let mut entries = qido(&[
                ("1.2", "1.3", "../../../tools/reset"),
                ("1.2", "1.3/../../x", "1.5"),
                ("1.2", "1.3", "1.4?x=1"),
                ("1.2", "1.3", "1.2.840.99999.77"),
            ]);
            // An entry with no UIDs at all, and one whose UID is a number.
            entries.pop();
            entries.extend_from_slice(
                br#",{},{"0020000D":{"Value":[1]},"0020000E":{"Value":["1"]},"00080018":{"Value":["1"]}}]"#,
            );
            return Reply::new(200, "application/dicom+json", entries);
        }
        Reply::new(404, "text/plain", "no such instance")
    });
    let data = tempfile::tempdir().unwrap();
    let events = run(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        1,
    );
    // Two modalities (DX, CR) searched, one valid instance each time: the
    // second search finds it already handled.
    let retrievals = archive.retrievals();
    assert_eq!(
        retrievals,
        ["/dicom-web/studies/1.2/series/1.3/instances/1.2.840.99999.77"]
    );
    for r in archive.requests() {
        assert!(!r.target.contains(".."), "{}", r.target);
    }
    assert_eq!(events[0].len(), 1);
    let InstanceEvent { outcome, .. } = &events[0][0];
    let Outcome::NotRetrieved { error, will_retry } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(will_retry, "a 404 may be a misrouted proxy: tried again");
    assert!(error.contains("404") && !error.contains("99999"), "{error}");
}

/// An archive that answers every page full never ends a poll on its own:
/// the bridge stops at its cap.
#[test]
fn an_archive_that_pages_forever_is_cut_off() {
    let archive = FakeArchive::start(|_, path, _| {
        if path.contains("/instances?") {
            return Reply::new(
                200,
                "application/dicom+json",
                qido(&[("1.2", "1.3", "1.4"), ("1.2", "1.3", "1.4")]),
            );
        }
        Reply::new(404, "text/plain", "")
    });
    let data = tempfile::tempdir().unwrap();
    let settings = BridgeSettings {
        page_size: 2,
        max_scanned: 10,
        ..settings()
    };
    run(&archive, data.path(), settings, Duration::from_secs(10), 1);
    let searches = archive
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/instances?"))
        .count();
    assert_eq!(
        searches,
        2 * 5,
        "five pages of two per modality, then the cap"
    );
}

/// What a hostile archive sends instead of an instance is charged to that
/// instance alone: one that is too large is final at once; anything that
/// may pass (a page that is not DICOM, which may be a proxy's, a 403 on one
/// study, a 404, a broken multipart, a declined store) is tried in three
/// polls, counted across restarts, then given up.
#[test]
fn bad_answers_are_charged_to_their_instance_and_counted_across_restarts() {
    let dicom = flat_radiograph("9.7", "Doe^Jane");
    let archive = FakeArchive::start(move |method, path, _| {
        // The archive holds none of the reports (it declines them all).
        if path.contains("SOPInstanceUID=") {
            return Reply::new(200, "application/dicom+json", qido(&[]));
        }
        if path.contains("/instances?") {
            return Reply::new(
                200,
                "application/dicom+json",
                qido(&[
                    ("1.2", "1.3", "9.1"),
                    ("1.2", "1.3", "9.2"),
                    ("1.2", "1.3", "9.3"),
                    ("1.2", "1.3", "9.4"),
                    ("1.2", "1.3", "9.5"),
                    ("1.2", "1.3", "9.6"),
                    ("1.2", "1.3", "9.7"),
                ]),
            );
        }
        if *method == Method::POST {
            // The archive refuses every report (out of resources).
            let answer = json!({"00081198": {"vr": "SQ", "Value": [
                {"00081197": {"vr": "US", "Value": [0xA700]}}
            ]}});
            return Reply::new(409, "application/dicom+json", answer.to_string());
        }
        match path.rsplit('/').next().unwrap_or("") {
            "9.1" => Reply::new(200, "text/html", "<html>login</html>"),
            "9.2" => Reply::new(403, "text/plain", "not your study"),
            "9.3" => Reply::new(200, MULTIPART, multipart(b"hello", "text/plain")),
            // Over the 256 KiB cap.
            "9.4" => Reply::new(200, "application/dicom", vec![0u8; 300 << 10]),
            "9.5" => Reply::new(200, MULTIPART, b"--other\r\n\r\nnothing".to_vec()),
            "9.6" => Reply::new(404, "text/plain", ""),
            "9.7" => Reply::new(200, MULTIPART, multipart(&dicom, "application/dicom")),
            _ => Reply::new(404, "text/plain", ""),
        }
    });
    let data = tempfile::tempdir().unwrap();
    // Two polls, then a restart (a new process on the same data directory)
    // and two more: the attempts are counted across it.
    let mut polls = run(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        2,
    );
    polls.extend(run(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        2,
    ));
    let first = &polls[0];
    assert_eq!(first.len(), 7, "{first:?}");
    let retried: Vec<bool> = first
        .iter()
        .map(|e| match &e.outcome {
            Outcome::NotRetrieved { will_retry, .. } => *will_retry,
            Outcome::NotStored { will_retry, .. } => *will_retry,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(retried, [true, true, true, false, true, true, true]);
    let Outcome::NotStored { error, report, .. } = &first[6].outcome else {
        unreachable!()
    };
    assert!(error.contains("0xa700"), "{error}");

    // Poll 2 sends the same report again (from memory). After the restart
    // the report's lookup finds it missing, so the instance is classified
    // again and its new report is the third and last attempt.
    let stores: Vec<Vec<u8>> = archive
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body)
        .collect();
    assert_eq!(stores.len(), 3, "three attempts in all");
    let part = |body: &[u8]| {
        // Boundaries differ per request; the report between them must not.
        let start = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        body[start..body.len() - "\r\n--medguard-0123456789abcdef0123456789abcdef--\r\n".len()]
            .to_vec()
    };
    assert_eq!(part(&stores[1]), part(&stores[0]), "the same report resent");
    assert_ne!(part(&stores[2]), part(&stores[0]), "a new classification");
    let not_stored: Vec<Vec<bool>> = polls
        .iter()
        .map(|poll| {
            poll.iter()
                .filter_map(|e| match &e.outcome {
                    Outcome::NotStored { will_retry, .. } => Some(*will_retry),
                    _ => None,
                })
                .collect()
        })
        .collect();
    assert_eq!(not_stored, [vec![true], vec![true], vec![false], vec![]]);
    let Outcome::NotStored { report: again, .. } = &polls[1]
        .iter()
        .find(|e| matches!(e.outcome, Outcome::NotStored { .. }))
        .unwrap()
        .outcome
    else {
        unreachable!()
    };
    assert_eq!(again, report);
    let retrievals = archive.retrievals();
    let count = |uid: &str| retrievals.iter().filter(|p| p.ends_with(uid)).count();
    assert_eq!(
        count("/9.2"),
        3,
        "a 403 on one study is tried in three polls"
    );
    assert_eq!(count("/9.1"), 3, "so is a page that is not DICOM");
    assert_eq!(count("/9.6"), 3, "and a 404");
    assert_eq!(count("/9.4"), 1, "an instance over the cap once");
    assert_eq!(
        count("/9.7"),
        2,
        "classified again only when its report is missing"
    );
    for e in polls.iter().flatten() {
        if let Outcome::NotRetrieved { error, .. } = &e.outcome {
            assert!(!error.contains("login"), "the archive's text: {error}");
        }
    }
    // Every request carried the token; no event shows it.
    assert!(
        archive
            .requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer s3cret-token"))
    );
    assert!(
        polls
            .iter()
            .flatten()
            .all(|e| !format!("{e:?}").contains("s3cret"))
    );
    // The record of handled instances: keyed hashes only.
    let seen = std::fs::read_to_string(data.path().join(SEEN_FILE)).unwrap();
    let hex = |k: &str| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit());
    let (mut done, mut intents, mut charged) = (0, 0, 0);
    for line in seen.lines() {
        match line.split(' ').collect::<Vec<_>>()[..] {
            [key] if hex(key) => done += 1,
            ["?", key, uid] if hex(key) && uid.starts_with("2.25.") => intents += 1,
            ["!", key] if hex(key) => charged += 1,
            _ => panic!("not a key, an intent or a charge: {line:?}"),
        }
    }
    assert_eq!((done, intents, charged), (7, 2, 18), "{seen}");
}

/// A STOW-RS answer that says 200 but does not list the report is not
/// taken as stored.
#[test]
fn a_store_answer_that_does_not_list_the_report_is_not_success() {
    let dicom = flat_radiograph("9.7", "Doe^Jane");
    let archive = FakeArchive::start(move |method, path, _| {
        if path.contains("/instances?") {
            return Reply::new(
                200,
                "application/dicom+json",
                qido(&[("1.2", "1.3", "9.7")]),
            );
        }
        if *method == Method::POST {
            // 200, but listing some other instance.
            let answer = json!({"00081199": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": ["1.2.3.4"]}}
            ]}});
            return Reply::new(200, "application/dicom+json", answer.to_string());
        }
        Reply::new(200, MULTIPART, multipart(&dicom, "application/dicom"))
    });
    let data = tempfile::tempdir().unwrap();
    let settings = BridgeSettings {
        attempts: 1,
        ..settings()
    };
    let polls = run(&archive, data.path(), settings, Duration::from_secs(10), 2);
    assert!(
        matches!(
            polls[0][..],
            [InstanceEvent {
                outcome: Outcome::NotStored {
                    will_retry: false,
                    ..
                },
                ..
            }]
        ),
        "{polls:?}"
    );
    assert!(polls[1].is_empty(), "given up after one attempt: {polls:?}");
}

/// A STOW-RS answer listing every `2.25.` UID in the stored body (the
/// report's own among them): success, as an archive says it.
fn stored(body: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(body);
    let uids: Vec<Value> = text
        .match_indices("2.25.")
        .map(|(i, _)| {
            let uid: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            json!({"00081155": {"vr": "UI", "Value": [uid]}})
        })
        .collect();
    let answer = json!({"00081199": {"vr": "SQ", "Value": uids}});
    Reply::new(200, "application/dicom+json", answer.to_string())
}

/// Refused credentials stop the poll at the first refusal and mark
/// nothing: the instances wait for a working token.
#[test]
fn refused_credentials_stop_the_poll_and_mark_nothing() {
    let archive = FakeArchive::start(|_, path, _| {
        if path.contains("/instances?") {
            return Reply::new(
                200,
                "application/dicom+json",
                qido(&[("1.2", "1.3", "9.1"), ("1.2", "1.3", "9.2")]),
            );
        }
        Reply::new(401, "text/plain", "token expired")
    });
    let data = tempfile::tempdir().unwrap();
    let mut polls = run_with_errors(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        1,
    );
    let (events, err) = polls.remove(0);
    assert!(events.is_empty(), "{events:?}");
    let err = err.expect("the poll stops");
    assert!(matches!(err, PacsError::Unauthorized(_)), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");
    assert_eq!(
        archive.retrievals().len(),
        1,
        "the poll stopped at the first 401"
    );
    let seen = std::fs::read(data.path().join(SEEN_FILE)).unwrap();
    assert!(seen.is_empty());
}

/// A synthetic 28x28 DX (a flat gray image) with `patient_name`, in study
/// 1.2, series 1.3.
fn flat_radiograph(sop_instance_uid: &str, patient_name: &str) -> Vec<u8> {
    let identity = SourceIdentity {
        patient_name: patient_name.into(),
        sop_instance_uid: sop_instance_uid.into(),
        study_instance_uid: "1.2".into(),
        series_instance_uid: "1.3".into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
        ..SourceIdentity::default()
    };
    medguard_dicom::synthetic::radiograph(28, 28, 8, &[128; 784], &identity)
}

/// An over-long patient name (a hostile or broken header) costs the report,
/// not the bridge: the image is classified and recorded, no report is
/// filed, and the next instance is handled as usual.
#[test]
fn an_over_long_patient_name_costs_its_report_and_nothing_else() {
    let long = flat_radiograph("1.2.4.1", &"A".repeat(400));
    let normal = flat_radiograph("1.2.4.2", "Doe^Jane");
    let archive = FakeArchive::start(move |method, path, body| {
        if path.contains("/instances?") {
            return Reply::new(
                200,
                "application/dicom+json",
                qido(&[("1.2", "1.3", "1.2.4.1"), ("1.2", "1.3", "1.2.4.2")]),
            );
        }
        if *method == Method::POST {
            return stored(body);
        }
        let part = if path.ends_with("/1.2.4.1") {
            &long
        } else {
            &normal
        };
        Reply::new(200, MULTIPART, multipart(part, "application/dicom"))
    });
    let data = tempfile::tempdir().unwrap();
    let polls = run(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        1,
    );
    let outcomes: Vec<&Outcome> = polls[0].iter().map(|e| &e.outcome).collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    let Outcome::Refused { reason } = outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert!(reason.contains("structured report"), "{reason}");
    assert!(!reason.contains("AAAA"), "{reason}");
    assert!(
        matches!(outcomes[1], Outcome::Reported { .. }),
        "{outcomes:?}"
    );
}

/// The archive keeps a report but answers the store with an error, and the
/// bridge stops before it learns otherwise: the next start finds the report
/// in the archive and files no second one.
#[test]
fn a_report_stored_before_a_restart_is_found_not_filed_twice() {
    let dicom = flat_radiograph("9.7", "Doe^Jane");
    let reports: Arc<Mutex<Vec<String>>> = Arc::default();
    let held = reports.clone();
    let archive = FakeArchive::start(move |method, path, body| {
        if *method == Method::POST {
            // Keeps the report, then fails the answer (a timeout, a proxy).
            held.lock()
                .unwrap()
                .push(String::from_utf8_lossy(body).into_owned());
            return Reply::new(500, "text/plain", "gateway timeout");
        }
        if let Some(query) = path.split("SOPInstanceUID=").nth(1) {
            let uid = query.split('&').next().unwrap_or("").to_owned();
            let kept = held.lock().unwrap().iter().any(|r| r.contains(&uid));
            let list = if kept {
                qido(&[("1.2", "1.9", &uid)])
            } else {
                qido(&[])
            };
            return Reply::new(200, "application/dicom+json", list);
        }
        if path.contains("/instances?") {
            return Reply::new(
                200,
                "application/dicom+json",
                qido(&[("1.2", "1.3", "9.7")]),
            );
        }
        Reply::new(200, MULTIPART, multipart(&dicom, "application/dicom"))
    });
    let data = tempfile::tempdir().unwrap();
    let first = run_with_errors(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        1,
    );
    // A 500 on the store: the archive is not answering well, so the poll
    // stops with the report pending; the process then ends.
    assert!(first[0].0.is_empty(), "{first:?}");
    assert!(
        matches!(first[0].1, Some(PacsError::Unavailable(_))),
        "{first:?}"
    );
    // A new process on the same data directory asks for the report by its
    // UID, finds it, and marks the instance handled.
    let second = run(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        2,
    );
    assert!(second.iter().all(Vec::is_empty), "{second:?}");
    assert!(
        archive
            .requests()
            .iter()
            .any(|r| r.target.contains("SOPInstanceUID=2.25.")),
        "the report was looked up"
    );
    let seen = std::fs::read_to_string(data.path().join(SEEN_FILE)).unwrap();
    assert!(
        seen.lines()
            .any(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())),
        "marked handled: {seen}"
    );
    assert_eq!(archive.retrievals().len(), 1, "classified once");
    assert_eq!(reports.lock().unwrap().len(), 1, "stored once");
}

/// An archive that is down or overloaded stops the poll at the first sign,
/// and no instance is charged for it: when it is back, everything is
/// handled.
#[test]
fn an_archive_that_is_down_stops_the_poll_and_charges_nobody() {
    let dicom = flat_radiograph("9.7", "Doe^Jane");
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let state = down.clone();
    let archive = FakeArchive::start(move |method, path, body| {
        if path.contains("/instances?") {
            return Reply::new(
                200,
                "application/dicom+json",
                qido(&[("1.2", "1.3", "9.6"), ("1.2", "1.3", "9.7")]),
            );
        }
        if state.load(std::sync::atomic::Ordering::SeqCst) {
            return Reply::new(503, "text/plain", "maintenance");
        }
        if *method == Method::POST {
            return stored(body);
        }
        Reply::new(200, MULTIPART, multipart(&dicom, "application/dicom"))
    });
    let data = tempfile::tempdir().unwrap();
    let polls = run_with_errors(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        4,
    );
    for (events, error) in &polls {
        assert!(events.is_empty(), "{events:?}");
        assert!(
            matches!(error, Some(PacsError::Unavailable(_))),
            "{error:?}"
        );
    }
    assert_eq!(
        archive.retrievals().len(),
        4,
        "one try per poll, then the poll stops"
    );
    let seen = std::fs::read(data.path().join(SEEN_FILE)).unwrap();
    assert!(seen.is_empty(), "nobody charged");
    // Back up: both are handled (9.6 carries 9.7's UIDs in this archive, so
    // it is the mismatch case; 9.7 is reported).
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    let polls = run(
        &archive,
        data.path(),
        settings(),
        Duration::from_secs(10),
        1,
    );
    let outcomes: Vec<&Outcome> = polls[0].iter().map(|e| &e.outcome).collect();
    assert!(
        matches!(
            outcomes[..],
            [
                Outcome::NotRetrieved {
                    will_retry: true,
                    ..
                },
                Outcome::Reported { .. }
            ]
        ),
        "{outcomes:?}"
    );
}
