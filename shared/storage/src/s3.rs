//! A repository in an S3 bucket (AWS, or any S3-compatible server), under an optional key prefix.
//!
//! Durability: S3 makes an object visible only once the whole of it is stored, so a `put` that returned is
//! complete and durable; objects above [`MULTIPART_THRESHOLD`] go up in parts, and only the completion
//! makes them visible. `put_new` is a conditional write (`If-None-Match: *`), the WAL archive's
//! never-overwrite rule; S3 answers 412 when the name is taken.
//!
//! Transient failures (5xx, 429/SlowDown, timeouts, dropped connections) are retried here, request by
//! request (so a multipart upload resends one part, not the object), through the workspace's one retry loop
//! (`strata_retry`, bounded by [`S3Settings::retry`], ended by [`S3Settings::cancel`]), and counted
//! ([`Storage::retries`]); the SDK's own retries are off, so there is one retry loop to reason about. Newer SDKs add CRC checksum headers to every
//! upload, which some S3-compatible servers reject: `checksums = false` (the default for a custom
//! endpoint) sends them only where the API requires them.

use super::{Features, ObjectInfo, Result, Storage, StorageError, Written};
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, StorageClass};
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_retry::RetryPolicy;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 32 * 1024 * 1024;
/// Size of each part of a multipart upload (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 16 * 1024 * 1024;
/// Parts of one multipart upload sent at once.
pub const PARTS_IN_FLIGHT: usize = 4;

/// Where and how to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix of the repository inside the bucket ("" or "some/dir").
    pub prefix: String,
    pub region: String,
    /// A custom endpoint ("http://127.0.0.1:9000") for S3-compatible servers; `None` for AWS.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub path_style: bool,
    /// Static credentials; `None` uses the usual AWS chain (environment, profile, instance role...).
    pub credentials: Option<(String, String)>,
    /// Storage class for new objects ("STANDARD_IA", "GLACIER_IR"...); `None` is the bucket's default.
    pub storage_class: Option<String>,
    /// Send the SDK's CRC checksum headers on every upload (some S3-compatible servers reject them).
    pub checksums: bool,
    /// How each request is retried ([`DEFAULT_RETRY`]).
    pub retry: RetryPolicy,
    /// Time allowed for one attempt of one request ([`DEFAULT_ATTEMPT_TIMEOUT`]).
    pub attempt_timeout: Duration,
    /// Ends a retry's pause (a shutdown); the request then fails with its last error.
    pub cancel: CancellationToken,
}

/// How often and how patiently a failed request is retried.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 5,
    first_pause: Duration::from_millis(200),
    max_pause: Duration::from_secs(5),
    give_up_after: None,
};

/// Time allowed for one attempt of one request: a stalled attempt (a connection that answers nothing) is
/// cut after a minute and retried, as pgBackRest's io-timeout does; a 64 MiB pack needs only ~1 MB/s to fit.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct S3Storage {
    client: aws_sdk_s3::Client,
    settings: Arc<S3Settings>,
    retries: Arc<AtomicU64>,
}

/// One failed attempt: whether another may succeed, and the error to report if none does.
enum Attempt {
    Transient(StorageError),
    Permanent(StorageError),
}

impl Attempt {
    fn error(&self) -> &StorageError {
        match self {
            Attempt::Transient(e) | Attempt::Permanent(e) => e,
        }
    }
    fn into_error(self) -> StorageError {
        match self {
            Attempt::Transient(e) | Attempt::Permanent(e) => e,
        }
    }
}

impl S3Storage {
    pub async fn open(settings: S3Settings) -> Result<Self> {
        if settings.bucket.is_empty() {
            return Err(StorageError::Corrupt { path: "s3:".into(), reason: "no bucket configured".into() });
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some((key, secret)) = &settings.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(key, secret, None, None, "strata config"));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared).force_path_style(settings.path_style);
        if let Some(endpoint) = &settings.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        if !settings.checksums {
            conf = conf
                .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
        }
        let client = aws_sdk_s3::Client::from_conf(conf.build());
        Ok(S3Storage { client, settings: Arc::new(settings), retries: Arc::new(AtomicU64::new(0)) })
    }

    fn key(&self, path: &str) -> String {
        match self.settings.prefix.trim_matches('/') {
            "" => path.to_string(),
            prefix => format!("{prefix}/{path}"),
        }
    }

    fn storage_class(&self) -> Option<StorageClass> {
        self.settings.storage_class.as_deref().map(StorageClass::from)
    }

    /// Runs `op` until it succeeds, fails permanently, or has used every attempt the policy allows; each
    /// attempt is cut after [`S3Settings::attempt_timeout`].
    async fn retrying<T, F, Fut>(&self, path: &str, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Attempt>>,
    {
        let timeout = self.settings.attempt_timeout;
        let outcome = strata_retry::retry(
            &self.settings.retry,
            &self.settings.cancel,
            |a: &Attempt| matches!(a, Attempt::Permanent(_)),
            |attempt, a, pause| {
                self.retries.fetch_add(1, Ordering::Relaxed);
                warn!(path, what, attempt, error = %a.error(), "S3 request failed; retrying in {pause:?}");
            },
            || {
                let attempt = op();
                async move {
                    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| {
                        Err(Attempt::Transient(StorageError::Io {
                            path: path.to_string(),
                            source: std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out")),
                        }))
                    })
                }
            },
        )
        .await;
        outcome.map_err(|gave_up| {
            let note = gave_up.attempts_note();
            gave_up.last.into_error().with_note(&note)
        })
    }

    /// The object (or the byte `range` of it, an HTTP Range value), read whole.
    async fn get_object(&self, path: &str, range: Option<String>) -> Result<Bytes> {
        let key = self.key(path);
        self.retrying(path, "GetObject", || {
            let req = self.client.get_object().bucket(&self.settings.bucket).key(&key).set_range(range.clone());
            async move {
                let out = req.send().await.map_err(|e| classify(path, e))?;
                // A body cut off mid-transfer is worth another attempt.
                let body = out.body.collect().await.map_err(|e| {
                    Attempt::Transient(StorageError::Io { path: path.into(), source: std::io::Error::other(format!("S3 body: {e}")) })
                })?;
                Ok(body.into_bytes())
            }
        })
        .await
    }

    /// Puts `data` (in parts above [`MULTIPART_THRESHOLD`]), each request with its Content-MD5, and returns
    /// the ETag the server gave the object.
    async fn put_object(&self, path: &str, data: Bytes, if_none_match: bool) -> Result<Option<String>> {
        if data.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(path, data, if_none_match).await;
        }
        let key = self.key(path);
        let md5 = content_md5(&md5_of(&data));
        self.retrying(path, "PutObject", || {
            let req = self
                .client
                .put_object()
                .bucket(&self.settings.bucket)
                .key(&key)
                .content_md5(&md5)
                .set_storage_class(self.storage_class())
                .set_if_none_match(if_none_match.then(|| "*".to_string()))
                .body(ByteStream::from(data.clone()));
            async move { req.send().await.map(|o| o.e_tag).map_err(|e| classify(path, e)) }
        })
        .await
    }

    /// Uploads one part; its ETag.
    async fn upload_part(&self, path: &str, key: &str, upload_id: &str, number: i32, body: Bytes) -> Result<CompletedPart> {
        let md5 = content_md5(&md5_of(&body));
        let etag = self
            .retrying(path, "UploadPart", || {
                let req = self
                    .client
                    .upload_part()
                    .bucket(&self.settings.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_md5(&md5)
                    .body(ByteStream::from(body.clone()));
                async move { Ok(req.send().await.map_err(|e| classify(path, e))?.e_tag) }
            })
            .await?;
        Ok(CompletedPart::builder().part_number(number).set_e_tag(etag).build())
    }

    async fn put_multipart(&self, path: &str, data: Bytes, if_none_match: bool) -> Result<Option<String>> {
        use futures::{StreamExt, TryStreamExt};
        let key = self.key(path);
        let bucket = &self.settings.bucket;
        let upload_id = self
            .retrying(path, "CreateMultipartUpload", || {
                let req = self.client.create_multipart_upload().bucket(bucket).key(&key).set_storage_class(self.storage_class());
                async move {
                    let out = req.send().await.map_err(|e| classify(path, e))?;
                    out.upload_id.ok_or_else(|| {
                        Attempt::Permanent(StorageError::Corrupt { path: path.into(), reason: "S3 returned no upload id".into() })
                    })
                }
            })
            .await?;
        let uploaded = async {
            // Several parts at once: over a long link one part at a time leaves it idle for a round trip
            // between parts. The parts are slices of `data`, so this holds no more memory.
            let bodies: Vec<(i32, Bytes)> =
                data.chunks(PART_SIZE).enumerate().map(|(i, part)| (i as i32 + 1, data.slice_ref(part))).collect();
            let parts: Vec<CompletedPart> = futures::stream::iter(bodies)
                .map(|(number, body)| self.upload_part(path, &key, &upload_id, number, body))
                .buffered(PARTS_IN_FLIGHT)
                .try_collect()
                .await?;
            let completed = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
            self.retrying(path, "CompleteMultipartUpload", || {
                let req = self
                    .client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .set_if_none_match(if_none_match.then(|| "*".to_string()))
                    .multipart_upload(completed.clone());
                async move { req.send().await.map(|o| o.e_tag).map_err(|e| classify(path, e)) }
            })
            .await
        }
        .await;
        if uploaded.is_err() {
            // Parts of an abandoned upload cost storage until aborted (or a lifecycle rule removes them).
            let _ = self.client.abort_multipart_upload().bucket(bucket).key(&key).upload_id(&upload_id).send().await;
        }
        uploaded
    }
}

fn md5_of(data: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(data).into()
}

fn content_md5(digest: &[u8; 16]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The ETag an S3 server gives `data` when [`S3Storage::put`] stores it, without server-side encryption
/// by KMS (whose ETags are no digest): the MD5 of the object put in one request, or for a multipart
/// upload the MD5 of its parts' MD5s followed by `-` and their count.
pub fn expected_etag(data: &[u8]) -> String {
    if data.len() <= MULTIPART_THRESHOLD {
        return hex::encode(md5_of(data));
    }
    let mut digests = Vec::new();
    let mut parts = 0;
    for part in data.chunks(PART_SIZE) {
        digests.extend_from_slice(&md5_of(part));
        parts += 1;
    }
    format!("{}-{parts}", hex::encode(md5_of(&digests)))
}

/// Sorts an SDK error into "try again" and "give up", as a [`StorageError`] naming `path`.
fn classify<E>(path: &str, err: SdkError<E, HttpResponse>) -> Attempt
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let path = path.to_string();
    let io = |kind: std::io::ErrorKind, msg: String| StorageError::Io { path: path.clone(), source: std::io::Error::new(kind, msg) };
    match &err {
        SdkError::TimeoutError(_) => Attempt::Transient(io(std::io::ErrorKind::TimedOut, "S3 request timed out".into())),
        SdkError::DispatchFailure(_) => {
            // Connection refused or reset, DNS: retried, then reported as the server being unreachable.
            let msg = format!("cannot reach S3: {}", DisplayErrorContext(&err));
            Attempt::Transient(io(std::io::ErrorKind::ConnectionRefused, msg))
        }
        SdkError::ResponseError(_) => Attempt::Transient(io(std::io::ErrorKind::Other, "S3 sent a malformed response".into())),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("").to_string();
            let detail = if message.is_empty() { format!("{code} (HTTP {status})") } else { format!("{code}: {message} (HTTP {status})") };
            match (status, code) {
                (_, "NoSuchBucket") => Attempt::Permanent(StorageError::Corrupt { path, reason: format!("the bucket does not exist ({detail})") }),
                (404, _) | (_, "NoSuchKey") => Attempt::Permanent(StorageError::NotFound { path }),
                (412, _) | (_, "PreconditionFailed") => Attempt::Permanent(StorageError::AlreadyExists { path }),
                // The body arrived other than sent (its Content-MD5 differs): sending it again may work.
                (_, "BadDigest") => Attempt::Transient(io(std::io::ErrorKind::InvalidData, format!("S3: {detail}"))),
                (403, _) | (_, "AccessDenied") | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") => {
                    Attempt::Permanent(StorageError::PermissionDenied { path: format!("{path} ({detail})") })
                }
                (429, _) | (500..=599, _) | (_, "SlowDown") | (_, "RequestTimeout") | (_, "InternalError") => {
                    Attempt::Transient(io(std::io::ErrorKind::Other, format!("S3: {detail}")))
                }
                _ => Attempt::Permanent(StorageError::Io { path: path.clone(), source: std::io::Error::other(format!("S3: {detail}")) }),
            }
        }
        _ => Attempt::Permanent(StorageError::Io {
            path: path.clone(),
            source: std::io::Error::other(format!("S3: {}", DisplayErrorContext(&err))),
        }),
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        let endpoint = self.settings.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
        format!("s3://{}/{}{endpoint}", self.settings.bucket, self.settings.prefix.trim_matches('/'))
    }

    fn features(&self) -> Features {
        Features { directories: false }
    }

    async fn check_writable(&self) -> Result<()> {
        let probe = format!(".strata-probe-{:016x}", rand::random::<u64>());
        self.put_object(&probe, Bytes::from_static(b"probe"), false).await?;
        self.delete(&probe).await
    }

    async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        self.put_object(path, data, false).await.map(|_| ())
    }

    async fn put_new(&self, path: &str, data: Bytes) -> Result<()> {
        self.put_object(path, data, true).await.map(|_| ())
    }

    /// Verified by the ETag, without reading the object back: every request carries the Content-MD5 of
    /// its body, which S3 checks on receipt (refusing a body that arrived changed), and the ETag it
    /// answers is the MD5 it computed over what it stored ([`expected_etag`]); equal to the MD5 of
    /// `data` means it stored these bytes. Where the ETag is not that digest (objects encrypted with
    /// SSE-KMS, some S3-compatible servers), or does not match, the object is read back and compared,
    /// as the default does, so a mismatch is only ever reported after a comparison of the bytes.
    async fn put_verified(&self, path: &str, data: Bytes, if_absent: bool) -> Result<Written> {
        let etag = self.put_object(path, data.clone(), if_absent).await?;
        if etag.as_deref().map(|e| e.trim_matches('"')) == Some(expected_etag(&data).as_str()) {
            return Ok(Written::Verified);
        }
        Ok(if self.get(path).await? == data { Written::Verified } else { Written::Differs })
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        self.get_object(path, None).await
    }

    async fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let bytes = self.get_object(path, Some(format!("bytes={}-{}", offset, offset + len - 1))).await?;
        if bytes.len() as u64 != len {
            return Err(StorageError::Corrupt {
                path: path.into(),
                reason: format!("asked for {len} bytes at {offset}, got {} (object shorter than expected)", bytes.len()),
            });
        }
        Ok(bytes)
    }

    async fn size(&self, path: &str) -> Result<Option<u64>> {
        let key = self.key(path);
        let found = self
            .retrying(path, "HeadObject", || {
                let req = self.client.head_object().bucket(&self.settings.bucket).key(&key);
                async move { req.send().await.map(|o| o.content_length.unwrap_or(0) as u64).map_err(|e| classify(path, e)) }
            })
            .await;
        match found {
            Ok(n) => Ok(Some(n)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = prefix.trim_end_matches('/');
        let key_prefix = match dir {
            "" => self.key(""),
            d => format!("{}/", self.key(d)),
        };
        let strip = match self.settings.prefix.trim_matches('/') {
            "" => 0,
            p => p.len() + 1,
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retrying(prefix, "ListObjectsV2", || {
                    let req = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.settings.bucket)
                        .prefix(&key_prefix)
                        .set_continuation_token(token.clone());
                    async move { req.send().await.map_err(|e| classify(prefix, e)) }
                })
                .await?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                let path = key.get(strip..).unwrap_or(key);
                if path.rsplit('/').next().is_some_and(|name| name.starts_with(".strata-probe-")) {
                    continue;
                }
                out.push(ObjectInfo {
                    path: path.to_string(),
                    size: o.size().unwrap_or(0) as u64,
                    modified: o.last_modified().map(|t| t.secs()).unwrap_or(0),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let key = self.key(path);
        self.retrying(path, "DeleteObject", || {
            let req = self.client.delete_object().bucket(&self.settings.bucket).key(&key);
            async move { req.send().await.map(|_| ()).map_err(|e| classify(path, e)) }
        })
        .await
    }
}
