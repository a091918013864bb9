//! Where objects come from and where they go.
//!
//! The engine sees storage only through the [`Source`] and [`Destination`] traits and their
//! capabilities; it never names a backend type. Both work on *relative keys*: the part of a key below
//! the location's root (a directory, or a bucket plus prefix), always `/`-separated. Backends know
//! nothing of the ledger.
//!
//! Backends: the local filesystem ([`fs`]), S3 through the AWS SDK ([`s3`]), and a table of a
//! PostgreSQL, MariaDB/MySQL or SQLite database ([`db`], a source only). [`open_source`] and
//! [`open_destination`] turn a [`Location`] into a trait object.

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub mod db;
pub mod endpoint;
pub mod fs;
pub mod manifest;
pub mod s3;
pub mod shard;

mod error;
pub use error::{ErrorKind, StorageError};

/// A place objects live: a local directory, an S3 bucket with an optional prefix, or a database
/// table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on a local or network filesystem.
    Local(PathBuf),
    /// A bucket, and the key prefix below which godwit reads or writes (empty, or ending in `/`).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix: empty, or ending in `/`.
        prefix: String,
    },
    /// A table of objects in a database (a source only). Shown without its password.
    Table(Box<db::TableLocation>),
}

impl Location {
    /// Parses `s3://bucket[/prefix]`, `file:///path`, a plain path, or a database URL naming a
    /// table (`postgres://`, `mysql://`, `sqlite://`: see [`db::TableLocation`]).
    pub fn parse(text: &str) -> Result<Self, StorageError> {
        if db::TableLocation::is_database_url(text) {
            return Ok(Location::Table(Box::new(db::TableLocation::parse(text)?)));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StorageError::new(
                    ErrorKind::InvalidInput,
                    format!("'{text}' names no bucket: write s3://BUCKET or s3://BUCKET/PREFIX"),
                ));
            }
            let mut prefix = prefix.trim_start_matches('/').to_owned();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        if let Some(path) = text.strip_prefix("file://") {
            if path.is_empty() {
                return Err(StorageError::new(
                    ErrorKind::InvalidInput,
                    format!("'{text}' names no path: write file:///absolute/path or a plain path"),
                ));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if text.contains("://") {
            return Err(StorageError::new(
                ErrorKind::InvalidInput,
                format!(
                    "'{text}': unsupported scheme; use a directory path, file://PATH, s3://BUCKET/PREFIX or a database URL (postgres://, mysql://, sqlite://)"
                ),
            ));
        }
        if text.is_empty() {
            return Err(StorageError::new(
                ErrorKind::InvalidInput,
                "an empty location was given",
            ));
        }
        Ok(Location::Local(PathBuf::from(text)))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Table(table) => write!(f, "{table}"),
        }
    }
}

/// What the scan sees of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Relative key, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// What changes when the object changes: an S3 ETag, a file's modification time in
    /// nanoseconds, a row's updated-at or blob hash (see [`db`]).
    pub version: String,
    /// The group the source itself places the object in (a table's group column); `None` where
    /// the source knows none.
    pub group: Option<String>,
    /// The partition the source itself places the object in (a table's partition column);
    /// `None` where the source knows none.
    pub partition: Option<String>,
}

/// One entry of a listing.
#[derive(Debug)]
pub enum Listed {
    /// An object that can be read.
    Object(ObjectMeta),
    /// Something the listing found but cannot turn into an object (an unreadable directory, a file
    /// name that is not UTF-8). It is still recorded, so nothing found is silently lost.
    Unreadable {
        /// The best key that can be given for it.
        key: String,
        /// Why it cannot be read.
        error: StorageError,
    },
}

/// A listing in progress: pages of entries, ended by the sender closing, or by one `Err` that
/// means the listing could not go on.
pub type Listing = mpsc::Receiver<Result<Vec<Listed>, StorageError>>;

/// What a source can do beyond the basics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceCapabilities {
    /// Byte ranges can be read independently, in parallel (needed for parallel multipart reads).
    pub ranged_reads: bool,
    /// The source places objects in groups itself (a table's group column): their groups are
    /// all-or-nothing units as those of a `--group-by` rule are.
    pub places_groups: bool,
}

/// Where a destination could copy a source's objects from without the bytes passing through
/// godwit: a bucket and prefix on one S3 endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOrigin {
    /// The endpoint, as the source reached it.
    pub endpoint: String,
    /// The source's bucket.
    pub bucket: String,
    /// The source's key prefix (empty, or ending in `/`).
    pub prefix: String,
}

/// Whether a destination can copy server-side from a [`CopyOrigin`] without giving up a guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySupport {
    /// Same endpoint, and the server refuses a copy onto an existing key (`If-None-Match: *`).
    Conditional,
    /// Same endpoint, but the server would copy onto an existing key (it ignores
    /// `If-None-Match: *` on CopyObject): only with a look at the key first, which a writer
    /// racing in between defeats (`--racy-server-side-copy`). The reason, for the log.
    Unconditional(String),
    /// Not possible, or not safe: the reason, for the log.
    No(String),
}

/// Where objects are read from.
#[async_trait]
pub trait Source: Send + Sync {
    /// The location, for messages.
    fn location(&self) -> &Location;
    /// What this source supports.
    fn capabilities(&self) -> SourceCapabilities;
    /// Checks that the source exists and can be read, with a message that says what to fix.
    async fn check(&self) -> Result<(), StorageError>;
    /// Lists every object below the root, in pages. The listing runs in the background and stops
    /// when the receiver is dropped.
    fn list(&self) -> Listing;
    /// Cuts the listing into shards that can be listed on their own (see [`shard`]); together
    /// they list every object once. By default, one shard: [`shard::WHOLE`].
    async fn shards(&self) -> Result<Vec<String>, StorageError> {
        Ok(vec![shard::WHOLE.to_owned()])
    }
    /// Lists one shard (a name [`Source::shards`] gave), in pages, after the key `after` when
    /// given: a listing that stopped resumes there. By default the whole listing, from its start
    /// (a source that cannot resume lists again; recording a page twice changes nothing).
    fn list_shard(&self, shard: &str, after: Option<&str>) -> Listing {
        let _ = (shard, after);
        self.list()
    }
    /// The object's current metadata, or `None` when it no longer exists.
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;
    /// Reads `len` bytes from `offset` of the object as it was when `expected` was seen. Fails with
    /// [`ErrorKind::SourceChanged`] when the object changed since, or changed during the read, and
    /// with [`ErrorKind::NotFound`] when it is gone.
    async fn read(
        &self,
        expected: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError>;
    /// The S3 endpoint this source reads from, resolved and normalized (see [`endpoint`]); `None`
    /// for a source that is not S3.
    fn endpoint(&self) -> Option<&str> {
        None
    }
    /// The whole object as it was when `expected` was seen, with its metadata, in one read where
    /// the source can (an S3 GET carries both).
    async fn read_whole(&self, expected: &ObjectMeta) -> Result<(Bytes, Metadata), StorageError> {
        let bytes = self.read(expected, 0, expected.size).await?;
        Ok((bytes, self.metadata(expected).await?))
    }
    /// What the source serves with the object beside its bytes: Content-Type and the other
    /// headers S3 keeps, and user metadata. A directory has only a Content-Type, guessed from the
    /// name; an S3 source answers a HEAD (conditional on `expected`'s version).
    async fn metadata(&self, expected: &ObjectMeta) -> Result<Metadata, StorageError>;
    /// The object's tags (URL-encoded as `x-amz-tagging` takes them), or `None` where it has none
    /// or the source keeps none. Fails with [`ErrorKind::Unsupported`] where the source cannot
    /// say.
    async fn tags(&self, expected: &ObjectMeta) -> Result<Option<String>, StorageError> {
        let _ = expected;
        Ok(None)
    }
    /// Where a destination on the same endpoint could copy this source's objects from.
    fn copy_origin(&self) -> Option<CopyOrigin> {
        None
    }
    /// How the object was cut into parts when it was uploaded, so that a server-side copy can cut
    /// it the same way (and be proven by the multipart ETag). `None` when the source cannot say.
    async fn part_layout(&self, meta: &ObjectMeta) -> Result<Option<PartLayout>, StorageError> {
        let _ = meta;
        Ok(None)
    }
}

/// How a multipart object was cut: `parts` parts of `part_size` bytes, the last one no longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLayout {
    /// The size of every part but the last.
    pub part_size: u64,
    /// How many parts.
    pub parts: u32,
}

impl PartLayout {
    /// The layout of an object of `size` bytes in `parts` parts, the first of `first` bytes, on the
    /// assumption that all parts but the last are the same size (as every common tool cuts them).
    /// `None` when the figures do not fit that.
    pub fn uniform(size: u64, first: u64, parts: u32) -> Option<Self> {
        let parts_u64 = u64::from(parts);
        let fits = parts > 0
            && first > 0
            && first
                .checked_mul(parts_u64 - 1)
                .is_some_and(|before| before < size)
            && first.checked_mul(parts_u64).is_some_and(|all| all >= size);
        fits.then_some(Self {
            part_size: first,
            parts,
        })
    }

    /// Where part `number` (1-based) of an object of `size` bytes starts, and its length.
    pub fn range(&self, number: u32, size: u64) -> (u64, u64) {
        let offset = u64::from(number - 1) * self.part_size;
        (offset, self.part_size.min(size - offset))
    }
}

/// A CRC-64/NVME checksum, the full-object checksum godwit computes while reading and that S3
/// checks and keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Crc64Nvme(pub u64);

impl Crc64Nvme {
    /// The CRC-64/NVME of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut digest = crc64fast_nvme::Digest::new();
        digest.write(bytes);
        Self(digest.sum64())
    }

    /// The form S3 uses in headers: base64 of the 8 big-endian bytes.
    pub fn to_base64(self) -> String {
        aws_smithy_types::base64::encode(self.0.to_be_bytes())
    }

    /// Parses the header form; `None` when it is not a CRC-64 value.
    pub fn from_base64(text: &str) -> Option<Self> {
        let bytes = aws_smithy_types::base64::decode(text).ok()?;
        let bytes: [u8; 8] = bytes.try_into().ok()?;
        Some(Self(u64::from_be_bytes(bytes)))
    }
}

impl fmt::Display for Crc64Nvme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// What the destination says about an object it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestObject {
    /// Size in bytes.
    pub size: u64,
    /// The ETag, quotes included, as the server sent it.
    pub etag: Option<String>,
    /// The full-object CRC-64/NVME the server reports, if it keeps one.
    pub crc64nvme: Option<Crc64Nvme>,
    /// The version id, on a versioned bucket.
    pub version_id: Option<String>,
    /// When the object was written, by the server's clock (to the second, as S3 says it).
    pub last_modified: Option<SystemTime>,
}

/// What must hold at the key for a write to go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No object at the key (`If-None-Match: *`): the write creates it.
    Absent,
    /// The object at the key has this ETag (`If-Match`): godwit's own earlier write, replaced.
    Etag(String),
}

/// Whether a server enforces a condition godwit relies on, as a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// The server refused the write the condition forbids.
    Enforced,
    /// The server wrote anyway.
    Ignored,
    /// The probe could not tell (an error, given here); godwit takes it as not enforced.
    Unknown(String),
}

impl Enforcement {
    /// Whether the server was seen to enforce the condition.
    pub fn is_enforced(&self) -> bool {
        *self == Enforcement::Enforced
    }
}

/// What a destination enforces of the conditions godwit's guarantees rest on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditions {
    /// `If-None-Match: *` on PutObject: a single PUT never replaces an object.
    pub put_if_none_match: Enforcement,
    /// `If-Match` on PutObject: replacing godwit's own earlier write never replaces another.
    pub put_if_match: Enforcement,
    /// `If-None-Match: *` on CompleteMultipartUpload.
    pub complete_if_none_match: Enforcement,
    /// `If-Match` on CompleteMultipartUpload.
    pub complete_if_match: Enforcement,
    /// `If-Match` on DeleteObject: godwit takes back only its own write.
    pub delete_if_match: Enforcement,
    /// `If-None-Match: *` on CopyObject: a server-side copy never replaces an object.
    pub copy_if_none_match: Enforcement,
}

impl Conditions {
    /// Every condition unknown, for `reason`.
    pub fn unknown(reason: &str) -> Self {
        let unknown = || Enforcement::Unknown(reason.to_owned());
        Self {
            put_if_none_match: unknown(),
            put_if_match: unknown(),
            complete_if_none_match: unknown(),
            complete_if_match: unknown(),
            delete_if_match: unknown(),
            copy_if_none_match: unknown(),
        }
    }
}

/// What a destination was measured to do with large writes (see
/// [`Destination::large_writes`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LargeWrites {
    /// Bytes a second that one PutObject request carried, alone, for a probe object of
    /// [`s3::RATE_PROBE_SIZE`] bytes.
    pub put_rate: Option<f64>,
    /// Whether an object made by a multipart upload keeps its full-object CRC-64/NVME (HEAD
    /// shows it), so that godwit need not read or hash it again to prove it.
    pub multipart_checksums: Option<bool>,
    /// Why a measurement is missing.
    pub note: Option<String>,
}

/// A multipart upload open at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// Its id.
    pub upload_id: String,
    /// When it was started, by the server's clock.
    pub initiated: Option<SystemTime>,
}

/// What describes an object beside its bytes: the headers S3 keeps with it and hands back.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    /// `Content-Type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// `Cache-Control`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `Expires`, as an HTTP date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// User metadata (`x-amz-meta-NAME`), names in lower case.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
    /// Tags, URL-encoded as S3's `x-amz-tagging` header takes them (`k=v&k2=v2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
}

impl Metadata {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        *self == Metadata::default()
    }

    /// The Content-Type a file of this name is served with, guessed from its extension (by the
    /// `mime_guess` crate's table); `None` when the extension says nothing.
    pub fn guessed(key: &str) -> Self {
        Self {
            content_type: mime_guess::from_path(key).first_raw().map(str::to_owned),
            ..Self::default()
        }
    }
}

/// `pairs` URL-encoded as S3's `x-amz-tagging` header takes them: `k=v&k2=v2`.
pub fn encode_tags<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    fn encode(text: &str, out: &mut String) {
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (key, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        encode(key, &mut out);
        out.push('=');
        encode(value, &mut out);
    }
    out
}

/// What the destination answered to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReceipt {
    /// The ETag of the new object.
    pub etag: Option<String>,
    /// The CRC-64/NVME the server computed, if it says.
    pub crc64nvme: Option<Crc64Nvme>,
    /// The version id, on a versioned bucket.
    pub version_id: Option<String>,
}

/// The answer to a conditional write (see [`Precondition`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The object was written.
    Created(WriteReceipt),
    /// The condition did not hold (the key was taken, or no longer holds the object named);
    /// nothing was written.
    Refused,
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    /// 1-based part number.
    pub part_number: u32,
    /// The part's ETag as the server sent it.
    pub etag: String,
    /// The part's CRC-64/NVME (what godwit computed and sent); `None` for a part the destination
    /// copied server-side, whose bytes godwit never saw.
    pub crc64nvme: Option<Crc64Nvme>,
    /// The part's size in bytes.
    pub size: u64,
}

/// What a destination can do beyond the basics.
#[derive(Debug, Clone, Copy, Default)]
pub struct DestinationCapabilities {
    /// The largest number of parts in one multipart upload.
    pub max_parts: u32,
    /// The smallest part size (all parts but the last).
    pub min_part_size: u64,
    /// The largest part size.
    pub max_part_size: u64,
}

/// Where objects are written. Every write is conditional: it never replaces an existing object.
#[async_trait]
pub trait Destination: Send + Sync {
    /// The location, for messages.
    fn location(&self) -> &Location;
    /// What this destination supports.
    fn capabilities(&self) -> DestinationCapabilities;
    /// The S3 endpoint this destination writes to, resolved and normalized (see [`endpoint`]).
    fn endpoint(&self) -> Option<&str> {
        None
    }
    /// Checks that the destination exists and accepts our credentials, with a message that says
    /// what to fix.
    async fn check(&self) -> Result<(), StorageError>;
    /// The object at `key`, or `None`.
    async fn head(&self, key: &str) -> Result<Option<DestObject>, StorageError>;
    /// Lists every object below the root in pages, in key order (UTF-8 bytes, as S3 lists them);
    /// each entry's `version` is its ETag where the listing gives one.
    fn list(&self) -> Listing {
        let (pages, receiver) = mpsc::channel(1);
        let _ = pages.try_send(Err(StorageError::new(
            ErrorKind::Unsupported,
            "the destination cannot be listed",
        )));
        receiver
    }
    /// Reads a byte range of the object at `key` (for read-back verification).
    async fn read(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StorageError>;
    /// Writes `body` with `metadata` at `key` if `condition` holds; the server checks
    /// `crc64nvme`.
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        crc64nvme: Crc64Nvme,
        metadata: &Metadata,
        condition: &Precondition,
    ) -> Result<Written, StorageError>;
    /// Starts a multipart upload for `key` with `metadata`, with a full-object CRC-64/NVME when
    /// `checksummed` (its parts then carry theirs; not so for parts copied server-side); returns
    /// its upload id.
    async fn create_upload(
        &self,
        key: &str,
        checksummed: bool,
        metadata: &Metadata,
    ) -> Result<String, StorageError>;
    /// Uploads one part; returns its ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc64nvme: Crc64Nvme,
    ) -> Result<String, StorageError>;
    /// Completes the upload if `condition` holds; `crc64nvme` is the whole object's, for a
    /// checksummed upload. An unclear answer is an error of kind [`ErrorKind::Unclear`]: the
    /// caller settles it with [`Destination::head`]. A refused upload stays open.
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        crc64nvme: Option<Crc64Nvme>,
        condition: &Precondition,
    ) -> Result<Written, StorageError>;
    /// Aborts an upload godwit started. An upload that no longer exists is not an error.
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StorageError>;
    /// The multipart uploads open at exactly `key`. Fails with [`ErrorKind::Unsupported`] where
    /// the server cannot list them.
    async fn list_uploads(&self, key: &str) -> Result<Vec<OpenUpload>, StorageError> {
        Err(StorageError::new(
            ErrorKind::Unsupported,
            format!("{key}: the destination cannot list multipart uploads"),
        ))
    }
    /// Deletes `key` only while its ETag is still `etag` (an object godwit wrote and must take
    /// back). Only where [`Destination::conditions`] found `If-Match` on DeleteObject enforced is
    /// the condition certain.
    async fn delete_if_etag(&self, key: &str, etag: &str) -> Result<(), StorageError>;
    /// What the destination enforces of the conditions godwit relies on, found by a probe of
    /// godwit's own objects the first time it is asked, and remembered.
    async fn conditions(&self) -> Conditions {
        Conditions::unknown("the destination cannot be probed")
    }
    /// What the destination does with large writes, for the choice between one PUT and a
    /// multipart upload: measured with probe objects of godwit's own when first asked. Not
    /// remembered: the engine asks once a run.
    async fn large_writes(&self) -> LargeWrites {
        LargeWrites {
            note: Some("the destination cannot be probed".to_owned()),
            ..LargeWrites::default()
        }
    }
    /// Whether this destination can copy from `origin` server-side, still conditionally. May write
    /// and delete probe objects of its own to find out.
    async fn copy_support(&self, origin: &CopyOrigin) -> CopySupport {
        let _ = origin;
        CopySupport::No("the destination cannot copy server-side".to_owned())
    }
    /// Copies the object `source` of `origin` to `key` server-side, unless an object exists at
    /// `key` (then [`Written::Refused`]) or the source is no longer `source` (then an error of
    /// kind [`ErrorKind::SourceChanged`]). The copy keeps the source's metadata, or takes
    /// `metadata` instead when given; its tags when `tags`. Only called after
    /// [`Destination::copy_support`] answered [`CopySupport::Conditional`] (or
    /// [`CopySupport::Unconditional`], after a look at the key), for objects up to
    /// [`MAX_COPY_SIZE`].
    async fn copy_new(
        &self,
        key: &str,
        origin: &CopyOrigin,
        source: &ObjectMeta,
        metadata: Option<&Metadata>,
        tags: bool,
    ) -> Result<Written, StorageError> {
        let _ = (origin, source, metadata, tags);
        Err(StorageError::new(
            ErrorKind::Unsupported,
            format!("{key}: the destination cannot copy server-side"),
        ))
    }
    /// Copies `len` bytes from `offset` of the object `source` of `origin` server-side, as part
    /// `part_number` of an upload (made with `checksummed` false); returns the part's ETag. Fails
    /// with [`ErrorKind::SourceChanged`] when the source is no longer `source`. Only called after
    /// [`Destination::copy_support`] answered [`CopySupport::Conditional`].
    #[allow(clippy::too_many_arguments)]
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
        let _ = (upload_id, part_number, origin, source, offset, len);
        Err(StorageError::new(
            ErrorKind::Unsupported,
            format!("{key}: the destination cannot copy server-side"),
        ))
    }
}

/// The largest object one server-side copy request may create (S3's CopyObject limit).
pub const MAX_COPY_SIZE: u64 = 5 << 30;

/// How the destination stores what godwit writes, for a whole run.
#[derive(Debug, Clone, Default)]
pub struct WriteSettings {
    /// The storage class (`STANDARD`, `STANDARD_IA`, `GLACIER_IR`, ...); unset, the bucket's
    /// default.
    pub storage_class: Option<String>,
    /// Server-side encryption; unset, the bucket's default.
    pub encryption: Option<Encryption>,
}

/// Server-side encryption of the objects godwit writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// `AES256`: keys managed by S3.
    Aes256,
    /// `aws:kms`, with this KMS key (the account's default S3 key when `None`).
    Kms {
        /// The KMS key id or ARN.
        key_id: Option<String>,
    },
}

/// How to reach S3 on one side of a migration. Unset fields fall back to the standard AWS
/// settings (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`, the credentials chain).
///
/// The side's credentials come from the first of: `secret`, `profile`, `credentials`, the
/// SDK's default chain (the environment's `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, web identity,
/// container and instance metadata).
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint URL for S3-compatible servers, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region name.
    pub region: Option<String>,
    /// Named profile from the AWS config and credentials files: its credentials (static keys,
    /// role assumption, `credential_process`, SSO) win over the environment's keys.
    pub profile: Option<String>,
    /// Path-style addressing; by default on when a custom endpoint is set.
    pub path_style: Option<bool>,
    /// Credentials to use instead of the standard chain (e.g. read from per-side variables).
    pub credentials: Option<StaticCredentials>,
    /// Where `credentials` were found, for messages (`GODWIT_DEST_AWS_ACCESS_KEY_ID/...`).
    pub credentials_from: Option<String>,
    /// An AWS Secrets Manager secret (ARN or name) holding this side's keys as JSON
    /// (`aws_access_key_id`, `aws_secret_access_key`, optionally `aws_session_token`,
    /// `endpoint_url`, `region`), read with the default chain's credentials and read again when
    /// the keys are due or refused. Its `endpoint_url` and `region` apply unless set above.
    pub secret: Option<String>,
    /// Whom this side's HTTPS connections trust.
    pub tls: TlsSettings,
}

/// Whom a side's HTTPS connections trust beyond the system's root certificates.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// A PEM file of CA certificates trusted as well as the system's roots (a private CA).
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Accept any server certificate: for test servers only; it lets anyone on the path read
    /// and change the data.
    pub skip_verify: bool,
}

/// An access key pair. `Debug` never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Opens `location` for reading.
pub async fn open_source(
    location: &Location,
    s3: &S3Settings,
) -> Result<Arc<dyn Source>, StorageError> {
    Ok(match location {
        Location::Local(path) => Arc::new(fs::LocalSource::new(path.clone())),
        Location::S3 { bucket, prefix } => {
            let client = s3::S3Client::connect(s3).await?;
            Arc::new(client.source(bucket, prefix))
        }
        Location::Table(table) => Arc::new(db::TableSource::open(table)?),
    })
}

/// Opens `location` for writing, storing objects as `write` says.
pub async fn open_destination(
    location: &Location,
    s3: &S3Settings,
    write: &WriteSettings,
) -> Result<Arc<dyn Destination>, StorageError> {
    match location {
        Location::Local(path) => Err(StorageError::new(
            ErrorKind::InvalidInput,
            format!(
                "the destination {} is a local path; godwit writes to S3: use s3://BUCKET/PREFIX",
                path.display()
            ),
        )),
        Location::S3 { bucket, prefix } => {
            let client = s3::S3Client::connect(s3).await?;
            Ok(Arc::new(client.destination(bucket, prefix, write.clone())))
        }
        Location::Table(table) => Err(StorageError::new(
            ErrorKind::InvalidInput,
            format!(
                "the destination {table} is a database table; godwit reads tables and writes to S3: use s3://BUCKET/PREFIX"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Location) {
        assert_eq!(Location::parse(text).unwrap(), expected, "{text}");
    }

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn parses_locations() {
        check("s3://b", s3("b", ""));
        check("s3://b/", s3("b", ""));
        check("s3://b/p", s3("b", "p/"));
        check("s3://b/p/q/", s3("b", "p/q/"));
        check("./files", Location::Local("./files".into()));
        check("file:///data", Location::Local("/data".into()));
    }

    #[test]
    fn rejects_bad_locations() {
        for text in ["s3://", "s3:///x", "gs://b", "file://", ""] {
            let err = Location::parse(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{text}");
        }
    }

    #[test]
    fn part_layouts_are_uniform_cuts() {
        const MIB: u64 = 1 << 20;
        let layout = PartLayout::uniform(11 * MIB, 5 * MIB, 3).unwrap();
        assert_eq!(layout.range(1, 11 * MIB), (0, 5 * MIB));
        assert_eq!(layout.range(3, 11 * MIB), (10 * MIB, MIB));
        assert_eq!(
            PartLayout::uniform(10 * MIB, 5 * MIB, 2)
                .unwrap()
                .range(2, 10 * MIB),
            (5 * MIB, 5 * MIB)
        );
        assert_eq!(
            PartLayout::uniform(7, 7, 1),
            Some(PartLayout {
                part_size: 7,
                parts: 1
            })
        );
        // A server that ignores partNumber answers with the whole object's length.
        assert_eq!(PartLayout::uniform(11 * MIB, 11 * MIB, 3), None);
        // Too few parts of that size to hold the object, or a first part of nothing.
        assert_eq!(PartLayout::uniform(11 * MIB, 5 * MIB, 2), None);
        assert_eq!(PartLayout::uniform(11 * MIB, 0, 3), None);
        assert_eq!(PartLayout::uniform(11 * MIB, 5 * MIB, 0), None);
        assert_eq!(PartLayout::uniform(u64::MAX, u64::MAX, 3), None);
    }

    #[test]
    fn content_types_are_guessed_from_names_and_tags_encoded() {
        assert_eq!(
            Metadata::guessed("a/b/page.HTML").content_type.as_deref(),
            Some("text/html")
        );
        assert_eq!(
            Metadata::guessed("x.json").content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(Metadata::guessed("README").content_type, None);
        assert_eq!(
            encode_tags([("team", "a b"), ("k&=", "v/ü")]),
            "team=a%20b&k%26%3D=v%2F%C3%BC"
        );
    }

    #[test]
    fn crc_header_round_trips() {
        let crc = Crc64Nvme(0x0123_4567_89ab_cdef);
        assert_eq!(Crc64Nvme::from_base64(&crc.to_base64()), Some(crc));
        assert_eq!(Crc64Nvme::from_base64("AAAA"), None);
    }
}
