//! Knowing godwit's own writes from everyone else's.
//!
//! A key that is taken when godwit writes holds either an object of someone else's (identical:
//! `already_present`; different: a `conflict`, left alone) or one of godwit's own: an earlier
//! version's copy, an unverified write it could not take back, or a write whose outcome was never
//! recorded (a reply lost, a run killed). godwit tells them apart by what it recorded of its
//! writes, never by how often it tried:
//! - the write's receipt (ETag, version id), kept in the ledger: an object that still has it is
//!   ours, and may be replaced (conditionally on that ETag) when the source changed;
//! - for a write whose receipt never arrived, the time since when it may have landed: the first
//!   claim of this version (an earlier run), or the first write in this claim whose answer was
//!   lost (a refusal is an answer: nothing landed). An identical
//!   object written since then (by the server's clock, to the second) is taken for ours; one
//!   written before was there already. Only identical content is judged by time: a different
//!   object is never replaced on a guess.

use std::time::{Duration, SystemTime};

use godwit_state::{ClaimedObject, OwnWrite, OwnWriteChange};
use godwit_storage::{DestObject, ErrorKind, StorageError, WriteReceipt};

use super::verify::Comparison;

/// How far the destination's clock (which says when an object was written, to the second) may
/// lag godwit's, for a write of ours to count as written after a moment godwit noted.
const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// What godwit knows of its own writes at one object's key, across the attempts of a claim.
#[derive(Debug, Clone)]
pub(super) struct Own {
    /// Our write at the key, by its receipt.
    write: Option<OwnWrite>,
    /// Whether `write` changed in this claim (the ledger must learn it).
    changed: bool,
    /// Since when a write of ours may have landed without its receipt.
    unreceipted_since: Option<SystemTime>,
}

/// What a taken key holds, judged against ours.
pub(super) enum Taken {
    /// The same content, written by godwit (how that was shown).
    Ours(&'static str),
    /// The same content, there before godwit wrote.
    AlreadyPresent(&'static str),
    /// Different content, ours by its receipt (an older version, or a write that failed
    /// verification): to be replaced, conditionally on this ETag.
    Replace(String),
    /// Different content of someone else's: left alone.
    Conflict(String),
}

impl Own {
    pub(super) fn new(claimed: &ClaimedObject) -> Self {
        Self {
            write: claimed.own_write.clone(),
            changed: false,
            unreceipted_since: claimed.earlier_claim_at,
        }
    }

    /// A write request sent at `at` got no answer that says whether it was written (a lost
    /// reply, a timeout): it may have landed unseen.
    pub(super) fn unanswered(&mut self, at: SystemTime) {
        self.unreceipted_since = Some(self.unreceipted_since.map_or(at, |since| since.min(at)));
    }

    /// Notes a failed write request sent at `sent_at` that may have landed all the same (its
    /// answer was lost, or unclear), and hands its error back.
    pub(super) fn failed(&mut self, sent_at: SystemTime, error: StorageError) -> StorageError {
        if matches!(
            error.kind(),
            ErrorKind::Unreachable | ErrorKind::Unclear | ErrorKind::Busy | ErrorKind::Other
        ) {
            self.unanswered(sent_at);
        }
        error
    }

    /// The destination acknowledged a write of ours.
    pub(super) fn wrote(&mut self, receipt: &WriteReceipt) {
        self.write = Some(OwnWrite {
            etag: receipt.etag.clone(),
            version_id: receipt.version_id.clone(),
        });
        self.changed = true;
    }

    /// The object at the key is ours (found so), as it is now.
    pub(super) fn found(&mut self, found: &DestObject) {
        self.write = Some(OwnWrite {
            etag: found.etag.clone(),
            version_id: found.version_id.clone(),
        });
        self.changed = true;
    }

    /// The key no longer holds a write of ours (taken back, or someone else's is there).
    pub(super) fn gone(&mut self) {
        if self.write.is_some() {
            self.write = None;
            self.changed = true;
        }
    }

    /// What the ledger must keep of our write.
    pub(super) fn change(&self) -> OwnWriteChange {
        match (&self.write, self.changed) {
            (_, false) => OwnWriteChange::Keep,
            (Some(write), true) => OwnWriteChange::Set(write.clone()),
            (None, true) => OwnWriteChange::Forget,
        }
    }

    /// Whether `found` is our write, by its receipt.
    fn holds(&self, found: &DestObject) -> bool {
        let Some(write) = &self.write else {
            return false;
        };
        match (&write.version_id, &found.version_id) {
            (Some(ours), Some(theirs)) => ours == theirs,
            _ => match (&write.etag, &found.etag) {
                (Some(ours), Some(theirs)) => ours
                    .trim_matches('"')
                    .eq_ignore_ascii_case(theirs.trim_matches('"')),
                _ => false,
            },
        }
    }

    /// Whether `found` was written since a write of ours may have landed unseen.
    fn may_be_ours(&self, found: &DestObject) -> bool {
        match (self.unreceipted_since, found.last_modified) {
            (Some(since), Some(written)) => written + CLOCK_SLACK >= since,
            _ => false,
        }
    }

    /// Judges what a taken key holds, given how it compares with our bytes.
    pub(super) fn judge(&mut self, found: &DestObject, comparison: Comparison) -> Taken {
        let by_receipt = self.holds(found);
        match comparison {
            Comparison::Same(how) if by_receipt || self.may_be_ours(found) => {
                self.found(found);
                Taken::Ours(how)
            }
            Comparison::Same(how) => {
                self.gone();
                Taken::AlreadyPresent(how)
            }
            Comparison::Different(_) if by_receipt && found.etag.is_some() => {
                Taken::Replace(found.etag.clone().unwrap_or_default())
            }
            Comparison::Different(why) => {
                self.gone();
                Taken::Conflict(why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(etag: &str, seconds_ago: u64) -> DestObject {
        DestObject {
            size: 1,
            etag: Some(format!("\"{etag}\"")),
            crc64nvme: None,
            version_id: None,
            last_modified: Some(SystemTime::now() - Duration::from_secs(seconds_ago)),
        }
    }

    fn own(write: Option<&str>, since_seconds_ago: Option<u64>) -> Own {
        Own {
            write: write.map(|etag| OwnWrite {
                etag: Some(format!("\"{etag}\"")),
                version_id: None,
            }),
            changed: false,
            unreceipted_since: since_seconds_ago
                .map(|ago| SystemTime::now() - Duration::from_secs(ago)),
        }
    }

    #[test]
    fn a_receipt_proves_a_write_ours() {
        let mut ours = own(Some("aa"), None);
        assert!(matches!(
            ours.judge(&found("AA", 3600), Comparison::Same("checksum")),
            Taken::Ours("checksum")
        ));
        let mut ours = own(Some("aa"), None);
        assert!(matches!(
            ours.judge(&found("aa", 3600), Comparison::Different("x".into())),
            Taken::Replace(etag) if etag == "\"aa\""
        ));
    }

    #[test]
    fn time_decides_only_identical_content() {
        // An identical object written after our first unreceipted write may be ours.
        let mut ours = own(None, Some(10));
        assert!(matches!(
            ours.judge(&found("bb", 5), Comparison::Same("checksum")),
            Taken::Ours(_)
        ));
        assert_eq!(
            ours.change(),
            OwnWriteChange::Set(OwnWrite {
                etag: Some("\"bb\"".into()),
                version_id: None
            })
        );
        // One written well before was there already.
        let mut ours = own(None, Some(10));
        assert!(matches!(
            ours.judge(&found("bb", 60), Comparison::Same("checksum")),
            Taken::AlreadyPresent(_)
        ));
        assert_eq!(ours.change(), OwnWriteChange::Keep);
        // A different object is never replaced on a guess.
        let mut ours = own(None, Some(10));
        assert!(matches!(
            ours.judge(&found("bb", 5), Comparison::Different("x".into())),
            Taken::Conflict(_)
        ));
        // Nor one that merely has the time: someone else's object replaced ours.
        let mut ours = own(Some("aa"), Some(10));
        assert!(matches!(
            ours.judge(&found("bb", 5), Comparison::Different("x".into())),
            Taken::Conflict(_)
        ));
        assert_eq!(ours.change(), OwnWriteChange::Forget);
    }

    #[test]
    fn with_nothing_recorded_an_identical_object_was_already_there() {
        let mut ours = own(None, None);
        assert!(matches!(
            ours.judge(&found("bb", 0), Comparison::Same("checksum")),
            Taken::AlreadyPresent(_)
        ));
    }
}
