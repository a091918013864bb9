//! The dry run: what a run would copy, judged as a run would judge it, writing nothing anywhere.
//!
//! It lists the source and, when the ledger knows the migration, looks each object up there (an
//! object done at the same version would not be copied again) and walks the destination against
//! the ledger as a re-run would (an object the ledger counts as done but the destination lacks
//! would be copied again).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use godwit_state::{MigrationId, ObjectState, Problem, Scanned, ScannedObject, Store};
use godwit_storage::{Destination, Source};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::filter::Filter;
use crate::migrate::PROBLEMS_LISTED;
use crate::progress::Progress;
use crate::recheck::recheck;
use crate::scan::{check, classify};
use crate::walk::DestinationWalk;

/// What a dry run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// Objects the source holds.
    pub scanned: u64,
    /// Their bytes.
    pub bytes_scanned: u64,
    /// Objects a run would copy: new or changed at the source, not yet done, or done but missing
    /// (or different) at the destination.
    pub to_copy: u64,
    /// Their bytes.
    pub bytes_to_copy: u64,
    /// Objects the ledger counts as done at this version: a run leaves them.
    pub up_to_date: u64,
    /// Of `to_copy`, the objects the ledger counts as done that the destination lacks (or holds
    /// with another size or ETag).
    pub missing_at_destination: u64,
    /// Objects the ledger holds as a conflict or failed at this version: a run leaves them too
    /// (`godwit retry-failed` queues failed ones again).
    pub left_as_recorded: u64,
    /// Of `to_copy`, objects whose key the destination already holds with another size: a run
    /// would leave them as `conflict` (listed in `problems`).
    pub conflicts: u64,
    /// Of `to_copy`, objects whose key the destination already holds with the same size: a run
    /// compares checksums (`already_present`, or `conflict`).
    pub at_destination: u64,
    /// Objects the filters leave out.
    pub excluded: u64,
    /// Objects found that cannot be read.
    pub unreadable: u64,
    /// The first unreadable ones with their reasons.
    pub problems: Vec<Problem>,
    /// The same counts for each partition (`--partition-by`), in byte order of their names,
    /// the objects no partition takes (`name` null) first; only the listing's objects (not those
    /// found missing at the destination).
    pub partitions: Vec<PartitionPlan>,
    /// Wall time.
    pub seconds: f64,
}

/// What a dry run found in one partition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionPlan {
    /// The partition; `None`: the objects no partition takes.
    pub name: Option<String>,
    /// Objects listed in it (excluded ones aside).
    pub scanned: u64,
    /// Their bytes.
    pub bytes_scanned: u64,
    /// Objects a run would copy.
    pub to_copy: u64,
    /// Their bytes.
    pub bytes_to_copy: u64,
    /// Groups (`--group-by`) its objects make, counted as runs of listed keys in one group (exact
    /// for `prefix:` rules, whose groups list together); 0 without a group rule.
    pub groups: u64,
    /// Objects a run would leave as a conflict (see [`Plan::conflicts`]).
    pub conflicts: u64,
    /// Objects already at the destination with the same size (see [`Plan::at_destination`]).
    pub at_destination: u64,
}

/// The ledger a dry run consults: the store and the migration (when it has one of that name).
pub type Ledger<'a> = Option<(&'a dyn Store, MigrationId)>;

/// The dry run: checks both sides, lists the source and counts what a run would copy, consulting
/// `ledger` (read, never written) when given. It writes nothing anywhere.
pub async fn plan(
    source: &dyn Source,
    dest: &dyn Destination,
    filter: &Filter,
    ledger: Ledger<'_>,
    progress: &Progress,
    stop: &CancellationToken,
) -> Result<Plan, EngineError> {
    let started = Instant::now();
    let filter = check(source, dest, filter).await?;
    let mut plan = Plan::default();
    let mut partitions: BTreeMap<Option<String>, PartitionPlan> = BTreeMap::new();
    let mut last_group: Option<String> = None;
    // What a run would copy, to look for at the destination once the listing is over (key,
    // size, partition): one entry an object to copy.
    let mut wanted: Vec<(String, u64, Option<String>)> = Vec::new();
    let mut listing = source.list();
    loop {
        let page = tokio::select! {
            page = listing.recv() => page,
            () = stop.cancelled() => break,
        };
        let Some(page) = page else { break };
        let page: Vec<ScannedObject> = page
            .map_err(EngineError::Scan)?
            .into_iter()
            .map(|listed| classify(listed, &filter))
            .collect();
        let known = match ledger {
            Some((store, migration)) => {
                let wanted = page
                    .iter()
                    .filter(|o| o.scanned == Scanned::Wanted)
                    .map(|o| o.key.clone())
                    .collect();
                store.lookup(migration, wanted).await?
            }
            None => Vec::new(),
        };
        let mut known = known.into_iter().peekable();
        for object in page {
            plan.scanned += 1;
            plan.bytes_scanned += object.size;
            Progress::add(&progress.n_scanned, 1);
            Progress::add(&progress.bytes_scanned, object.size);
            let partition = (object.scanned != Scanned::Excluded).then(|| {
                partitions
                    .entry(object.partition.clone())
                    .or_insert_with(|| PartitionPlan {
                        name: object.partition.clone(),
                        ..PartitionPlan::default()
                    })
            });
            if let Some(partition) = partition {
                partition.scanned += 1;
                partition.bytes_scanned += object.size;
                if object.group.is_some() && object.group != last_group {
                    partition.groups += 1;
                    last_group.clone_from(&object.group);
                }
            }
            match object.scanned {
                Scanned::Wanted => {
                    // `lookup` answers in the order asked, leaving out unknown keys.
                    let record = known.next_if(|k| k.key == object.key);
                    let same = record
                        .as_ref()
                        .filter(|k| k.size == object.size && k.version == object.version);
                    match same.map(|k| k.state) {
                        Some(ObjectState::Copied | ObjectState::AlreadyPresent) => {
                            plan.up_to_date += 1;
                        }
                        Some(
                            ObjectState::Conflict
                            | ObjectState::Failed
                            | ObjectState::SourceVanished,
                        ) => plan.left_as_recorded += 1,
                        _ => {
                            plan.to_copy += 1;
                            plan.bytes_to_copy += object.size;
                            if let Some(partition) = partitions.get_mut(&object.partition) {
                                partition.to_copy += 1;
                                partition.bytes_to_copy += object.size;
                            }
                            wanted.push((object.key, object.size, object.partition));
                        }
                    }
                }
                Scanned::Excluded => plan.excluded += 1,
                Scanned::Unreadable { kind, message } => {
                    plan.unreadable += 1;
                    if plan.problems.len() < PROBLEMS_LISTED as usize {
                        plan.problems.push(Problem {
                            key: object.key,
                            state: ObjectState::Failed,
                            kind: Some(kind),
                            message: Some(message),
                        });
                    }
                }
            }
        }
    }
    if let Some((store, migration)) = ledger
        && !stop.is_cancelled()
    {
        let found = recheck(dest, store, migration, false).await?;
        let lost = found.missing + found.changed;
        plan.missing_at_destination = lost;
        plan.to_copy += lost;
        plan.up_to_date = plan.up_to_date.saturating_sub(lost);
    }
    if !stop.is_cancelled() {
        // The conflicts a run would meet: keys the destination holds already.
        wanted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut walk = DestinationWalk::new(dest);
        for (key, size, partition) in wanted {
            let Some(there) = walk.find(&key).await? else {
                continue;
            };
            let counts = partitions.get_mut(&partition);
            if there.size == size {
                plan.at_destination += 1;
                if let Some(counts) = counts {
                    counts.at_destination += 1;
                }
                continue;
            }
            plan.conflicts += 1;
            if let Some(counts) = counts {
                counts.conflicts += 1;
            }
            if plan.problems.len() < PROBLEMS_LISTED as usize {
                plan.problems.push(Problem {
                    message: Some(format!(
                        "the destination holds {} bytes at this key, the source {size}: a run would leave it as a conflict",
                        there.size
                    )),
                    key,
                    state: ObjectState::Conflict,
                    kind: Some("conflict".to_owned()),
                });
            }
        }
    }
    plan.partitions = partitions.into_values().collect();
    progress.scan_complete.store(true, Ordering::Relaxed);
    plan.seconds = started.elapsed().as_secs_f64();
    Ok(plan)
}
