//! Throughput over time: every few seconds the server reads each migration's counts (maintained
//! by the ledger, so a read does not grow with the migration) and keeps the last hour of them in
//! memory, for the chart, the rates and the ETA.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use godwit_state::{ObjectState, Tally};
use serde::Serialize;
use utoipa::ToSchema;

/// How often the sampler reads the ledger, in milliseconds.
pub const EVERY_MS: u64 = 2_000;
/// Samples kept per migration (an hour at one every two seconds).
const KEPT: usize = 1_800;
/// The window rates are measured over, in milliseconds.
const RATE_WINDOW_MS: i64 = 30_000;

/// A migration's progress at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Sample {
    /// When (milliseconds since the Unix epoch).
    pub at: i64,
    /// Objects that reached a terminal state (excluded ones left out).
    pub done_objects: u64,
    /// Their bytes.
    pub done_bytes: u64,
}

impl Sample {
    /// The sample of `tally` at `at`.
    pub fn of(tally: &Tally, at: i64) -> Self {
        let (done_objects, done_bytes) = done(tally);
        Self {
            at,
            done_objects,
            done_bytes,
        }
    }
}

/// Objects and bytes to migrate: all found but the excluded.
pub fn total(tally: &Tally) -> (u64, u64) {
    (
        tally.n_total() - tally.n(ObjectState::Excluded),
        tally.bytes_total() - tally.bytes_in(ObjectState::Excluded),
    )
}

/// Objects and bytes of those that ended (well or not).
pub fn done(tally: &Tally) -> (u64, u64) {
    let (objects, bytes) = total(tally);
    let open = [ObjectState::Pending, ObjectState::InProgress];
    (
        objects - open.iter().map(|s| tally.n(*s)).sum::<u64>(),
        bytes - open.iter().map(|s| tally.bytes_in(*s)).sum::<u64>(),
    )
}

/// Rates measured over the last samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Rate {
    /// Objects ended per second.
    pub objects_per_second: f64,
    /// Bytes ended per second.
    pub bytes_per_second: f64,
}

/// The samples of every migration.
#[derive(Debug, Default)]
pub struct Samples {
    by_migration: Mutex<HashMap<i64, VecDeque<Sample>>>,
}

impl Samples {
    /// Keeps `sample` for migration `id`.
    pub fn record(&self, id: i64, sample: Sample) {
        let mut all = self.by_migration.lock().unwrap_or_else(|e| e.into_inner());
        let samples = all.entry(id).or_default();
        if samples.back().is_some_and(|last| last.at >= sample.at) {
            return;
        }
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every sample kept of migration `id`, oldest first.
    pub fn history(&self, id: i64) -> Vec<Sample> {
        let all = self.by_migration.lock().unwrap_or_else(|e| e.into_inner());
        all.get(&id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Migration `id`'s rate over the last half minute of samples, once two are a second apart.
    pub fn rate(&self, id: i64) -> Option<Rate> {
        let all = self.by_migration.lock().unwrap_or_else(|e| e.into_inner());
        let samples = all.get(&id)?;
        let last = samples.back()?;
        let first = samples
            .iter()
            .find(|s| last.at - s.at <= RATE_WINDOW_MS)
            .filter(|s| last.at - s.at >= 1_000)?;
        let seconds = (last.at - first.at) as f64 / 1000.0;
        Some(Rate {
            objects_per_second: last.done_objects.saturating_sub(first.done_objects) as f64
                / seconds,
            bytes_per_second: last.done_bytes.saturating_sub(first.done_bytes) as f64 / seconds,
        })
    }
}

/// Seconds until the rest is done at `rate`: by bytes when bytes move, else by objects.
pub fn eta(rate: Option<Rate>, tally: &Tally) -> Option<u64> {
    let rate = rate?;
    let (objects, bytes) = total(tally);
    let (done_objects, done_bytes) = done(tally);
    let seconds = if rate.bytes_per_second > 0.0 && bytes > done_bytes {
        (bytes - done_bytes) as f64 / rate.bytes_per_second
    } else if rate.objects_per_second > 0.0 {
        (objects - done_objects) as f64 / rate.objects_per_second
    } else {
        return None;
    };
    Some(seconds.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(pending: u64, copied: u64) -> Tally {
        let mut tally = Tally::default();
        tally.objects[ObjectState::Pending as usize] = pending;
        tally.bytes[ObjectState::Pending as usize] = pending * 100;
        tally.objects[ObjectState::Copied as usize] = copied;
        tally.bytes[ObjectState::Copied as usize] = copied * 100;
        tally
    }

    #[test]
    fn the_rate_and_eta_come_from_the_last_half_minute() {
        let samples = Samples::default();
        assert_eq!(samples.rate(1), None);
        samples.record(1, Sample::of(&tally(100, 0), 0));
        assert_eq!(samples.rate(1), None, "one sample is no rate");
        samples.record(1, Sample::of(&tally(80, 20), 10_000));
        samples.record(1, Sample::of(&tally(60, 40), 40_000));
        let rate = samples.rate(1).unwrap();
        // From 10 s to 40 s (the sample at 0 is outside the window): 20 objects in 30 s.
        assert!((rate.objects_per_second - 20.0 / 30.0).abs() < 1e-9);
        assert!((rate.bytes_per_second - 2000.0 / 30.0).abs() < 1e-9);
        assert_eq!(eta(Some(rate), &tally(60, 40)), Some(90));
        assert_eq!(samples.history(1).len(), 3);
        // A sample older than the last is not kept.
        samples.record(1, Sample::of(&tally(60, 40), 5_000));
        assert_eq!(samples.history(1).len(), 3);
    }
}
