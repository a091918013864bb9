//! An endpoint that stops answering is one outage, not thousands of object failures.
//!
//! When a transfer meets an unreachable endpoint, the run looks at both sides (their `check`).
//! If they answer, it was one failed request: the attempt counts as usual. If not, the run is in
//! an outage: it takes no new packets, says so, probes the sides with a growing pause, and goes
//! on when they answer, charging no object an attempt for it. One transfer probes; the others
//! wait for its verdict. Past the endpoint timeout the run stops (exit 2), every object it holds
//! going back to the queue as it was.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use godwit_storage::{Destination, Source};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// What the run knows of its endpoints' health.
pub(crate) struct Outage {
    source: Arc<dyn Source>,
    dest: Arc<dyn Destination>,
    /// How long an outage may last before the run gives up.
    timeout: Duration,
    /// Held by the transfer that probes.
    probing: Mutex<()>,
    /// Whether an outage is on (no new packets meanwhile).
    down: AtomicBool,
    /// How many outages the run came through: a transfer that failed during one of them is not
    /// charged an attempt.
    weathered: AtomicU64,
    /// Why the run gave up, when it did.
    gave_up: std::sync::Mutex<Option<String>>,
    halt: CancellationToken,
}

/// What a transfer that met an unreachable endpoint should make of it.
pub(crate) enum Verdict {
    /// The endpoint answers: one request failed; count the attempt.
    Charge,
    /// There was an outage, and it is over: try again, uncharged.
    Retry,
    /// The outage outlasted the timeout: the run is stopping; hand the object back.
    GiveUp,
}

/// The first pause between probes, and the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(10);

impl Outage {
    pub(crate) fn new(
        source: Arc<dyn Source>,
        dest: Arc<dyn Destination>,
        timeout: Duration,
        halt: CancellationToken,
    ) -> Self {
        Self {
            source,
            dest,
            timeout,
            probing: Mutex::new(()),
            down: AtomicBool::new(false),
            weathered: AtomicU64::new(0),
            gave_up: std::sync::Mutex::new(None),
            halt,
        }
    }

    /// A mark to hand back to [`Outage::weather`]: outages weathered before the request.
    pub(crate) fn mark(&self) -> u64 {
        self.weathered.load(Ordering::Acquire)
    }

    /// Whether an outage is on.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Why the run gave up on its endpoints, if it did.
    pub(crate) fn gave_up(&self) -> Option<String> {
        self.gave_up.lock().ok().and_then(|reason| reason.clone())
    }

    async fn sides_answer(&self) -> bool {
        let (source, dest) = tokio::join!(self.source.check(), self.dest.check());
        source.is_ok() && dest.is_ok()
    }

    /// Judges a request that met an unreachable endpoint (`why`), made after `mark`.
    pub(crate) async fn weather(&self, mark: u64, why: &str) -> Verdict {
        let _probe = self.probing.lock().await;
        if self.gave_up().is_some() {
            return Verdict::GiveUp;
        }
        if self.weathered.load(Ordering::Acquire) > mark {
            // Another transfer came through an outage since this request: it was part of it.
            return Verdict::Retry;
        }
        if self.sides_answer().await {
            return Verdict::Charge;
        }
        self.down.store(true, Ordering::Release);
        tracing::warn!(
            "an endpoint stopped answering ({why}); no new objects are taken while godwit waits for it (up to {}s)",
            self.timeout.as_secs()
        );
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        loop {
            if self.halt.is_cancelled() {
                self.down.store(false, Ordering::Release);
                return Verdict::GiveUp;
            }
            if started.elapsed() >= self.timeout {
                let reason = format!(
                    "an endpoint has not answered for {}s ({why}); every object not yet copied is queued for the next run",
                    started.elapsed().as_secs()
                );
                tracing::error!("{reason}");
                if let Ok(mut gave_up) = self.gave_up.lock() {
                    *gave_up = Some(reason);
                }
                self.down.store(false, Ordering::Release);
                self.halt.cancel();
                return Verdict::GiveUp;
            }
            tokio::select! {
                () = tokio::time::sleep(pause.min(self.timeout.saturating_sub(started.elapsed()))) => {}
                () = self.halt.cancelled() => {}
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
            if self.sides_answer().await {
                break;
            }
        }
        tracing::warn!(
            "the endpoints answer again after {:.1}s; going on",
            started.elapsed().as_secs_f64()
        );
        self.weathered.fetch_add(1, Ordering::AcqRel);
        self.down.store(false, Ordering::Release);
        Verdict::Retry
    }
}
