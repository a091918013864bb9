//! One PUT or a multipart upload: the choice for each object streamed through godwit.
//!
//! With `--multipart-threshold` given, the threshold decides. Without it the choice is made from
//! what the destination is measured to do, once a run, the first time an object above
//! [`ALWAYS_SINGLE`] needs it (see [`godwit_storage::Destination::large_writes`]):
//! - A multipart upload pays where the server's completion is cheap and parallel parts carry
//!   more than one request can: servers that keep a multipart object's checksum (AWS does) have
//!   done the work at upload time, so objects above [`ALWAYS_SINGLE`] go in parts there, as
//!   with a fixed threshold.
//! - Where the server keeps no checksum of multipart objects (s3s-fs, godwit serve-s3), its
//!   completion rewrites the object (measured on s3s-fs: 2.5x the server's CPU of one PUT) and
//!   godwit must hash every part with MD5 to prove the result. There an object goes in one PUT
//!   when one request carried the probe fast enough to send the whole object within
//!   [`ONE_REQUEST_WITHIN`], and it fits [`SINGLE_SHARE`] of the memory budget (a single PUT
//!   holds the object whole).
//!
//! The trade: an object sent whole is not resumed part by part: a run stopped mid-PUT sends it
//! again from the start. The memory share keeps that to a few objects.
//!
//! An object whose upload the ledger records (parts of this source version, cut as this run
//! cuts them) is finished in parts whatever the route says, and asks nothing of it: a re-run
//! that only finishes uploads measures nothing.

use godwit_storage::LargeWrites;

use super::Transfers;

/// At or below this size an object always goes in one PUT (also the fixed threshold's default
/// before it was measured).
pub(crate) const ALWAYS_SINGLE: u64 = 64 << 20;
/// The most S3 takes in one PUT.
const MAX_SINGLE: u64 = 5 << 30;
/// How long one request may need to carry an object alone, at the probe's rate, for the object
/// to go in one PUT.
const ONE_REQUEST_WITHIN: f64 = 2.0;
/// The share of the memory budget one object sent whole may take (in quarters).
const SINGLE_SHARE: u64 = 3;

/// How objects above [`ALWAYS_SINGLE`] are sent, once measured.
#[derive(Debug, Clone)]
pub(crate) struct LargeRoute {
    /// Objects up to this size go in one PUT (at least [`ALWAYS_SINGLE`]).
    pub single_up_to: u64,
    /// Why, for the summary and the log.
    pub why: String,
}

impl LargeRoute {
    /// The route for a destination measured as `large`, with `memory_budget` bytes of budget.
    pub(crate) fn from(large: &LargeWrites, memory_budget: u64) -> Self {
        let held = (memory_budget / 4 * SINGLE_SHARE).min(MAX_SINGLE);
        let rate = large
            .put_rate
            .map_or_else(|| "unknown".to_owned(), |r| format!("{:.0} MiB/s", r / MIB));
        let measured = format!(
            "one PUT carried {rate}; multipart objects keep their checksum: {}",
            match large.multipart_checksums {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            }
        );
        let measured = match &large.note {
            Some(note) => format!("{measured} ({note})"),
            None => measured,
        };
        let single_up_to = match (large.multipart_checksums, large.put_rate) {
            (Some(false), Some(rate)) => ((rate * ONE_REQUEST_WITHIN) as u64).min(held),
            _ => ALWAYS_SINGLE,
        }
        .max(ALWAYS_SINGLE);
        let why = if single_up_to > ALWAYS_SINGLE {
            format!(
                "objects up to {} in one PUT, larger ones in parts ({measured})",
                mib(single_up_to)
            )
        } else {
            format!("objects above {} in parts ({measured})", mib(ALWAYS_SINGLE))
        };
        Self { single_up_to, why }
    }
}

const MIB: f64 = (1 << 20) as f64;

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

impl Transfers {
    /// Whether an object of `size` bytes, streamed through godwit, goes in parts.
    pub(super) async fn goes_multipart(&self, size: u64) -> bool {
        if size > MAX_SINGLE {
            return true;
        }
        if let Some(threshold) = self.options.multipart_threshold {
            return size > threshold;
        }
        if size <= ALWAYS_SINGLE {
            return false;
        }
        size > self.large_route().await.single_up_to
    }

    /// The route for large objects, measured the first time it is asked and said on stderr.
    pub(crate) async fn large_route(&self) -> &LargeRoute {
        self.large_route
            .get_or_init(|| async {
                let large = self.dest.large_writes().await;
                if let Some(kept) = large.multipart_checksums {
                    // What the first multipart object would find out: its parts then need no MD5
                    // where the checksum is kept.
                    let kept = if kept {
                        super::upload::KEPT
                    } else {
                        super::upload::NOT_KEPT
                    };
                    let _ = self.multipart_checksums.compare_exchange(
                        super::upload::UNKNOWN,
                        kept,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                let route = LargeRoute::from(&large, self.options.memory_budget);
                tracing::info!("large objects: {}", route.why);
                route
            })
            .await
    }

    /// How large objects went in this run, if any needed the choice.
    pub fn large_objects(&self) -> Option<String> {
        match self.options.multipart_threshold {
            Some(threshold) => Some(format!(
                "objects above {} in parts (--multipart-threshold)",
                mib(threshold)
            )),
            None => self.large_route.get().map(|route| route.why.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rate_mib: f64, kept: Option<bool>) -> LargeWrites {
        LargeWrites {
            put_rate: Some(rate_mib * MIB),
            multipart_checksums: kept,
            note: None,
        }
    }

    #[test]
    fn a_fast_request_without_multipart_checksums_sends_what_the_budget_holds_whole() {
        let route = LargeRoute::from(&measured(500.0, Some(false)), 256 << 20);
        assert_eq!(route.single_up_to, 192 << 20, "{}", route.why);
        assert!(route.why.contains("500 MiB/s"), "{}", route.why);
    }

    #[test]
    fn a_slow_request_sends_large_objects_in_parts() {
        // 20 MiB/s a request: 40 MiB within two seconds, below the floor.
        let route = LargeRoute::from(&measured(20.0, Some(false)), 1 << 30);
        assert_eq!(route.single_up_to, ALWAYS_SINGLE);
        // 50 MiB/s: objects up to 100 MiB whole.
        let route = LargeRoute::from(&measured(50.0, Some(false)), 1 << 30);
        assert_eq!(route.single_up_to, 100 << 20);
    }

    #[test]
    fn where_multipart_objects_keep_their_checksum_parts_stay() {
        let route = LargeRoute::from(&measured(900.0, Some(true)), 1 << 30);
        assert_eq!(route.single_up_to, ALWAYS_SINGLE);
        let unknown = LargeWrites {
            note: Some("probe failed".to_owned()),
            ..LargeWrites::default()
        };
        let route = LargeRoute::from(&unknown, 1 << 30);
        assert_eq!(route.single_up_to, ALWAYS_SINGLE);
        assert!(route.why.contains("probe failed"), "{}", route.why);
    }
}
