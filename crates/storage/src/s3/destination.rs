//! An S3 bucket, below a prefix, as a destination: every write conditional.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use std::time::SystemTime;

use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, MetadataDirective,
    ServerSideEncryption, StorageClass, TaggingDirective,
};
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::{Bucket, copy_source};
use crate::{
    Conditions, CopyOrigin, CopySupport, Crc64Nvme, DestObject, Destination,
    DestinationCapabilities, Encryption, Enforcement, ErrorKind, LargeWrites, Listing, Location,
    Metadata, ObjectMeta, OpenUpload, Precondition, StorageError, UploadedPart, WriteReceipt,
    WriteSettings, Written,
};

/// An S3 bucket (below a prefix) as a destination.
pub struct S3Destination {
    pub(super) bucket: Bucket,
    /// How objects are stored (storage class, encryption), for every write.
    pub(super) write: WriteSettings,
    /// What the server enforces, probed once.
    pub(super) conditions: OnceCell<Conditions>,
}

/// Sets the headers of `$metadata` on a PutObject, CreateMultipartUpload or CopyObject request.
macro_rules! with_metadata {
    ($request:expr, $metadata:expr) => {{
        let metadata: &Metadata = $metadata;
        $request
            .set_content_type(metadata.content_type.clone())
            .set_content_encoding(metadata.content_encoding.clone())
            .set_content_disposition(metadata.content_disposition.clone())
            .set_content_language(metadata.content_language.clone())
            .set_cache_control(metadata.cache_control.clone())
            .set_expires(metadata.expires.as_deref().and_then(|text| {
                aws_smithy_types::DateTime::from_str(
                    text,
                    aws_smithy_types::date_time::Format::HttpDate,
                )
                .ok()
            }))
            .set_metadata((!metadata.user.is_empty()).then(|| {
                metadata
                    .user
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect()
            }))
    }};
}

/// Sets the storage class and server-side encryption of `$write` on a request that creates an
/// object.
macro_rules! with_storage {
    ($request:expr, $write:expr) => {{
        let write: &WriteSettings = &$write;
        let (encryption, key_id) = match &write.encryption {
            None => (None, None),
            Some(Encryption::Aes256) => (Some(ServerSideEncryption::Aes256), None),
            Some(Encryption::Kms { key_id }) => {
                (Some(ServerSideEncryption::AwsKms), key_id.clone())
            }
        };
        $request
            .set_storage_class(write.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption(encryption)
            .set_ssekms_key_id(key_id)
    }};
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

    fn endpoint(&self) -> Option<&str> {
        Some(&self.bucket.s3.endpoint)
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.bucket.check().await
    }

    async fn head(&self, key: &str) -> Result<Option<DestObject>, StorageError> {
        self.bucket.head(key).await
    }

    fn list(&self) -> Listing {
        self.bucket.list_shard(crate::shard::WHOLE, None)
    }

    async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StorageError> {
        self.bucket.read(key, None, offset, len).await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        crc64nvme: Crc64Nvme,
        metadata: &Metadata,
        condition: &Precondition,
    ) -> Result<Written, StorageError> {
        let b = &self.bucket;
        let request = b
            .client_once()
            .put_object()
            .bucket(&b.name)
            .key(b.key(key))
            .content_length(body.len() as i64)
            .checksum_crc64_nvme(crc64nvme.to_base64())
            .body(ByteStream::from(body));
        let request = with_metadata!(request, metadata);
        let request = with_storage!(request, self.write);
        let request = match condition {
            Precondition::Absent => request.if_none_match("*"),
            Precondition::Etag(etag) => request.if_match(etag),
        };
        let answer = request
            .set_tagging(metadata.tags.clone())
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
            Err(err) if Bucket::is_status(&err, 412) => Ok(Written::Refused),
            Err(err) => Err(b.error("writing", Some(key), err)),
        }
    }

    async fn create_upload(
        &self,
        key: &str,
        checksummed: bool,
        metadata: &Metadata,
    ) -> Result<String, StorageError> {
        let b = &self.bucket;
        let request = b
            .client()
            .create_multipart_upload()
            .bucket(&b.name)
            .key(b.key(key))
            .set_checksum_algorithm(checksummed.then_some(ChecksumAlgorithm::Crc64Nvme))
            .set_checksum_type(checksummed.then_some(ChecksumType::FullObject))
            .set_tagging(metadata.tags.clone());
        let request = with_metadata!(request, metadata);
        let request = with_storage!(request, self.write);
        let out = request
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

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        crc64nvme: Option<Crc64Nvme>,
        condition: &Precondition,
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
        let request = b
            .client_once()
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
            .mpu_object_size(size as i64);
        let request = match condition {
            Precondition::Absent => request.if_none_match("*"),
            Precondition::Etag(etag) => request.if_match(etag),
        };
        let answer = request.send().await;
        match answer {
            Ok(out) => Ok(Written::Created(receipt(
                out.e_tag(),
                out.checksum_crc64_nvme(),
                out.version_id(),
            ))),
            Err(err) if Bucket::is_status(&err, 412) => Ok(Written::Refused),
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

    async fn list_uploads(&self, key: &str) -> Result<Vec<OpenUpload>, StorageError> {
        let b = &self.bucket;
        let full_key = b.key(key);
        let mut uploads = Vec::new();
        let (mut key_marker, mut upload_marker) = (None, None);
        loop {
            let page = b
                .client()
                .list_multipart_uploads()
                .bucket(&b.name)
                .prefix(&full_key)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|err| b.error("listing the multipart uploads of", Some(key), err))?;
            uploads.extend(
                page.uploads()
                    .iter()
                    .filter(|u| u.key() == Some(full_key.as_str()))
                    .filter_map(|u| {
                        Some(OpenUpload {
                            upload_id: u.upload_id()?.to_owned(),
                            initiated: u.initiated().and_then(|t| SystemTime::try_from(*t).ok()),
                        })
                    }),
            );
            if page.is_truncated() != Some(true) || page.next_key_marker().is_none() {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_marker = page.next_upload_id_marker().map(str::to_owned);
        }
        Ok(uploads)
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
        match self.conditions().await.copy_if_none_match {
            Enforcement::Enforced => CopySupport::Conditional,
            Enforcement::Ignored => CopySupport::Unconditional(format!(
                "{} ignores If-None-Match on CopyObject: a server-side copy could replace an object",
                b.s3.endpoint
            )),
            Enforcement::Unknown(why) => CopySupport::No(why),
        }
    }

    async fn conditions(&self) -> Conditions {
        self.conditions
            .get_or_init(|| self.bucket.probe_conditions())
            .await
            .clone()
    }

    async fn large_writes(&self) -> LargeWrites {
        super::probe::probe_large_writes(self).await
    }

    async fn copy_new(
        &self,
        key: &str,
        origin: &CopyOrigin,
        source: &ObjectMeta,
        metadata: Option<&Metadata>,
        tags: bool,
    ) -> Result<Written, StorageError> {
        let b = &self.bucket;
        let mut request = b
            .client_once()
            .copy_object()
            .bucket(&b.name)
            .key(b.key(key))
            .copy_source(copy_source(
                &origin.bucket,
                &format!("{}{}", origin.prefix, source.key),
            ))
            // Ask the server for a CRC-64/NVME of what it wrote.
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .if_none_match("*")
            .tagging_directive(if tags {
                TaggingDirective::Copy
            } else {
                TaggingDirective::Replace
            });
        if let Some(metadata) = metadata {
            request = with_metadata!(
                request.metadata_directive(MetadataDirective::Replace),
                metadata
            );
        }
        request = with_storage!(request, self.write);
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
                Some(_) => Ok(Written::Refused),
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
