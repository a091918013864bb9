//! S3 and S3-compatible servers, through the official AWS SDK for Rust.
//!
//! Request checksums are sent only when godwit computed them (`WhenRequired`), as plain headers:
//! some S3-compatible servers store the aws-chunked framing of SDK-computed trailers as data.
//! Every write carries `If-None-Match: *`; a 412 answer becomes [`Written::AlreadyExists`].

use std::error::Error as _;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
};
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::{
    CopyOrigin, CopySupport, Crc64Nvme, DestObject, Destination, DestinationCapabilities,
    ErrorKind, Listed, Listing, Location, ObjectMeta, PartLayout, S3Settings, Source,
    SourceCapabilities, StorageError, UploadedPart, WriteReceipt, Written,
};

/// A configured S3 client for one side of a migration.
#[derive(Clone)]
pub struct S3Client {
    client: Client,
    /// The endpoint for messages: a URL, or "AWS S3".
    endpoint: String,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Client {
    /// Builds a client from `settings` over the standard AWS configuration chain.
    pub async fn connect(settings: &S3Settings) -> Result<Self, StorageError> {
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        let region = settings.region.clone().or_else(|| {
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
        if let Some(keys) = &settings.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                &keys.access_key_id,
                &keys.secret_access_key,
                keys.session_token.clone(),
                None,
                "godwit",
            ));
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
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .force_path_style(settings.path_style.unwrap_or(endpoint.is_some()));
        if sdk.region().is_none() {
            config = config.region(Region::from_static("us-east-1"));
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            endpoint: endpoint.unwrap_or_else(|| "AWS S3".to_owned()),
        })
    }

    /// A source reading `bucket`, below `prefix` (empty or ending in `/`).
    pub fn source(&self, bucket: &str, prefix: &str) -> S3Source {
        S3Source {
            bucket: self.bucket(bucket, prefix),
        }
    }

    /// A destination writing to `bucket`, below `prefix` (empty or ending in `/`).
    pub fn destination(&self, bucket: &str, prefix: &str) -> S3Destination {
        S3Destination {
            bucket: self.bucket(bucket, prefix),
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
struct Bucket {
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
            SdkError::DispatchFailure(failure) => {
                let cause = err
                    .source()
                    .map(|s| DisplayErrorContext(s).to_string())
                    .unwrap_or_default();
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
                    DisplayErrorContext(&err)
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
                        "; {endpoint} rejected the credentials: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile"
                    ),
                    ErrorKind::AccessDenied => {
                        "; the credentials lack a permission for this operation".to_owned()
                    }
                    ErrorKind::Unclear if status == 200 => {
                        "; the server's reply could not be parsed".to_owned()
                    }
                    _ => String::new(),
                };
                let sep = if message.is_empty() { "" } else { ": " };
                (kind, format!("{code_text}{sep}{message}{hint}"))
            }
            _ => (ErrorKind::Other, DisplayErrorContext(&err).to_string()),
        };
        StorageError::new(kind, format!("{op} {target}: {detail}"))
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
                    "{} refused access to bucket '{}' (HTTP 403): the credentials are wrong or lack permission; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile, and the bucket's permissions",
                    self.s3.endpoint, self.name
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
        Ok(bytes.freeze())
    }
}

/// An S3 bucket (below a prefix) as a source.
pub struct S3Source {
    bucket: Bucket,
}

impl Bucket {
    /// Pages through ListObjectsV2 in a background task.
    fn list(&self) -> Listing {
        let (pages, receiver) = mpsc::channel(4);
        let bucket = self.clone();
        tokio::spawn(async move {
            let mut stream = bucket
                .client()
                .list_objects_v2()
                .bucket(&bucket.name)
                .prefix(&bucket.prefix)
                .into_paginator()
                .send();
            while let Some(page) = stream.next().await {
                let page = match page {
                    Ok(page) => page,
                    Err(err) => {
                        let _ = pages.send(Err(bucket.error("listing", None, err))).await;
                        return;
                    }
                };
                let entries = page
                    .contents()
                    .iter()
                    .filter_map(|object| {
                        let key = object
                            .key()?
                            .strip_prefix(bucket.prefix.as_str())?
                            .to_owned();
                        Some(Listed::Object(ObjectMeta {
                            key,
                            size: object.size().unwrap_or(0).max(0) as u64,
                            version: object.e_tag().unwrap_or("").to_owned(),
                        }))
                    })
                    .collect();
                if pages.send(Ok(entries)).await.is_err() {
                    return;
                }
            }
        });
        receiver
    }
}

#[async_trait]
impl Source for S3Source {
    fn location(&self) -> &Location {
        &self.bucket.location
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities { ranged_reads: true }
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.bucket.check().await
    }

    fn list(&self) -> Listing {
        self.bucket.list()
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        Ok(self.bucket.head(key).await?.map(|object| ObjectMeta {
            key: key.to_owned(),
            size: object.size,
            version: object.etag.unwrap_or_default(),
        }))
    }

    async fn read(
        &self,
        expected: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        let if_match = Some(expected.version.as_str()).filter(|v| !v.is_empty());
        self.bucket.read(&expected.key, if_match, offset, len).await
    }

    fn copy_origin(&self) -> Option<CopyOrigin> {
        let b = &self.bucket;
        Some(CopyOrigin {
            endpoint: b.s3.endpoint.clone(),
            bucket: b.name.clone(),
            prefix: b.prefix.clone(),
        })
    }

    /// Asks for the first part (HEAD with `partNumber=1`): its length and the part count give the
    /// cut, if it was uniform. A server that ignores `partNumber` (s3s-fs) sends no part count.
    /// No `If-Match` here (moto compares it with the part's ETag): the cut is only a guess until
    /// the copy, whose parts are conditional on the source's ETag, shows the same ETag.
    async fn part_layout(&self, meta: &ObjectMeta) -> Result<Option<PartLayout>, StorageError> {
        let b = &self.bucket;
        let answer = b
            .client()
            .head_object()
            .bucket(&b.name)
            .key(b.key(&meta.key))
            .part_number(1)
            .send()
            .await;
        match answer {
            Ok(out) => Ok(out.parts_count().and_then(|parts| {
                let first = u64::try_from(out.content_length()?).ok()?;
                PartLayout::uniform(meta.size, first, u32::try_from(parts).ok()?)
            })),
            Err(err) if Bucket::is_status(&err, 404) => Err(StorageError::new(
                ErrorKind::NotFound,
                format!(
                    "s3://{}/{} is no longer at the source",
                    b.name,
                    b.key(&meta.key)
                ),
            )),
            // A server that does not take `partNumber` cannot say: the object streams instead.
            Err(err)
                if [400, 416, 501]
                    .iter()
                    .any(|&code| Bucket::is_status(&err, code)) =>
            {
                tracing::debug!(
                    "s3://{}/{}: no part layout ({})",
                    b.name,
                    b.key(&meta.key),
                    DisplayErrorContext(&err)
                );
                Ok(None)
            }
            Err(err) => Err(b.error("reading the parts of", Some(&meta.key), err)),
        }
    }
}

/// An S3 bucket (below a prefix) as a destination.
pub struct S3Destination {
    bucket: Bucket,
}

fn receipt(etag: Option<&str>, crc: Option<&str>, version_id: Option<&str>) -> WriteReceipt {
    WriteReceipt {
        etag: etag.map(str::to_owned),
        crc64nvme: crc.and_then(Crc64Nvme::from_base64),
        version_id: version_id.map(str::to_owned),
    }
}

#[async_trait]
impl Destination for S3Destination {
    fn location(&self) -> &Location {
        &self.bucket.location
    }

    fn capabilities(&self) -> DestinationCapabilities {
        DestinationCapabilities {
            max_parts: 10_000,
            min_part_size: 5 << 20,
            max_part_size: 5 << 30,
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.bucket.check().await
    }

    async fn head(&self, key: &str) -> Result<Option<DestObject>, StorageError> {
        self.bucket.head(key).await
    }

    async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StorageError> {
        self.bucket.read(key, None, offset, len).await
    }

    async fn put_new(
        &self,
        key: &str,
        body: Bytes,
        crc64nvme: Crc64Nvme,
    ) -> Result<Written, StorageError> {
        let b = &self.bucket;
        let answer = b
            .client()
            .put_object()
            .bucket(&b.name)
            .key(b.key(key))
            .content_length(body.len() as i64)
            .checksum_crc64_nvme(crc64nvme.to_base64())
            .if_none_match("*")
            .body(ByteStream::from(body))
            .customize()
            // The CRC-64/NVME header already protects the body; hashing it again for the
            // signature would cost a pass over every byte.
            .disable_payload_signing()
            .send()
            .await;
        match answer {
            Ok(out) => Ok(Written::Created(receipt(
                out.e_tag(),
                out.checksum_crc64_nvme(),
                out.version_id(),
            ))),
            Err(err) if Bucket::is_status(&err, 412) => Ok(Written::AlreadyExists),
            Err(err) => Err(b.error("writing", Some(key), err)),
        }
    }

    async fn create_upload(&self, key: &str, checksummed: bool) -> Result<String, StorageError> {
        let b = &self.bucket;
        let out = b
            .client()
            .create_multipart_upload()
            .bucket(&b.name)
            .key(b.key(key))
            .set_checksum_algorithm(checksummed.then_some(ChecksumAlgorithm::Crc64Nvme))
            .set_checksum_type(checksummed.then_some(ChecksumType::FullObject))
            .send()
            .await
            .map_err(|err| b.error("starting a multipart upload of", Some(key), err))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| {
            StorageError::new(
                ErrorKind::Other,
                format!("starting a multipart upload of {key}: the server sent no upload id"),
            )
        })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc64nvme: Crc64Nvme,
    ) -> Result<String, StorageError> {
        let b = &self.bucket;
        let out = b
            .client()
            .upload_part()
            .bucket(&b.name)
            .key(b.key(key))
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .content_length(body.len() as i64)
            .checksum_crc64_nvme(crc64nvme.to_base64())
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|err| b.error(&format!("uploading part {part_number} of"), Some(key), err))?;
        out.e_tag().map(str::to_owned).ok_or_else(|| {
            StorageError::new(
                ErrorKind::Unclear,
                format!("uploading part {part_number} of {key}: the server sent no ETag"),
            )
        })
    }

    async fn complete_upload_new(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        crc64nvme: Option<Crc64Nvme>,
    ) -> Result<Written, StorageError> {
        let b = &self.bucket;
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|part| {
                CompletedPart::builder()
                    .part_number(part.part_number as i32)
                    .e_tag(&part.etag)
                    .set_checksum_crc64_nvme(part.crc64nvme.map(Crc64Nvme::to_base64))
                    .build()
            })
            .collect();
        let size: u64 = parts.iter().map(|p| p.size).sum();
        let answer = b
            .client()
            .complete_multipart_upload()
            .bucket(&b.name)
            .key(b.key(key))
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .set_checksum_crc64_nvme(crc64nvme.map(Crc64Nvme::to_base64))
            .set_checksum_type(crc64nvme.map(|_| ChecksumType::FullObject))
            .mpu_object_size(size as i64)
            .if_none_match("*")
            .send()
            .await;
        match answer {
            Ok(out) => Ok(Written::Created(receipt(
                out.e_tag(),
                out.checksum_crc64_nvme(),
                out.version_id(),
            ))),
            Err(err) if Bucket::is_status(&err, 412) => Ok(Written::AlreadyExists),
            Err(err) => Err(b.error("completing the multipart upload of", Some(key), err)),
        }
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        let b = &self.bucket;
        match b
            .client()
            .abort_multipart_upload()
            .bucket(&b.name)
            .key(b.key(key))
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if Bucket::is_status(&err, 404) => Ok(()),
            Err(err) => Err(b.error("aborting the multipart upload of", Some(key), err)),
        }
    }

    async fn delete_if_etag(&self, key: &str, etag: &str) -> Result<(), StorageError> {
        let b = &self.bucket;
        match b
            .client()
            .delete_object()
            .bucket(&b.name)
            .key(b.key(key))
            .if_match(etag)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if Bucket::is_status(&err, 404) => Ok(()),
            Err(err) => Err(b.error("deleting", Some(key), err)),
        }
    }
    async fn copy_support(&self, origin: &CopyOrigin) -> CopySupport {
        let b = &self.bucket;
        if origin.endpoint != b.s3.endpoint {
            return CopySupport::No(format!(
                "the source ({}) and the destination ({}) are on different endpoints",
                origin.endpoint, b.s3.endpoint
            ));
        }
        b.probe_conditional_copy().await
    }

    async fn copy_new(
        &self,
        key: &str,
        origin: &CopyOrigin,
        source: &ObjectMeta,
    ) -> Result<Written, StorageError> {
        let b = &self.bucket;
        let mut request = b
            .client()
            .copy_object()
            .bucket(&b.name)
            .key(b.key(key))
            .copy_source(copy_source(
                &origin.bucket,
                &format!("{}{}", origin.prefix, source.key),
            ))
            // Ask the server for a CRC-64/NVME of what it wrote.
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .if_none_match("*");
        if !source.version.is_empty() {
            request = request.copy_source_if_match(&source.version);
        }
        match request.send().await {
            Ok(out) => {
                let result = out.copy_object_result();
                Ok(Written::Created(receipt(
                    result.and_then(|r| r.e_tag()),
                    result.and_then(|r| r.checksum_crc64_nvme()),
                    out.version_id(),
                )))
            }
            // Either condition failing answers 412: the destination key taken, or the source
            // changed. A HEAD of the key tells which.
            Err(err) if Bucket::is_status(&err, 412) => match b.head(key).await? {
                Some(_) => Ok(Written::AlreadyExists),
                None => Err(
                    b.source_changed(&origin.bucket, &format!("{}{}", origin.prefix, source.key))
                ),
            },
            Err(err) => Err(b.error("copying server-side to", Some(key), err)),
        }
    }

    async fn copy_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        origin: &CopyOrigin,
        source: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<String, StorageError> {
        let b = &self.bucket;
        let full_source_key = format!("{}{}", origin.prefix, source.key);
        let mut request = b
            .client()
            .upload_part_copy()
            .bucket(&b.name)
            .key(b.key(key))
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .copy_source(copy_source(&origin.bucket, &full_source_key))
            .copy_source_range(format!("bytes={offset}-{}", offset + len - 1));
        if !source.version.is_empty() {
            request = request.copy_source_if_match(&source.version);
        }
        match request.send().await {
            Ok(out) => out
                .copy_part_result()
                .and_then(|r| r.e_tag())
                .map(str::to_owned)
                .ok_or_else(|| {
                    StorageError::new(
                        ErrorKind::Unclear,
                        format!("copying part {part_number} of {key}: the server sent no ETag"),
                    )
                }),
            Err(err) if Bucket::is_status(&err, 412) => {
                Err(b.source_changed(&origin.bucket, &full_source_key))
            }
            Err(err) => Err(b.error(&format!("copying part {part_number} of"), Some(key), err)),
        }
    }
}

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

    /// Finds out whether the server refuses a CopyObject onto an existing key, as AWS does with
    /// `If-None-Match: *` (s3s-fs and moto ignore the header and overwrite). Writes two probe
    /// objects of godwit's own below the prefix, copies one onto the other, and deletes both;
    /// then deletes what an earlier probe left (see [`Bucket::remove_old_probes`]).
    async fn probe_conditional_copy(&self) -> CopySupport {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let base = format!("{PROBE_PREFIX}{}-{nonce:x}", std::process::id());
        let (from, onto) = (format!("{base}-a"), format!("{base}-b"));
        let mut probe_etag = None;
        let answer = async {
            for key in [&from, &onto] {
                let written = self
                    .client()
                    .put_object()
                    .bucket(&self.name)
                    .key(self.key(key))
                    .if_none_match("*")
                    .body(ByteStream::from_static(PROBE_BODY))
                    .send()
                    .await
                    .map_err(|err| self.error("writing a probe object", Some(key), err))?;
                probe_etag = written.e_tag().map(str::to_owned);
            }
            let copied = self
                .client()
                .copy_object()
                .bucket(&self.name)
                .key(self.key(&onto))
                .copy_source(copy_source(&self.name, &self.key(&from)))
                .if_none_match("*")
                .send()
                .await;
            Ok::<_, StorageError>(match copied {
                Err(err) if Self::is_status(&err, 412) => CopySupport::Conditional,
                Ok(_) => CopySupport::No(format!(
                    "{} ignores If-None-Match on CopyObject: a server-side copy could replace an object",
                    self.s3.endpoint
                )),
                Err(err) => CopySupport::No(
                    self.error("probing a server-side copy to", Some(&onto), err)
                        .message()
                        .to_owned(),
                ),
            })
        }
        .await;
        for key in [&from, &onto] {
            if let Err(err) = self
                .client()
                .delete_object()
                .bucket(&self.name)
                .key(self.key(key))
                .send()
                .await
            {
                tracing::warn!(
                    "could not delete the probe object s3://{}/{}: {}",
                    self.name,
                    self.key(key),
                    DisplayErrorContext(&err)
                );
            }
        }
        if let Some(etag) = probe_etag {
            self.remove_old_probes(&etag).await;
        }
        answer.unwrap_or_else(|error| CopySupport::No(error.message().to_owned()))
    }

    /// Deletes probe objects a run that stopped mid-probe left behind: only objects named as
    /// godwit names them, holding exactly its probe body (the same ETag as the probe just written,
    /// checked again by the delete's `If-Match`), and older than an hour, so a probe another
    /// process is running is left alone. Best effort: a failure is only logged.
    async fn remove_old_probes(&self, probe_etag: &str) {
        let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let listed = self
            .client()
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(self.key(PROBE_PREFIX))
            .send()
            .await;
        let page = match listed {
            Ok(page) => page,
            Err(err) => {
                tracing::debug!(
                    "could not look for old probe objects: {}",
                    DisplayErrorContext(&err)
                );
                return;
            }
        };
        for object in page.contents() {
            let old = object
                .last_modified()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                .is_some_and(|t| t < cutoff);
            let Some(key) = object
                .key()
                .filter(|_| old && object.size() == Some(PROBE_BODY.len() as i64))
            else {
                continue;
            };
            // Some listings (s3s-fs) carry no ETags: ask for this one.
            let etag = match object.e_tag() {
                Some(etag) => Some(etag.to_owned()),
                None => {
                    let relative = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
                    self.head(relative)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|o| o.etag)
                }
            };
            if etag.as_deref() != Some(probe_etag) {
                continue;
            }
            match self
                .client()
                .delete_object()
                .bucket(&self.name)
                .key(key)
                .if_match(probe_etag)
                .send()
                .await
            {
                Ok(_) => {
                    tracing::info!("deleted s3://{}/{key}, left by an earlier probe", self.name)
                }
                Err(err) => tracing::warn!(
                    "could not delete s3://{}/{key}, left by an earlier probe: {}",
                    self.name,
                    DisplayErrorContext(&err)
                ),
            }
        }
    }
}

/// The name every probe object starts with, below the destination prefix.
const PROBE_PREFIX: &str = ".godwit-probe-";
/// What a probe object holds.
const PROBE_BODY: &[u8] = b"godwit: probe for conditional copies";
