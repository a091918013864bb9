//! What the API says: the views of migrations, partitions, failures and workers, built from the
//! ledger's records. Their schemas in the OpenAPI document come from these types.

use godwit_state::{FailedObject, Migration, ObjectState, PartitionTally, Tally, WorkerRecord};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::samples::{self, Rate, Sample};

/// Counts per object state.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct StateCounts {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Being copied.
    pub in_progress: u64,
    /// Written by godwit and verified.
    pub copied: u64,
    /// Already at the destination, the same.
    pub already_present: u64,
    /// Something else at the destination key, left alone.
    pub conflict: u64,
    /// Left out by the filters.
    pub excluded: u64,
    /// Gone from the source before it could be copied.
    pub source_vanished: u64,
    /// In the fail queue.
    pub failed: u64,
}

impl StateCounts {
    fn from(values: &[u64; 8]) -> Self {
        let n = |state: ObjectState| values[state as usize];
        Self {
            pending: n(ObjectState::Pending),
            in_progress: n(ObjectState::InProgress),
            copied: n(ObjectState::Copied),
            already_present: n(ObjectState::AlreadyPresent),
            conflict: n(ObjectState::Conflict),
            excluded: n(ObjectState::Excluded),
            source_vanished: n(ObjectState::SourceVanished),
            failed: n(ObjectState::Failed),
        }
    }
}

/// Progress: objects and bytes by state, done of total.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    /// Objects per state.
    pub objects: StateCounts,
    /// Bytes per state.
    pub bytes: StateCounts,
    /// Objects to migrate (all found but the excluded).
    pub total_objects: u64,
    /// Their bytes.
    pub total_bytes: u64,
    /// Objects that ended, well or not.
    pub done_objects: u64,
    /// Their bytes.
    pub done_bytes: u64,
    /// Done of total, by bytes (by objects when there are no bytes), 0 to 100.
    pub percent: f64,
}

impl Progress {
    /// The progress a tally shows.
    pub fn of(tally: &Tally) -> Self {
        let (total_objects, total_bytes) = samples::total(tally);
        let (done_objects, done_bytes) = samples::done(tally);
        let percent = if total_bytes > 0 {
            done_bytes as f64 * 100.0 / total_bytes as f64
        } else if total_objects > 0 {
            done_objects as f64 * 100.0 / total_objects as f64
        } else {
            0.0
        };
        Self {
            objects: StateCounts::from(&tally.objects),
            bytes: StateCounts::from(&tally.bytes),
            total_objects,
            total_bytes,
            done_objects,
            done_bytes,
            percent,
        }
    }
}

/// A migration and where it stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MigrationView {
    /// Its id in this ledger.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Where objects come from.
    pub source: String,
    /// Where they go.
    pub destination: String,
    /// The source's S3 endpoint, when it is S3.
    pub source_endpoint: Option<String>,
    /// The destination's S3 endpoint.
    pub destination_endpoint: Option<String>,
    /// `running`, `paused` or `cancelled`.
    #[schema(example = "running")]
    pub status: String,
    /// `queued` (no pass yet), `scanning`, `copying`, `finished` (nothing left to do) or
    /// `finished_with_problems` (conflicts or failures).
    #[schema(example = "copying")]
    pub phase: String,
    /// The latest pass (0 before the first).
    pub pass: u32,
    /// Objects and bytes by state.
    pub progress: Progress,
    /// Rates over the last half minute, once measured.
    pub rate: Option<Rate>,
    /// Seconds until done at that rate, when it can be told.
    pub eta_seconds: Option<u64>,
    /// Why this server's workers could not run it, if they could not.
    pub note: Option<String>,
}

impl MigrationView {
    /// The view of `migration`, its tally and its rate.
    pub fn of(
        migration: &Migration,
        tally: &Tally,
        rate: Option<Rate>,
        note: Option<String>,
    ) -> Self {
        let progress = Progress::of(tally);
        let open = progress.objects.pending + progress.objects.in_progress;
        let problems = progress.objects.conflict + progress.objects.failed;
        let phase = match &migration.last_pass {
            None => "queued",
            Some(pass) if !pass.scan_complete => "scanning",
            Some(_) if open > 0 => "copying",
            Some(_) if problems > 0 => "finished_with_problems",
            Some(_) => "finished",
        };
        Self {
            id: migration.id.0,
            name: migration.spec.name.clone(),
            source: migration.spec.source_url.clone(),
            destination: migration.spec.dest_url.clone(),
            source_endpoint: migration.spec.source_endpoint.clone(),
            destination_endpoint: migration.spec.dest_endpoint.clone(),
            status: migration.status.as_str().to_owned(),
            phase: phase.to_owned(),
            pass: migration.last_pass.as_ref().map_or(0, |p| p.number),
            eta_seconds: if open > 0 {
                samples::eta(rate, tally)
            } else {
                None
            },
            rate,
            progress,
            note,
        }
    }
}

/// A new migration: where from, where to, and how. Credentials are never sent: name a profile
/// (`source_profile`, `dest_profile`) or a secret (`source_secret`, `dest_secret`) the server
/// and its workers resolve themselves, or leave both out for their own environment; a URL with
/// a password in it is refused.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMigration {
    /// A directory on the server (or file://PATH), s3://BUCKET[/PREFIX], or a database table URL
    /// (see the README), without a password.
    #[schema(example = "/srv/media", min_length = 1)]
    pub source: String,
    /// s3://BUCKET[/PREFIX].
    #[schema(example = "s3://media-archive/2024", min_length = 1)]
    pub dest: String,
    /// Its name. Default: "SOURCE -> DEST".
    pub name: Option<String>,
    /// S3 endpoint URL of the source (default: the server's AWS_ENDPOINT_URL, else AWS).
    pub source_endpoint: Option<String>,
    /// S3 endpoint URL of the destination.
    pub dest_endpoint: Option<String>,
    /// The server's AWS profile for the source.
    pub source_profile: Option<String>,
    /// The server's AWS profile for the destination.
    pub dest_profile: Option<String>,
    /// The AWS Secrets Manager secret (ARN or name) with the source's keys, which the server
    /// reads with its own AWS credentials. Not with `source_profile`.
    pub source_secret: Option<String>,
    /// The AWS Secrets Manager secret (ARN or name) with the destination's keys. Not with
    /// `dest_profile`.
    pub dest_secret: Option<String>,
    /// Region of the source.
    pub source_region: Option<String>,
    /// Region of the destination.
    pub dest_region: Option<String>,
    /// `path` or `virtual` addressing.
    #[schema(pattern = "^(path|virtual)$")]
    pub addressing: Option<String>,
    /// Only keys matching these globs.
    #[serde(default)]
    pub include: Vec<String>,
    /// Leave out keys matching these globs.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The all-or-nothing unit: `prefix:N` or `regex:PATTERN`.
    #[schema(pattern = "^(prefix:[0-9]+|regex:.+)$")]
    pub group_by: Option<String>,
    /// The checkpoint unit: `prefix:N` or `regex:PATTERN`.
    #[schema(pattern = "^(prefix:[0-9]+|regex:.+)$")]
    pub partition_by: Option<String>,
    /// The most objects in flight (1 to 4096; default 256).
    #[schema(minimum = 1, maximum = 4096)]
    pub concurrency: Option<u32>,
    /// Attempts per object before the fail queue (1 to 100; default 3).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// Objects larger than this go in parts (`64MiB`; units K, M, G, T are powers of 1024).
    #[schema(pattern = "^[0-9]{1,12} ?([KkMmGgTt]([Ii]?[Bb])?|[Bb])?$")]
    pub multipart_threshold: Option<String>,
    /// Part size (`16MiB`).
    #[schema(pattern = "^[0-9]{1,12} ?([KkMmGgTt]([Ii]?[Bb])?|[Bb])?$")]
    pub part_size: Option<String>,
    /// Content-Type for every object written.
    pub content_type: Option<String>,
    /// Storage class of the objects written.
    #[schema(
        pattern = "^(STANDARD|REDUCED_REDUNDANCY|STANDARD_IA|ONEZONE_IA|INTELLIGENT_TIERING|GLACIER|DEEP_ARCHIVE|GLACIER_IR|OUTPOSTS|SNOW|EXPRESS_ONEZONE)$"
    )]
    pub storage_class: Option<String>,
    /// Copy each object's tags too.
    #[serde(default)]
    pub preserve_tags: bool,
    /// Read every object through godwit, even where the destination could copy it.
    #[serde(default)]
    pub no_server_side_copy: bool,
    /// Where the destination ignores If-None-Match on CopyObject, copy server-side after a HEAD
    /// (racy, said in the summary's guarantees).
    #[serde(default)]
    pub racy_server_side_copy: bool,
    /// POST each cutover to this URL.
    pub cutover_webhook: Option<String>,
}

/// A page of the fail queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedPage {
    /// Failed objects, in the order they failed first.
    pub objects: Vec<FailedView>,
    /// The `after` of the next page, when there may be one.
    pub next: Option<i64>,
}

/// A failed object.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedView {
    /// Its id (a page's cursor).
    pub id: i64,
    /// Its key, relative to the source.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// The error class (`unreachable`, `access_denied`, `checksum_mismatch`, ...).
    pub class: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, for a person.
    pub error: Option<String>,
}

impl From<FailedObject> for FailedView {
    fn from(failed: FailedObject) -> Self {
        Self {
            id: failed.id,
            key: failed.key,
            size: failed.size,
            class: failed.class,
            attempts: failed.attempts,
            error: failed.error,
        }
    }
}

/// Which failures: a page of a class.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FailedQuery {
    /// Only this error class.
    pub class: Option<String>,
    /// The page after this id (the `next` of the page before).
    pub after: Option<i64>,
    /// At most this many (1 to 1000; default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Which failures go back to the queue.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetryQuery {
    /// Only this error class.
    pub class: Option<String>,
}

/// What a retry did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    /// Objects put back in the queue (whole groups with them).
    pub requeued: u64,
}

/// A partition (a checkpoint unit) and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionView {
    /// Its name; `-` for the objects no rule places.
    pub name: String,
    /// `pending`, `in_progress`, `migrated`, `validated`, `cut_over` or `failed`.
    #[schema(example = "validated")]
    pub state: String,
    /// Its objects and bytes.
    pub progress: Progress,
    /// When its latest validation began (milliseconds since the Unix epoch).
    pub validated_at: Option<i64>,
    /// Whether that validation passed.
    pub validation_passed: Option<bool>,
    /// Whether an object of it became work again since.
    pub changed_since_validation: bool,
    /// When it was cut over (milliseconds since the Unix epoch).
    pub cut_over_at: Option<i64>,
    /// Whether it may be cut over now.
    pub can_cut_over: bool,
}

impl From<&PartitionTally> for PartitionView {
    fn from(partition: &PartitionTally) -> Self {
        let state = partition.state();
        Self {
            name: partition.name.clone().unwrap_or_else(|| "-".to_owned()),
            state: state.as_str().to_owned(),
            progress: Progress::of(&partition.tally),
            validated_at: partition.checkpoints.validated_at,
            validation_passed: partition.checkpoints.validation_passed,
            changed_since_validation: partition.checkpoints.changed_since_validation,
            cut_over_at: partition.checkpoints.cut_over_at,
            can_cut_over: state == godwit_state::PartitionState::Validated,
        }
    }
}

/// What a cutover did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CutoverView {
    /// The partition; `-` for the objects no rule places.
    pub partition: String,
    /// `cut_over` (now or before).
    pub state: String,
    /// When it was cut over (milliseconds since the Unix epoch).
    pub cut_over_at: Option<i64>,
    /// How the notice went (webhook, command), when one was sent.
    pub notice: Option<String>,
}

/// A worker process as the ledger last heard of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    /// Its name in leases.
    pub name: String,
    /// The machine.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The migration it works on, if any.
    pub migration: Option<String>,
    /// Objects it has in flight.
    pub objects_in_flight: u64,
    /// Bytes per second it sent lately.
    pub bytes_per_second: u64,
    /// Its last heartbeat (seconds since the Unix epoch).
    pub heartbeat_at: i64,
    /// Seconds since that heartbeat.
    pub seconds_since_heartbeat: i64,
    /// Whether it beat in the last 10 seconds.
    pub alive: bool,
}

impl WorkerView {
    /// The view of `record` at `now` (seconds since the Unix epoch).
    pub fn of(record: &WorkerRecord, now: i64) -> Self {
        let since = (now - record.heartbeat_at).max(0);
        Self {
            name: record.beat.name.clone(),
            host: record.beat.host.clone(),
            pid: record.beat.pid,
            migration: record.beat.migration.clone(),
            objects_in_flight: record.beat.objects_in_flight,
            bytes_per_second: record.beat.bytes_per_second,
            heartbeat_at: record.heartbeat_at,
            seconds_since_heartbeat: since,
            alive: since <= 10,
        }
    }
}

/// Everything a migration's page shows, sent as one server-sent event (`update`) each second.
#[derive(Debug, Serialize, ToSchema)]
pub struct Update {
    /// The migration.
    pub migration: MigrationView,
    /// Its partitions (the first 200 by name).
    pub partitions: Vec<PartitionView>,
    /// How many partitions there are.
    pub partition_count: u64,
    /// The first page of its fail queue.
    pub failed: Vec<FailedView>,
    /// The workers working on it now.
    pub workers: Vec<WorkerView>,
    /// Its latest sample (for the chart).
    pub sample: Option<Sample>,
}

/// A validation: the destination read against the ledger, partition by partition.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationView {
    /// Whether every partition validated passed.
    pub passed: bool,
    /// Each partition's report.
    pub partitions: Vec<ValidationReport>,
}

/// One partition's validation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationReport {
    /// The partition; `-` for the objects no rule places.
    pub partition: String,
    /// Whether every object and every group checked out.
    pub passed: bool,
    /// Objects the destination must hold.
    pub objects: u64,
    /// Of those, found with the size and ETag (or checksum) recorded.
    pub verified: u64,
    /// Not at the destination.
    pub missing: u64,
    /// At the destination, but different.
    pub different: u64,
    /// Not finished well in the ledger (pending, in progress, failed, conflict).
    pub not_migrated: u64,
    /// Groups that failed.
    pub groups_failed: u64,
    /// The first differences, each `KEY: what is wrong`.
    pub differences: Vec<String>,
}

impl From<&godwit_engine::Validation> for ValidationView {
    fn from(validation: &godwit_engine::Validation) -> Self {
        Self {
            passed: validation.passed(),
            partitions: validation
                .partitions
                .iter()
                .map(|report| ValidationReport {
                    partition: report.partition.clone().unwrap_or_else(|| "-".to_owned()),
                    passed: report.passed,
                    objects: report.objects,
                    verified: report.verified,
                    missing: report.missing,
                    different: report.different,
                    not_migrated: report.not_migrated,
                    groups_failed: report.groups_failed,
                    differences: report
                        .differences
                        .iter()
                        .map(|d| format!("{}: {}", d.key, d.problem))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Which objects: a page by key prefix and state.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ObjectsQuery {
    /// Only keys that start with this.
    pub prefix: Option<String>,
    /// Only objects in this state: `pending`, `in_progress`, `copied`, `already_present`,
    /// `conflict`, `excluded`, `source_vanished` or `failed`.
    #[param(
        pattern = "^(pending|in_progress|copied|already_present|conflict|excluded|source_vanished|failed)$"
    )]
    pub state: Option<String>,
    /// Only keys after this one (the `next` of the page before).
    pub after: Option<String>,
    /// At most this many (1 to 1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of a migration's objects, in byte order of their keys. Each call reads a bounded
/// number of objects, so a page may come short (even empty) with a `next` to go on from.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectsPage {
    /// The objects.
    pub objects: Vec<ObjectView>,
    /// The `after` of the next page; `null` when the listing is through.
    pub next: Option<String>,
}

/// An object of a migration.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectView {
    /// Its key, relative to the source.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its state.
    #[schema(example = "copied")]
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error's class, if an attempt failed.
    pub error_class: Option<String>,
    /// The last error, for a person.
    pub error: Option<String>,
    /// The destination's ETag, as recorded.
    pub dest_etag: Option<String>,
    /// Its partition; `null` for none.
    pub partition: Option<String>,
    /// Its group; `null` for a group of its own.
    pub group: Option<String>,
}

impl From<godwit_state::ObjectRow> for ObjectView {
    fn from(row: godwit_state::ObjectRow) -> Self {
        Self {
            key: row.key,
            size: row.size,
            state: row.state.as_str().to_owned(),
            attempts: row.attempts,
            error_class: row.error_kind,
            error: row.error_message,
            dest_etag: row.dest_etag,
            partition: row.partition,
            group: row.group,
        }
    }
}
