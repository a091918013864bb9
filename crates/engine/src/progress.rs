//! Live counters of a run, read by progress bars and (later) the dashboard.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What a run has done so far. Writers only add; readers take a consistent-enough snapshot.
#[derive(Debug, Default)]
pub struct Progress {
    /// Objects the scan found (excluded ones included).
    pub n_scanned: AtomicU64,
    /// Their bytes.
    pub bytes_scanned: AtomicU64,
    /// Set once the scan has gone through the whole source (or no scan was needed).
    pub scan_complete: AtomicBool,
    /// Objects waiting or in flight when the work became known in full: the run's target.
    pub n_to_do: AtomicU64,
    /// Their bytes.
    pub bytes_to_do: AtomicU64,
    /// Objects that reached a terminal state in this run.
    pub n_done: AtomicU64,
    /// Bytes of objects that reached a terminal state in this run.
    pub bytes_done: AtomicU64,
    /// Bytes in the finished parts of multipart uploads whose objects are still in flight: the
    /// bar moves with them before such an object is done (see [`InParts`]).
    pub bytes_in_parts: AtomicU64,
    /// Bytes sent to the destination, counted as parts finish (for the rate).
    pub bytes_sent: AtomicU64,
    /// Objects copied and verified in this run.
    pub n_copied: AtomicU64,
    /// Their bytes.
    pub bytes_copied: AtomicU64,
    /// Objects the destination copied server-side in this run (counted among `n_copied`).
    pub n_copied_server_side: AtomicU64,
    /// godwit's own earlier copies (of objects that changed at the source) replaced in this run.
    pub n_replaced: AtomicU64,
    /// Objects that ended in conflict or failed in this run.
    pub n_problems: AtomicU64,
    /// Answers of an endpoint asking to slow down (503 SlowDown, 429, 500) that reached the run
    /// (beyond the SDK's own retries).
    pub n_throttled: AtomicU64,
    /// Times the run halved its objects in flight because an endpoint was throttling it or
    /// another worker of the fleet.
    pub n_backoffs: AtomicU64,
    /// Groups whose members all ended well in this run, recorded together.
    pub n_groups_committed: AtomicU64,
    /// Groups rolled back in this run (a member failed: what the attempt created taken back).
    pub n_groups_rolled_back: AtomicU64,
    /// Groups handed back to the queue whole in this run (a member came back unfinished).
    pub n_groups_released: AtomicU64,
    /// Objects being copied now.
    pub objects_in_flight: AtomicU64,
    /// Packets with objects being copied now.
    pub packets_in_flight: AtomicU64,
}

impl Progress {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One object's share of [`Progress::bytes_in_parts`]: set as its upload's parts finish, taken
/// back out when the object leaves the transfer (its bytes then count in `bytes_done`).
#[derive(Debug)]
pub(crate) struct InParts {
    progress: Arc<Progress>,
    bytes: u64,
}

impl InParts {
    pub(crate) fn new(progress: Arc<Progress>) -> Self {
        Self { progress, bytes: 0 }
    }

    /// The object's upload now holds `bytes` in finished parts.
    pub(crate) fn set(&mut self, bytes: u64) {
        let counter = &self.progress.bytes_in_parts;
        if bytes >= self.bytes {
            counter.fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            counter.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }
}

impl Drop for InParts {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_objects_parts_count_while_it_is_in_flight_and_not_after() {
        let progress = Arc::new(Progress::default());
        let mut first = InParts::new(Arc::clone(&progress));
        let mut second = InParts::new(Arc::clone(&progress));
        first.set(16);
        second.set(5);
        first.set(32);
        assert_eq!(Progress::get(&progress.bytes_in_parts), 37);
        // A new upload starts over from fewer parts.
        second.set(0);
        assert_eq!(Progress::get(&progress.bytes_in_parts), 32);
        drop(first);
        assert_eq!(Progress::get(&progress.bytes_in_parts), 0);
        drop(second);
        assert_eq!(Progress::get(&progress.bytes_in_parts), 0);
    }
}
