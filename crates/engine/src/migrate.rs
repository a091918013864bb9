//! One run of a migration: scan into the ledger, claim packets, copy, record outcomes.
//!
//! The scan and the copies run at once: the scanner streams pages of the listing into the ledger
//! in one transaction a page, while the dispatcher claims packets of pending objects and starts a
//! transfer per object under a concurrency limit. Outcomes go through one writer that records them
//! in batches. Memory holds a page, a packet and the objects in flight, whatever the source's size.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use godwit_state::{
    ClaimedObject, Migration, MigrationId, MigrationSpec, ObjectState, Outcome, OwnWriteChange,
    PacketLimits, Problem, Scanned, ScannedObject, Store, StoreError, Tally,
};
use godwit_storage::{Destination, Listed, Location, Source, endpoint};
use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::filter::Filter;
use crate::progress::Progress;
use crate::recheck::{Recheck, recheck};
use crate::throttle::Climber;
use crate::transfer::{Guarantees, TransferOptions, Transfers};

/// How a migration runs.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The most objects in flight at once (the run finds its own number below it).
    pub concurrency: usize,
    /// Which keys to take.
    pub filter: Filter,
    /// How each object is copied.
    pub transfer: TransferOptions,
    /// This worker's name in leases.
    pub worker: String,
    /// Let the destination copy objects server-side when it shares the source's endpoint and
    /// refuses copies onto existing keys.
    pub server_side_copy: bool,
    /// Before running a finished migration again, skip checking that the destination still
    /// holds what the ledger counts as done (see [`crate::recheck`]).
    pub trust_ledger: bool,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            concurrency: 256,
            filter: Filter::default(),
            transfer: TransferOptions::default(),
            worker: format!("pid-{}", std::process::id()),
            server_side_copy: true,
            trust_ledger: false,
        }
    }
}

/// The end of a run, as the ledger tells it. The state counts cover every object the migration
/// has found in all its passes, so they add up to `scanned`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The migration's name.
    pub migration: String,
    /// The latest pass.
    pub pass: u32,
    /// Objects the migration knows of (every state).
    pub scanned: u64,
    /// Objects copied and verified.
    pub copied: u64,
    /// Objects found at the destination with the same size and checksum.
    pub already_present: u64,
    /// Objects whose key holds something else at the destination.
    pub conflict: u64,
    /// Objects left out by filters.
    pub excluded: u64,
    /// Objects gone from the source before they could be copied.
    pub source_vanished: u64,
    /// Objects in the fail queue.
    pub failed: u64,
    /// Objects not yet done (only after an interrupted run).
    pub pending: u64,
    /// Bytes of copied objects.
    pub bytes_copied: u64,
    /// Bytes of all objects found (every state).
    pub bytes_scanned: u64,
    /// Objects this run copied.
    pub copied_this_run: u64,
    /// Bytes this run copied.
    pub bytes_copied_this_run: u64,
    /// Wall time of this run.
    pub seconds: f64,
    /// Whether the run was stopped before it finished.
    pub interrupted: bool,
    /// Whether the destination copied objects server-side in this run (the bytes did not pass
    /// through godwit).
    pub server_side_copy: bool,
    /// How many: objects this run copied server-side (counted in `copied_this_run`).
    pub copied_server_side_this_run: u64,
    /// godwit's own earlier copies of objects that changed at the source, replaced this run
    /// (conditionally on their ETags; counted in `copied_this_run`).
    pub replaced_this_run: u64,
    /// How each guarantee held on this destination (what it enforces, and the safe routes taken
    /// where it does not).
    pub guarantees: Guarantees,
    /// Objects the ledger counted as done that the destination no longer held (or held with
    /// another size or ETag) when this run began: queued again. Checked when a finished
    /// migration is run again, unless `--trust-ledger`.
    pub missing_at_destination: u64,
    /// Of those, the ones there with another size or ETag (someone else's object now).
    pub changed_at_destination: u64,
    /// The first conflicts and failures.
    pub problems: Vec<Problem>,
}

impl Summary {
    /// Whether every object reached a good terminal state.
    pub fn all_good(&self) -> bool {
        self.conflict == 0 && self.failed == 0 && self.pending == 0
    }
}

/// A migration run over a source, a destination and a ledger.
pub struct Migrator {
    source: Arc<dyn Source>,
    dest: Arc<dyn Destination>,
    store: Arc<dyn Store>,
    options: MigrateOptions,
    progress: Arc<Progress>,
    stop: CancellationToken,
}

/// How many problems a summary lists.
pub(crate) const PROBLEMS_LISTED: u32 = 20;

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

impl Migrator {
    /// A run over these parts. `stop` ends it early and cleanly: no new objects start, the ones in
    /// flight finish, and claimed ones go back to the queue.
    pub fn new(
        source: Arc<dyn Source>,
        dest: Arc<dyn Destination>,
        store: Arc<dyn Store>,
        options: MigrateOptions,
        stop: CancellationToken,
    ) -> Self {
        Self {
            source,
            dest,
            store,
            options,
            progress: Arc::new(Progress::default()),
            stop,
        }
    }

    /// The run's live counters.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Runs the migration named by `spec` to the end (or until stopped) and summarises the ledger.
    pub async fn run(&self, spec: &MigrationSpec) -> Result<Summary, EngineError> {
        let started = Instant::now();
        let filter = check(
            self.source.as_ref(),
            self.dest.as_ref(),
            &self.options.filter,
        )
        .await?;
        let migration = self.store.open_migration(spec).await?;
        let recovered = self.store.recover_abandoned(migration.id).await?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "put objects claimed by an earlier run back in the queue"
            );
        }
        let (pass, finished_before) = self.choose_pass(&migration, &filter).await?;
        let rechecked = if finished_before && !self.options.trust_ledger {
            let found =
                recheck(self.dest.as_ref(), self.store.as_ref(), migration.id, true).await?;
            if found.missing + found.changed > 0 {
                tracing::warn!(
                    "{} objects the ledger counted as done are missing at the destination and {} are different there: they are copied again",
                    found.missing,
                    found.changed
                );
            }
            found
        } else {
            Recheck::default()
        };

        let notify = Arc::new(Notify::new());
        // Cancelled by a stop, and when the run cannot go on (the ledger stopped recording).
        let halt = self.stop.child_token();
        let scanner = match pass {
            PassPlan::Scan(number) => Some(tokio::spawn(scan(
                Arc::clone(&self.source),
                Arc::clone(&self.store),
                migration.id,
                number,
                filter.clone(),
                Arc::clone(&self.progress),
                Arc::clone(&notify),
                halt.clone(),
            ))),
            PassPlan::Resume(_) => {
                mark_work_known(self.store.as_ref(), migration.id, &self.progress).await?;
                None
            }
        };
        let pass_number = match pass {
            PassPlan::Scan(n) | PassPlan::Resume(n) => n,
        };

        let copy_candidate = self
            .options
            .server_side_copy
            .then(|| self.source.copy_origin())
            .flatten();
        let transfers = Arc::new(Transfers::new(
            Arc::clone(&self.source),
            Arc::clone(&self.dest),
            Arc::clone(&self.store),
            self.options.transfer.clone(),
            Arc::clone(&self.progress),
            copy_candidate,
            filter,
        ));
        let dispatched = self
            .dispatch(
                migration.id,
                scanner,
                &notify,
                Arc::clone(&transfers),
                halt.clone(),
            )
            .await;
        if dispatched.is_ok() && !halt.is_cancelled() {
            // Objects the scan settled otherwise (a new filter left them out) keep no upload.
            let aborted = transfers.abort_stale_uploads(migration.id).await?;
            if aborted > 0 {
                tracing::info!(
                    aborted,
                    "aborted multipart uploads no object needs any more"
                );
            }
        }
        let tally = self.store.tally(migration.id).await?;
        let problems = self.store.problems(migration.id, PROBLEMS_LISTED).await?;
        dispatched?;
        let mut summary = self.summary(&migration, pass_number, &tally, problems, started);
        summary.guarantees = transfers.guarantees();
        summary.missing_at_destination = rechecked.missing + rechecked.changed;
        summary.changed_at_destination = rechecked.changed;
        Ok(summary)
    }

    /// Which pass this run makes, and whether it follows a finished one (so the destination is
    /// checked against the ledger first).
    async fn choose_pass(
        &self,
        migration: &Migration,
        filter: &Filter,
    ) -> Result<(PassPlan, bool), EngineError> {
        let described = filter.describe();
        let store = &self.store;
        let mut finished_before = false;
        let plan = match &migration.last_pass {
            // The scan was cut short: scan again under the same pass (recording is idempotent).
            Some(pass) if !pass.scan_complete => {
                store
                    .restart_scan(migration.id, pass.number, &described)
                    .await?;
                PassPlan::Scan(pass.number)
            }
            Some(pass) => {
                let tally = store.tally(migration.id).await?;
                let work_left =
                    tally.n(ObjectState::Pending) + tally.n(ObjectState::InProgress) > 0;
                if work_left && pass.filter.as_deref() == Some(described.as_str()) {
                    // Work is left from a complete scan: no need to list the source again.
                    PassPlan::Resume(pass.number)
                } else if work_left {
                    // The filter changed: the work left must be judged by the new one.
                    store
                        .restart_scan(migration.id, pass.number, &described)
                        .await?;
                    PassPlan::Scan(pass.number)
                } else {
                    finished_before = true;
                    PassPlan::Scan(store.start_pass(migration.id, &described).await?.number)
                }
            }
            None => PassPlan::Scan(store.start_pass(migration.id, &described).await?.number),
        };
        Ok((plan, finished_before))
    }

    /// Claims packets and runs a transfer per object until the queue is empty and the scan over.
    async fn dispatch(
        &self,
        migration: MigrationId,
        mut scanner: Option<tokio::task::JoinHandle<Result<(), EngineError>>>,
        notify: &Notify,
        transfers: Arc<Transfers>,
        halt: CancellationToken,
    ) -> Result<(), EngineError> {
        let concurrency = self.options.concurrency.max(1);
        // Packets of twice the objects in flight: enough to keep every slot busy between claims,
        // few enough not to hoard work other workers could take.
        let packet = |in_flight: usize| PacketLimits {
            max_objects: (in_flight * 2).clamp(16, 512) as u32,
            max_bytes: 200 << 20,
            lease: Duration::from_secs(300),
        };
        let (outcomes, receiver) = mpsc::channel::<Outcome>(4096);
        let writer = tokio::spawn(write_outcomes(
            Arc::clone(&self.store),
            receiver,
            Arc::clone(&self.progress),
            halt.clone(),
        ));
        // The limit on objects in flight moves with the measured throughput (see `throttle`);
        // `concurrency` is its ceiling.
        let climber = Climber::new(START_CONCURRENCY, MIN_CONCURRENCY, concurrency);
        let slots = Arc::new(Semaphore::new(climber.limit()));
        let debt = Arc::new(AtomicUsize::new(0));
        let limit = Arc::new(AtomicUsize::new(climber.limit()));
        let steering = tokio::spawn(steer(
            climber,
            Arc::clone(&slots),
            Arc::clone(&debt),
            Arc::clone(&limit),
            Arc::clone(&self.progress),
            halt.clone(),
        ));
        let mut tasks: JoinSet<Result<(), StoreError>> = JoinSet::new();
        let mut result: Result<(), EngineError> = Ok(());

        'claiming: while !halt.is_cancelled() {
            while let Some(joined) = tasks.try_join_next() {
                if let Err(error) = flatten(joined) {
                    result = Err(error);
                    break 'claiming;
                }
            }
            let packet = match self
                .store
                .claim(
                    migration,
                    &self.options.worker,
                    packet(limit.load(Ordering::Relaxed)),
                )
                .await
            {
                Ok(packet) => packet,
                Err(error) => {
                    result = Err(error.into());
                    break;
                }
            };
            if packet.is_empty() {
                match &mut scanner {
                    Some(running) if !running.is_finished() => {
                        tokio::select! {
                            () = notify.notified() => {}
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            () = halt.cancelled() => {}
                        }
                        continue;
                    }
                    Some(finished) => {
                        let scanned = finished.await;
                        scanner = None;
                        match scanned {
                            // Look once more: the last page may have queued objects.
                            Ok(Ok(())) => continue,
                            Ok(Err(error)) => result = Err(error),
                            Err(join) => {
                                result = Err(EngineError::Internal(format!("scan task: {join}")))
                            }
                        }
                        break;
                    }
                    // Retries happen inside transfers, so no new work can appear: done.
                    None => break,
                }
            }
            let mut packet: VecDeque<ClaimedObject> = packet.into();
            while let Some(object) = packet.pop_front() {
                let slot = tokio::select! {
                    slot = acquire_slot(&slots, &debt) => slot,
                    () = halt.cancelled() => {
                        packet.push_front(object);
                        break;
                    }
                };
                let transfers = Arc::clone(&transfers);
                let outcomes = outcomes.clone();
                let halt = halt.clone();
                tasks.spawn(async move {
                    let outcome = transfers.copy(object).await?;
                    drop(slot);
                    // The writer only goes away when it failed (and halted the run): the
                    // object stays claimed, and the next run settles it.
                    if outcomes.send(outcome).await.is_err() {
                        halt.cancel();
                    }
                    Ok(())
                });
            }
            // Objects claimed but never started go back to the queue as they were (unless the
            // writer is gone: then the next run recovers them).
            for object in packet {
                if outcomes.send(release(&object)).await.is_err() {
                    break;
                }
            }
        }

        steering.abort();
        if let Some(running) = scanner {
            // Stopped or failed before the scan ended: let it notice and finish its page.
            halt.cancel();
            if let Ok(Err(error)) = running.await
                && result.is_ok()
            {
                result = Err(error);
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = flatten(joined)
                && result.is_ok()
            {
                result = Err(error);
            }
        }
        drop(outcomes);
        match writer.await {
            Ok(Ok(())) => {}
            // The ledger's failure is why everything else stopped: it is the error to report.
            Ok(Err(error)) => result = Err(error.into()),
            Err(join) => {
                result = result.and(Err(EngineError::Internal(format!("ledger writer: {join}"))))
            }
        }
        result
    }

    fn summary(
        &self,
        migration: &Migration,
        pass: u32,
        tally: &Tally,
        problems: Vec<Problem>,
        started: Instant,
    ) -> Summary {
        Summary {
            migration: migration.spec.name.clone(),
            pass,
            scanned: tally.n_total(),
            copied: tally.n(ObjectState::Copied),
            already_present: tally.n(ObjectState::AlreadyPresent),
            conflict: tally.n(ObjectState::Conflict),
            excluded: tally.n(ObjectState::Excluded),
            source_vanished: tally.n(ObjectState::SourceVanished),
            failed: tally.n(ObjectState::Failed),
            pending: tally.n(ObjectState::Pending) + tally.n(ObjectState::InProgress),
            bytes_copied: tally.bytes_in(ObjectState::Copied),
            bytes_scanned: tally.bytes_total(),
            copied_this_run: Progress::get(&self.progress.n_copied),
            bytes_copied_this_run: Progress::get(&self.progress.bytes_copied),
            seconds: started.elapsed().as_secs_f64(),
            interrupted: self.stop.is_cancelled(),
            server_side_copy: Progress::get(&self.progress.n_copied_server_side) > 0,
            copied_server_side_this_run: Progress::get(&self.progress.n_copied_server_side),
            replaced_this_run: Progress::get(&self.progress.n_replaced),
            guarantees: Guarantees::of(None),
            missing_at_destination: 0,
            changed_at_destination: 0,
            problems,
        }
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

#[derive(Debug, Clone, Copy)]
enum PassPlan {
    Scan(u32),
    Resume(u32),
}

fn flatten(
    joined: Result<Result<(), StoreError>, tokio::task::JoinError>,
) -> Result<(), EngineError> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(join) => Err(EngineError::Internal(format!("transfer task: {join}"))),
    }
}

/// The outcome that hands a claimed, unstarted object back to the queue unchanged.
/// Objects in flight when a run starts; the limit then climbs or falls with the throughput.
const START_CONCURRENCY: usize = 16;
/// The limit never falls below this.
const MIN_CONCURRENCY: usize = 4;
/// How long each throughput measurement lasts.
const WINDOW: Duration = Duration::from_millis(500);
/// What finishing one object is worth in bytes, when throughput mixes objects and bytes: about
/// what a request's fixed cost would send instead.
const OBJECT_WORK: u64 = 128 << 10;

/// A slot for one more object in flight, unless the limit was lowered: then slots coming free
/// are retired first.
async fn acquire_slot(slots: &Arc<Semaphore>, debt: &AtomicUsize) -> OwnedSemaphorePermit {
    loop {
        let slot = Arc::clone(slots)
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        let owed = debt.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
        if owed.is_ok() {
            slot.forget();
            continue;
        }
        return slot;
    }
}

/// Measures the throughput of each window and moves the limit on objects in flight.
async fn steer(
    mut climber: Climber,
    slots: Arc<Semaphore>,
    debt: Arc<AtomicUsize>,
    limit: Arc<AtomicUsize>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    let work =
        || Progress::get(&progress.bytes_sent) + Progress::get(&progress.n_done) * OBJECT_WORK;
    let mut ticker = tokio::time::interval(WINDOW);
    ticker.tick().await;
    let mut last = (Instant::now(), work());
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = (Instant::now(), work());
        let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64().max(1e-3);
        last = now;
        // Only a window that used every slot says something about the limit (not one spent
        // waiting for the scan, or draining the last objects).
        if rate <= 0.0 || slots.available_permits() > 0 {
            continue;
        }
        let before = climber.limit();
        let after = climber.observe(rate);
        tracing::debug!(before, after, rate, "objects in flight");
        limit.store(after, Ordering::Relaxed);
        if after > before {
            let mut more = after - before;
            let repaid = debt
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                    Some(d - d.min(more))
                })
                .map_or(0, |d| d.min(more));
            more -= repaid;
            slots.add_permits(more);
        } else if after < before {
            // Free slots go at once; slots in use go as their objects finish.
            let fewer = before - after;
            let retired = slots.forget_permits(fewer);
            debt.fetch_add(fewer - retired, Ordering::Relaxed);
        }
    }
}

fn release(object: &ClaimedObject) -> Outcome {
    Outcome {
        id: object.id,
        state: ObjectState::Pending,
        attempts: object.attempts.saturating_sub(1),
        size: object.size,
        version: object.version.clone(),
        checksum: None,
        dest_etag: None,
        dest_version: None,
        verified_by: None,
        error: None,
        own_write: OwnWriteChange::Keep,
    }
}

#[allow(clippy::too_many_arguments)]
async fn scan(
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
async fn mark_work_known(
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

/// Records outcomes in batches: whatever has arrived while the last batch was written.
async fn write_outcomes(
    store: Arc<dyn Store>,
    mut receiver: mpsc::Receiver<Outcome>,
    progress: Arc<Progress>,
    halt: CancellationToken,
) -> Result<(), StoreError> {
    const BATCH: usize = 1024;
    // Each commit costs WAL writes whatever its size: gather for a moment before writing. A kill
    // loses at most this window of outcomes, and those objects are settled by their next claim.
    const GATHER: Duration = Duration::from_millis(25);
    let mut batch = Vec::with_capacity(BATCH);
    let mut more = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + GATHER;
        while batch.len() < BATCH {
            tokio::select! {
                n = receiver.recv_many(&mut more, BATCH) => {
                    batch.append(&mut more);
                    if n == 0 { break }
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let finished: Vec<(ObjectState, u64)> = batch
            .iter()
            .filter(|o| o.state.is_terminal())
            .map(|o| (o.state, o.size))
            .collect();
        if let Err(error) = store.record_outcomes(std::mem::take(&mut batch)).await {
            // Nothing more can be recorded: stop taking work at once, and say why.
            tracing::error!("cannot record outcomes in the ledger, stopping: {error}");
            halt.cancel();
            return Err(error);
        }
        for (state, size) in finished {
            Progress::add(&progress.n_done, 1);
            Progress::add(&progress.bytes_done, size);
            match state {
                ObjectState::Copied => {
                    Progress::add(&progress.n_copied, 1);
                    Progress::add(&progress.bytes_copied, size);
                }
                ObjectState::Conflict | ObjectState::Failed => {
                    Progress::add(&progress.n_problems, 1)
                }
                _ => {}
            }
        }
    }
    Ok(())
}
