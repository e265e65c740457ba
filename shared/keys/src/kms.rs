//! The KMS key provider: KMS holds the key that wraps the repository's data key, so reading a repository
//! needs both the repository and permission to use that KMS key.
//!
//! Every request carries the encryption context `{"strata": "repository data key"}`, so a ciphertext
//! made for another purpose under the same KMS key does not decrypt as a Strata data key (and CloudTrail
//! shows what each Decrypt was for). Unwrapping names the KMS key stored in the key file, not the
//! configured one: after a rekey, a config still naming the old key (or naming the new one by an alias)
//! reads the repository as long as KMS lets it.
//!
//! Before using a key, its state is read with DescribeKey: AWS refuses a disabled key with
//! DisabledException anyway, but KMS-compatible servers (moto among them) do not enforce key states, and
//! the state gives the one-line reason ("is disabled", "is pending deletion") either way. A role allowed
//! to Decrypt but not to DescribeKey is not refused for that: the check is skipped on AccessDenied.
//!
//! Failures are bounded in time: the SDK retries at most three times with short backoffs, connections
//! time out after 3 s and the whole request after 30 s, so an unreachable KMS is an error in seconds.

use crate::{err, one_line, DataKey, KeyError, KeyProvider, WrappedKey, PROVIDER_KMS};
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyState};
use std::time::Duration;
use strata_config::EncryptionConfig;
use zeroize::Zeroize;

const CONTEXT_KEY: &str = "strata";
const CONTEXT_VALUE: &str = "repository data key";
const DEFAULT_REGION: &str = "us-east-1";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 3;

const UNWRAP: &str = "cannot unwrap the repository's data key";
const GENERATE: &str = "cannot generate the repository's data key";
const WRAP: &str = "cannot wrap the data key";

pub struct KmsKeyProvider {
    /// The key new data keys are wrapped with (id, ARN or alias).
    key_id: String,
    region: String,
    endpoint: Option<String>,
    credentials: Option<(String, String)>,
    /// Built on first use: loading the AWS credential chain is async.
    client: tokio::sync::OnceCell<aws_sdk_kms::Client>,
}

impl KmsKeyProvider {
    pub fn from_config(cfg: &EncryptionConfig) -> Result<KmsKeyProvider, KeyError> {
        let key_id = cfg
            .kms_key_id
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| err("encryption.type = \"kms\" needs encryption.kms_key_id"))?;
        Ok(KmsKeyProvider {
            key_id,
            region: cfg.kms_region.clone().unwrap_or_else(|| DEFAULT_REGION.into()),
            endpoint: cfg.kms_endpoint.clone(),
            credentials: cfg.kms_credentials.as_ref().map(strata_config::StaticCredentials::to_pair),
            client: tokio::sync::OnceCell::new(),
        })
    }

    /// The configured key (what new wraps use).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn client(&self) -> &aws_sdk_kms::Client {
        self.client
            .get_or_init(|| async {
                let timeouts = aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build();
                let retries = aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(2));
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.region.clone()))
                    .retry_config(retries)
                    .timeout_config(timeouts);
                if let Some((key, secret)) = &self.credentials {
                    loader = loader.credentials_provider(aws_sdk_kms::config::Credentials::new(key, secret, None, None, "strata config"));
                }
                if let Some(endpoint) = &self.endpoint {
                    loader = loader.endpoint_url(endpoint);
                }
                aws_sdk_kms::Client::new(&loader.load().await)
            })
            .await
    }

    fn location(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("KMS at {e}"),
            None => format!("AWS KMS in {}", self.region),
        }
    }

    /// One line for a failed KMS request about `key_id`, after `what` ("cannot unwrap ...").
    fn error<E>(&self, what: &str, key_id: &str, e: SdkError<E, HttpResponse>) -> KeyError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let reason = match &e {
            SdkError::DispatchFailure(_) => format!("cannot reach {} ({})", self.location(), root_cause(&e)),
            SdkError::TimeoutError(_) => format!("cannot reach {} (no answer within {OPERATION_TIMEOUT:?})", self.location()),
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("");
                let message = service.err().message().unwrap_or("").replace(['\n', '\r'], " ");
                let status = service.raw().status().as_u16();
                let detail = if message.is_empty() { String::new() } else { format!(" ({message})") };
                match code {
                    "DisabledException" => format!("KMS key {key_id} is disabled"),
                    "NotFoundException" => format!("KMS key {key_id} does not exist{detail}"),
                    "AccessDeniedException" => format!("KMS denied access to key {key_id}{detail}"),
                    "KMSInvalidStateException" => format!("KMS key {key_id} is not usable in its current state{detail}"),
                    "InvalidCiphertextException" | "IncorrectKeyException" => {
                        format!("KMS key {key_id} does not accept the wrapped key (the key file is corrupt or was not made by Strata){detail}")
                    }
                    "UnrecognizedClientException" | "InvalidSignatureException" | "ExpiredTokenException" | "InvalidClientTokenId" => {
                        format!("{} rejected the credentials ({code}) for KMS key {key_id}", self.location())
                    }
                    "" => format!("{} answered HTTP {status} for KMS key {key_id}{detail}", self.location()),
                    _ => format!("{} answered {code} for KMS key {key_id}{detail}", self.location()),
                }
            }
            _ => format!("KMS request for key {key_id} failed: {}", one_line(&e)),
        };
        err(format!("{what}: {reason}"))
    }

    /// Refuses a key KMS reports as disabled or being deleted (see the module docs).
    async fn check_state(&self, what: &str, key_id: &str) -> Result<(), KeyError> {
        match self.client().await.describe_key().key_id(key_id).send().await {
            Ok(out) => {
                let state = out.key_metadata().and_then(|m| m.key_state());
                let reason = match state {
                    Some(KeyState::Disabled) => "is disabled".to_string(),
                    Some(KeyState::PendingDeletion) => "is pending deletion".to_string(),
                    Some(s @ (KeyState::PendingImport | KeyState::PendingReplicaDeletion | KeyState::Unavailable)) => {
                        format!("is not usable (state {})", s.as_str())
                    }
                    _ => return Ok(()),
                };
                Err(err(format!("{what}: KMS key {key_id} {reason}")))
            }
            Err(SdkError::ServiceError(s)) if s.err().code() == Some("AccessDeniedException") => Ok(()),
            Err(e) => Err(self.error(what, key_id, e)),
        }
    }

    fn wrapped(&self, key_id: Option<&str>, blob: Option<&Blob>, what: &str) -> Result<WrappedKey, KeyError> {
        let blob = blob.filter(|b| !b.as_ref().is_empty()).ok_or_else(|| err(format!("{what}: KMS returned no ciphertext")))?;
        Ok(WrappedKey {
            provider: PROVIDER_KMS.into(),
            // KMS answers with the key's ARN: the key file names the key itself, not an alias of it.
            key_id: key_id.unwrap_or(&self.key_id).to_string(),
            blob: hex::encode(blob.as_ref()),
            salt: String::new(),
            kdf: None,
        })
    }
}

/// The innermost cause of an error ("Connection refused (os error 111)"), on one line.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string().replace(['\n', '\r'], " ")
}

/// Moves a plaintext key out of an SDK blob, zeroing the blob's copy.
fn take_key(blob: Option<Blob>, what: &str) -> Result<DataKey, KeyError> {
    let mut bytes = blob.map(Blob::into_inner).unwrap_or_default();
    let result = if bytes.len() == 32 {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        Ok(DataKey(key))
    } else {
        Err(err(format!("{what}: KMS returned a {}-byte key, expected 32", bytes.len())))
    };
    bytes.zeroize();
    result
}

#[async_trait::async_trait]
impl KeyProvider for KmsKeyProvider {
    fn describe(&self) -> String {
        format!("kms:{}", self.key_id)
    }

    async fn generate(&self) -> Result<(DataKey, WrappedKey), KeyError> {
        self.check_state(GENERATE, &self.key_id).await?;
        let mut out = self
            .client()
            .await
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context(CONTEXT_KEY, CONTEXT_VALUE)
            .send()
            .await
            .map_err(|e| self.error(GENERATE, &self.key_id, e))?;
        let key = take_key(out.plaintext.take(), GENERATE)?;
        let wrapped = self.wrapped(out.key_id(), out.ciphertext_blob(), GENERATE)?;
        Ok((key, wrapped))
    }

    async fn wrap(&self, key: &DataKey) -> Result<WrappedKey, KeyError> {
        self.check_state(WRAP, &self.key_id).await?;
        let out = self
            .client()
            .await
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(key.0.to_vec()))
            .encryption_context(CONTEXT_KEY, CONTEXT_VALUE)
            .send()
            .await
            .map_err(|e| self.error(WRAP, &self.key_id, e))?;
        self.wrapped(out.key_id(), out.ciphertext_blob(), WRAP)
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, KeyError> {
        if wrapped.provider != PROVIDER_KMS {
            return Err(err(format!(
                "{UNWRAP}: it is wrapped by {}, but encryption.type is \"kms\"",
                wrapped.describe()
            )));
        }
        let blob = hex::decode(&wrapped.blob)
            .ok()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| err(format!("{UNWRAP}: the key file's blob is not hex (corrupt key file)")))?;
        self.check_state(UNWRAP, &wrapped.key_id).await?;
        let mut out = self
            .client()
            .await
            .decrypt()
            .key_id(&wrapped.key_id)
            .ciphertext_blob(Blob::new(blob))
            .encryption_context(CONTEXT_KEY, CONTEXT_VALUE)
            .send()
            .await
            .map_err(|e| self.error(UNWRAP, &wrapped.key_id, e))?;
        take_key(out.plaintext.take(), UNWRAP)
    }
}
