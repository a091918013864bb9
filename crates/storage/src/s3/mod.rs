//! S3 and S3-compatible servers, through the official AWS SDK for Rust.
//!
//! Request checksums are sent only when godwit computed them (`WhenRequired`), as plain headers:
//! some S3-compatible servers store the aws-chunked framing of SDK-computed trailers as data.
//! Every write carries its condition (`If-None-Match: *`, or `If-Match` replacing godwit's own
//! write); a 412 answer becomes [`Written::Refused`].
//!
//! `mod.rs` holds the client, what sources and destinations share (a [`Bucket`] on one endpoint,
//! its reads and HEADs) and the mapping of SDK errors to [`StorageError`]s; `source.rs`,
//! `destination.rs` and `probe.rs` (what a destination is found to enforce) hold the rest;
//! `credentials.rs` where a side's credentials come from, and `secret.rs` keys kept in AWS
//! Secrets Manager.

mod credentials;
mod destination;
mod probe;
mod secret;
mod source;
mod tls;

pub use destination::S3Destination;
pub use probe::RATE_PROBE_SIZE;
pub use source::S3Source;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::ChecksumMode;
use bytes::{Bytes, BytesMut};

use crate::{
    Crc64Nvme, DestObject, ErrorKind, Location, Metadata, S3Settings, StorageError, WriteSettings,
    endpoint,
};

/// How long a response asks the client to wait before trying again: `Retry-After` in seconds
/// (the HTTP header; its date form is not used by S3 servers), else `x-amz-retry-after` in
/// milliseconds. Capped at five minutes, whatever a server says.
fn retry_after(response: &HttpResponse) -> Option<std::time::Duration> {
    const MOST: std::time::Duration = std::time::Duration::from_secs(300);
    let headers = response.headers();
    let seconds = headers
        .get("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    let millis = || {
        headers
            .get("x-amz-retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
    };
    seconds.or_else(millis).map(|wait| wait.min(MOST))
}

/// The innermost cause of an error, in one line for a person: "connection refused", not the
/// chain of wrappers and their debug dumps.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = innermost.to_string();
    // "Connection refused (os error 111)": the number tells a person nothing more.
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "no cause given".to_owned(),
    }
}

/// A configured S3 client for one side of a migration.
#[derive(Clone)]
pub struct S3Client {
    client: Client,
    /// The same client without the SDK's retries, for conditional writes: a retry of a write
    /// whose answer was lost would meet the write itself and look like a refusal. The engine sees
    /// every attempt, knows which may have landed, and retries itself. A client of its own, not a
    /// per-request override, which costs the SDK a layer of configuration on every request.
    once: Client,
    /// The endpoint as resolved, normalized (see [`endpoint::normalize`]), or [`endpoint::AWS`].
    endpoint: String,
    /// Where its credentials come from.
    origin: std::sync::Arc<credentials::Origin>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Client {
    /// Builds a client from `settings` over the standard AWS configuration chain, reading the
    /// side's secret or checking its profile first.
    pub async fn connect(settings: &S3Settings) -> Result<Self, StorageError> {
        let http = tls::client(&settings.tls)?;
        let chosen = credentials::choose(settings, http.as_ref()).await?;
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| chosen.endpoint_url.clone())
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(http) = http {
            loader = loader.http_client(http);
        }
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        let region = settings.region.clone().or(chosen.region).or_else(|| {
            // An S3-compatible endpoint rarely cares about the region; do not go looking for one
            // in instance metadata.
            let from_env =
                env_nonempty("AWS_REGION").or_else(|| env_nonempty("AWS_DEFAULT_REGION"));
            match (&endpoint, from_env, &settings.profile) {
                (_, Some(region), _) => Some(region),
                (Some(_), None, None) => Some("us-east-1".to_owned()),
                _ => None,
            }
        });
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some(url) = &endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(StorageError::new(
                    ErrorKind::InvalidInput,
                    format!("endpoint '{url}' is not an http:// or https:// URL"),
                ));
            }
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        // A profile may name the endpoint too (`endpoint_url`): the SDK's own answer comes last.
        let resolved = endpoint
            .clone()
            .or_else(|| sdk.endpoint_url().map(str::to_owned));
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .force_path_style(settings.path_style.unwrap_or(resolved.is_some()));
        if sdk.region().is_none() {
            config = config.region(Region::from_static("us-east-1"));
        }
        let provider = match &chosen.origin {
            credentials::Origin::Profile(name) => {
                Some(credentials::profile_provider(name, sdk.region()))
            }
            _ => chosen.provider,
        };
        if let Some(provider) = provider {
            config = config.credentials_provider(provider);
        }
        if let Some((interceptor, classifier)) = credentials::secret_hooks(&chosen.origin) {
            // The secret's keys keep their own cache (see `secret.rs`).
            config = config
                .identity_cache(IdentityCache::no_cache())
                .interceptor(interceptor)
                .retry_classifier(classifier);
        }
        let endpoint =
            resolved.map_or_else(|| endpoint::AWS.to_owned(), |url| endpoint::normalize(&url));
        if settings.tls.skip_verify {
            tracing::warn!(
                "--insecure-skip-verify: the certificate of {endpoint} is not checked; anyone on the network path can read and change what godwit sends and receives. Use it for test servers only; give a private CA with --ca-bundle FILE instead"
            );
        }
        tracing::debug!(%endpoint, credentials = ?chosen.origin, "S3 client");
        let once = config
            .clone()
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build();
        Ok(Self {
            client: Client::from_conf(config.build()),
            once: Client::from_conf(once),
            endpoint,
            origin: std::sync::Arc::new(chosen.origin),
        })
    }

    /// A source reading `bucket`, below `prefix` (empty or ending in `/`).
    pub fn source(&self, bucket: &str, prefix: &str) -> S3Source {
        S3Source {
            bucket: self.bucket(bucket, prefix),
        }
    }

    /// A destination writing to `bucket`, below `prefix` (empty or ending in `/`), storing objects
    /// as `write` says.
    pub fn destination(&self, bucket: &str, prefix: &str, write: WriteSettings) -> S3Destination {
        S3Destination {
            bucket: self.bucket(bucket, prefix),
            write,
            conditions: tokio::sync::OnceCell::new(),
        }
    }

    fn bucket(&self, bucket: &str, prefix: &str) -> Bucket {
        Bucket {
            s3: self.clone(),
            name: bucket.to_owned(),
            prefix: prefix.to_owned(),
            location: Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            },
        }
    }
}

/// A bucket and prefix on one endpoint: what sources and destinations share.
#[derive(Clone)]
pub(crate) struct Bucket {
    s3: S3Client,
    name: String,
    prefix: String,
    location: Location,
}

impl Bucket {
    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    fn client(&self) -> &Client {
        &self.s3.client
    }

    /// The client whose requests are sent once, never retried by the SDK.
    fn client_once(&self) -> &Client {
        &self.s3.once
    }

    /// Turns an SDK error into a [`StorageError`] whose message names `op` and `key`.
    fn error<E>(&self, op: &str, key: Option<&str>, err: SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let target = match key {
            Some(key) => format!("s3://{}/{}", self.name, self.key(key)),
            None => format!("bucket '{}'", self.name),
        };
        let endpoint = &self.s3.endpoint;
        let retry_after = match &err {
            SdkError::ServiceError(service) => retry_after(service.raw()),
            _ => None,
        };
        let (kind, detail) = match &err {
            SdkError::ConstructionFailure(_) => {
                let text = DisplayErrorContext(&err).to_string();
                if text.contains("credentials") || text.contains("Credentials") {
                    (
                        ErrorKind::Credentials,
                        "no AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or choose a profile".to_owned(),
                    )
                } else {
                    (ErrorKind::InvalidInput, text)
                }
            }
            SdkError::TimeoutError(_) => (
                ErrorKind::Unreachable,
                format!("{endpoint} did not answer in time"),
            ),
            SdkError::DispatchFailure(_)
                if let Some(problem) =
                    credentials::problem(&err as &(dyn std::error::Error + 'static)) =>
            {
                (
                    ErrorKind::Credentials,
                    credentials::missing(&self.s3.origin, problem),
                )
            }
            SdkError::DispatchFailure(_) if root_cause(&err).contains("certificate") => (
                // Trying again will not change whom the certificate is from.
                ErrorKind::InvalidInput,
                format!(
                    "{endpoint} presented a certificate godwit does not trust ({}); give the CA that signed it with --ca-bundle FILE (a PEM file), or, for a test server only, --insecure-skip-verify",
                    root_cause(&err)
                ),
            ),
            SdkError::DispatchFailure(failure) => {
                let cause = root_cause(&err);
                let what = if failure.is_timeout() {
                    "timed out"
                } else {
                    "could not be reached"
                };
                (
                    ErrorKind::Unreachable,
                    format!(
                        "{endpoint} {what} ({cause}); check the endpoint URL and that the server is running"
                    ),
                )
            }
            SdkError::ResponseError(_) => (
                ErrorKind::Unclear,
                format!(
                    "{endpoint} sent an answer that could not be read: {}",
                    root_cause(&err)
                ),
            ),
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = err.code().unwrap_or("");
                let message = err.message().unwrap_or("");
                let kind = match (status, code) {
                    (_, "NoSuchBucket") => ErrorKind::BucketNotFound,
                    (_, "NoSuchUpload") => ErrorKind::NoSuchUpload,
                    (
                        _,
                        "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "InvalidToken"
                        | "ExpiredToken",
                    ) => ErrorKind::Credentials,
                    (_, "BadDigest" | "InvalidDigest") => ErrorKind::ChecksumMismatch,
                    (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                        ErrorKind::Busy
                    }
                    (404, _) => ErrorKind::NotFound,
                    (403, _) => ErrorKind::AccessDenied,
                    (412, _) => ErrorKind::Unclear,
                    (501, _) | (_, "NotImplemented") => ErrorKind::Unsupported,
                    (429 | 500..=599, _) => ErrorKind::Busy,
                    (400, _) => ErrorKind::InvalidInput,
                    (200, _) => ErrorKind::Unclear,
                    _ => ErrorKind::Other,
                };
                let code_text = if code.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("{code} (HTTP {status})")
                };
                let hint = match kind {
                    ErrorKind::BucketNotFound => {
                        format!("; create the bucket or fix its name (endpoint {endpoint})")
                    }
                    ErrorKind::Credentials => format!(
                        "; {endpoint} rejected the credentials: {}",
                        self.s3.origin.check_hint()
                    ),
                    ErrorKind::AccessDenied => {
                        "; the credentials lack a permission for this operation".to_owned()
                    }
                    ErrorKind::Unclear if status == 200 => format!(
                        "; the server's reply could not be parsed: is {endpoint} an S3 endpoint (not a web page or a proxy's)?"
                    ),
                    _ if code == "InvalidStorageClass" => {
                        format!(
                            "; {endpoint} does not offer that storage class: choose another --storage-class"
                        )
                    }
                    _ => String::new(),
                };
                let sep = if message.is_empty() { "" } else { ": " };
                if credentials::refusal(service.raw()) == Some(secret::Refusal::Stale) {
                    return credentials::stale_error(
                        &self.s3.origin,
                        &format!("{op} {target}"),
                        &format!("{code_text}{sep}{message}"),
                    );
                }
                (kind, format!("{code_text}{sep}{message}{hint}"))
            }
            _ => (ErrorKind::Other, root_cause(&err)),
        };
        StorageError::new(kind, format!("{op} {target}: {detail}")).with_retry_after(retry_after)
    }

    fn is_status<E>(err: &SdkError<E, HttpResponse>, wanted: u16) -> bool {
        matches!(err, SdkError::ServiceError(s) if s.raw().status().as_u16() == wanted)
    }

    async fn check(&self) -> Result<(), StorageError> {
        match self.client().head_bucket().bucket(&self.name).send().await {
            Ok(_) => Ok(()),
            Err(err) if Self::is_status(&err, 404) => Err(StorageError::new(
                ErrorKind::BucketNotFound,
                format!(
                    "bucket '{}' does not exist at {}; create it or fix the name",
                    self.name, self.s3.endpoint
                ),
            )),
            Err(err) if Self::is_status(&err, 403) => Err(StorageError::new(
                ErrorKind::Credentials,
                format!(
                    "{} refused access to bucket '{}' (HTTP 403): the credentials are wrong or lack permission; {}, and the bucket's permissions",
                    self.s3.endpoint,
                    self.name,
                    self.s3.origin.check_hint()
                ),
            )),
            Err(err) if Self::is_status(&err, 400) => Err(StorageError::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} refused the bucket name '{}' (HTTP 400): S3 bucket names are 3-63 characters of lowercase letters, digits, dots and hyphens",
                    self.s3.endpoint, self.name
                ),
            )),
            Err(err) => Err(self.error("checking", None, err)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<DestObject>, StorageError> {
        let answer = self
            .client()
            .head_object()
            .bucket(&self.name)
            .key(self.key(key))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        match answer {
            Ok(out) => Ok(Some(DestObject {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().map(str::to_owned),
                crc64nvme: out.checksum_crc64_nvme().and_then(Crc64Nvme::from_base64),
                version_id: out.version_id().map(str::to_owned),
                last_modified: out
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            })),
            Err(err) if Self::is_status(&err, 404) => Ok(None),
            Err(err) => Err(self.error("reading the metadata of", Some(key), err)),
        }
    }

    async fn read(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        Ok(self.read_with(key, if_match, offset, len, false).await?.0)
    }

    /// What the object at `key` is served with (a HEAD, conditional on `if_match`).
    async fn metadata(&self, key: &str, if_match: Option<&str>) -> Result<Metadata, StorageError> {
        let answer = self
            .client()
            .head_object()
            .bucket(&self.name)
            .key(self.key(key))
            .set_if_match(if_match.map(str::to_owned))
            .send()
            .await;
        match answer {
            Ok(out) => Ok(metadata_of!(out)),
            Err(err) if Self::is_status(&err, 412) => {
                Err(self.source_changed(&self.name, &self.key(key)))
            }
            Err(err) if Self::is_status(&err, 404) => Err(StorageError::new(
                ErrorKind::NotFound,
                format!("s3://{}/{} is no longer there", self.name, self.key(key)),
            )),
            Err(err) => Err(self.error("reading the metadata of", Some(key), err)),
        }
    }

    /// Reads `len` bytes from `offset`, and the object's metadata when `with_metadata` (a GET
    /// carries both).
    async fn read_with(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
        with_metadata: bool,
    ) -> Result<(Bytes, Option<Metadata>), StorageError> {
        let mut request = self
            .client()
            .get_object()
            .bucket(&self.name)
            .key(self.key(key));
        if len > 0 {
            request = request.range(format!("bytes={offset}-{}", offset + len - 1));
        }
        if let Some(etag) = if_match {
            request = request.if_match(etag);
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(err) if Self::is_status(&err, 412) => {
                return Err(self.source_changed(&self.name, &self.key(key)));
            }
            Err(err) => return Err(self.error("reading", Some(key), err)),
        };
        let metadata = with_metadata.then(|| metadata_of!(answer));
        // Straight into one buffer of the asked size: no second copy, and a server that sends
        // more than asked cannot grow it.
        let mut body = answer.body;
        let mut bytes = BytesMut::with_capacity(len as usize);
        let broke_off = |e: &dyn std::fmt::Display| {
            StorageError::new(
                ErrorKind::Unreachable,
                format!(
                    "reading s3://{}/{}: the transfer broke off: {e}",
                    self.name,
                    self.key(key)
                ),
            )
        };
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| broke_off(&e))?;
            if (bytes.len() + chunk.len()) as u64 > len {
                bytes.clear();
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != len {
            return Err(StorageError::new(
                ErrorKind::SourceChanged,
                format!(
                    "reading s3://{}/{}: expected {len} bytes at offset {offset}, got another amount",
                    self.name,
                    self.key(key),
                ),
            ));
        }
        Ok((bytes.freeze(), metadata))
    }
}

/// The [`Metadata`] a GetObject or HeadObject answer carries.
macro_rules! metadata_of {
    ($out:expr) => {{
        let out = &$out;
        Metadata {
            content_type: out.content_type().map(str::to_owned),
            content_encoding: out.content_encoding().map(str::to_owned),
            content_disposition: out.content_disposition().map(str::to_owned),
            content_language: out.content_language().map(str::to_owned),
            cache_control: out.cache_control().map(str::to_owned),
            expires: out.expires_string().map(str::to_owned),
            user: out
                .metadata()
                .map(|user| {
                    user.iter()
                        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            tags: None,
        }
    }};
}
use metadata_of;

/// The `x-amz-copy-source` value for `key` in `bucket`: the key percent-encoded, `/` kept.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Bucket {
    /// The error for a source object that is no longer the version that was listed.
    fn source_changed(&self, bucket: &str, full_key: &str) -> StorageError {
        StorageError::new(
            ErrorKind::SourceChanged,
            format!("s3://{bucket}/{full_key} changed since it was listed; it will be read again"),
        )
    }
}
