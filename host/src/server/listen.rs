//! The accept loop: TLS (rustls), limits on open connections (in all and per
//! client address), deadlines for each request's headers and for every
//! write to the client, and a graceful drain. axum's own `serve`
//! offers none of the first three, so the router runs here on hyper's HTTP/1
//! connection directly. The one module that touches hyper and rustls.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

/// How connections are accepted and closed.
#[derive(Clone)]
pub struct Connections {
    /// Connections open at once; further clients wait in the kernel's
    /// backlog until one closes.
    pub max_open: usize,
    /// Connections open at once from one client address; past it a new
    /// one is closed at once, so one host cannot take every place.
    pub max_per_client: usize,
    /// Time a client has for its TLS handshake, and for each request's
    /// headers, from the first byte it is waited for (an idle keep-alive
    /// connection is closed after it too); also the longest a write to the
    /// client may make no progress (a client that stops reading its answers
    /// is cut off, and with it any requests it pipelined).
    pub header_timeout: Duration,
    /// After shutdown is asked for, how long requests in flight may take
    /// before the connections are dropped.
    pub drain: Duration,
    /// TLS, if the server speaks HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max_open: 1024,
            max_per_client: 64,
            header_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(30),
            tls: None,
        }
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("max_open", &self.max_open)
            .field("max_per_client", &self.max_per_client)
            .field("header_timeout", &self.header_timeout)
            .field("drain", &self.drain)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why the TLS certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file has no usable PEM certificate.
    #[error("reading the certificate chain {path}: {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The key file has no usable PEM private key.
    #[error("reading the private key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match, say).
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS server configuration from PEM files: the certificate chain (leaf
/// first) and its private key (PKCS#8, PKCS#1 or SEC1). HTTP/1.1 only.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.display().to_string(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops
/// accepting, lets requests in flight finish (up to `connections.drain`)
/// and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    connections: Connections,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(connections.max_open.max(1)));
    let tls = connections.tls.clone().map(TlsAcceptor::from);
    let timeout = connections.header_timeout;
    let per_client = PerClient::new(connections.max_per_client);
    tokio::pin!(shutdown);
    loop {
        // A place first, then the connection: past the limit, clients wait
        // in the backlog rather than being accepted and left unserved.
        let place = tokio::select! {
            place = open.clone().acquire_owned() => place.map_err(io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, not spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(client_place) = per_client.enter(peer.ip()) else {
            tracing::debug!(%peer, "too many connections from this address; closed");
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _places = (place, client_place);
            let _ = stream.set_nodelay(true);
            // hyper stops its header timer once a request is parsed, and a
            // client that pipelines requests and never reads the answers
            // would stall the writes for ever: every write must progress
            // within the deadline.
            let mut stream = TimeoutStream::new(stream);
            stream.set_write_timeout(Some(timeout));
            let stream = Box::pin(stream);
            match tls {
                None => connection(TokioIo::new(stream), service, watcher, timeout).await,
                Some(acceptor) => {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            connection(TokioIo::new(stream), service, watcher, timeout).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(connections.drain) => {
            tracing::warn!("requests still in flight after {:?}; closing them", connections.drain);
        }
    }
    Ok(())
}

/// One HTTP/1.1 connection, with the header deadline, watched for drain.
async fn connection<S>(
    io: TokioIo<S>,
    service: TowerToHyperService<Router>,
    watcher: Watcher,
    header_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // Headers and pipelined requests buffered per connection; bodies
        // stream past it.
        .max_buf_size(64 << 10);
    if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
        tracing::debug!("connection ended: {e}");
    }
}

/// Open connections per client address.
#[derive(Clone)]
struct PerClient {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its address's count, given back on drop.
struct ClientPlace {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerClient {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            open: Arc::default(),
        }
    }

    fn enter(&self, ip: IpAddr) -> Option<ClientPlace> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientPlace {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}
