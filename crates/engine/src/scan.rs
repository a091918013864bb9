//! The scan: the source listed into the ledger a page at a time, each object classified by the
//! filter; and the checks of both sides that come before it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use godwit_state::{MigrationId, ObjectState, Scanned, ScannedObject, Store, StoreError};
use godwit_storage::{Destination, Listed, Location, Source, endpoint};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::filter::Filter;
use crate::progress::Progress;

pub(crate) fn classify(listed: Listed, filter: &Filter) -> ScannedObject {
    match listed {
        Listed::Object(meta) => {
            let scanned = if filter.takes(&meta.key) {
                Scanned::Wanted
            } else {
                Scanned::Excluded
            };
            ScannedObject {
                key: meta.key,
                size: meta.size,
                version: meta.version,
                scanned,
            }
        }
        Listed::Unreadable { key, error } => ScannedObject {
            key,
            size: 0,
            version: String::new(),
            scanned: Scanned::Unreadable {
                kind: error.kind().as_str().to_owned(),
                message: error.message().to_owned(),
            },
        },
    }
}

/// Checks both sides, with the messages of their own checks, and that neither lies inside the
/// other (see [`overlap`]); returns the filter the scan must use.
pub(crate) async fn check(
    source: &dyn Source,
    dest: &dyn Destination,
    filter: &Filter,
) -> Result<Filter, EngineError> {
    let filter = overlap(source, dest, filter.clone()).await?;
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

#[allow(clippy::too_many_arguments)]
pub(crate) async fn scan(
    source: Arc<dyn Source>,
    store: Arc<dyn Store>,
    migration: MigrationId,
    pass: u32,
    filter: Filter,
    progress: Arc<Progress>,
    notify: Arc<Notify>,
    stop: CancellationToken,
) -> Result<(), EngineError> {
    let mut listing = source.list();
    loop {
        let page = tokio::select! {
            page = listing.recv() => page,
            () = stop.cancelled() => return Ok(()),
        };
        let Some(page) = page else { break };
        let page = page.map_err(EngineError::Scan)?;
        let batch: Vec<ScannedObject> = page
            .into_iter()
            .map(|listed| classify(listed, &filter))
            .collect();
        Progress::add(&progress.n_scanned, batch.len() as u64);
        Progress::add(&progress.bytes_scanned, batch.iter().map(|o| o.size).sum());
        store.record_scanned(migration, pass, batch).await?;
        notify.notify_one();
    }
    store.finish_scan(migration, pass).await?;
    mark_work_known(store.as_ref(), migration, &progress).await?;
    Ok(())
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
