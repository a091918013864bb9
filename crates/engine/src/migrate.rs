//! One run of a migration: scan into the ledger, claim packets, copy, record outcomes.
//!
//! The scan and the copies run at once: the scanner (`scan`) streams pages of the listing into
//! the ledger in one transaction a page, while the dispatcher (`dispatch`) claims packets of
//! pending objects and starts a transfer per object under a concurrency limit. Outcomes go through
//! one writer that records them in batches. Memory holds a page, a packet and the objects in
//! flight, whatever the source's size. This module chooses the pass, runs the parts, and sums up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_state::{
    Migration, MigrationId, MigrationSpec, MigrationStatus, ObjectState, PartitionTally,
    PassCounts, Problem, Store, Tally,
};
use godwit_storage::{Destination, Source};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::EngineError;
use crate::control::worker_name;
use crate::dispatch::{Mode, Turn};
use crate::filter::Filter;
use crate::outage::Outage;
use crate::progress::Progress;
use crate::recheck::{Recheck, recheck};
use crate::scan::{Scan, check, mark_work_known};
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
    /// This worker's name in leases: unique to the process.
    pub worker: String,
    /// How long a claim holds without renewal; the run renews its claims a few times a lease, so
    /// a worker that stops loses its packets after about this long.
    pub lease: Duration,
    /// How long an endpoint may stop answering before the run gives up (see `outage`).
    pub endpoint_timeout: Duration,
    /// Let the destination copy objects server-side when it shares the source's endpoint and
    /// refuses copies onto existing keys.
    pub server_side_copy: bool,
    /// Before running a finished migration again, skip checking that the destination still
    /// holds what the ledger counts as done (see [`crate::recheck`]).
    pub trust_ledger: bool,
    /// Which partitions the run takes.
    pub partitions: PartitionChoice,
}

/// Which partitions a run takes objects of (its scan lists the whole source whatever it takes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PartitionChoice {
    /// Every partition with work left (a validated or cut-over one has none).
    #[default]
    All,
    /// These, by name (`""` for the objects no rule places).
    Named(Vec<String>),
    /// The first N by name (in byte order) that have work left, once the scan is complete.
    First(u32),
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            concurrency: 256,
            filter: Filter::default(),
            transfer: TransferOptions::default(),
            worker: worker_name(),
            lease: Duration::from_secs(60),
            endpoint_timeout: Duration::from_secs(15 * 60),
            server_side_copy: true,
            trust_ledger: false,
            partitions: PartitionChoice::All,
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
    /// The migration's status at the end: `paused` or `cancelled` when `godwit pause` or
    /// `godwit cancel` ended the run.
    pub status: MigrationStatus,
    /// Whether the destination copied objects server-side in this run (the bytes did not pass
    /// through godwit).
    pub server_side_copy: bool,
    /// How many: objects this run copied server-side (counted in `copied_this_run`).
    pub copied_server_side_this_run: u64,
    /// godwit's own earlier copies of objects that changed at the source, replaced this run
    /// (conditionally on their ETags; counted in `copied_this_run`).
    pub replaced_this_run: u64,
    /// Answers of an endpoint asking to slow down (503 SlowDown, 429, 500) that reached this run
    /// beyond the SDK's own retries.
    pub throttled: u64,
    /// Times this run halved its objects in flight because an endpoint throttled it or another
    /// worker of the fleet.
    pub backoffs: u64,
    /// How each guarantee held on this destination (what it enforces, and the safe routes taken
    /// where it does not).
    pub guarantees: Guarantees,
    /// How objects above 64 MiB were sent (one PUT or parts), and what the destination was
    /// measured to do that made the choice; with a fixed threshold, that threshold; `None` when
    /// no object needed the measurement.
    pub large_objects: Option<String>,
    /// Objects the ledger counted as done that the destination no longer held (or held with
    /// another size or ETag) when this run began: queued again. Checked when a finished
    /// migration is run again, unless `--trust-ledger`.
    pub missing_at_destination: u64,
    /// Of those, the ones there with another size or ETag (someone else's object now).
    pub changed_at_destination: u64,
    /// Groups (`--group-by`) whose objects all ended well in this run, recorded together.
    pub groups_committed_this_run: u64,
    /// Groups rolled back in this run: a member failed or met a conflict, so the objects this
    /// run created for the group were taken back and the group joined the fail queue.
    pub groups_rolled_back_this_run: u64,
    /// The partitions this run took (`--partition`, `--max-partitions`); `None`: all.
    pub partitions_taken: Option<Vec<String>>,
    /// Objects not yet done in the partitions this run did not take (not counted in `pending`).
    pub pending_elsewhere: u64,
    /// What this run's pass found new, changed and vanished at the source.
    pub this_pass: PassCounts,
    /// Partitions cut over after this run (`--auto-cutover`; `null`: the objects no rule
    /// places).
    pub cut_over_this_run: Vec<Option<String>>,
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
    pub(crate) source: Arc<dyn Source>,
    pub(crate) dest: Arc<dyn Destination>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) options: MigrateOptions,
    pub(crate) progress: Arc<Progress>,
    pub(crate) stop: CancellationToken,
}

/// How many problems a summary lists.
pub(crate) const PROBLEMS_LISTED: u32 = 20;

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
        if migration.status != MigrationStatus::Running {
            return Err(EngineError::NotRunning {
                name: migration.spec.name,
                status: migration.status,
            });
        }
        let recovered = self.store.recover_abandoned(migration.id).await?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "put objects claimed by an earlier run back in the queue"
            );
        }
        let (pass, finished_before) = self.choose_pass(&migration, &filter).await?;
        let recheck_first = finished_before || self.chosen_partitions_done(migration.id).await?;
        let rechecked = if recheck_first && !self.options.trust_ledger {
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
        let mut scanner = match pass {
            PassPlan::Scan(number) => Some(tokio::spawn(
                self.scan(migration.id, number, &filter, &notify, true)
                    .run(halt.clone()),
            )),
            PassPlan::Resume(_) => {
                mark_work_known(self.store.as_ref(), migration.id, &self.progress).await?;
                None
            }
        };
        let pass_number = match pass {
            PassPlan::Scan(n) | PassPlan::Resume(n) => n,
        };

        if let PartitionChoice::First(_) = self.options.partitions
            && let Some(scan) = scanner.take()
        {
            // The first partitions with work left are known once the whole source is listed.
            match scan.await {
                Ok(scanned) => scanned?,
                Err(join) => return Err(EngineError::Internal(format!("scan task: {join}"))),
            }
        }
        let only = self.partitions_taken(migration.id).await?;
        let transfers = self.transfers(filter, &halt);
        let dispatched = self
            .dispatch(
                &migration,
                scanner,
                &notify,
                Arc::clone(&transfers),
                halt.clone(),
                Turn {
                    mode: Mode::Lead,
                    partitions: only.clone(),
                },
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
        let status = self.store.status_of(migration.id).await?;
        dispatched?;
        if let Some(reason) = transfers.outage.gave_up() {
            return Err(EngineError::Unreachable(reason));
        }
        let mut summary = self.summary(&migration, pass_number, &tally, problems, started);
        summary.status = status;
        summary.guarantees = transfers.guarantees();
        summary.large_objects = transfers.large_objects();
        summary.missing_at_destination = rechecked.missing + rechecked.changed;
        summary.changed_at_destination = rechecked.changed;
        summary.this_pass = self.store.pass_counts(migration.id, pass_number).await?;
        self.count_elsewhere(&mut summary, migration.id, only)
            .await?;
        Ok(summary)
    }

    /// Works on a migration that a `migrate` elsewhere started and scans (what a `godwit worker`
    /// does): claims and copies what is pending until nothing is left to claim, without scanning
    /// and without waiting for objects other workers hold. The summary is the ledger's.
    pub async fn work(&self, migration: &Migration) -> Result<Summary, EngineError> {
        let started = Instant::now();
        let filter = check(
            self.source.as_ref(),
            self.dest.as_ref(),
            &self.options.filter,
        )
        .await?;
        self.store.recover_expired(migration.id).await?;
        let notify = Arc::new(Notify::new());
        let halt = self.stop.child_token();
        // A scan not finished (its `migrate` stopped, or lists other shards) is listed too, as
        // long as this worker would judge objects as the pass does.
        let scanner = match &migration.last_pass {
            Some(pass)
                if !pass.scan_complete
                    && pass.filter.as_deref() == Some(filter.describe().as_str()) =>
            {
                Some(tokio::spawn(
                    self.scan(migration.id, pass.number, &filter, &notify, false)
                        .run(halt.clone()),
                ))
            }
            _ => None,
        };
        let only = self.partitions_taken(migration.id).await?;
        let transfers = self.transfers(filter, &halt);
        let dispatched = self
            .dispatch(
                migration,
                scanner,
                &notify,
                Arc::clone(&transfers),
                halt,
                Turn {
                    mode: Mode::Help,
                    partitions: only.clone(),
                },
            )
            .await;
        let tally = self.store.tally(migration.id).await?;
        let problems = self.store.problems(migration.id, PROBLEMS_LISTED).await?;
        let status = self.store.status_of(migration.id).await?;
        dispatched?;
        if let Some(reason) = transfers.outage.gave_up() {
            return Err(EngineError::Unreachable(reason));
        }
        let pass = migration.last_pass.as_ref().map_or(0, |p| p.number);
        let mut summary = self.summary(migration, pass, &tally, problems, started);
        summary.status = status;
        summary.guarantees = transfers.guarantees();
        summary.large_objects = transfers.large_objects();
        self.count_elsewhere(&mut summary, migration.id, only)
            .await?;
        Ok(summary)
    }

    /// Whether the partitions named for this run (`--partition`) have no work left, so the run
    /// checks the destination against the ledger first, as a re-run of a finished migration does.
    async fn chosen_partitions_done(&self, migration: MigrationId) -> Result<bool, EngineError> {
        let PartitionChoice::Named(names) = &self.options.partitions else {
            return Ok(false);
        };
        let partitions = self.store.partitions(migration).await?;
        let chosen: Vec<&PartitionTally> = partitions
            .iter()
            .filter(|p| names.iter().any(|n| n == p.row_name()))
            .collect();
        Ok(!chosen.is_empty()
            && chosen
                .iter()
                .all(|p| p.tally.n(ObjectState::Pending) + p.tally.n(ObjectState::InProgress) == 0))
    }

    /// The partitions this run takes (see [`PartitionChoice`]); `None`: all.
    async fn partitions_taken(
        &self,
        migration: MigrationId,
    ) -> Result<Option<Arc<[String]>>, EngineError> {
        Ok(match &self.options.partitions {
            PartitionChoice::All => None,
            PartitionChoice::Named(names) => Some(names.clone().into()),
            PartitionChoice::First(n) => {
                let partitions = self.store.partitions(migration).await?;
                let open = |p: &PartitionTally| {
                    p.tally.n(ObjectState::Pending) + p.tally.n(ObjectState::InProgress) > 0
                };
                let names: Vec<String> = partitions
                    .iter()
                    .filter(|p| open(p))
                    .take(*n as usize)
                    .map(|p| p.row_name().to_owned())
                    .collect();
                tracing::info!("this run takes the partitions {names:?}");
                Some(names.into())
            }
        })
    }

    /// With some partitions taken, counts the objects left in the others apart from `pending`.
    async fn count_elsewhere(
        &self,
        summary: &mut Summary,
        migration: MigrationId,
        only: Option<Arc<[String]>>,
    ) -> Result<(), EngineError> {
        let Some(only) = only else { return Ok(()) };
        let elsewhere: u64 = self
            .store
            .partitions(migration)
            .await?
            .iter()
            .filter(|p| !only.iter().any(|name| name == p.row_name()))
            .map(|p| p.tally.n(ObjectState::Pending) + p.tally.n(ObjectState::InProgress))
            .sum();
        summary.pending -= elsewhere.min(summary.pending);
        summary.pending_elsewhere = elsewhere;
        summary.partitions_taken = Some(only.to_vec());
        Ok(())
    }

    /// What moves each object: both sides, the ledger, the transfer options, and the endpoint
    /// outage watch, under `halt`.
    fn transfers(&self, filter: Filter, halt: &CancellationToken) -> Arc<Transfers> {
        let copy_candidate = self
            .options
            .server_side_copy
            .then(|| self.source.copy_origin())
            .flatten();
        Arc::new(Transfers::new(
            Arc::clone(&self.source),
            Arc::clone(&self.dest),
            Arc::clone(&self.store),
            self.options.transfer.clone(),
            Arc::clone(&self.progress),
            copy_candidate,
            filter,
            Arc::new(Outage::new(
                Arc::clone(&self.source),
                Arc::clone(&self.dest),
                self.options.endpoint_timeout,
                halt.clone(),
            )),
        ))
    }

    /// The scan of pass `pass` by this run (see [`Scan`]).
    fn scan(
        &self,
        migration: MigrationId,
        pass: u32,
        filter: &Filter,
        notify: &Arc<Notify>,
        wait_for_others: bool,
    ) -> Scan {
        Scan {
            source: Arc::clone(&self.source),
            store: Arc::clone(&self.store),
            migration,
            pass,
            filter: filter.clone(),
            progress: Arc::clone(&self.progress),
            notify: Arc::clone(notify),
            worker: self.options.worker.clone(),
            lease: self.options.lease,
            wait_for_others,
        }
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
            status: migration.status,
            server_side_copy: Progress::get(&self.progress.n_copied_server_side) > 0,
            copied_server_side_this_run: Progress::get(&self.progress.n_copied_server_side),
            replaced_this_run: Progress::get(&self.progress.n_replaced),
            throttled: Progress::get(&self.progress.n_throttled),
            backoffs: Progress::get(&self.progress.n_backoffs),
            guarantees: Guarantees::of(None),
            large_objects: None,
            missing_at_destination: 0,
            changed_at_destination: 0,
            groups_committed_this_run: Progress::get(&self.progress.n_groups_committed),
            groups_rolled_back_this_run: Progress::get(&self.progress.n_groups_rolled_back),
            partitions_taken: None,
            pending_elsewhere: 0,
            this_pass: PassCounts::default(),
            cut_over_this_run: Vec::new(),
            problems,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum PassPlan {
    Scan(u32),
    Resume(u32),
}
