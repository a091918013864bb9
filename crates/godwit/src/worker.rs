//! `godwit worker`: joins the fleet on a shared PostgreSQL ledger and works on every migration
//! there that has objects waiting, until stopped. A `godwit migrate` (on any machine) creates a
//! migration, records its options (never a secret), scans it and works on it too; each worker
//! opens the same source and destination with its own credentials.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use godwit_engine::Migrator;
use godwit_state::{Migration, MigrationStatus, ObjectState, Store, StoreError};
use godwit_storage::StaticCredentials;
use tokio_util::sync::CancellationToken;

use crate::cli::{MigrateArgs, WorkerArgs};
use crate::exit;
use crate::ledger::Place;
use crate::migrate::{Prepared, open_with};
use crate::shutdown::Shutdown;

/// How long a worker with nothing to do waits before looking again.
const IDLE: Duration = Duration::from_secs(2);

pub async fn run(args: WorkerArgs) -> anyhow::Result<u8> {
    let place = Place::from_args(args.ledger.state.clone());
    if !matches!(place, Place::Postgres(_)) {
        return Ok(crate::render::fail(
            "a worker shares a PostgreSQL ledger with the rest of the fleet: pass --state postgres://USER@HOST:PORT/DB (or set GODWIT_STATE)",
        ));
    }
    let store = match place.open().await {
        Ok(store) => store,
        Err(error) => {
            return Ok(crate::render::fail(error));
        }
    };
    let shutdown = Shutdown::watch();
    let stop = shutdown.token();
    let metrics = match args.metrics_listen {
        Some(address) => match crate::metrics::bind(address).await {
            Ok(listener) => Some(tokio::spawn(crate::metrics::serve(
                listener,
                Arc::clone(&store),
                stop.clone(),
            ))),
            Err(message) => {
                return Ok(crate::render::fail(message));
            }
        },
        None => None,
    };
    let worker = godwit_engine::worker_name();
    shutdown.holds_claims_in(store.clone(), worker.clone());
    eprintln!("godwit: worker {worker} joined the fleet on {place}");
    // Migrations this worker cannot run (a setting it cannot meet), said once each.
    let mut refused: HashSet<String> = HashSet::new();
    // Set while the ledger cannot be reached: the worker waits it out instead of exiting.
    let mut outage: Option<Outage> = None;
    while !stop.is_cancelled() {
        // Idle until a migration's dispatcher says otherwise (it beats every second).
        let idle = godwit_engine::worker_beat(&worker, None, None, 0);
        if let Err(error) = store.beat(&idle).await {
            tracing::warn!("could not write this worker's heartbeat row: {error}");
        }
        let wait = match round(&store, &worker, &args, &stop, &mut refused).await {
            Ok(worked) => {
                if let Some(outage) = outage.take() {
                    eprintln!(
                        "godwit: worker {worker}: the ledger answers again after {} s; back to work",
                        outage.since.elapsed().as_secs()
                    );
                }
                (!worked).then_some(IDLE)
            }
            Err(error) => {
                let outage = outage.get_or_insert_with(|| {
                    eprintln!(
                        "godwit: worker {worker}: the ledger cannot be reached ({error}); this worker's claims will go back to the fleet when their lease runs out; trying again until it answers (Ctrl-C to stop)"
                    );
                    Outage::default()
                });
                Some(outage.next_wait())
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => {}
            }
        }
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    Ok(exit::INTERRUPTED)
}

/// One look at every migration in the ledger, working on each with objects waiting; whether any
/// object was copied. An error is the ledger's: the caller waits it out.
async fn round(
    store: &Arc<dyn Store>,
    worker: &str,
    args: &WorkerArgs,
    stop: &CancellationToken,
    refused: &mut HashSet<String>,
) -> Result<bool, StoreError> {
    let mut worked = false;
    for migration in store.migrations().await? {
        if stop.is_cancelled() {
            break;
        }
        let Some(work) = work_for(store.as_ref(), &migration).await? else {
            continue;
        };
        let name = &migration.spec.name;
        let run = Run {
            store: Arc::clone(store),
            worker: worker.to_owned(),
            lease: Duration::from_secs(args.lease),
            stop: stop.clone(),
            credentials: None,
        };
        match run.on(&migration, work).await {
            Ok(summary) => {
                worked |= summary.copied_this_run > 0;
                if args.json {
                    match serde_json::to_string(&summary) {
                        Ok(line) => println!("{line}"),
                        Err(error) => eprintln!("godwit: the summary cannot be printed: {error}"),
                    }
                }
                let status = match summary.status {
                    MigrationStatus::Running => String::new(),
                    other => format!(" (it is {} now)", other.as_str()),
                };
                eprintln!(
                    "godwit: worker {worker}: migration '{name}': copied {} this round; {} pending{status}",
                    crate::render::objects(summary.copied_this_run),
                    summary.pending
                );
            }
            Err(RunError::Refused(reason)) => {
                if refused.insert(name.clone()) {
                    eprintln!("godwit: migration '{name}': {reason}");
                }
            }
            Err(RunError::Failed(error)) => eprintln!("godwit: migration '{name}': {error}"),
        }
    }
    Ok(worked)
}

/// What a migration needs of a worker now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Queued (by `godwit serve`'s API) and never scanned: its first pass, scan and all, as
    /// `godwit migrate` would run it.
    Lead,
    /// Objects waiting, or shards of an unfinished scan to list.
    Help,
}

/// What `migration` needs of a worker now, if anything. Paused and cancelled migrations, and
/// those recording no options, need nothing.
pub async fn work_for(
    store: &dyn Store,
    migration: &Migration,
) -> Result<Option<Work>, StoreError> {
    if migration.status != MigrationStatus::Running {
        return Ok(None);
    }
    let Some(options) = &migration.options else {
        return Ok(None);
    };
    let listing = match &migration.last_pass {
        // A `migrate` command scans what it starts (it records the migration just before its
        // first pass); only a migration queued by the API waits for a worker to lead it.
        None => {
            let queued = serde_json::from_str::<MigrateArgs>(options).is_ok_and(|a| a.queued);
            return Ok(queued.then_some(Work::Lead));
        }
        Some(pass) if !pass.scan_complete => store
            .shards_left(migration.id, pass.number)
            .await?
            .is_some_and(|left| left > 0),
        Some(_) => false,
    };
    if listing || store.tally(migration.id).await?.n(ObjectState::Pending) > 0 {
        Ok(Some(Work::Help))
    } else {
        Ok(None)
    }
}

/// Why a worker did not run a migration.
#[derive(Debug)]
pub enum RunError {
    /// This worker cannot run it (its options cannot be read, its sides cannot be opened here,
    /// or this worker resolves other endpoints): said once, left to the others.
    Refused(String),
    /// The run began and stopped on an error.
    Failed(String),
}

/// A worker's run on one migration.
pub struct Run {
    /// The ledger.
    pub store: Arc<dyn Store>,
    /// The name its claims and heartbeat row carry.
    pub worker: String,
    /// How long its claims hold without renewal.
    pub lease: Duration,
    /// Ends the run cleanly.
    pub stop: CancellationToken,
    /// Credentials for both S3 sides instead of the standard chain, when given.
    pub credentials: Option<StaticCredentials>,
}

impl Run {
    /// Opens `migration`'s sides with this worker's own credentials, from the options it
    /// records, and runs it as `work` says.
    pub async fn on(
        &self,
        migration: &Migration,
        work: Work,
    ) -> Result<godwit_engine::Summary, RunError> {
        let options = migration.options.as_deref().unwrap_or("{}");
        let args: MigrateArgs = serde_json::from_str(options).map_err(|error| {
            RunError::Refused(format!(
                "its options cannot be read ({error}); a newer godwit may have written them"
            ))
        })?;
        let Prepared {
            source,
            dest,
            mut options,
            spec,
        } = open_with(&args, self.credentials.as_ref())
            .await
            .map_err(|error| {
                RunError::Refused(format!(
                    "this worker cannot open its source or destination: {error}"
                ))
            })?;
        // The same places, as this worker resolves them (its environment may name other
        // endpoints than the one that started the migration).
        if spec.source_endpoint != migration.spec.source_endpoint
            || spec.dest_endpoint != migration.spec.dest_endpoint
        {
            return Err(RunError::Refused(format!(
                "it moves {}, but this worker resolves {}; it leaves it to the others",
                migration.spec.describe(),
                spec.describe()
            )));
        }
        options.worker = self.worker.clone();
        options.lease = self.lease;
        let migrator = Migrator::new(source, dest, self.store.clone(), options, self.stop.clone());
        let summary = match work {
            Work::Lead => migrator.run(&spec).await,
            Work::Help => migrator.work(migration).await,
        };
        summary.map_err(|error| RunError::Failed(error.to_string()))
    }
}

/// A ledger outage: since when, and the next pause before looking again (1 s, doubling to 30 s).
struct Outage {
    since: std::time::Instant,
    pause: Duration,
}

impl Default for Outage {
    fn default() -> Self {
        Self {
            since: std::time::Instant::now(),
            pause: Duration::from_secs(1),
        }
    }
}

impl Outage {
    fn next_wait(&mut self) -> Duration {
        let wait = self.pause;
        self.pause = (self.pause * 2).min(Duration::from_secs(30));
        wait
    }
}
