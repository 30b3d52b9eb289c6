//! A DICOMweb client (PS3.18): QIDO-RS to find instances, WADO-RS to
//! retrieve them, STOW-RS to store reports. The one place medguard speaks
//! HTTP as a client (hyper, rustls, multer).
//!
//! Everything the archive answers is untrusted input: UIDs are checked
//! against the UID grammar before they go into a request path (an answer
//! cannot steer a request elsewhere on the server), every body is read
//! under a size cap, every call under a timeout. Errors name the
//! operation, never a UID or any other attribute of the patient's data.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use medguard_dicom::sr::is_valid_uid;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use thiserror::Error;

/// The largest QIDO-RS answer read: a page of a hundred instances with
/// every attribute an archive returns by default is well under it.
const SEARCH_MAX_BYTES: usize = 4 << 20;
/// The largest STOW-RS answer read.
const STORE_ANSWER_MAX_BYTES: usize = 1 << 20;
/// What a multipart answer may add around the instance's own bytes.
const MULTIPART_OVERHEAD_BYTES: usize = 64 << 10;

/// Why a DICOMweb call failed. None of these name a UID or any other
/// attribute of the data: they go to logs.
#[derive(Debug, Error)]
pub enum DicomWebError {
    /// The base URL is not an http(s) URL.
    #[error("{url:?} is not a DICOMweb base URL: {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The CA certificates could not be read.
    #[error("reading CA certificates from {path}: {why}")]
    Certificates {
        /// The file.
        path: String,
        /// What failed.
        why: String,
    },
    /// The bearer token is not a valid header value.
    #[error("the DICOMweb bearer token holds characters an HTTP header cannot carry")]
    Token,
    /// A bearer token would cross the network in clear text.
    #[error(
        "a bearer token is sent only over https (or to this machine): use an https:// base URL"
    )]
    TokenOverHttp,
    /// No answer: the connection or TLS failed.
    #[error("{what}: the DICOMweb server could not be reached: {why}")]
    Unreachable {
        /// The operation.
        what: &'static str,
        /// The transport's reason.
        why: String,
    },
    /// The server answered with an error status.
    #[error("{what}: the DICOMweb server answered {status}")]
    Status {
        /// The operation.
        what: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// No complete answer within the timeout.
    #[error("{what}: no answer within {seconds} s")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The timeout.
        seconds: u64,
    },
    /// The answer is larger than medguard reads.
    #[error("{what}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// The operation.
        what: &'static str,
        /// The cap.
        limit: usize,
    },
    /// The answer is not what the standard says it is.
    #[error("{what}: the answer is malformed: {why}")]
    Malformed {
        /// The operation.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The archive did not store the report.
    #[error("STOW-RS store: the archive did not store the report{reason}")]
    NotStored {
        /// The archive's failure reason, if it gave one (`, failure reason N`).
        reason: String,
    },
}

/// How the client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// PEM file of the CA certificates that may sign the server's
    /// certificate; `None`: the system's trust store.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Sent as `Authorization: Bearer <token>` with every request.
    pub bearer_token: Option<String>,
    /// For each call, from sending the request to the last byte of the answer.
    pub timeout: Duration,
    /// The largest instance retrieved, in bytes.
    pub max_instance_bytes: usize,
}

/// One instance as a QIDO-RS search found it: its three UIDs, each checked
/// against the UID grammar. Patient data: its `Debug` shows none of it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InstanceRef {
    /// Study Instance UID (0020,000D).
    pub study: String,
    /// Series Instance UID (0020,000E).
    pub series: String,
    /// SOP Instance UID (0008,0018).
    pub instance: String,
}

impl std::fmt::Debug for InstanceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceRef(..)")
    }
}

/// One page of a search.
#[derive(Debug, Default)]
pub struct SearchPage {
    /// The instances with three valid UIDs.
    pub instances: Vec<InstanceRef>,
    /// How many entries the page held, valid or not (for paging).
    pub entries: usize,
    /// Entries skipped because a UID was missing or not a UID.
    pub invalid: usize,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A DICOMweb service at one base URL (`http(s)://host[:port]/prefix`).
pub struct DicomWebClient {
    base: String,
    /// https, or a loopback address: a token may be sent.
    private: bool,
    client: HttpsClient,
    runtime: tokio::runtime::Runtime,
    /// Replaced when the token file is read again (between polls).
    authorization: std::sync::Mutex<Option<HeaderValue>>,
    options: ClientOptions,
}

impl std::fmt::Debug for DicomWebClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DicomWebClient({})", self.base)
    }
}

impl DicomWebClient {
    /// A client for the service at `base_url`. Its calls block: each runs
    /// on the client's own single-threaded runtime.
    pub fn new(base_url: &str, options: ClientOptions) -> Result<Self, DicomWebError> {
        // Credentials in the URL are refused, and never echoed.
        let shown = match (base_url.find("://"), base_url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://...{}", &base_url[..scheme], &base_url[at..])
            }
            _ => base_url.to_owned(),
        };
        let bad = |why: &str| DicomWebError::BadUrl {
            url: shown.clone(),
            why: why.to_owned(),
        };
        // A fragment would swallow every path appended to the base.
        if base_url.contains('#') {
            return Err(bad("a base URL has no fragment"));
        }
        let uri: Uri = base_url.parse().map_err(|_| bad("it does not parse"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
            return Err(bad("it names no host"));
        };
        // Credentials in a URL end up in logs; the token file is for them.
        if authority.as_str().contains('@') {
            return Err(bad("it holds credentials; pass a token with --token-file"));
        }
        if uri.query().is_some() {
            return Err(bad("a base URL has no query"));
        }
        let loopback = host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let base = format!(
            "{}://{}{}",
            if https { "https" } else { "http" },
            authority,
            uri.path().trim_end_matches('/')
        );
        let authorization = bearer(options.bearer_token.as_deref(), https || loopback)?;
        let tls = tls_config(https, options.ca_cert.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DicomWebError::Unreachable {
                what: "starting the HTTP client",
                why: e.to_string(),
            })?;
        Ok(Self {
            base,
            private: https || loopback,
            client,
            runtime,
            authorization: std::sync::Mutex::new(authorization),
            options,
        })
    }

    /// The service's base URL, normalised (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Replaces the bearer token (a token file re-read before each poll:
    /// tokens expire).
    pub fn set_bearer_token(&self, token: Option<&str>) -> Result<(), DicomWebError> {
        let value = bearer(token, self.private)?;
        *self
            .authorization
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
        Ok(())
    }

    /// Whether the archive holds an instance of `modality` with SOP
    /// Instance UID `uid` (a report the bridge may have stored before a
    /// crash): `None` when the answer lists other instances only, so the
    /// archive ignored the filter and the answer says nothing.
    pub fn holds_instance(&self, modality: &str, uid: &str) -> Result<Option<bool>, DicomWebError> {
        let filter = [("SOPInstanceUID".to_owned(), uid.to_owned())];
        let page = self.search_instances(modality, &filter, 0, 10)?;
        Ok(if page.instances.iter().any(|i| i.instance == uid) {
            Some(true)
        } else if page.entries == 0 {
            Some(false)
        } else {
            None
        })
    }

    /// QIDO-RS: one page of the instances of `modality` that also match
    /// `filters` (attribute keyword or tag, value), from `offset`.
    pub fn search_instances(
        &self,
        modality: &str,
        filters: &[(String, String)],
        offset: usize,
        limit: usize,
    ) -> Result<SearchPage, DicomWebError> {
        const WHAT: &str = "QIDO-RS search";
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("Modality", modality);
        for (key, value) in filters {
            query.append_pair(key, value);
        }
        query
            .append_pair("limit", &limit.to_string())
            .append_pair("offset", &offset.to_string());
        let url = format!("{}/instances?{}", self.base, query.finish());
        let (status, _, body) = self.call(
            WHAT,
            Method::GET,
            &url,
            "application/dicom+json",
            None,
            SEARCH_MAX_BYTES,
        )?;
        if status == StatusCode::NO_CONTENT {
            return Ok(SearchPage::default());
        }
        if !status.is_success() {
            return Err(DicomWebError::Status {
                what: WHAT,
                status: status.as_u16(),
            });
        }
        // Entry by entry, keeping only the three UIDs: a page of tiny JSON
        // objects never becomes a tree in memory.
        serde_json::from_slice::<SearchPage>(&body).map_err(|e| DicomWebError::Malformed {
            what: WHAT,
            why: format!(
                "not a JSON array of DICOM JSON datasets ({:?})",
                e.classify()
            ),
        })
    }

    /// WADO-RS: the instance's Part 10 bytes, in the transfer syntax the
    /// archive holds it in.
    pub fn retrieve_instance(&self, instance: &InstanceRef) -> Result<Bytes, DicomWebError> {
        const WHAT: &str = "WADO-RS retrieve";
        let url = format!(
            "{}/studies/{}/series/{}/instances/{}",
            self.base, instance.study, instance.series, instance.instance
        );
        let cap = self.options.max_instance_bytes;
        let (status, content_type, body) = self.call(
            WHAT,
            Method::GET,
            &url,
            r#"multipart/related; type="application/dicom"; transfer-syntax=*"#,
            None,
            cap.saturating_add(MULTIPART_OVERHEAD_BYTES),
        )?;
        if !status.is_success() {
            return Err(DicomWebError::Status {
                what: WHAT,
                status: status.as_u16(),
            });
        }
        let malformed = |why: String| DicomWebError::Malformed { what: WHAT, why };
        let mime: mime::Mime = content_type
            .as_deref()
            .unwrap_or("")
            .parse()
            .map_err(|_| malformed("no usable Content-Type".into()))?;
        let part = match (mime.type_(), mime.subtype().as_str()) {
            (mime::APPLICATION, "dicom") => body,
            (mime::MULTIPART, "related") => {
                let boundary = mime
                    .get_param(mime::BOUNDARY)
                    .ok_or_else(|| malformed("a multipart answer without a boundary".into()))?
                    .to_string();
                self.runtime
                    .block_on(first_dicom_part(body, boundary, cap))?
            }
            // The type only: parameters are the archive's text.
            _ => {
                let essence: String = mime.essence_str().chars().take(64).collect();
                return Err(malformed(format!("Content-Type {essence} is not DICOM")));
            }
        };
        if part.len() > cap {
            return Err(DicomWebError::TooLarge {
                what: WHAT,
                limit: cap,
            });
        }
        Ok(part)
    }

    /// STOW-RS: stores one Part 10 instance (`sop_instance_uid` is its SOP
    /// Instance UID). Succeeds only when the archive lists the instance
    /// among those it stored.
    pub fn store_instance(
        &self,
        part10: &[u8],
        sop_instance_uid: &str,
    ) -> Result<(), DicomWebError> {
        const WHAT: &str = "STOW-RS store";
        let boundary = loop {
            let boundary = format!(
                "medguard-{:016x}{:016x}",
                getrandom::u64().map_err(|e| DicomWebError::Unreachable {
                    what: WHAT,
                    why: format!("no randomness for the multipart boundary: {e}"),
                })?,
                getrandom::u64().unwrap_or(0)
            );
            // A boundary must not occur in the part it delimits.
            if !part10
                .windows(boundary.len())
                .any(|w| w == boundary.as_bytes())
            {
                break boundary;
            }
        };
        let mut body = Vec::with_capacity(part10.len() + 256);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(part10);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let content_type =
            format!(r#"multipart/related; type="application/dicom"; boundary={boundary}"#);
        let url = format!("{}/studies", self.base);
        let (status, _, answer) = self.call(
            WHAT,
            Method::POST,
            &url,
            "application/dicom+json",
            Some((content_type, body)),
            STORE_ANSWER_MAX_BYTES,
        )?;
        // 200: all stored; 202: some stored, with warnings or failures;
        // 409: none stored. The answer's sequences say which.
        let json: Option<Value> = serde_json::from_slice(&answer).ok();
        let listed = |tag: &str| {
            json.as_ref()
                .and_then(|j| j.get(tag))
                .and_then(|s| s.get("Value"))
                .and_then(Value::as_array)
                .is_some_and(|items| {
                    items
                        .iter()
                        .any(|i| first_string(i, "00081155").as_deref() == Some(sop_instance_uid))
                })
        };
        if status.is_success() && listed("00081199") && !listed("00081198") {
            return Ok(());
        }
        if !status.is_success() && status != StatusCode::CONFLICT {
            return Err(DicomWebError::Status {
                what: WHAT,
                status: status.as_u16(),
            });
        }
        let reason = json
            .as_ref()
            .and_then(|j| j.get("00081198"))
            .and_then(|s| s.get("Value"))
            .and_then(Value::as_array)
            .and_then(|items| items.first())
            .and_then(|i| i.get("00081197"))
            .and_then(|r| r.get("Value"))
            .and_then(Value::as_array)
            .and_then(|v| v.first())
            .and_then(Value::as_u64)
            .map(|code| format!(", failure reason {code:#06x}"))
            .unwrap_or_default();
        Err(DicomWebError::NotStored { reason })
    }

    /// One request; the status, the Content-Type and the body read under
    /// `max_bytes`, all within the timeout.
    fn call(
        &self,
        what: &'static str,
        method: Method,
        url: &str,
        accept: &str,
        body: Option<(String, Vec<u8>)>,
        max_bytes: usize,
    ) -> Result<(StatusCode, Option<String>, Bytes), DicomWebError> {
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(ACCEPT, accept);
        let authorization = self
            .authorization
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(auth) = authorization {
            request = request.header(AUTHORIZATION, auth);
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                request = request.header(CONTENT_TYPE, content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(payload)
            .map_err(|e| DicomWebError::Malformed {
                what,
                why: format!("the request could not be built: {e}"),
            })?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| DicomWebError::Unreachable {
                        what,
                        why: transport_reason(&e),
                    })?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(response.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        DicomWebError::TooLarge {
                            what,
                            limit: max_bytes,
                        }
                    } else {
                        DicomWebError::Unreachable {
                            what,
                            why: format!("reading the answer: {e}"),
                        }
                    }
                })?
                .to_bytes();
            Ok((status, content_type, body))
        };
        let timeout = self.options.timeout;
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, exchange).await })
            .map_err(|_| DicomWebError::Timeout {
                what,
                seconds: timeout.as_secs(),
            })?
    }
}

/// The first part of a multipart/related answer, which must be DICOM (a
/// part that names no type is taken as the type the request asked for).
async fn first_dicom_part(
    body: Bytes,
    boundary: String,
    cap: usize,
) -> Result<Bytes, DicomWebError> {
    const WHAT: &str = "WADO-RS retrieve";
    let malformed = |why: String| DicomWebError::Malformed { what: WHAT, why };
    let stream = futures_stream(body);
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(cap as u64));
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    // multer's messages quote the part's headers, the archive's text: only
    // fixed words go out.
    let field = multipart
        .next_field()
        .await
        .map_err(|_| malformed("the multipart answer does not parse".into()))?
        .ok_or_else(|| malformed("a multipart answer with no part".into()))?;
    if let Some(ct) = field.content_type()
        && !(ct.type_() == mime::APPLICATION && ct.subtype() == "dicom")
    {
        return Err(malformed("its part is not application/dicom".into()));
    }
    field.bytes().await.map_err(|e| match e {
        multer::Error::FieldSizeExceeded { .. } => DicomWebError::TooLarge {
            what: WHAT,
            limit: cap,
        },
        _ => malformed("the multipart answer does not parse".into()),
    })
}

/// The `Authorization` header for `token`, marked sensitive; `private`:
/// the connection is https or stays on this machine, so a token may cross it.
fn bearer(token: Option<&str>, private: bool) -> Result<Option<HeaderValue>, DicomWebError> {
    let Some(token) = token else {
        return Ok(None);
    };
    if !private {
        return Err(DicomWebError::TokenOverHttp);
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|_| DicomWebError::Token)?;
    value.set_sensitive(true);
    Ok(Some(value))
}

impl<'de> serde::Deserialize<'de> for SearchPage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = SearchPage;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON array of DICOM JSON datasets")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SearchPage, A::Error> {
                let mut page = SearchPage::default();
                while let Some(entry) = seq.next_element::<QidoEntry>()? {
                    page.entries += 1;
                    let uid = |u: Option<String>| u.filter(|u| is_valid_uid(u));
                    match (uid(entry.study), uid(entry.series), uid(entry.instance)) {
                        (Some(study), Some(series), Some(instance)) => {
                            page.instances.push(InstanceRef {
                                study,
                                series,
                                instance,
                            });
                        }
                        _ => page.invalid += 1,
                    }
                }
                Ok(page)
            }
        }
        deserializer.deserialize_seq(Entries)
    }
}

// The readers below take any JSON where a DICOM JSON dataset belongs and
// keep only the first text of the three UID attributes: an entry of the
// wrong shape is an invalid entry, not a failed page, and nothing else is
// built (serde's IgnoredAny skips it).

/// Answers `Default` for every JSON scalar, and skips arrays and objects.
macro_rules! lenient_scalars {
    () => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
    };
}

/// Skips what is left of an array.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Skips what is left of an object.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A QIDO-RS entry's three UIDs, each if present as text.
#[derive(Default)]
struct QidoEntry {
    study: Option<String>,
    series: Option<String>,
    instance: Option<String>,
}

impl<'de> serde::Deserialize<'de> for QidoEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = QidoEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a DICOM JSON dataset")
            }
            lenient_scalars!();
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<QidoEntry, E> {
                Ok(QidoEntry::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<QidoEntry, A::Error> {
                drain_seq(seq)?;
                Ok(QidoEntry::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<QidoEntry, A::Error> {
                let mut entry = QidoEntry::default();
                while let Some(tag) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match tag.as_ref() {
                        "0020000D" => &mut entry.study,
                        "0020000E" => &mut entry.series,
                        "00080018" => &mut entry.instance,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value::<Attribute>()?.0;
                }
                Ok(entry)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A DICOM JSON attribute's first value, if it is text.
#[derive(Default)]
struct Attribute(Option<String>);

impl<'de> serde::Deserialize<'de> for Attribute {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Attribute;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a DICOM JSON attribute")
            }
            lenient_scalars!();
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Attribute, E> {
                Ok(Attribute::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Attribute, A::Error> {
                drain_seq(seq)?;
                Ok(Attribute::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attribute, A::Error> {
                let mut first = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "Value" {
                        first = map.next_value::<FirstText>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Attribute(first))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The first element of a `Value` array, if it is text.
#[derive(Default)]
struct FirstText(Option<String>);

impl<'de> serde::Deserialize<'de> for FirstText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a DICOM JSON Value array")
            }
            lenient_scalars!();
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<FirstText, E> {
                Ok(FirstText::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FirstText, A::Error> {
                drain_map(map)?;
                Ok(FirstText::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstText, A::Error> {
                let first = seq.next_element::<Text>()?.and_then(|t| t.0);
                drain_seq(seq)?;
                Ok(FirstText(first))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A JSON string; anything else is `None`, skipped unbuilt.
#[derive(Default)]
struct Text(Option<String>);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            lenient_scalars!();
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text, E> {
                // A UID is at most 64 characters: longer text is not kept.
                Ok(Text((text.len() <= 64).then(|| text.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text, A::Error> {
                drain_seq(seq)?;
                Ok(Text::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
                drain_map(map)?;
                Ok(Text::default())
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A body already read, as the one-chunk stream multer reads.
fn futures_stream(
    body: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures_util::stream::iter([Ok(body)])
}

/// The first value of `tag` in a DICOM JSON dataset, as text.
fn first_string(dataset: &Value, tag: &str) -> Option<String> {
    dataset
        .get(tag)?
        .get("Value")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_owned)
}

/// A transport error's reason, with its sources (hyper's own message alone
/// is "client error (Connect)").
fn transport_reason(e: &dyn std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

/// TLS for https base URLs: the CA file's certificates, or the system's
/// trust store (where a hospital's own CA is usually installed).
fn tls_config(https: bool, ca_cert: Option<&Path>) -> Result<rustls::ClientConfig, DicomWebError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let failed = |why: String| DicomWebError::Certificates {
                path: path.display().to_string(),
                why,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| failed(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| failed(e.to_string()))?;
            if certs.is_empty() {
                return Err(failed("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| failed(e.to_string()))?;
            }
        }
        None if !https => {}
        None => {
            // Unreadable entries of the system store are skipped, as every
            // TLS client does; an https call then fails on verification.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DicomWebError::Certificates {
            path: "rustls".into(),
            why: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Entries of every wrong shape are counted invalid; the page, and the
    /// one good entry in it, survive them.
    #[test]
    fn a_search_page_survives_entries_of_the_wrong_shape() {
        let good = r#"{"0020000D":{"vr":"UI","Value":["1.2"]},"0020000E":{"Value":["1.3"]},"00080018":{"Value":["1.4"],"vr":"UI"},"00100010":{"Value":[{"Alphabetic":"Doe^Jane"}]}}"#;
        let page = format!(
            r#"[1, "x", [], null, {{}}, {{"0020000D": "x"}}, {{"0020000D": {{"Value": "1.2"}}}},
               {{"0020000D": {{"Value": [[1, 2]]}}, "0020000E": {{"Value": [{{"a": 1}}]}}}},
               {{"0020000D": {{"Value": ["{long}"]}}, "0020000E": {{"Value": ["1.3"]}}, "00080018": {{"Value": ["1.4"]}}}},
               {good}]"#,
            long = "1".repeat(70)
        );
        let parsed: SearchPage = serde_json::from_str(&page).unwrap();
        assert_eq!(parsed.entries, 10);
        assert_eq!(parsed.invalid, 9);
        assert_eq!(
            parsed.instances,
            [InstanceRef {
                study: "1.2".into(),
                series: "1.3".into(),
                instance: "1.4".into(),
            }]
        );
        assert!(serde_json::from_str::<SearchPage>(r#"{"not": "an array"}"#).is_err());
    }
}
