//! `godwit status` and `godwit retry-failed`: read or nudge the ledger.

use std::sync::Arc;

use godwit_state::{Migration, ObjectState, Store};

use crate::cli::{FailedArgs, RetryArgs, StatusArgs};
use crate::exit;
use crate::ledger::Place;
use crate::render::bytes;

/// Opens the ledger: to read it (`status`: no lock, so it works while a migration runs), or to
/// change it.
async fn open(state: Option<String>, read_only: bool) -> Result<(Arc<dyn Store>, Place), u8> {
    let place = Place::from_args(state);
    if !place.exists() {
        eprintln!("godwit: no ledger at {place}; run `godwit migrate` first, or pass --state");
        return Err(exit::CONFIG);
    }
    let opened = if read_only {
        place.open_to_read().await
    } else {
        place.open().await
    };
    match opened {
        Ok(store) => Ok((store, place)),
        Err(error) => {
            eprintln!("godwit: {error}");
            Err(exit::CONFIG)
        }
    }
}

pub async fn run(args: StatusArgs) -> anyhow::Result<u8> {
    let (store, path) = match open(args.ledger.state, true).await {
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
            println!(
                "{}\n  {} | pass {} | {} objects, {}",
                migration.spec.name,
                migration.spec.describe(),
                migration.last_pass.as_ref().map_or(0, |p| p.number),
                tally.n_total(),
                bytes(tally.bytes_total())
            );
            let line: Vec<String> = ObjectState::ALL
                .iter()
                .filter(|state| tally.n(**state) > 0)
                .map(|state| format!("{} {}", state.as_str(), tally.n(*state)))
                .collect();
            println!("  {}", line.join(", "));
        }
        rows.push(serde_json::json!({
            "name": migration.spec.name,
            "source": migration.spec.source_url,
            "dest": migration.spec.dest_url,
            "source_endpoint": migration.spec.source_endpoint,
            "dest_endpoint": migration.spec.dest_endpoint,
            "pass": migration.last_pass.as_ref().map(|p| p.number),
            "objects": counts,
            "bytes": tally.bytes_total(),
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "ledger": path.to_string(), "migrations": rows })
        );
    } else if rows.is_empty() {
        println!("no migrations in {path}");
    }
    Ok(exit::OK)
}

/// The migration named `name`, or the ledger's only one when no name is given; a message and
/// the exit code otherwise.
async fn pick(store: &dyn Store, name: Option<&str>) -> anyhow::Result<Result<Migration, u8>> {
    let migrations: Vec<Migration> = store.migrations().await?;
    Ok(match name {
        Some(name) => match migrations.into_iter().find(|m| m.spec.name == name) {
            Some(migration) => Ok(migration),
            None => {
                eprintln!("godwit: no migration named '{name}'; `godwit status` lists them");
                Err(exit::CONFIG)
            }
        },
        None if migrations.len() == 1 => Ok(migrations.into_iter().next().expect("one migration")),
        None => {
            eprintln!(
                "godwit: the ledger holds {} migrations: name one (`godwit status` lists them)",
                migrations.len()
            );
            Err(exit::CONFIG)
        }
    })
}

pub async fn retry_failed(args: RetryArgs) -> anyhow::Result<u8> {
    let (store, _) = match open(args.ledger.state, false).await {
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
    let (store, _) = match open(args.ledger.state, true).await {
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
