//! `godwit status`, `failed`, `retry-failed`, `pause`, `resume` and `cancel`: read or nudge
//! the ledger.

use std::sync::Arc;

use godwit_state::{Migration, MigrationStatus, ObjectState, Store, WorkerRecord};

use crate::cli::{ControlArgs, FailedArgs, RetryArgs, StatusArgs};
use crate::exit;
use crate::ledger::Place;
use crate::render::{bytes, duration};

/// A worker whose last heartbeat is older than this is shown as gone (a working one beats every
/// second, an idle one every few).
const GONE_AFTER: i64 = godwit_engine::metrics::ACTIVE_WITHIN.as_secs() as i64;

/// How a command uses the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads it (no lock, so it works while a migration runs).
    Read,
    /// Sets a migration's status (no lock either: the running migration obeys it).
    Control,
    /// Changes objects (the SQLite file's lock taken: no migration may run on it meanwhile).
    Write,
}

/// Opens the ledger for `access`.
pub(crate) async fn open(
    state: Option<String>,
    access: Access,
) -> Result<(Arc<dyn Store>, Place), u8> {
    let place = Place::from_args(state);
    if !place.exists() {
        return Err(crate::render::fail(format!(
            "no ledger at {place}; run `godwit migrate` first, or pass --state"
        )));
    }
    let opened = match access {
        Access::Read => place.open_to_read().await,
        Access::Control => place.open_to_control().await,
        Access::Write => place.open().await,
    };
    match opened {
        Ok(store) => Ok((store, place)),
        Err(error) => Err(crate::render::fail(error)),
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<u8> {
    let (store, path) = match open(args.ledger.state, Access::Read).await {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let mut rows = Vec::new();
    for migration in store.migrations().await? {
        let tally = store.tally(migration.id).await?;
        let counts: serde_json::Map<String, serde_json::Value> = ObjectState::ALL
            .iter()
            .map(|state| (state.as_str().to_owned(), tally.n(*state).into()))
            .collect();
        if !args.json {
            let status = match migration.status {
                MigrationStatus::Running => String::new(),
                other => format!(" [{}]", other.as_str().to_uppercase()),
            };
            println!(
                "{}{status}\n  {} | pass {} | {}, {}",
                migration.spec.name,
                migration.spec.describe(),
                migration.last_pass.as_ref().map_or(0, |p| p.number),
                crate::render::objects(tally.n_total()),
                bytes(tally.bytes_total())
            );
            let line: Vec<String> = ObjectState::ALL
                .iter()
                .filter(|state| tally.n(**state) > 0)
                .map(|state| format!("{} {}", state.as_str(), tally.n(*state)))
                .collect();
            println!("  {}", line.join(", "));
        }
        let partitions = store.partitions(migration.id).await?;
        if !args.json
            && partitions
                .iter()
                .any(|p| p.name.is_some() || p.checkpoints.validated_at.is_some())
        {
            for partition in &partitions {
                let done = partition.tally.n_total()
                    - partition.tally.n(ObjectState::Pending)
                    - partition.tally.n(ObjectState::InProgress);
                println!(
                    "  partition {} [{}]: {done} of {} objects ended ({} copied), {}",
                    partition.name.as_deref().unwrap_or("-"),
                    partition.state().as_str(),
                    partition.tally.n_total(),
                    partition.tally.n(ObjectState::Copied),
                    bytes(partition.tally.bytes_total())
                );
            }
        }
        let partitions: Vec<serde_json::Value> = partitions
            .iter()
            .map(|partition| {
                let counts: serde_json::Map<String, serde_json::Value> = ObjectState::ALL
                    .iter()
                    .map(|state| (state.as_str().to_owned(), partition.tally.n(*state).into()))
                    .collect();
                serde_json::json!({
                    "name": partition.name,
                    "state": partition.state(),
                    "objects": counts,
                    "bytes": partition.tally.bytes_total(),
                    "cut_over": partition.checkpoints.cut_over_at.is_some(),
                    "checkpoints": partition.checkpoints,
                })
            })
            .collect();
        rows.push(serde_json::json!({
            "name": migration.spec.name,
            "source": migration.spec.source_url,
            "dest": migration.spec.dest_url,
            "source_endpoint": migration.spec.source_endpoint,
            "dest_endpoint": migration.spec.dest_endpoint,
            "pass": migration.last_pass.as_ref().map(|p| p.number),
            "status": migration.status,
            "objects": counts,
            "bytes": tally.bytes_total(),
            "partitions": partitions,
        }));
    }
    let workers = store.workers().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if args.json {
        let workers: Vec<serde_json::Value> = workers
            .iter()
            .map(|worker| {
                let mut value = serde_json::to_value(worker).unwrap_or_default();
                value["alive"] = (now - worker.heartbeat_at <= GONE_AFTER).into();
                value
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "ledger": path.to_string(), "migrations": rows, "workers": workers })
        );
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        println!("no migrations in {path}");
    }
    show_workers(&workers, now);
    Ok(exit::OK)
}

/// The workers heard from lately, one line each, and how many went quiet.
fn show_workers(workers: &[WorkerRecord], now: i64) {
    let (alive, gone): (Vec<&WorkerRecord>, Vec<&WorkerRecord>) = workers
        .iter()
        .partition(|worker| now - worker.heartbeat_at <= GONE_AFTER);
    if !alive.is_empty() {
        println!("workers");
    }
    for worker in alive {
        let beat = &worker.beat;
        let doing = match &beat.migration {
            Some(migration) => format!(
                "on '{migration}': {} packets, {} objects in flight, {}/s",
                beat.packets_in_flight,
                beat.objects_in_flight,
                bytes(beat.bytes_per_second)
            ),
            None => "idle".to_owned(),
        };
        println!(
            "  {} pid {} up {}, heard {} ago; {doing}",
            beat.host,
            beat.pid,
            duration((now - beat.started_at).max(0) as f64),
            duration((now - worker.heartbeat_at).max(0) as f64),
        );
    }
    if !gone.is_empty() {
        println!(
            "{} workers not heard from for over {GONE_AFTER}s (stopped, or cut off from the ledger)",
            gone.len()
        );
    }
}

/// `godwit pause`, `resume`, `cancel`: sets the migration's status, which every worker reads
/// about once a second.
pub async fn control(args: ControlArgs, status: MigrationStatus) -> anyhow::Result<u8> {
    let (store, _) = match open(args.ledger.state, Access::Control).await {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let migration = match pick(store.as_ref(), args.name.as_deref()).await? {
        Ok(migration) => migration,
        Err(code) => return Ok(code),
    };
    let name = &migration.spec.name;
    if migration.status == status {
        println!("migration '{name}' is already {}", status.as_str());
        return Ok(exit::OK);
    }
    store.set_status(migration.id, status).await?;
    match status {
        MigrationStatus::Paused => println!(
            "migration '{name}' paused: workers finish the objects in flight and take no new ones (within seconds); `godwit resume '{name}'` goes on"
        ),
        MigrationStatus::Cancelled => println!(
            "migration '{name}' cancelled: workers finish the objects in flight and take no new ones (within seconds), a running migrate ends; `godwit resume '{name}'` and migrate again to go on"
        ),
        MigrationStatus::Running => {
            println!("migration '{name}' resumed: workers take its objects again");
            if migration.last_pass.is_some_and(|pass| !pass.scan_complete) {
                println!("its scan had not finished: run its migrate command again to finish it");
            }
        }
    }
    Ok(exit::OK)
}

/// The migration named `name`, or the ledger's only one when no name is given; a message and
/// the exit code otherwise.
pub(crate) async fn pick(
    store: &dyn Store,
    name: Option<&str>,
) -> anyhow::Result<Result<Migration, u8>> {
    let migrations: Vec<Migration> = store.migrations().await?;
    Ok(match name {
        Some(name) => {
            // The name, else a unique beginning of one: names are long ("SOURCE -> DEST").
            let mut found: Vec<Migration> =
                match migrations.iter().position(|m| m.spec.name == name) {
                    Some(at) => vec![migrations[at].clone()],
                    None => migrations
                        .into_iter()
                        .filter(|m| m.spec.name.starts_with(name))
                        .collect(),
                };
            match found.len() {
                1 => Ok(found.remove(0)),
                0 => Err(crate::render::fail(format!(
                    "no migration named '{name}' (nor one whose name begins so); `godwit status` lists them"
                ))),
                n => {
                    let names: Vec<String> = found
                        .iter()
                        .map(|m| crate::render::quoted(&m.spec.name))
                        .collect();
                    Err(crate::render::fail(format!(
                        "'{name}' begins the names of {n} migrations ({}): give more of the name",
                        names.join(", ")
                    )))
                }
            }
        }
        None if migrations.len() == 1 => Ok(migrations.into_iter().next().expect("one migration")),
        None => Err(crate::render::fail(format!(
            "the ledger holds {} migrations: name one (`godwit status` lists them)",
            migrations.len()
        ))),
    })
}

pub async fn retry_failed(args: RetryArgs) -> anyhow::Result<u8> {
    let (store, _) = match open(args.ledger.state, Access::Write).await {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let migration = match pick(store.as_ref(), args.name.as_deref()).await? {
        Ok(migration) => migration,
        Err(code) => return Ok(code),
    };
    let n = store
        .requeue_failed(migration.id, args.class.as_deref())
        .await?;
    println!("{n} failed objects queued again; run the migrate command again to retry them");
    Ok(exit::OK)
}

pub async fn failed(args: FailedArgs) -> anyhow::Result<u8> {
    let (store, _) = match open(args.ledger.state, Access::Read).await {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let migration = match pick(store.as_ref(), args.name.as_deref()).await? {
        Ok(migration) => migration,
        Err(code) => return Ok(code),
    };
    let page = store
        .failed(
            migration.id,
            args.class.as_deref(),
            args.after.map(godwit_state::ObjectId),
            args.limit,
        )
        .await?;
    let next = (page.len() == args.limit as usize)
        .then(|| page.last().map(|f| f.id))
        .flatten();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "migration": migration.spec.name, "failed": page, "next": next })
        );
        return Ok(exit::OK);
    }
    if page.is_empty() {
        println!("no failed objects in '{}'", migration.spec.name);
    }
    for failure in &page {
        println!(
            "{:>8}  {:<18} {} attempts  {}: {}",
            failure.id,
            failure.class.as_deref().unwrap_or("-"),
            failure.attempts,
            failure.key,
            failure.error.as_deref().unwrap_or("no reason recorded")
        );
    }
    if let Some(next) = next {
        println!("more: godwit failed --after {next}");
    }
    Ok(exit::OK)
}
