//! The accept loop over real sockets: TLS with a certificate made at test
//! time, the header and body deadlines, the connection limit.

use std::sync::Arc;
use std::time::Duration;

use medguard::server::listen::{self, Connections, TlsError};
use medguard::server::{Limits, router};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::fixture;

/// Starts the bundled model's server on a free port; the address, and the
/// sender that stops it.
async fn start(
    connections: Connections,
    limits: Limits,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    super::Fixture,
) {
    let f = fixture(None, limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(f.server.clone());
    tokio::spawn(async move {
        listen::serve(listener, app, connections, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop, f)
}

/// Sends `request` and reads until the server closes or `wait` passes;
/// what came back.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    wait: Duration,
) -> String {
    stream.write_all(request).await.unwrap();
    read_for(stream, wait).await
}

async fn read_for<S: AsyncRead + Unpin>(stream: &mut S, wait: Duration) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

const READY: &[u8] = b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_made_now_and_plain_http_is_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let tls = listen::tls_config(&cert, &key).unwrap();
    let (addr, _stop, _f) = start(
        Connections {
            tls: Some(tls),
            header_timeout: Duration::from_secs(2),
            ..Connections::default()
        },
        Limits::default(),
    )
    .await;

    // Plain HTTP to the HTTPS port gets no HTTP answer...
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let answer = exchange(&mut plain, READY, Duration::from_secs(20)).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "not closed");

    // ...and a client that trusts the certificate gets its answer, with a
    // request id.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let answer = exchange(&mut tls, READY, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains(r#"{"ready":true}"#), "{answer}");
    assert!(answer.to_lowercase().contains("x-request-id: "), "{answer}");
}

#[test]
fn unusable_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let wrong_key = dir.path().join("other.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    std::fs::write(&wrong_key, other.serialize_pem()).unwrap();
    let missing = dir.path().join("missing.pem");
    assert!(matches!(
        listen::tls_config(&missing, &key),
        Err(TlsError::Certificate { .. })
    ));
    // A key where the certificate should be: no CERTIFICATE block.
    assert!(matches!(
        listen::tls_config(&key, &key),
        Err(TlsError::Certificate { .. })
    ));
    assert!(matches!(
        listen::tls_config(&cert, &cert),
        Err(TlsError::Key { .. })
    ));
    let mismatch = listen::tls_config(&cert, &wrong_key).unwrap_err();
    assert!(matches!(mismatch, TlsError::Config(_)), "{mismatch}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_still_served() {
    let (addr, _stop, _f) = start(
        Connections {
            header_timeout: Duration::from_secs(1),
            ..Connections::default()
        },
        Limits {
            body_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
    )
    .await;
    // Headers that never end: the connection is closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_for(&mut slow, Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "held for {:?}",
        started.elapsed()
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    // A body that never comes: 408 with a JSON error.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(
        &mut slow,
        b"POST /v2/models/pneumonia-cnn/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{\"inputs\"",
        Duration::from_secs(20),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"the request body did not arrive"#),
        "{answer}"
    );
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let answer = exchange(
        &mut idle,
        b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(20),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "idle for {:?}",
        started.elapsed()
    );
    // The others are served all along.
    let mut fine = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(&mut fine, READY, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_clients_wait_for_a_place() {
    let (addr, _stop, _f) = start(
        Connections {
            max_open: 1,
            ..Connections::default()
        },
        Limits::default(),
    )
    .await;
    // The one place, held by a keep-alive connection.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    // The second waits, unanswered...
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(READY).await.unwrap();
    let early = read_for(&mut second, Duration::from_millis(1500)).await;
    assert!(early.is_empty(), "answered past the limit: {early}");
    // ...until the first goes.
    drop(first);
    let answer = read_for(&mut second, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_and_never_reads_loses_its_place() {
    let (addr, _stop, _f) = start(
        Connections {
            max_open: 1,
            header_timeout: Duration::from_secs(1),
            ..Connections::default()
        },
        Limits::default(),
    )
    .await;
    // A small receive window and thousands of pipelined requests for the
    // largest answer there is, never read: the server's writes stall.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hog = socket.connect(addr).await.unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(5000);
    let _ = tokio::time::timeout(Duration::from_secs(3), hog.write_all(&request)).await;
    // The one place comes back once a write makes no progress for the
    // deadline; the next client is served.
    let mut next = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(&mut next, READY, Duration::from_secs(30)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:.200}");
    drop(hog);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_place() {
    let (addr, _stop, _f) = start(
        Connections {
            max_per_client: 2,
            ..Connections::default()
        },
        Limits::default(),
    )
    .await;
    let _first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // Give the server time to count both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let answer = exchange(&mut third, READY, Duration::from_secs(20)).await;
    assert!(
        answer.is_empty(),
        "served past the per-client limit: {answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "not closed");
    drop(_first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = TcpStream::connect(addr).await.unwrap();
    let answer = exchange(&mut again, READY, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_plain_or_replaced() {
    let (addr, _stop, _f) = start(Connections::default(), Limits::default()).await;
    let id_of = |answer: &str| {
        answer
            .lines()
            .find_map(|l| {
                l.to_lowercase()
                    .strip_prefix("x-request-id: ")
                    .map(str::to_owned)
            })
            .unwrap()
    };
    let ask = |id: String| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v2/health/live HTTP/1.1\r\nHost: t\r\nx-request-id: {id}\r\nConnection: close\r\n\r\n"
        );
        exchange(&mut s, request.as_bytes(), Duration::from_secs(10)).await
    };
    assert_eq!(id_of(&ask("pacs-42.a_b".into()).await), "pacs-42.a_b");
    for bad in ["x".repeat(65), "a b".into(), "{\"patient\":1}".into()] {
        let answer = ask(bad.clone()).await;
        let id = id_of(&answer);
        assert_ne!(id, bad.to_lowercase());
        assert_eq!(id.len(), 36, "a fresh UUID: {id}");
    }
}
