//! The scan: the source listed into the ledger a page at a time, each object classified by the
//! filter; and the checks of both sides that come before it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use godwit_state::{
    MigrationId, ObjectState, Scanned, ScannedObject, ShardClaim, ShardMark, Store, StoreError,
};
use godwit_storage::{Destination, Listed, Location, Source, endpoint};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::filter::Filter;
use crate::progress::Progress;

pub(crate) fn classify(listed: Listed, filter: &Filter) -> ScannedObject {
    match listed {
        Listed::Object(meta) => {
            let scanned = if !filter.takes(&meta.key) {
                Scanned::Excluded
            } else if let Some(problem) = filter.key_problem(&meta.key) {
                Scanned::Unreadable {
                    kind: godwit_storage::ErrorKind::InvalidInput.as_str().to_owned(),
                    message: problem,
                }
            } else {
                Scanned::Wanted
            };
            // A rule given places the object; without one, the source's own placement (a
            // table's columns) does.
            let units = filter.units();
            let group = match units.group {
                Some(_) => units.group_of(&meta.key),
                None => meta.group,
            };
            let partition = match units.partition {
                Some(_) => units.partition_of(&meta.key),
                None => meta.partition,
            };
            ScannedObject {
                group,
                partition,
                key: meta.key,
                size: meta.size,
                version: meta.version,
                scanned,
            }
        }
        Listed::Unreadable { key, error } => {
            // Left out like any other key, however unreadable: `--exclude` is the way out for a
            // FIFO or a directory godwit may not enter.
            let scanned = if filter.takes(&key) {
                Scanned::Unreadable {
                    kind: error.kind().as_str().to_owned(),
                    message: error.message().to_owned(),
                }
            } else {
                Scanned::Excluded
            };
            ScannedObject {
                group: filter.units().group_of(&key),
                partition: filter.units().partition_of(&key),
                key,
                size: 0,
                version: String::new(),
                scanned,
            }
        }
    }
}

/// Checks both sides, with the messages of their own checks, and that neither lies inside the
/// other (see [`overlap`]); returns the filter the scan must use. A migration created by the API
/// is checked so before it is recorded, so a bad side is a clear answer, not a worker's log line.
pub async fn check(
    source: &dyn Source,
    dest: &dyn Destination,
    filter: &Filter,
) -> Result<Filter, EngineError> {
    let mut filter = overlap(source, dest, filter.clone()).await?;
    if let Location::S3 { prefix, .. } = dest.location() {
        filter = filter.below_dest_prefix(prefix);
    }
    let (source, dest) = tokio::join!(source.check(), dest.check());
    source.map_err(EngineError::Source)?;
    dest.map_err(EngineError::Destination)?;
    Ok(filter)
}

/// Refuses a destination that overlaps the source on one server (the endpoints as resolved and
/// normalized are equal, or their hosts resolve to a shared address): each pass would copy its
/// own copies again. Where the two could be one server under names that do not resolve alike, a
/// destination prefix below the source's is left out of the scan instead (those objects are
/// counted `excluded`), with a warning.
async fn overlap(
    source: &dyn Source,
    dest: &dyn Destination,
    filter: Filter,
) -> Result<Filter, EngineError> {
    let (
        Location::S3 {
            bucket: source_bucket,
            prefix: source_prefix,
        },
        Location::S3 {
            bucket: dest_bucket,
            prefix: dest_prefix,
        },
    ) = (source.location(), dest.location())
    else {
        return Ok(filter);
    };
    let dest_inside = dest_prefix.starts_with(source_prefix.as_str());
    let source_inside = source_prefix.starts_with(dest_prefix.as_str());
    if source_bucket != dest_bucket || !(dest_inside || source_inside) {
        return Ok(filter);
    }
    let same = match (source.endpoint(), dest.endpoint()) {
        (Some(a), Some(b)) => endpoint::same_server(a, b).await,
        _ => endpoint::Sameness::Unknown,
    };
    let (source_location, dest_location) = (source.location(), dest.location());
    if same == endpoint::Sameness::Same {
        return Err(EngineError::Overlap(format!(
            "the destination {dest_location} overlaps the source {source_location} on one server ({}): a scan would find godwit's own copies; choose a prefix outside the source",
            dest.endpoint().unwrap_or("AWS S3")
        )));
    }
    let endpoints = format!(
        "{} and {}",
        source.endpoint().unwrap_or("?"),
        dest.endpoint().unwrap_or("?")
    );
    if dest_inside && dest_prefix != source_prefix {
        let below = dest_prefix[source_prefix.len()..].to_owned();
        tracing::warn!(
            "the destination {dest_location} lies inside the source {source_location} if {endpoints} are one server; source objects below '{below}' are left out of the scan (counted excluded), so no pass copies its own copies"
        );
        return Ok(filter.without_prefix(below));
    }
    if source_inside && dest_prefix != source_prefix {
        tracing::warn!(
            "the source {source_location} lies inside the destination {dest_location} if {endpoints} are one server: copies could land inside the source"
        );
    }
    Ok(filter)
}

/// How many shards one run lists at once: listing is bound by the round trips of LIST
/// requests, so a few at once pay even on one machine.
const SHARDS_AT_ONCE: usize = 4;

/// How often a run whose shards are all held by others looks whether they were finished or
/// handed back.
const SHARDS_POLL: Duration = Duration::from_secs(1);

/// A scan of one pass: the source listed into the ledger shard by shard (see
/// `godwit_storage::shard`), each shard claimed under a lease like a packet and its progress
/// recorded with every page, so a fleet lists in parallel and a scan that stops resumes where
/// it stopped.
pub(crate) struct Scan {
    pub source: Arc<dyn Source>,
    pub store: Arc<dyn Store>,
    pub migration: MigrationId,
    pub pass: u32,
    pub filter: Filter,
    pub progress: Arc<Progress>,
    /// Woken with each page recorded (the dispatcher waits on it for work).
    pub notify: Arc<Notify>,
    pub worker: String,
    pub lease: Duration,
    /// Whether to wait for shards other workers hold until every shard is listed (a `migrate`),
    /// or to end when nothing is left to claim (a worker's turn).
    pub wait_for_others: bool,
}

impl Scan {
    /// Lists the pass's shards (planning them first, unless the pass has them) until every one is
    /// listed, then marks the scan complete. Ends early, leaving its shards to be handed back,
    /// when `stop` is cancelled.
    pub(crate) async fn run(self, stop: CancellationToken) -> Result<(), EngineError> {
        let this = Arc::new(self);
        let (store, migration, pass) = (&this.store, this.migration, this.pass);
        if store.shards_left(migration, pass).await?.is_none() {
            let shards = this.source.shards().await.map_err(EngineError::Scan)?;
            let planned = store.plan_shards(migration, pass, shards).await?;
            tracing::debug!(planned, "the scan is cut into shards");
        }
        let mut listers: JoinSet<Result<(), EngineError>> = JoinSet::new();
        loop {
            while listers.len() < SHARDS_AT_ONCE && !stop.is_cancelled() {
                let Some(shard) = store
                    .claim_shard(migration, pass, &this.worker, this.lease)
                    .await?
                else {
                    break;
                };
                listers.spawn(Arc::clone(&this).list(shard, stop.clone()));
            }
            if listers.is_empty() {
                if stop.is_cancelled() {
                    return Ok(());
                }
                match store.shards_left(migration, pass).await? {
                    Some(0) | None => break,
                    Some(_) if !this.wait_for_others => return Ok(()),
                    // Others hold the rest: they finish them, or their leases run out and the
                    // shards come back.
                    Some(_) => {
                        tokio::select! {
                            () = tokio::time::sleep(SHARDS_POLL) => {}
                            () = stop.cancelled() => {}
                        }
                        continue;
                    }
                }
            }
            if let Some(joined) = listers.join_next().await {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(error),
                    Err(join) => {
                        return Err(EngineError::Internal(format!("listing task: {join}")));
                    }
                }
            }
        }
        store.finish_scan(migration, pass).await?;
        mark_work_known(store.as_ref(), migration, &this.progress).await?;
        Ok(())
    }

    /// Lists one claimed shard from where it was left, recording each page with the shard's new
    /// position in one transaction.
    async fn list(
        self: Arc<Self>,
        shard: ShardClaim,
        stop: CancellationToken,
    ) -> Result<(), EngineError> {
        let mut listing = self.source.list_shard(&shard.name, shard.after.as_deref());
        loop {
            let page = tokio::select! {
                page = listing.recv() => page,
                () = stop.cancelled() => return Ok(()),
            };
            let Some(page) = page else { break };
            let page = page.map_err(EngineError::Scan)?;
            let Some(last) = page.last() else { continue };
            let after = match last {
                Listed::Object(meta) => meta.key.clone(),
                Listed::Unreadable { key, .. } => key.clone(),
            };
            let batch: Vec<ScannedObject> = page
                .into_iter()
                .map(|listed| classify(listed, &self.filter))
                .collect();
            let (n, bytes) = (batch.len() as u64, batch.iter().map(|o| o.size).sum());
            let mark = ShardMark {
                name: shard.name.clone(),
                token: shard.token,
                after,
            };
            match self
                .store
                .record_scanned(self.migration, self.pass, batch, Some(mark))
                .await
            {
                Ok(()) => {}
                Err(StoreError::ShardLost(_)) => {
                    lost(&shard);
                    return Ok(());
                }
                Err(error) => return Err(error.into()),
            }
            Progress::add(&self.progress.n_scanned, n);
            Progress::add(&self.progress.bytes_scanned, bytes);
            self.notify.notify_one();
        }
        match self
            .store
            .finish_shard(self.migration, self.pass, &shard)
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::ShardLost(_)) => {
                lost(&shard);
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// A shard whose lease ran out while this worker listed it: another worker lists it now.
fn lost(shard: &ShardClaim) {
    tracing::warn!(
        shard = %shard.name,
        "the lease on this shard of the scan ran out and another worker took it: leaving it"
    );
}

/// Once the scan is over, the pending work is known in full: record it for the ETA.
pub(crate) async fn mark_work_known(
    store: &dyn Store,
    migration: MigrationId,
    progress: &Progress,
) -> Result<(), StoreError> {
    let tally = store.tally(migration).await?;
    let n = tally.n(ObjectState::Pending) + tally.n(ObjectState::InProgress);
    let bytes = tally.bytes_in(ObjectState::Pending) + tally.bytes_in(ObjectState::InProgress);
    progress
        .n_to_do
        .store(n + Progress::get(&progress.n_done), Ordering::Relaxed);
    progress.bytes_to_do.store(
        bytes + Progress::get(&progress.bytes_done),
        Ordering::Relaxed,
    );
    progress.scan_complete.store(true, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Units;
    use godwit_storage::ObjectMeta;

    fn placed(units: Units) -> (Option<String>, Option<String>) {
        let filter = Filter::new(&[], &[]).unwrap().with_units(units);
        let listed = Listed::Object(ObjectMeta {
            key: "course-1/video-2/a.mp4".into(),
            size: 1,
            version: "v".into(),
            group: Some("video-9".into()),
            partition: Some("course-9".into()),
        });
        let scanned = classify(listed, &filter);
        (scanned.group, scanned.partition)
    }

    #[test]
    fn a_rule_places_objects_else_the_source_does() {
        let some = |text: &str| Some(text.to_owned());
        assert_eq!(
            placed(Units::parse(None, None).unwrap()),
            (some("video-9"), some("course-9"))
        );
        assert_eq!(
            placed(Units::parse(Some("prefix:2"), None).unwrap()),
            (some("course-1/video-2"), some("course-9"))
        );
        assert_eq!(
            placed(Units::parse(None, Some("prefix:1")).unwrap()),
            (some("video-9"), some("course-1"))
        );
    }
}
