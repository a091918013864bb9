//! What a run tells a metrics recorder, through the `metrics` facade.
//!
//! The engine only records; a process that wants the figures installs a recorder (`godwit serve`,
//! `migrate --metrics-listen`: Prometheus). Without one, each call is a no-op on a global that is
//! never set, so the single-machine path pays nothing for them.
//!
//! Two kinds of figure:
//! - events this process saw, as counters and histograms: objects finished by state, bytes
//!   copied, transfer latency, retries by error class, throttled answers, ledger commit latency;
//! - the ledger's state, as gauges set by [`observe_ledger`] now and then: objects and bytes by
//!   state per migration, the queue depth, the active workers. Every process reading one ledger
//!   reports the same gauges; sum the counters, not the gauges, across a fleet.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use godwit_state::{ObjectState, Store, StoreError, Tally, WorkerRecord};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Objects that reached a terminal state in this process (`state` label).
pub const OBJECTS_FINISHED: &str = "godwit_objects_finished_total";
/// Bytes this process copied into the destination.
pub const BYTES_COPIED: &str = "godwit_bytes_copied_total";
/// Seconds from taking an object to its outcome, retries included.
pub const TRANSFER_SECONDS: &str = "godwit_transfer_duration_seconds";
/// Attempts that failed and were tried again (`class` label: the error's class).
pub const RETRIES: &str = "godwit_retries_total";
/// Answers that asked godwit to slow down (503 SlowDown and the like).
pub const THROTTLED: &str = "godwit_throttled_total";
/// Seconds one batch of outcomes took to commit in the ledger.
pub const LEDGER_COMMIT_SECONDS: &str = "godwit_ledger_commit_duration_seconds";
/// Objects in the ledger by `migration` and `state`.
pub const OBJECTS: &str = "godwit_objects";
/// Bytes in the ledger by `migration` and `state`.
pub const BYTES: &str = "godwit_bytes";
/// Objects waiting to be taken, by `migration`.
pub const QUEUE_DEPTH: &str = "godwit_queue_depth";
/// Workers whose heartbeat is recent.
pub const ACTIVE_WORKERS: &str = "godwit_active_workers";

/// A worker whose last heartbeat is older than this is not counted active (as `godwit status`).
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(30);

/// The buckets of [`TRANSFER_SECONDS`]: from a small object on loopback to a large one on a slow
/// link.
pub const TRANSFER_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
];

/// The buckets of [`LEDGER_COMMIT_SECONDS`].
pub const LEDGER_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Describes every figure to the installed recorder (its `# HELP` lines). Call once after
/// installing it.
pub fn describe() {
    describe_counter!(
        OBJECTS_FINISHED,
        "Objects that reached a terminal state in this process, by state."
    );
    describe_counter!(BYTES_COPIED, Unit::Bytes, "Bytes this process copied.");
    describe_histogram!(
        TRANSFER_SECONDS,
        Unit::Seconds,
        "Time from taking an object to its outcome, retries included."
    );
    describe_counter!(RETRIES, "Attempts tried again, by error class.");
    describe_counter!(THROTTLED, "Answers that asked to slow down.");
    describe_histogram!(
        LEDGER_COMMIT_SECONDS,
        Unit::Seconds,
        "Time one batch of outcomes took to commit in the ledger."
    );
    describe_gauge!(OBJECTS, "Objects in the ledger, by migration and state.");
    describe_gauge!(
        BYTES,
        Unit::Bytes,
        "Bytes in the ledger, by migration and state."
    );
    describe_gauge!(QUEUE_DEPTH, "Objects waiting to be taken, by migration.");
    describe_gauge!(ACTIVE_WORKERS, "Workers with a recent heartbeat.");
}

/// One object's transfer ended after `took`.
pub(crate) fn transfer_took(took: Duration) {
    histogram!(TRANSFER_SECONDS).record(took.as_secs_f64());
}

/// An attempt failed with an error of `class` and is tried again.
pub(crate) fn retried(class: &'static str) {
    counter!(RETRIES, "class" => class).increment(1);
}

/// An answer asked to slow down.
pub(crate) fn throttled() {
    counter!(THROTTLED).increment(1);
}

/// A batch of outcomes committed in `took`: `finished` objects per state (indexed by
/// `ObjectState as usize`) and `copied` bytes.
pub(crate) fn committed(took: Duration, finished: &[u64; 8], copied: u64) {
    histogram!(LEDGER_COMMIT_SECONDS).record(took.as_secs_f64());
    for state in ObjectState::ALL {
        let n = finished[state as usize];
        if n > 0 {
            counter!(OBJECTS_FINISHED, "state" => state.as_str()).increment(n);
        }
    }
    if copied > 0 {
        counter!(BYTES_COPIED).increment(copied);
    }
}

/// Sets the gauges of one migration from its counts.
pub fn observe_tally(migration: &str, tally: &Tally) {
    for state in ObjectState::ALL {
        let labels = [
            ("migration", migration.to_owned()),
            ("state", state.as_str().to_owned()),
        ];
        gauge!(OBJECTS, &labels).set(tally.n(state) as f64);
        gauge!(BYTES, &labels).set(tally.bytes_in(state) as f64);
    }
    gauge!(QUEUE_DEPTH, "migration" => migration.to_owned())
        .set(tally.n(ObjectState::Pending) as f64);
}

/// Sets the active-worker gauge from the ledger's worker rows.
pub fn observe_workers(workers: &[WorkerRecord]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let active = workers
        .iter()
        .filter(|w| now - w.heartbeat_at <= ACTIVE_WITHIN.as_secs() as i64)
        .count();
    gauge!(ACTIVE_WORKERS).set(active as f64);
}

/// Sets every gauge from the ledger: each migration's counts (kept by the ledger, not counted)
/// and the workers' heartbeats.
pub async fn observe_ledger(store: &dyn Store) -> Result<(), StoreError> {
    for migration in store.migrations().await? {
        let tally = store.tally(migration.id).await?;
        observe_tally(&migration.spec.name, &tally);
    }
    observe_workers(&store.workers().await?);
    Ok(())
}
