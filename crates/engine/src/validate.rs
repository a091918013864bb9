//! Validation: the destination itself, read against the ledger, partition by partition. Every
//! object the source had (copied, or already present) must be at the destination with the size
//! and ETag recorded when godwit verified it (its CRC-64/NVME, where no ETag was recorded), and
//! each group must have at least as many objects there as the source had (a live destination may
//! hold more). What the ledger has not finished (pending, failed, in conflict) fails its
//! partition. One LIST per 1,000 destination keys, walked beside the ledger in key order.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use godwit_state::{LedgerObject, Migration, ObjectState, Store};
use godwit_storage::{Crc64Nvme, Destination};
use serde::Serialize;

use crate::EngineError;
use crate::walk::{DestinationWalk, etags_differ};

/// Ledger rows read at once.
const PAGE: u32 = 1000;
/// Differences listed per partition.
const DIFFERENCES_LISTED: usize = 20;

/// One partition's validation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionReport {
    /// The partition (`None`: the objects no rule places).
    pub partition: Option<String>,
    /// Whether every object and every group checked out.
    pub passed: bool,
    /// Objects the destination must hold (copied, or found already there).
    pub objects: u64,
    /// Of those, found with the size and ETag (or checksum) recorded.
    pub verified: u64,
    /// Not at the destination.
    pub missing: u64,
    /// At the destination with another size, ETag or checksum (changed there since).
    pub different: u64,
    /// Objects the ledger has not finished well: pending, in progress, failed or in conflict.
    pub not_migrated: u64,
    /// Groups among its objects (an object in no group counts as a group of its own).
    pub groups: u64,
    /// Groups whose every object checked out, as many at the destination as at the source.
    pub groups_passed: u64,
    /// The others.
    pub groups_failed: u64,
    /// The first differences, in key order.
    pub differences: Vec<Difference>,
}

/// An object that did not check out.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Its key.
    pub key: String,
    /// Its group.
    pub group: Option<String>,
    /// What is wrong.
    pub problem: String,
}

/// A validation of a migration's partitions.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// The migration.
    pub migration: String,
    /// When it began (milliseconds since the Unix epoch): cutover requires that nothing changed
    /// in the partition since.
    pub started_at: i64,
    /// Each partition validated, in key order of their first objects.
    pub partitions: Vec<PartitionReport>,
}

impl Validation {
    /// Whether every partition passed (and there was one).
    pub fn passed(&self) -> bool {
        !self.partitions.is_empty() && self.partitions.iter().all(|p| p.passed)
    }
}

/// How a group stands as its objects are checked.
#[derive(Debug, Default)]
struct GroupCount {
    at_source: u64,
    at_destination: u64,
    failed: bool,
}

/// Validates the migration's partitions (only `partition` when given: `Some(None)` is the
/// partition of the objects no rule places) against the destination, and records each
/// partition's result in the ledger.
pub async fn validate(
    dest: &dyn Destination,
    store: &dyn Store,
    migration: &Migration,
    partition: Option<Option<&str>>,
) -> Result<Validation, EngineError> {
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut walk = DestinationWalk::new(dest);
    let mut reports: Vec<PartitionReport> = Vec::new();
    let mut index: BTreeMap<Option<String>, usize> = BTreeMap::new();
    let mut groups: BTreeMap<(usize, String), GroupCount> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .objects_after(migration.id, after.as_deref(), PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for object in page {
            if partition.is_some_and(|p| p != object.partition.as_deref()) {
                continue;
            }
            let at = *index.entry(object.partition.clone()).or_insert_with(|| {
                reports.push(PartitionReport {
                    partition: object.partition.clone(),
                    ..PartitionReport::default()
                });
                reports.len() - 1
            });
            let report = &mut reports[at];
            let problem = check(dest, &mut walk, &object, report).await?;
            let group = object.group.clone().unwrap_or_else(|| object.key.clone());
            let count = groups.entry((at, group)).or_default();
            if !matches!(
                object.state,
                ObjectState::Excluded | ObjectState::SourceVanished
            ) {
                count.at_source += 1;
            }
            if let Some(problem) = problem {
                count.failed = true;
                if report.differences.len() < DIFFERENCES_LISTED {
                    report.differences.push(Difference {
                        key: object.key,
                        group: object.group,
                        problem,
                    });
                }
            } else if matches!(
                object.state,
                ObjectState::Copied | ObjectState::AlreadyPresent
            ) {
                count.at_destination += 1;
            }
        }
    }
    for ((at, _), count) in &groups {
        let report = &mut reports[*at];
        if count.at_source == 0 {
            continue;
        }
        report.groups += 1;
        if count.failed || count.at_destination < count.at_source {
            report.groups_failed += 1;
        } else {
            report.groups_passed += 1;
        }
    }
    for report in &mut reports {
        report.passed = report.missing + report.different + report.not_migrated == 0
            && report.groups_failed == 0;
        let json = serde_json::to_string(report).unwrap_or_default();
        store
            .record_validation(
                migration.id,
                report.partition.as_deref(),
                started_at,
                report.passed,
                &json,
            )
            .await?;
    }
    Ok(Validation {
        migration: migration.spec.name.clone(),
        started_at,
        partitions: reports,
    })
}

/// Checks one object against the destination; says what is wrong, if anything.
async fn check(
    dest: &dyn Destination,
    walk: &mut DestinationWalk,
    object: &LedgerObject,
    report: &mut PartitionReport,
) -> Result<Option<String>, EngineError> {
    match object.state {
        ObjectState::Excluded | ObjectState::SourceVanished => return Ok(None),
        ObjectState::Copied | ObjectState::AlreadyPresent => {}
        state => {
            report.not_migrated += 1;
            return Ok(Some(format!("{state} in the ledger: not migrated")));
        }
    }
    report.objects += 1;
    let Some(there) = walk.find(&object.key).await? else {
        report.missing += 1;
        return Ok(Some("missing at the destination".to_owned()));
    };
    if there.size != object.size {
        report.different += 1;
        return Ok(Some(format!(
            "the destination has {} bytes, the source had {}",
            there.size, object.size
        )));
    }
    if etags_differ(&there.version, object.dest_etag.as_deref()) {
        report.different += 1;
        return Ok(Some(format!(
            "changed at the destination since it was verified: ETag {}, recorded {}",
            there.version,
            object.dest_etag.as_deref().unwrap_or("")
        )));
    }
    if object.dest_etag.is_none()
        && let Some(recorded) = object.checksum.as_deref().and_then(Crc64Nvme::from_base64)
    {
        // No ETag was recorded: the checksum the destination keeps must be the source's.
        let found = dest
            .head(&object.key)
            .await
            .map_err(EngineError::Destination)?;
        if let Some(theirs) = found.and_then(|f| f.crc64nvme)
            && theirs != recorded
        {
            report.different += 1;
            return Ok(Some(format!(
                "the destination's checksum is {theirs}, the source's {recorded}"
            )));
        }
    }
    report.verified += 1;
    Ok(None)
}
