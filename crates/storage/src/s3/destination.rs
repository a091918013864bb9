//! An S3 bucket, below a prefix, as a destination: every write conditional.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{Bucket, copy_source};
use crate::{
    CopyOrigin, CopySupport, Crc64Nvme, DestObject, Destination, DestinationCapabilities,
    ErrorKind, Location, ObjectMeta, StorageError, UploadedPart, WriteReceipt, Written,
};

/// An S3 bucket (below a prefix) as a destination.
pub struct S3Destination {
    pub(super) bucket: Bucket,
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
