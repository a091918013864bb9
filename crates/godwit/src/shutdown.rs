//! Ctrl-C and SIGTERM. The first stops cleanly: objects in flight finish, claimed ones not yet
//! started go back to the pool. The second quits at once, handing every claim this process holds
//! back to the pool first, so other workers (or the next run) take them without waiting for the
//! lease to run out. Either way the ledger is crash-safe: a `kill -9` loses nothing either.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use godwit_state::Store;
use tokio_util::sync::CancellationToken;

use crate::exit;

/// How long the second signal waits for the ledger to take the claims back before quitting
/// anyway (their leases then run out as after a crash).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The signals' effect on this process.
pub struct Shutdown {
    stop: CancellationToken,
    holder: Arc<OnceLock<(Arc<dyn Store>, String)>>,
}

impl Shutdown {
    /// Starts listening for Ctrl-C and SIGTERM.
    pub fn watch() -> Self {
        let shutdown = Self {
            stop: CancellationToken::new(),
            holder: Arc::new(OnceLock::new()),
        };
        tokio::spawn(listen(shutdown.stop.clone(), Arc::clone(&shutdown.holder)));
        shutdown
    }

    /// Cancelled by the first signal.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// From now on, the second signal releases the claims `worker` holds in `store`.
    pub fn holds_claims_in(&self, store: Arc<dyn Store>, worker: String) {
        let _ = self.holder.set((store, worker));
    }
}

async fn listen(stop: CancellationToken, holder: Arc<OnceLock<(Arc<dyn Store>, String)>>) {
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    let mut signal = async || {
        tokio::select! {
            answer = tokio::signal::ctrl_c() => answer.is_ok(),
            received = terminate.recv() => received.is_some(),
        }
    };
    if !signal().await {
        return;
    }
    eprintln!(
        "\ngodwit: stopping: finishing the objects in flight (Ctrl-C again to quit at once; a re-run resumes)"
    );
    stop.cancel();
    if !signal().await {
        return;
    }
    if let Some((store, worker)) = holder.get() {
        match tokio::time::timeout(RELEASE_TIMEOUT, store.release_claims(worker)).await {
            Ok(Ok(released)) => {
                eprintln!("godwit: quitting now: {released} claimed objects handed back")
            }
            Ok(Err(error)) => eprintln!(
                "godwit: quitting now; the claims could not be handed back ({error}): they return when their lease runs out"
            ),
            Err(_) => eprintln!(
                "godwit: quitting now; the ledger did not answer in time: the claims return when their lease runs out"
            ),
        }
    }
    std::process::exit(i32::from(exit::INTERRUPTED));
}
