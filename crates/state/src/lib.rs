//! The ledger: godwit's durable record of every object a migration found, and its work queue.
//!
//! The engine sees the ledger only through the [`Store`] trait; SQL lives in this crate alone, and
//! this crate knows nothing of storage backends. [`SqliteStore`] is the embedded default (one
//! process, WAL); a PostgreSQL store for fleets of workers implements the same trait.
//!
//! Each object row moves `pending` → `in_progress` (claimed in a packet, under a lease) → one
//! terminal state, or back to `pending` for another attempt. See [`ObjectState`].

#![deny(missing_docs)]

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

mod listing;
mod partition;
mod postgres;
mod sqlite;
mod store;
pub use listing::{ObjectPage, ObjectQuery, ObjectRow};
pub use partition::{
    Checkpoints, Cutover, LedgerObject, Notice, PartitionState, PartitionTally, PassCounts,
};
#[doc(hidden)]
pub use partition::{PartitionCount, PartitionCounts, tally_of};
pub use postgres::{
    CLAIM as POSTGRES_CLAIM, FAILED_PAGE as POSTGRES_FAILED_PAGE,
    OBJECTS_PAGE as POSTGRES_OBJECTS_PAGE, PgStore, without_password,
};
pub use sqlite::SqliteStore;
pub use store::Store;

/// A failure of the ledger itself (not of an object).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("ledger {path}: {message}")]
    Database {
        /// Where the ledger is.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The claim on the object is no longer this worker's (its lease ran out and another worker
    /// took it): nothing was written, and the worker must drop the object.
    #[error("the lease on object {0} was lost: another worker holds it now")]
    LeaseLost(i64),
    /// The claim on a shard of the scan is no longer this worker's (its lease ran out and another
    /// worker lists it now): nothing was recorded, and the worker must leave the shard.
    #[error("the lease on a shard of the scan (claim {0}) was lost: another worker lists it now")]
    ShardLost(i64),
    /// Another process holds the ledger.
    #[error(
        "ledger {path} is in use by another godwit process; wait for it to finish or stop it (a ledger file serves one process at a time)"
    )]
    Busy {
        /// Where the ledger is.
        path: String,
    },
    /// A migration of that name exists with other locations (or other endpoints).
    #[error(
        "migration '{name}' already exists in this ledger for {recorded}; pick another --name or another --state file"
    )]
    NameTaken {
        /// The name asked for.
        name: String,
        /// Where the recorded migration moves objects, as [`MigrationSpec::describe`] says.
        recorded: String,
    },
    /// No migration of that name.
    #[error("no migration named '{0}' in this ledger")]
    UnknownMigration(String),
}

/// The row id of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigrationId(pub i64);

/// The row id of an object in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId(pub i64);

/// The fencing token of one claim (a packet): every write its holder makes about one of its
/// objects carries it, and changes nothing once the object was claimed again by someone else
/// (the lease ran out and another worker took the packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub i64);

/// A shard of a pass's listing, as a worker holds it. A pass's listing is cut into shards (by
/// the source: see `godwit_storage::Source::shards`) that workers claim like packets, so a fleet
/// lists in parallel, and each records how far it has listed, so a scan that stops resumes
/// where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardClaim {
    /// The shard: `""` for the keys at the source's root, `"DIR/"` for the keys below DIR,
    /// `"*"` for the whole listing (opaque to the ledger).
    pub name: String,
    /// The last key recorded from it, to list after; `None` to list it from its start.
    pub after: Option<String>,
    /// This claim's fencing token.
    pub token: LeaseToken,
}

/// How far a claimed shard has been listed: recorded with a page of its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMark {
    /// The shard's name.
    pub name: String,
    /// The claim's token.
    pub token: LeaseToken,
    /// The last key listed (the listing resumes after it).
    pub after: String,
}

/// An object as one claim holds it: what writes about it name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The object.
    pub id: ObjectId,
    /// The claim's fencing token.
    pub token: LeaseToken,
}

/// Where an object is in its life. The terminal states are the six of the guarantees: every object
/// a pass finds ends in exactly one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectState {
    /// Waiting to be claimed.
    Pending = 0,
    /// Claimed by a worker under a lease.
    InProgress = 1,
    /// Written by godwit and verified.
    Copied = 2,
    /// Already at the destination with the same size and checksum.
    AlreadyPresent = 3,
    /// Something else is at the destination key; left alone and reported.
    Conflict = 4,
    /// Left out by the migration's filters.
    Excluded = 5,
    /// Gone from the source before it could be copied.
    SourceVanished = 6,
    /// Used up its attempts, or failed for good; in the fail queue.
    Failed = 7,
}

impl ObjectState {
    /// Every state, in display order.
    pub const ALL: [ObjectState; 8] = [
        ObjectState::Pending,
        ObjectState::InProgress,
        ObjectState::Copied,
        ObjectState::AlreadyPresent,
        ObjectState::Conflict,
        ObjectState::Excluded,
        ObjectState::SourceVanished,
        ObjectState::Failed,
    ];

    /// The stable name used in reports and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectState::Pending => "pending",
            ObjectState::InProgress => "in_progress",
            ObjectState::Copied => "copied",
            ObjectState::AlreadyPresent => "already_present",
            ObjectState::Conflict => "conflict",
            ObjectState::Excluded => "excluded",
            ObjectState::SourceVanished => "source_vanished",
            ObjectState::Failed => "failed",
        }
    }

    /// Whether the object's journey is over.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ObjectState::Pending | ObjectState::InProgress)
    }

    /// Whether the state counts as success for the exit code.
    pub fn is_good(self) -> bool {
        matches!(
            self,
            ObjectState::Copied
                | ObjectState::AlreadyPresent
                | ObjectState::Excluded
                | ObjectState::SourceVanished
        )
    }

    fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as i64 == code)
    }
}

impl fmt::Display for ObjectState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies a migration: its name, and where it moves objects from and to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSpec {
    /// Its name, unique in the ledger.
    pub name: String,
    /// The source URL as given.
    pub source_url: String,
    /// The destination URL as given.
    pub dest_url: String,
    /// The source's S3 endpoint, resolved and normalized (`None` for a source that is not S3).
    pub source_endpoint: Option<String>,
    /// The destination's S3 endpoint, resolved and normalized.
    pub dest_endpoint: Option<String>,
}

impl MigrationSpec {
    /// `SOURCE -> DEST`, each with its endpoint when it has one.
    pub fn describe(&self) -> String {
        let side = |url: &str, endpoint: &Option<String>| match endpoint {
            Some(endpoint) => format!("{url} at {endpoint}"),
            None => url.to_owned(),
        };
        format!(
            "{} -> {}",
            side(&self.source_url, &self.source_endpoint),
            side(&self.dest_url, &self.dest_endpoint)
        )
    }
}

/// An object in the fail queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedObject {
    /// Its row id (the cursor of the next page).
    pub id: i64,
    /// Relative key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The error class (`unreachable`, `access_denied`, `checksum_mismatch`, ...).
    pub class: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// The last error's message.
    pub error: Option<String>,
}

/// An object the ledger counts as done at the destination (`copied` or `already_present`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneObject {
    /// Its row id.
    pub id: ObjectId,
    /// Relative key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The destination's ETag, as recorded.
    pub dest_etag: Option<String>,
}

/// What the ledger knows of an object, for a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownObject {
    /// Relative key.
    pub key: String,
    /// Size recorded.
    pub size: u64,
    /// Version recorded.
    pub version: String,
    /// Its state.
    pub state: ObjectState,
}

/// Whether a migration's objects are taken: set by `godwit pause`, `resume` and `cancel`, and
/// obeyed by every worker within seconds (objects in flight finish; no new ones start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStatus {
    /// Workers take its objects.
    Running,
    /// Nobody takes its objects until it is resumed.
    Paused,
    /// Stopped for good (until resumed): nobody takes its objects.
    Cancelled,
}

impl MigrationStatus {
    /// The stable name used in the ledger, reports and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::Running => "running",
            MigrationStatus::Paused => "paused",
            MigrationStatus::Cancelled => "cancelled",
        }
    }

    /// The status of this name (an unknown name is running, as ledgers before statuses were).
    pub fn from_name(name: Option<&str>) -> Self {
        match name {
            Some("paused") => MigrationStatus::Paused,
            Some("cancelled") => MigrationStatus::Cancelled,
            _ => MigrationStatus::Running,
        }
    }
}

/// What steers a migration's workers, read by each about once a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlState {
    /// Whether its objects are taken.
    pub status: MigrationStatus,
    /// When a worker last found an endpoint throttling it (see [`Store::note_throttled`]).
    pub throttled_at: Option<SystemTime>,
}

/// What a worker says of itself with each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerBeat {
    /// Its name in leases (`host:pid:start`).
    pub name: String,
    /// The machine it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started (seconds since the Unix epoch).
    pub started_at: i64,
    /// The migration it works on now, if any.
    pub migration: Option<String>,
    /// Packets it holds objects of.
    pub packets_in_flight: u64,
    /// Objects it has in flight.
    pub objects_in_flight: u64,
    /// Bytes it sent in the last seconds, per second.
    pub bytes_per_second: u64,
}

/// A worker as the ledger last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRecord {
    /// What it said.
    #[serde(flatten)]
    pub beat: WorkerBeat,
    /// When it last said it (seconds since the Unix epoch).
    pub heartbeat_at: i64,
}

/// A migration as the ledger knows it.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Its row id.
    pub id: MigrationId,
    /// What identifies it.
    pub spec: MigrationSpec,
    /// How it runs, as its last `migrate` command said (opaque to the ledger: the CLI writes and
    /// reads it; never a secret), so that workers can run it too.
    pub options: Option<String>,
    /// Whether its objects are taken.
    pub status: MigrationStatus,
    /// The latest pass, if one was started.
    pub last_pass: Option<Pass>,
}

/// One scan of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// 1 for the first pass, then counting up.
    pub number: u32,
    /// Whether the scan went through the whole source.
    pub scan_complete: bool,
    /// The filter the scan applied, as the engine describes it (`None` in ledgers from before
    /// godwit recorded it).
    pub filter: Option<String>,
}

/// How the scan classified an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    /// To be copied.
    Wanted,
    /// Left out by a filter.
    Excluded,
    /// Found but unreadable: recorded as failed with this error.
    Unreadable {
        /// The error's kind name.
        kind: String,
        /// The message.
        message: String,
    },
}

/// One object the scan found.
#[derive(Debug, Clone)]
pub struct ScannedObject {
    /// Relative key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The source's version token (ETag, mtime).
    pub version: String,
    /// How the scan classified it.
    pub scanned: Scanned,
    /// Its group (`--group-by`); `None`: a group of its own.
    pub group: Option<String>,
    /// Its partition (`--partition-by`); `None`: the migration's default partition.
    pub partition: Option<String>,
}

/// A multipart upload godwit started for an object, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// The server's upload id.
    pub upload_id: String,
    /// The part size the upload uses.
    pub part_size: u64,
    /// The source version the upload's parts belong to: parts of two versions never make one
    /// object. `None` in ledgers from before godwit recorded it (such an upload is replaced).
    pub source: Option<SourceVersion>,
    /// Parts that finished, in part-number order.
    pub parts: Vec<PartRecord>,
}

/// One version of a source object: its size and version token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceVersion {
    /// Size in bytes.
    pub size: u64,
    /// The version token (ETag, mtime).
    pub version: String,
}

/// A write of godwit's own at an object's key, as the destination acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnWrite {
    /// The ETag the destination gave it.
    pub etag: Option<String>,
    /// Its version id, on a versioned bucket.
    pub version_id: Option<String>,
}

/// What the ledger keeps of godwit's own write at an object's key after an outcome.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OwnWriteChange {
    /// As it was: the attempt did not learn anything new about the key.
    #[default]
    Keep,
    /// The key now holds this write of ours (a verified copy, or an unverified write that could
    /// not be taken back).
    Set(OwnWrite),
    /// The key no longer holds a write of ours (taken back, or found to be someone else's).
    Forget,
}

/// An upload the ledger records for an object that no longer needs one (excluded by a new
/// filter, settled otherwise), or that was being started when a run stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleUpload {
    /// The object.
    pub id: ObjectId,
    /// Its relative key.
    pub key: String,
    /// The upload's id, when it was recorded.
    pub upload_id: Option<String>,
    /// When godwit began to start it (see [`Store::record_upload_intent`]).
    pub started_at: Option<SystemTime>,
}

/// One finished part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    /// 1-based part number.
    pub part_number: u32,
    /// The part's ETag.
    pub etag: String,
    /// The part's CRC-64/NVME, base64.
    pub checksum: String,
    /// Size in bytes.
    pub size: u64,
    /// The MD5 (hex) of the part's bytes, when godwit computed it and the server's ETag matched.
    pub md5: Option<String>,
}

/// An object handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedObject {
    /// Its row id.
    pub id: ObjectId,
    /// The claim's fencing token (one a packet).
    pub token: LeaseToken,
    /// Relative key.
    pub key: String,
    /// Size recorded by the scan.
    pub size: u64,
    /// Version recorded by the scan.
    pub version: String,
    /// Attempts including this one.
    pub attempts: u32,
    /// A multipart upload an earlier attempt left, to be resumed.
    pub upload: Option<UploadRecord>,
    /// godwit's own write at the key, as far as the ledger knows (a copy of an earlier version,
    /// or an unverified write that could not be taken back).
    pub own_write: Option<OwnWrite>,
    /// When this version of the object was first claimed, if this is not its first claim: a
    /// write of an earlier claim may have landed after that without its outcome being recorded.
    pub earlier_claim_at: Option<SystemTime>,
    /// An upload godwit began to start (see [`Store::record_upload_intent`]) whose id was never
    /// recorded: the run stopped in between. When it began.
    pub unrecorded_upload_since: Option<SystemTime>,
    /// The group it was claimed with, when groups are taken whole (see
    /// [`PacketLimits::whole_groups`]): every other pending member of the group is in the same
    /// packet.
    pub group: Option<String>,
}

/// What a worker claims at once.
#[derive(Debug, Clone)]
pub struct PacketLimits {
    /// At most this many objects.
    pub max_objects: u32,
    /// At most about this many bytes (a packet always holds at least one object).
    pub max_bytes: u64,
    /// The lease: the claim expires unless renewed within it.
    pub lease: Duration,
    /// Groups are taken whole (a migration with `--group-by`): an object of a group comes with
    /// every other pending object of its group, whatever the limits, and none before the pass's
    /// scan is complete (until then a group may have more objects to come). Objects in no group
    /// are claimed as ever.
    pub whole_groups: bool,
    /// Only objects of these partitions (`""` for the objects in none); `None`: all.
    pub partitions: Option<std::sync::Arc<[String]>>,
}

impl ClaimedObject {
    /// The object as this claim holds it.
    pub fn claim(&self) -> Claim {
        Claim {
            id: self.id,
            token: self.token,
        }
    }
}

/// How an attempt at an object ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The object.
    pub id: ObjectId,
    /// The claim it was attempted under: an outcome of a claim that was lost changes nothing.
    pub token: LeaseToken,
    /// The new state: terminal, or `Pending` to try again.
    pub state: ObjectState,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// The size and version the attempt found (they change when the source changed).
    pub size: u64,
    /// See `size`.
    pub version: String,
    /// The full-object CRC-64/NVME, base64, when known.
    pub checksum: Option<String>,
    /// The destination's ETag.
    pub dest_etag: Option<String>,
    /// The destination's version id.
    pub dest_version: Option<String>,
    /// How the copy was verified (`checksum`, `etag_md5`, `read_back`).
    pub verified_by: Option<&'static str>,
    /// The error kind and message of a failed attempt.
    pub error: Option<(String, String)>,
    /// What to keep of godwit's own write at the key.
    pub own_write: OwnWriteChange,
    /// The metadata godwit sent with its write (JSON), when it sent it itself (a server-side copy
    /// that keeps the source's sends none).
    pub metadata: Option<String>,
}

/// Counts and bytes per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Objects in each state, indexed by `ObjectState as usize`.
    pub objects: [u64; 8],
    /// Bytes in each state, likewise.
    pub bytes: [u64; 8],
}

impl Tally {
    /// Objects in `state`.
    pub fn n(&self, state: ObjectState) -> u64 {
        self.objects[state as usize]
    }

    /// Bytes in `state`.
    pub fn bytes_in(&self, state: ObjectState) -> u64 {
        self.bytes[state as usize]
    }

    /// All objects.
    pub fn n_total(&self) -> u64 {
        self.objects.iter().sum()
    }

    /// All bytes.
    pub fn bytes_total(&self) -> u64 {
        self.bytes.iter().sum()
    }
}

/// A conflict or failure, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Relative key.
    pub key: String,
    /// `conflict` or `failed`.
    pub state: ObjectState,
    /// The error kind name.
    pub kind: Option<String>,
    /// The message.
    pub message: Option<String>,
}

/// Seconds since the Unix epoch (leases, `created_at`, `updated_at`).
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds since the Unix epoch (claims, upload intents).
pub(crate) fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
}

/// What [`Store::group_problem`] says of a member that keeps its group from committing.
pub(crate) fn group_problem(key: String, state: ObjectState, error: Option<String>) -> String {
    match error {
        Some(error) => format!("{key} ended {state}: {error}"),
        None => format!("{key} ended {state}"),
    }
}

/// The state, error kind and message a scan's verdict gives a new row.
pub(crate) fn scanned_columns(scanned: &Scanned) -> (ObjectState, Option<&str>, Option<&str>) {
    match scanned {
        Scanned::Wanted => (ObjectState::Pending, None, None),
        Scanned::Excluded => (ObjectState::Excluded, None, None),
        Scanned::Unreadable { kind, message } => (
            ObjectState::Failed,
            Some(kind.as_str()),
            Some(message.as_str()),
        ),
    }
}
