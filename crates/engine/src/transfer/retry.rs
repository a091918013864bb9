//! How long a transfer waits before its next attempt.
//!
//! The pause grows exponentially with the attempt and is jittered (a random point in its upper
//! half), so workers that failed together do not come back together. An endpoint that asks to
//! slow down gets longer pauses, and a `Retry-After` it sent is honoured. (Requests the SDK
//! retries itself, the idempotent ones, get its own jittered backoff; these are the attempts at
//! a whole object.)

use std::time::Duration;

use godwit_storage::{ErrorKind, StorageError};

/// The first pause after an ordinary temporary failure.
const FIRST: Duration = Duration::from_millis(100);
/// The first pause after a throttling answer.
const FIRST_THROTTLED: Duration = Duration::from_millis(500);
/// No pause is longer than this, unless the server asked for longer.
const LONGEST: Duration = Duration::from_secs(20);
/// Nor longer than this, whatever the server asked.
const LONGEST_ASKED: Duration = Duration::from_secs(120);

/// Attempts an endpoint's passing trouble (throttling, a dropped connection, an answer cut
/// short) gets beyond `--max-attempts`: at a few percent of requests failing so, three attempts
/// would send an object in a few thousand to the fail queue for nothing. With the pauses growing
/// to 20 s, they span over a minute.
const TRANSIENT_EXTRA: u32 = 5;

/// How many attempts an object gets when its latest failed with `error`: `max_attempts`, and
/// [`TRANSIENT_EXTRA`] more when the endpoint's passing trouble was to blame.
pub(crate) fn attempts_for(error: &StorageError, max_attempts: u32) -> u32 {
    match error.kind() {
        ErrorKind::Busy | ErrorKind::Unreachable | ErrorKind::Unclear => {
            max_attempts + TRANSIENT_EXTRA
        }
        _ => max_attempts,
    }
}

/// The pause before attempt `attempt + 1`, after `error` ended attempt `attempt` (from 1).
pub(crate) fn pause_before_retry(attempt: u32, error: &StorageError) -> Duration {
    let first = if error.kind() == ErrorKind::Busy {
        FIRST_THROTTLED
    } else {
        FIRST
    };
    let ceiling = first
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(LONGEST);
    let jittered = ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0);
    match error.retry_after() {
        Some(asked) => jittered.max(asked.min(LONGEST_ASKED)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind) -> StorageError {
        StorageError::new(kind, "test")
    }

    #[test]
    fn pauses_grow_are_jittered_and_bounded() {
        for attempt in 1..40 {
            let ceiling = (FIRST * (1 << (attempt - 1).min(16))).min(LONGEST);
            let pauses: Vec<Duration> = (0..50)
                .map(|_| pause_before_retry(attempt, &error(ErrorKind::Unclear)))
                .collect();
            assert!(
                pauses.iter().all(|p| *p >= ceiling / 2 && *p <= ceiling),
                "attempt {attempt}: {pauses:?}"
            );
            if ceiling > Duration::from_millis(10) {
                let first = pauses[0];
                assert!(pauses.iter().any(|p| *p != first), "no jitter: {pauses:?}");
            }
        }
    }

    #[test]
    fn passing_trouble_gets_more_attempts_than_an_objects_own() {
        assert_eq!(attempts_for(&error(ErrorKind::Busy), 3), 8);
        assert_eq!(attempts_for(&error(ErrorKind::Unreachable), 3), 8);
        assert_eq!(attempts_for(&error(ErrorKind::ChecksumMismatch), 3), 3);
        assert_eq!(attempts_for(&error(ErrorKind::SourceChanged), 1), 1);
    }

    #[test]
    fn throttling_waits_longer_and_retry_after_is_honoured() {
        let busy = pause_before_retry(1, &error(ErrorKind::Busy));
        assert!(busy >= FIRST_THROTTLED / 2, "{busy:?}");
        let asked = error(ErrorKind::Busy).with_retry_after(Some(Duration::from_secs(3)));
        assert!(pause_before_retry(1, &asked) >= Duration::from_secs(3));
        let greedy = error(ErrorKind::Busy).with_retry_after(Some(Duration::from_secs(3600)));
        assert_eq!(pause_before_retry(1, &greedy), LONGEST_ASKED);
    }
}
