//! How many objects to keep in flight: found while the run goes, not fixed up front.
//!
//! The right number depends on what is not known before the run: the destination's latency (a
//! remote S3 wants many requests in flight, a server on the same machine few, as they compete for
//! its cores) and the objects' sizes. [`Climber`] measures the throughput of each window and
//! moves the limit the way that pays: up while more in flight brings more, down while fewer in
//! flight costs nothing (fewer requests in flight hold less memory and contend less).

/// A hill climber over the concurrency limit, fed one throughput measurement per window.
#[derive(Debug, Clone)]
pub(crate) struct Climber {
    limit: usize,
    min: usize,
    max: usize,
    /// Where the last move came from, and the throughput measured there.
    before_move: Option<(usize, f64)>,
    /// The direction of the next probe.
    up: bool,
    /// Windows to wait before the next probe.
    hold: u32,
    /// How long the next wait is: it doubles each time a probe finds nothing better, so a
    /// settled limit is probed less and less often.
    patience: u32,
}

/// A change smaller than this (either way) is noise.
const SIGNIFICANT: f64 = 0.05;
/// Windows to stay put after a move was undone, at first.
const HOLD: u32 = 4;
/// At most this many windows between probes.
const MAX_HOLD: u32 = 32;

impl Climber {
    /// Starts at `start`, moving between `min` and `max`.
    pub fn new(start: usize, min: usize, max: usize) -> Self {
        let min = min.clamp(1, max.max(1));
        let max = max.max(min);
        Self {
            limit: start.clamp(min, max),
            min,
            max,
            before_move: None,
            up: true,
            hold: 0,
            patience: HOLD,
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes the throughput measured over the last window at the current limit; returns the limit
    /// for the next window.
    pub fn observe(&mut self, rate: f64) -> usize {
        match self.before_move.take() {
            Some((from, before)) => {
                let moved_up = self.limit > from;
                if rate > before * (1.0 + SIGNIFICANT) {
                    // The move paid: keep going the same way.
                    self.up = moved_up;
                    self.patience = HOLD;
                    self.step(rate);
                } else if rate < before * (1.0 - SIGNIFICANT) || moved_up {
                    // It cost throughput, or more in flight brought nothing: undo it, wait, and
                    // try the other way next.
                    self.limit = from;
                    self.up = !moved_up;
                    self.wait();
                } else {
                    // Fewer in flight, same throughput: keep going down.
                    self.up = false;
                    self.step(rate);
                }
            }
            None if self.hold > 0 => self.hold -= 1,
            None => self.step(rate),
        }
        self.limit
    }

    /// An endpoint is throttling (this worker's requests, or another worker's): lowers the limit
    /// by half at once, and waits before probing upwards again.
    pub fn back_off(&mut self) -> usize {
        self.before_move = None;
        self.limit = (self.limit / 2).max(self.min);
        self.up = true;
        self.hold = self.patience;
        self.limit
    }

    fn wait(&mut self) {
        self.hold = self.patience;
        self.patience = (self.patience * 2).min(MAX_HOLD);
    }

    /// Moves one step in the current direction (if there is room) and remembers where from.
    fn step(&mut self, rate: f64) {
        let next = if self.up {
            (self.limit + self.limit.div_ceil(2)).min(self.max)
        } else {
            (self.limit * 2 / 3).max(self.min)
        };
        if next == self.limit {
            // At the edge: probe the other way after a while.
            self.up = !self.up;
            self.wait();
        } else {
            self.before_move = Some((self.limit, rate));
            self.limit = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the climber against a throughput curve for `windows` windows; returns the limits.
    fn climb(climber: &mut Climber, curve: impl Fn(usize) -> f64, windows: usize) -> Vec<usize> {
        (0..windows)
            .map(|_| {
                let rate = curve(climber.limit());
                climber.observe(rate)
            })
            .collect()
    }

    #[test]
    fn climbs_while_more_in_flight_pays() {
        // A distant server: throughput grows with concurrency up to 200 in flight.
        let mut climber = Climber::new(16, 4, 256);
        let limits = climb(&mut climber, |n| n.min(200) as f64 * 30.0, 20);
        assert!(limits.iter().any(|&l| l >= 200), "{limits:?}");
        assert!(climber.limit() >= 120, "{limits:?}");
    }

    #[test]
    fn comes_down_when_fewer_in_flight_do_as_well() {
        // A server on the same machine: flat from 8 in flight, worse beyond 48.
        let curve = |n: usize| {
            if n < 8 {
                n as f64 * 500.0
            } else if n <= 48 {
                4000.0
            } else {
                3000.0
            }
        };
        let mut climber = Climber::new(64, 4, 256);
        let limits = climb(&mut climber, curve, 100);
        let settled = &limits[20..];
        let outside = settled.iter().filter(|&&l| !(8..=48).contains(&l)).count();
        // Probes outside the flat part are rare once it has settled.
        assert!(outside * 10 <= settled.len(), "{limits:?}");
        assert!((8..=48).contains(&climber.limit()), "{limits:?}");
    }

    #[test]
    fn backs_off_by_half_and_holds_before_climbing_again() {
        let mut climber = Climber::new(64, 4, 256);
        assert_eq!(climber.back_off(), 32);
        // Held: the next windows keep the lowered limit, however good they look.
        let held = climb(&mut climber, |n| n as f64 * 1000.0, HOLD as usize);
        assert!(held.iter().all(|&l| l == 32), "{held:?}");
        // Then it climbs again.
        let after = climb(&mut climber, |n| n as f64 * 1000.0, 10);
        assert!(after.iter().any(|&l| l > 32), "{after:?}");
        let mut low = Climber::new(5, 4, 256);
        assert_eq!(low.back_off(), 4);
        assert_eq!(low.back_off(), 4);
    }

    #[test]
    fn stays_within_its_bounds() {
        let mut climber = Climber::new(1000, 4, 64);
        assert_eq!(climber.limit(), 64);
        let limits = climb(&mut climber, |n| n as f64, 50);
        assert!(limits.iter().all(|&l| (4..=64).contains(&l)), "{limits:?}");
        let mut climber = Climber::new(8, 4, 64);
        let limits = climb(&mut climber, |n| 1000.0 / n as f64, 50);
        assert!(limits.iter().all(|&l| (4..=64).contains(&l)), "{limits:?}");
        assert!(limits[20..].iter().all(|&l| l <= 6), "{limits:?}");
    }
}
