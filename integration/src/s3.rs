//! A real S3 server per test: moto's server mode on a reserved loopback port, with its log in the test
//! directory.
//!
//! # Which binary
//! `$STRATA_MOTO_SERVER`, else `/opt/strata-tools/bin/moto_server` (what `scripts/install-deps.sh` installs,
//! moto 5.2.5). Older moto (Debian's python3-moto, or 5.2.1) breaks CompleteMultipartUpload with the Rust
//! SDK, so a PATH lookup could fail a test for the wrong reason.
//!
//! # Readiness
//! The server is ready when an HTTP request to it is answered. Buckets are created with a plain HTTP
//! `PUT /<bucket>` (moto accepts any credentials), so the harness needs no S3 client of its own.
//!
//! # KMS
//! moto serves KMS on the same port; the KMS helpers (`kms_create_key`, `kms_disable_key`, ...) are plain
//! JSON POSTs for the same reason.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::ports::{reserve_port, Port};
use crate::process::{log_tail, stop_child, POLL_INTERVAL};
use crate::testdir::TestDir;

pub const MOTO_SERVER_ENV: &str = "STRATA_MOTO_SERVER";
pub const DEFAULT_MOTO_SERVER: &str = "/opt/strata-tools/bin/moto_server";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The access key moto is given (it accepts any).
pub const S3_ACCESS_KEY: &str = "strata-test";
pub const S3_SECRET_KEY: &str = "strata-test-secret";

fn moto_server_bin() -> PathBuf {
    let path = std::env::var_os(MOTO_SERVER_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_MOTO_SERVER));
    if !path.exists() {
        panic!("moto_server not found at {} (set {MOTO_SERVER_ENV}, or run scripts/install-deps.sh)", path.display());
    }
    path
}

/// A moto S3 server owned by one test.
#[derive(Debug)]
pub struct S3Server {
    ip: IpAddr,
    port: Port,
    log_file: PathBuf,
    child: Option<Child>,
    _test_dir: TestDir,
}

impl S3Server {
    pub fn start(dir: &TestDir) -> S3Server {
        S3Server::start_on(dir, IpAddr::from([127, 0, 0, 1]))
    }

    /// Starts a server listening on `ip` (an address of the calling thread's network namespace, which is
    /// also where readiness is checked from) and waits until it answers.
    pub fn start_on(dir: &TestDir, ip: IpAddr) -> S3Server {
        let bin = moto_server_bin();
        let home = dir.subdir("s3");
        let port = reserve_port();
        let log_file = home.join("moto.log");
        let log = std::fs::File::create(&log_file).unwrap_or_else(|e| panic!("cannot create {}: {e}", log_file.display()));
        let child = Command::new(&bin)
            .args(["-H", &ip.to_string(), "-p", &port.get().to_string()])
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut server = S3Server { ip, port, log_file, child: Some(child), _test_dir: dir.clone() };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("moto_server exited ({status}) before it was ready:\n{}", log_tail(&self.log_file, 30));
            }
            if self.http("GET", "/", b"").is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("moto_server not ready after {READY_TIMEOUT:?}:\n{}", log_tail(&self.log_file, 30));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.port.get())
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Creates `bucket` (path-style `PUT /<bucket>`).
    pub fn create_bucket(&self, bucket: &str) {
        let status = self.http("PUT", &format!("/{bucket}"), b"").unwrap_or_else(|e| panic!("PUT /{bucket}: {e}"));
        assert!(status == 200, "creating bucket {bucket}: HTTP {status}\n{}", log_tail(&self.log_file, 20));
    }

    /// The `[[repo]]` body (after `name`) of an S3 repository in `bucket` under `prefix` on this server.
    pub fn repo_config(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "type = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
             access_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\n",
            self.endpoint()
        )
    }

    /// Deletes every object of `bucket`, then the bucket (plain HTTP, as a user wiping it would).
    pub fn delete_bucket_with_contents(&self, bucket: &str) {
        loop {
            let (status, listing) = self
                .http_full("GET", &format!("/{bucket}?list-type=2&max-keys=1000"), b"")
                .unwrap_or_else(|e| panic!("listing bucket {bucket}: {e}"));
            assert_eq!(status, 200, "listing bucket {bucket}: {listing}");
            let keys: Vec<String> = listing
                .split("<Key>")
                .skip(1)
                .filter_map(|rest| rest.split("</Key>").next())
                .map(|k| k.replace("&amp;", "&"))
                .collect();
            if keys.is_empty() {
                break;
            }
            for key in keys {
                assert!(
                    key.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b)),
                    "object key {key:?} would need URL encoding"
                );
                let status = self.http("DELETE", &format!("/{bucket}/{key}"), b"").unwrap_or_else(|e| panic!("DELETE {key}: {e}"));
                assert!(status == 204 || status == 200, "deleting {bucket}/{key}: HTTP {status}");
            }
        }
        let status = self.http("DELETE", &format!("/{bucket}"), b"").unwrap_or_else(|e| panic!("DELETE /{bucket}: {e}"));
        assert!(status == 204 || status == 200, "deleting bucket {bucket}: HTTP {status}");
    }

    /// Where this server's KMS API is: moto serves KMS on the same port as S3.
    pub fn kms_endpoint(&self) -> String {
        self.endpoint()
    }

    /// Creates a symmetric KMS key; returns its key id.
    pub fn kms_create_key(&self) -> String {
        let reply = self.kms("CreateKey", "{}");
        reply["KeyMetadata"]["KeyId"].as_str().unwrap_or_else(|| panic!("CreateKey answered without a KeyId: {reply}")).to_string()
    }

    /// Disables a KMS key (id or ARN).
    pub fn kms_disable_key(&self, key_id: &str) {
        self.kms("DisableKey", &serde_json::json!({ "KeyId": key_id }).to_string());
    }

    /// A KMS key's state ("Enabled", "Disabled", ...).
    pub fn kms_key_state(&self, key_id: &str) -> String {
        let reply = self.kms("DescribeKey", &serde_json::json!({ "KeyId": key_id }).to_string());
        reply["KeyMetadata"]["KeyState"].as_str().unwrap_or_else(|| panic!("DescribeKey answered without a KeyState: {reply}")).to_string()
    }

    /// The `[encryption]` body that wraps data keys with `key_id` on this server's KMS.
    pub fn kms_encryption_config(&self, key_id: &str) -> String {
        format!(
            "type = \"kms\"\nkms_key_id = \"{key_id}\"\nkms_region = \"us-east-1\"\nkms_endpoint = \"{}\"\n\
             kms_access_key_id = \"{S3_ACCESS_KEY}\"\nkms_secret_access_key = \"{S3_SECRET_KEY}\"\n",
            self.kms_endpoint()
        )
    }

    /// One KMS JSON call (`TrentService.<action>`); panics unless it answers 200. moto picks the service and
    /// region from the Authorization header's credential scope, so the request carries a SigV4-shaped one
    /// (moto does not check signatures).
    fn kms(&self, action: &str, body: &str) -> serde_json::Value {
        let headers = format!(
            "X-Amz-Target: TrentService.{action}\r\nContent-Type: application/x-amz-json-1.1\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential={S3_ACCESS_KEY}/20260101/us-east-1/kms/aws4_request, \
             SignedHeaders=host;x-amz-target, Signature=0\r\n"
        );
        let (status, reply) =
            self.http_with_headers("POST", "/", &headers, body.as_bytes()).unwrap_or_else(|e| panic!("KMS {action}: {e}"));
        assert!(status == 200, "KMS {action}: HTTP {status}: {reply}\n{}", log_tail(&self.log_file, 20));
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("KMS {action} answered invalid JSON ({e}): {reply}"))
    }

    /// One HTTP/1.1 request with extra header lines (each ending in CRLF); the status code and the body.
    fn http_with_headers(&self, method: &str, path: &str, headers: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect((self.ip, self.port.get()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.ip,
            self.port.get(),
            body.len()
        )?;
        s.write_all(body)?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {:?}", response.lines().next())))?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    }

    /// One HTTP/1.1 request; the response's status code.
    fn http(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
        self.http_full(method, path, body).map(|(status, _)| status)
    }

    /// One HTTP/1.1 request; the response's status code and body.
    fn http_full(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        // moto refuses anonymous deletes; it checks the access key's presence, not the signature.
        let headers = if method == "DELETE" {
            format!("Authorization: AWS4-HMAC-SHA256 Credential={S3_ACCESS_KEY}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n")
        } else {
            String::new()
        };
        self.http_with_headers(method, path, &headers, body)
    }

    /// Stops the server (SIGTERM, then SIGKILL after a grace period), by its pid.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child(child, libc::SIGTERM, STOP_GRACE);
        }
        self.child = None;
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
