//! The dispatcher: claims packets of pending objects and starts a transfer per object under a
//! limit on objects in flight that climbs or falls with the measured throughput (see `throttle`);
//! one writer records the outcomes in batches, and halts the run when the ledger stops recording.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use godwit_state::{
    ClaimedObject, Migration, MigrationId, MigrationStatus, PacketLimits, Store, StoreError,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::control::{Throttling, control};
use crate::group::groups_of;
use crate::migrate::Migrator;
use crate::progress::Progress;
use crate::record::{Recorded, member_of, release, write_outcomes};
use crate::throttle::Climber;
use crate::transfer::Transfers;

/// What a dispatcher does when it has nothing to claim, or is told to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A `migrate`: sees the migration to its end. It waits for objects other workers hold,
    /// and waits out a pause.
    Lead,
    /// A `worker`'s turn on a migration: ends when nothing is left to claim, or on a pause.
    Help,
}

/// How a dispatcher takes work: as a leading `migrate` or a helping worker, and from which
/// partitions (`None`: all).
pub(crate) struct Turn {
    pub mode: Mode,
    pub partitions: Option<Arc<[String]>>,
}

impl Migrator {
    /// Claims packets and runs a transfer per object until the queue is empty and the scan over
    /// (and, leading, no other worker holds an object of the migration), or until the migration
    /// is paused (helping) or cancelled.
    pub(crate) async fn dispatch(
        &self,
        migration: &Migration,
        mut scanner: Option<tokio::task::JoinHandle<Result<(), EngineError>>>,
        notify: &Arc<Notify>,
        transfers: Arc<Transfers>,
        halt: CancellationToken,
        turn: Turn,
    ) -> Result<(), EngineError> {
        let Turn { mode, partitions } = turn;
        let name = migration.spec.name.clone();
        let migration = migration.id;
        let concurrency = self.options.concurrency.max(1);
        // Packets of twice the objects in flight: enough to keep every slot busy between claims,
        // few enough not to hoard work other workers could take.
        let lease = self.options.lease;
        let whole_groups =
            self.options.filter.units().group.is_some() || self.source.capabilities().places_groups;
        let packet = |in_flight: usize| PacketLimits {
            max_objects: (in_flight * 2).clamp(16, 512) as u32,
            max_bytes: 200 << 20,
            lease,
            whole_groups,
            partitions: partitions.clone(),
        };
        // The heartbeat keeps this worker's leases and hands expired ones of others back.
        let heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
            Arc::clone(&self.store),
            migration,
            self.options.worker.clone(),
            lease,
            Arc::clone(notify),
            halt.clone(),
        )));
        // Pause, resume and cancel reach the run through its migration's status.
        let (status_sender, mut status) = watch::channel(MigrationStatus::Running);
        let throttling = Arc::new(Throttling::default());
        let control = AbortOnDrop(tokio::spawn(control(
            Arc::clone(&self.store),
            (migration, name.clone()),
            self.options.worker.clone(),
            Arc::clone(&self.progress),
            status_sender,
            Arc::clone(&throttling),
            halt.clone(),
        )));
        let (outcomes, receiver) = mpsc::channel::<Recorded>(4096);
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
        let steering = AbortOnDrop(tokio::spawn(steer(
            climber,
            Slots {
                slots: Arc::clone(&slots),
                debt: Arc::clone(&debt),
                limit: Arc::clone(&limit),
            },
            Arc::clone(&self.progress),
            throttling,
            halt.clone(),
        )));
        let mut tasks: JoinSet<Result<(), StoreError>> = JoinSet::new();
        let mut result: Result<(), EngineError> = Ok(());

        'claiming: while !halt.is_cancelled() {
            // No new packets while an endpoint is down.
            if transfers.outage.is_down() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = halt.cancelled() => {}
                }
                continue;
            }
            while let Some(joined) = tasks.try_join_next() {
                if let Err(error) = flatten(joined) {
                    result = Err(error);
                    break 'claiming;
                }
            }
            let now = *status.borrow_and_update();
            match (now, mode) {
                (MigrationStatus::Running, _) => {}
                (MigrationStatus::Paused, Mode::Lead) => {
                    tracing::warn!(
                        "migration '{name}' is paused: objects in flight finish, no new ones start until `godwit resume '{name}'`"
                    );
                    tokio::select! {
                        _ = status.wait_for(|s| *s != MigrationStatus::Paused) => {}
                        () = halt.cancelled() => {}
                    }
                    continue;
                }
                (MigrationStatus::Paused, Mode::Help) => break,
                (MigrationStatus::Cancelled, _) => {
                    tracing::warn!(
                        "migration '{name}' was cancelled: objects in flight finish, then the run ends"
                    );
                    break;
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
                    Some(running) => {
                        // Woken by new work, or by the scan's end (a re-run with nothing to copy
                        // ends as soon as its scan does).
                        let scanned = tokio::select! {
                            scanned = &mut *running => scanned,
                            () = notify.notified() => continue,
                            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                            () = halt.cancelled() => continue,
                        };
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
                    // Retries happen inside transfers, so no new work can appear here; but other
                    // workers may still hold objects, which come back if they stop: wait for
                    // them until every object has ended.
                    None if mode == Mode::Help => break,
                    None => match self
                        .store
                        .held_by_others(migration, &self.options.worker)
                        .await
                    {
                        Ok(held) if held > 0 => {
                            tokio::select! {
                                () = notify.notified() => {}
                                () = tokio::time::sleep(OTHERS_POLL) => {}
                                () = halt.cancelled() => {}
                            }
                            continue;
                        }
                        Ok(_) => break,
                        Err(error) => {
                            result = Err(error.into());
                            break;
                        }
                    },
                }
            }
            let groups = groups_of(&packet);
            let mut packet: VecDeque<ClaimedObject> = packet.into();
            let held = Arc::new(InFlight::new(Arc::clone(&self.progress), Counter::Packets));
            while let Some(object) = packet.pop_front() {
                let slot = tokio::select! {
                    slot = acquire_slot(&slots, &debt) => slot,
                    () = halt.cancelled() => {
                        packet.push_front(object);
                        break;
                    }
                    _ = status.wait_for(|s| *s != MigrationStatus::Running) => {
                        packet.push_front(object);
                        break;
                    }
                };
                let transfers = Arc::clone(&transfers);
                let outcomes = outcomes.clone();
                let halt = halt.clone();
                let in_flight = (
                    Arc::clone(&held),
                    InFlight::new(Arc::clone(&self.progress), Counter::Objects),
                );
                let member = member_of(&groups, &object);
                let gate = self.gate(migration);
                tasks.spawn(async move {
                    let outcome = transfers.copy(object).await?;
                    let recorded = match member {
                        None => outcome.map(Recorded::One),
                        Some((group, mut ended)) => {
                            ended.outcome = outcome;
                            gate.end(&transfers, &group, ended).await?
                        }
                    };
                    drop((slot, in_flight));
                    // The writer only goes away when it failed (and halted the run): the
                    // object stays claimed, and the next run settles it. No outcome: the claim
                    // was lost, and the object is another worker's now (or its group's other
                    // members have not all ended).
                    if let Some(recorded) = recorded
                        && outcomes.send(recorded).await.is_err()
                    {
                        halt.cancel();
                    }
                    Ok(())
                });
            }
            // Objects claimed but never started go back to the queue as they were (unless the
            // writer is gone: then the next run recovers them); a group's, with its group.
            for object in packet {
                let recorded = match member_of(&groups, &object) {
                    None => Some(Recorded::One(release(&object))),
                    Some((group, mut ended)) => {
                        ended.outcome = Some(release(&object));
                        match self.gate(migration).end(&transfers, &group, ended).await {
                            Ok(recorded) => recorded,
                            Err(error) => {
                                result = Err(error.into());
                                break 'claiming;
                            }
                        }
                    }
                };
                if let Some(recorded) = recorded
                    && outcomes.send(recorded).await.is_err()
                {
                    break;
                }
            }
        }

        drop((steering, heartbeat, control));
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
        if self.stop.is_cancelled() && result.is_ok() {
            // Stopped: what this worker still holds (the shards it was listing) goes back to the
            // pool now rather than when its lease runs out.
            if let Err(error) = self.store.release_claims(&self.options.worker).await {
                tracing::warn!("could not hand this worker's claims back: {error}");
            }
        }
        result
    }
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

/// Objects in flight when a run starts; the limit then climbs or falls with the throughput.
const START_CONCURRENCY: usize = 16;
/// The limit never falls below this.
const MIN_CONCURRENCY: usize = 4;
/// How long each throughput measurement lasts.
const WINDOW: Duration = Duration::from_millis(500);
/// What finishing one object is worth in bytes, when throughput mixes objects and bytes: about
/// what a request's fixed cost would send instead.
const OBJECT_WORK: u64 = 128 << 10;

/// Which gauge of work in flight an [`InFlight`] holds one of.
#[derive(Debug, Clone, Copy)]
enum Counter {
    Packets,
    Objects,
}

/// One packet or object in flight, counted in the run's progress for as long as it lives.
struct InFlight {
    progress: Arc<Progress>,
    counter: Counter,
}

impl InFlight {
    fn new(progress: Arc<Progress>, counter: Counter) -> Self {
        Progress::add(Self::gauge(&progress, counter), 1);
        Self { progress, counter }
    }

    fn gauge(progress: &Progress, counter: Counter) -> &std::sync::atomic::AtomicU64 {
        match counter {
            Counter::Packets => &progress.packets_in_flight,
            Counter::Objects => &progress.objects_in_flight,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        Self::gauge(&self.progress, self.counter).fetch_sub(1, Ordering::Relaxed);
    }
}

/// A background task that ends with the run, however the run ends (finished, failed, or its
/// future dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a run whose queue is empty looks whether objects other workers hold came back.
const OTHERS_POLL: Duration = Duration::from_secs(1);

/// Renews this worker's leases a few times a lease, and puts other workers' expired claims back
/// in the pool (waking the dispatcher when it did). A failed renewal is only logged: should the
/// leases run out, other workers take the objects and this one's writes about them are refused.
async fn heartbeat(
    store: Arc<dyn Store>,
    migration: MigrationId,
    worker: String,
    lease: Duration,
    notify: Arc<Notify>,
    halt: CancellationToken,
) {
    let beat = (lease / 3).max(Duration::from_millis(200));
    let mut ticker = tokio::time::interval(beat);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = halt.cancelled() => return,
        }
        if let Err(error) = store.renew_leases(&worker, lease).await {
            tracing::warn!("could not renew this worker's leases: {error}");
        }
        match store.recover_expired(migration).await {
            Ok(0) => {}
            Ok(recovered) => {
                tracing::info!(
                    recovered,
                    "objects whose lease ran out are back in the queue"
                );
                notify.notify_one();
            }
            Err(error) => tracing::warn!("could not look for expired leases: {error}"),
        }
    }
}

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

/// The run's slots for objects in flight, as the steering task moves their number.
struct Slots {
    slots: Arc<Semaphore>,
    /// Slots to retire as objects finish (the limit fell below the slots in use).
    debt: Arc<AtomicUsize>,
    /// The limit now, read by the dispatcher to size packets.
    limit: Arc<AtomicUsize>,
}

impl Slots {
    /// Moves the number of slots from `before` to `after`.
    fn resize(&self, before: usize, after: usize) {
        self.limit.store(after, Ordering::Relaxed);
        if after > before {
            let mut more = after - before;
            let repaid = self
                .debt
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                    Some(d - d.min(more))
                })
                .map_or(0, |d| d.min(more));
            more -= repaid;
            self.slots.add_permits(more);
        } else if after < before {
            // Free slots go at once; slots in use go as their objects finish.
            let fewer = before - after;
            let retired = self.slots.forget_permits(fewer);
            self.debt.fetch_add(fewer - retired, Ordering::Relaxed);
        }
    }
}

/// Throttling answers in one window that make the run back off: one may be chance, a few are
/// the endpoint saying it has had enough.
const THROTTLED_PER_WINDOW: u64 = 2;

/// Measures the throughput of each window and moves the limit on objects in flight; halves it
/// when an endpoint throttles this run (and tells the fleet) or another worker.
async fn steer(
    mut climber: Climber,
    slots: Slots,
    progress: Arc<Progress>,
    throttling: Arc<Throttling>,
    stop: CancellationToken,
) {
    let work =
        || Progress::get(&progress.bytes_sent) + Progress::get(&progress.n_done) * OBJECT_WORK;
    let mut ticker = tokio::time::interval(WINDOW);
    ticker.tick().await;
    let mut last = (Instant::now(), work());
    let mut throttled = Progress::get(&progress.n_throttled);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = (Instant::now(), work());
        let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64().max(1e-3);
        last = now;
        let before = climber.limit();
        let met = Progress::get(&progress.n_throttled) - throttled;
        throttled += met;
        let told = throttling.told.swap(false, Ordering::Relaxed);
        if met >= THROTTLED_PER_WINDOW || told {
            let after = climber.back_off();
            if met >= THROTTLED_PER_WINDOW {
                throttling.met.store(true, Ordering::Relaxed);
            }
            Progress::add(&progress.n_backoffs, 1);
            tracing::info!(
                before,
                after,
                met,
                told,
                "throttled: fewer objects in flight"
            );
            slots.resize(before, after);
            continue;
        }
        // Only a window that used every slot says something about the limit (not one spent
        // waiting for the scan, or draining the last objects).
        if rate <= 0.0 || slots.slots.available_permits() > 0 {
            continue;
        }
        let after = climber.observe(rate);
        tracing::debug!(before, after, rate, "objects in flight");
        slots.resize(before, after);
    }
}
