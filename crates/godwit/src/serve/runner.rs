//! The server's in-process workers: every two seconds (or at once when the API changed
//! something), each migration that needs work and is not being worked on here gets a task of its
//! own, as a `godwit worker` would run it. A task's claims and heartbeat row carry the process's
//! worker name and the migration's id, so the dashboard tells which migration each works on.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::worker::{Run, RunError, work_for};

/// How long the workers wait before looking at the ledger again, unless woken.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Runs until `stop`, then waits for its tasks to finish (objects in flight finish; claims go
/// back to the queue).
pub async fn run(state: AppState, worker: String, lease: Duration, stop: CancellationToken) {
    let store = state.store();
    let mut tasks: HashMap<i64, JoinHandle<()>> = HashMap::new();
    while !stop.is_cancelled() {
        tasks.retain(|_, task| !task.is_finished());
        match store.migrations().await {
            Ok(migrations) => {
                for migration in migrations {
                    let id = migration.id.0;
                    if tasks.contains_key(&id) {
                        continue;
                    }
                    let work = match work_for(store.as_ref(), &migration).await {
                        Ok(Some(work)) => work,
                        Ok(None) => continue,
                        Err(error) => {
                            tracing::warn!("the workers cannot read the ledger: {error}");
                            break;
                        }
                    };
                    let run = Run {
                        store: state.store(),
                        worker: format!("{worker}#{id}"),
                        lease,
                        stop: stop.clone(),
                        credentials: state.credentials(),
                    };
                    let state = state.clone();
                    let stop = stop.clone();
                    tasks.insert(
                        id,
                        tokio::spawn(async move {
                            let name = migration.spec.name.clone();
                            match run.on(&migration, work).await {
                                Ok(summary) => {
                                    state.set_note(id, None);
                                    tracing::info!(
                                        "migration '{name}': copied {}; {} pending",
                                        crate::render::objects(summary.copied_this_run),
                                        summary.pending
                                    );
                                }
                                Err(RunError::Refused(reason) | RunError::Failed(reason)) => {
                                    eprintln!("godwit: migration '{name}': {reason}");
                                    state.set_note(id, Some(reason));
                                    // Not again at once: the next look may find it fixed.
                                    tokio::select! {
                                        () = tokio::time::sleep(Duration::from_secs(10)) => {}
                                        () = stop.cancelled() => {}
                                    }
                                }
                            }
                        }),
                    );
                }
            }
            Err(error) => tracing::warn!("the workers cannot read the ledger: {error}"),
        }
        tokio::select! {
            () = tokio::time::sleep(LOOK_EVERY) => {}
            () = state.inner.wake.notified() => {}
            () = stop.cancelled() => {}
        }
    }
    for (id, task) in tasks {
        let _ = task.await;
        // Claims left by a task that could not hand them back (its ledger failed) go back now.
        if let Err(error) = store.release_claims(&format!("{worker}#{id}")).await {
            tracing::warn!("could not hand back the claims of migration {id}: {error}");
        }
    }
}
