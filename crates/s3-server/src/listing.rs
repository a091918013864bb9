//! The S3 operations, served by s3s-fs, with ETags in ListObjectsV2 when asked
//! ([`crate::ServerOptions::listing_etags`]): AWS S3 lists every object with its ETag, s3s-fs
//! 0.14.1 with none, so a client that copies server-side conditionally (`x-amz-copy-source-if-match`)
//! must ask each object with a HEAD first. Every other operation goes to s3s-fs unchanged.

use std::path::{Path, PathBuf};

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};
use s3s_fs::FileSystem;

/// s3s-fs, listing ETags or not.
pub(crate) struct Listing {
    pub(crate) fs: FileSystem,
    pub(crate) root: PathBuf,
    pub(crate) etags: bool,
}

/// The ETag s3s-fs gives the object at `bucket`/`key` under `root` (as it computes it: the one it
/// noted in its internal info, else the file's MD5, unquoted), or `None` when there is no object.
pub(crate) fn etag_of(root: &Path, bucket: &str, key: &str) -> Option<String> {
    use base64::Engine as _;
    let file = root.join(bucket).join(key);
    if !file.is_file() {
        return None;
    }
    let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let info = root.join(format!(
        ".bucket-{}.object-{}.internal.json",
        encode(bucket),
        encode(key)
    ));
    let noted = std::fs::read(info)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|info| info.get("e_tag")?.as_str().map(str::to_owned));
    noted.or_else(|| {
        use md5::Digest as _;
        let bytes = std::fs::read(&file).ok()?;
        Some(
            md5::Md5::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    })
}

/// Implements [`S3`] for [`Listing`]: each named operation passed to s3s-fs as it is, then
/// `list_objects_v2`, given the ETags.
macro_rules! passed_to_s3s_fs {
    ($($operation:ident($input:ident) -> $output:ident;)*) => {
        #[async_trait::async_trait]
        impl S3 for Listing {
            $(
                async fn $operation(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$operation(req).await
                }
            )*

            async fn list_objects_v2(
                &self,
                req: S3Request<ListObjectsV2Input>,
            ) -> S3Result<S3Response<ListObjectsV2Output>> {
                let bucket = req.input.bucket.clone();
                let mut listed = self.fs.list_objects_v2(req).await?;
                if self.etags {
                    for object in listed.output.contents.iter_mut().flatten() {
                        if let Some(key) = &object.key {
                            object.e_tag = etag_of(&self.root, &bucket, key).map(ETag::Strong);
                        }
                    }
                }
                Ok(listed)
            }
        }
    };
}

passed_to_s3s_fs! {
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    get_object(GetObjectInput) -> GetObjectOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    put_object(PutObjectInput) -> PutObjectOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    upload_part(UploadPartInput) -> UploadPartOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
}
