//! Control from outside a run, and what a run says of itself.
//!
//! `godwit pause`, `resume` and `cancel` set a migration's status in the ledger. Every run reads
//! it about once a second: paused or cancelled, it takes no new objects and lets the ones in
//! flight finish (see `dispatch`). With the same tick the run writes its heartbeat row, which
//! `godwit status` (and the dashboard) show: the migration it works on, packets and objects in
//! flight, bytes a second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use godwit_state::{MigrationId, MigrationStatus, Store, WorkerBeat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;

/// Throttling news between this run's steering task and the fleet (through the ledger).
#[derive(Debug, Default)]
pub(crate) struct Throttling {
    /// Set by the steering task when this run backed off from throttling it met: the control
    /// task tells the fleet.
    pub met: AtomicBool,
    /// Set by the control task when another worker told of throttling: the steering task backs
    /// off too.
    pub told: AtomicBool,
}

/// How often a run reads its migration's status and writes its heartbeat row.
pub(crate) const CONTROL_TICK: Duration = Duration::from_secs(1);

/// This process, as worker rows name it.
struct Process {
    host: String,
    pid: u32,
    /// Seconds since the Unix epoch.
    started_at: i64,
    started_ms: u128,
}

fn process() -> &'static Process {
    static PROCESS: OnceLock<Process> = OnceLock::new();
    PROCESS.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "host".to_owned());
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Process {
            host,
            pid: std::process::id(),
            started_at: since_epoch.as_secs() as i64,
            started_ms: since_epoch.as_millis(),
        }
    })
}

/// A name for this process in leases and worker rows: host, process id and start time.
pub fn worker_name() -> String {
    let process = process();
    format!("{}:{}:{}", process.host, process.pid, process.started_ms)
}

/// What a worker named `name` says of itself now: working on `migration` with these counters
/// (or idle, with none).
pub fn worker_beat(
    name: &str,
    migration: Option<&str>,
    progress: Option<&Progress>,
    bytes_per_second: u64,
) -> WorkerBeat {
    let process = process();
    WorkerBeat {
        name: name.to_owned(),
        host: process.host.clone(),
        pid: process.pid,
        started_at: process.started_at,
        migration: migration.map(str::to_owned),
        packets_in_flight: progress.map_or(0, |p| Progress::get(&p.packets_in_flight)),
        objects_in_flight: progress.map_or(0, |p| Progress::get(&p.objects_in_flight)),
        bytes_per_second,
    }
}

/// Reads the migration's status into `status`, passes throttling news both ways, and writes this
/// worker's heartbeat row, every tick until the run halts. Ledger errors are logged and the last
/// status kept: the outcome writer is what stops a run whose ledger failed.
pub(crate) async fn control(
    store: Arc<dyn Store>,
    migration: (MigrationId, String),
    worker: String,
    progress: Arc<Progress>,
    status: watch::Sender<MigrationStatus>,
    throttling: Arc<Throttling>,
    halt: CancellationToken,
) {
    let (id, name) = migration;
    // The latest throttling note seen (the first read sets it: older news is not news), and the
    // latest this run wrote (not news to itself).
    let mut seen: Option<Option<SystemTime>> = None;
    let mut mine: Option<SystemTime> = None;
    let mut ticker = tokio::time::interval(CONTROL_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), Progress::get(&progress.bytes_sent));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = halt.cancelled() => return,
        }
        match store.control_of(id).await {
            Ok(state) => {
                let now = state.status;
                if let Some(before) = seen
                    && state.throttled_at > before
                    && state.throttled_at != mine
                {
                    tracing::info!(
                        "another worker of '{name}' is being throttled: fewer objects in flight here too"
                    );
                    throttling.told.store(true, Ordering::Relaxed);
                }
                seen = Some(state.throttled_at);
                status.send_if_modified(|current| {
                    let changed = *current != now;
                    if changed {
                        tracing::info!("migration '{name}' is {} now", now.as_str());
                    }
                    *current = now;
                    changed
                });
            }
            Err(error) => tracing::warn!("could not read the migration's status: {error}"),
        }
        if throttling.met.swap(false, Ordering::Relaxed) {
            let at = SystemTime::now();
            match store.note_throttled(id, at).await {
                Ok(()) => mine = Some(at),
                Err(error) => tracing::warn!("could not tell the fleet of throttling: {error}"),
            }
        }
        let sent = Progress::get(&progress.bytes_sent);
        let elapsed = last.0.elapsed().as_secs_f64().max(0.001);
        let rate = (sent.saturating_sub(last.1) as f64 / elapsed) as u64;
        last = (Instant::now(), sent);
        let beat = worker_beat(&worker, Some(&name), Some(&progress), rate);
        if let Err(error) = store.beat(&beat).await {
            tracing::warn!("could not write this worker's heartbeat row: {error}");
        }
    }
}
