//! A real Orthanc with its DICOMweb plugin for tests and benchmarks: the
//! Debian packages `orthanc` and `orthanc-dicomweb` (scripts/system-packages.sh
//! installs them, scripts/test.sh names the binary in `MEDGUARD_ORTHANC`),
//! started on 127.0.0.1 with a throwaway configuration and killed on drop.
//!
//! Its HTTP is a few lines over a TcpStream (HTTP/1.0, so no chunked
//! answers): the archive is checked by other code than medguard's client.
//! medguard-tests exports it; the CLI tests include this file by path.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running Orthanc with an empty archive; killed on drop.
pub struct Orthanc {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Orthanc {
    /// Starts Orthanc (the binary `MEDGUARD_ORTHANC` names) and waits until
    /// it answers.
    ///
    /// # Panics
    ///
    /// If `MEDGUARD_ORTHANC` is unset or Orthanc does not answer in 60 s.
    pub fn start() -> Self {
        let binary = std::env::var("MEDGUARD_ORTHANC").expect(
            "MEDGUARD_ORTHANC names the Orthanc binary (scripts/test.sh sets it after installing orthanc and orthanc-dicomweb)",
        );
        let plugin = std::env::var("MEDGUARD_ORTHANC_DICOMWEB")
            .unwrap_or_else(|_| "/usr/share/orthanc/plugins/libOrthancDicomWeb.so".into());
        let dir = tempfile::tempdir().expect("orthanc");
        let port = free_port();
        let storage = dir.path().join("db");
        let config = serde_json::json!({
            "Name": "medguard-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": port,
            "DicomServerEnabled": false,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": true, "Root": "/dicom-web/"},
        });
        let path = dir.path().join("orthanc.json");
        std::fs::write(&path, config.to_string()).expect("orthanc");
        let log = std::fs::File::create(dir.path().join("orthanc.log")).expect("orthanc");
        let child = Command::new(binary)
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start Orthanc");
        let orthanc = Self { child, port, dir };
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = orthanc.try_get("/dicom-web/studies") {
                return orthanc;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Orthanc did not start: {}",
                std::fs::read_to_string(orthanc.dir.path().join("orthanc.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Its DICOMweb base URL.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/dicom-web", self.port)
    }

    /// One request; the status and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no header end"))?;
        let head = String::from_utf8_lossy(&response[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        Ok((status, response[split + 4..].to_vec()))
    }

    /// A GET asking for DICOM JSON.
    pub fn try_get(&self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        self.request("GET", path, "Accept: application/dicom+json\r\n", b"")
    }

    /// QIDO-RS or metadata: the DICOM JSON answer.
    ///
    /// # Panics
    ///
    /// Unless the answer is 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.try_get(path).expect("orthanc");
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        if body.is_empty() {
            return Value::Array(Vec::new());
        }
        serde_json::from_slice(&body).expect("orthanc")
    }

    /// STOW-RS of one Part 10 file, as a modality would send it.
    ///
    /// # Panics
    ///
    /// Unless Orthanc answers 200.
    pub fn store(&self, part10: &[u8]) {
        let boundary = "test-boundary-5f1e0c";
        let mut body =
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
        body.extend_from_slice(part10);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let headers = format!(
            "Content-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}\r\nAccept: application/dicom+json\r\n"
        );
        let (status, answer) = self
            .request("POST", "/dicom-web/studies", &headers, &body)
            .expect("orthanc");
        assert_eq!(status, 200, "STOW-RS: {}", String::from_utf8_lossy(&answer));
    }

    /// Every instance of `modality` in the archive.
    ///
    /// # Panics
    ///
    /// Unless Orthanc answers the search.
    pub fn instances(&self, modality: &str) -> Vec<Value> {
        let json = self.get_json(&format!("/dicom-web/instances?Modality={modality}"));
        json.as_array().expect("orthanc").clone()
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("orthanc")
        .local_addr()
        .expect("orthanc")
        .port()
}
