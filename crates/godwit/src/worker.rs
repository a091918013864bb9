//! `godwit worker`: joins the fleet on a shared PostgreSQL ledger and works on every migration
//! there that has objects waiting, until stopped. A `godwit migrate` (on any machine) creates a
//! migration, records its options (never a secret), scans it and works on it too; each worker
//! opens the same source and destination with its own credentials.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use godwit_engine::Migrator;
use godwit_state::{MigrationStatus, ObjectState, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::cli::{MigrateArgs, WorkerArgs};
use crate::exit;
use crate::ledger::Place;
use crate::migrate::{Prepared, prepare};
use crate::shutdown::Shutdown;

/// How long a worker with nothing to do waits before looking again.
const IDLE: Duration = Duration::from_secs(2);

pub async fn run(args: WorkerArgs) -> anyhow::Result<u8> {
    let place = Place::from_args(args.ledger.state.clone());
    if !matches!(place, Place::Postgres(_)) {
        eprintln!(
            "godwit: a worker shares a PostgreSQL ledger with the rest of the fleet: pass --state postgres://USER@HOST:PORT/DB (or set GODWIT_STATE)"
        );
        return Ok(exit::CONFIG);
    }
    let store = match place.open().await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("godwit: {error}");
            return Ok(exit::CONFIG);
        }
    };
    let shutdown = Shutdown::watch();
    let stop = shutdown.token();
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
        // Paused and cancelled migrations are left alone until resumed.
        if migration.status != MigrationStatus::Running {
            continue;
        }
        let Some(options) = &migration.options else {
            continue;
        };
        // Work is objects waiting, or shards of an unfinished scan to list.
        let listing = match &migration.last_pass {
            Some(pass) if !pass.scan_complete => store
                .shards_left(migration.id, pass.number)
                .await?
                .is_some_and(|left| left > 0),
            _ => false,
        };
        if !listing && store.tally(migration.id).await?.n(ObjectState::Pending) == 0 {
            continue;
        }
        let name = &migration.spec.name;
        let parsed: Result<MigrateArgs, _> = serde_json::from_str(options);
        let prepared = match parsed {
            Ok(args) => prepare(&args).await.ok(),
            Err(error) => {
                if refused.insert(name.clone()) {
                    eprintln!(
                        "godwit: migration '{name}': its options cannot be read ({error}); a newer godwit may have written them"
                    );
                }
                continue;
            }
        };
        let Some(Prepared {
            source,
            dest,
            mut options,
            spec,
        }) = prepared
        else {
            if refused.insert(name.clone()) {
                eprintln!(
                    "godwit: migration '{name}': this worker cannot open its source or destination (above); it leaves it to the others"
                );
            }
            continue;
        };
        // The same places, as this worker resolves them (its environment may name other
        // endpoints than the one that started the migration).
        if spec.source_endpoint != migration.spec.source_endpoint
            || spec.dest_endpoint != migration.spec.dest_endpoint
        {
            if refused.insert(name.clone()) {
                eprintln!(
                    "godwit: migration '{name}' moves {}, but this worker resolves {}; it leaves it to the others",
                    migration.spec.describe(),
                    spec.describe()
                );
            }
            continue;
        }
        options.worker = worker.to_owned();
        options.lease = Duration::from_secs(args.lease);
        let migrator = Migrator::new(source, dest, store.clone(), options, stop.clone());
        match migrator.work(&migration).await {
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
                    "godwit: worker {worker}: migration '{name}': copied {} objects this round; {} pending{status}",
                    summary.copied_this_run, summary.pending
                );
            }
            Err(error) => eprintln!("godwit: migration '{name}': {error}"),
        }
    }
    Ok(worked)
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
