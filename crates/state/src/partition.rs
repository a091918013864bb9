//! Partitions: the checkpoint units of a migration (a course, a customer). Where one stands comes
//! from its objects (pending, in progress, migrated, failed) and from its checkpoints, kept in a
//! row of its own: its latest validation, its cutover, and the notice sent of it.

use serde::Serialize;

use crate::{ObjectState, Tally};

/// One partition's objects by state, and its checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionTally {
    /// The partition (`--partition-by`); `None`: the objects the rule names no partition for.
    pub name: Option<String>,
    /// Its objects and bytes by state.
    pub tally: Tally,
    /// Its validation and cutover.
    pub checkpoints: Checkpoints,
}

/// What a partition's row records beyond its objects. Times are milliseconds since the Unix
/// epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Checkpoints {
    /// When its latest validation began.
    pub validated_at: Option<i64>,
    /// Whether its latest validation passed.
    pub validation_passed: Option<bool>,
    /// Its latest validation's report (JSON, as the engine wrote it).
    #[serde(skip)]
    pub validation: Option<String>,
    /// Whether an object of it became work again (new or changed at the source, lost at the
    /// destination, retried) since its latest validation began.
    pub changed_since_validation: bool,
    /// When it was cut over: the application reads it from the destination since.
    pub cut_over_at: Option<i64>,
    /// The notice of its cutover (webhook, command), when one was sent.
    pub notice: Option<Notice>,
}

/// How the notice of a cutover went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// When it was delivered; `None` while it was not.
    pub delivered_at: Option<i64>,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error, when it failed.
    pub error: Option<String>,
}

/// Where a partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// No object of it has started.
    Pending,
    /// Some objects have started or ended, some have not.
    InProgress,
    /// Every object ended well (copied, already present, gone from the source, or left out).
    Migrated,
    /// Migrated, and its latest validation (of the destination itself) passed with nothing
    /// changed since: it may be cut over.
    Validated,
    /// Cut over: the application reads it from the destination; delta passes leave it alone.
    CutOver,
    /// Every object ended, some as a conflict or failed (see `godwit failed`).
    Failed,
}

impl PartitionState {
    /// The name shown and written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Migrated => "migrated",
            Self::Validated => "validated",
            Self::CutOver => "cut_over",
            Self::Failed => "failed",
        }
    }
}

impl PartitionTally {
    /// Where the partition stands.
    pub fn state(&self) -> PartitionState {
        if self.checkpoints.cut_over_at.is_some() {
            return PartitionState::CutOver;
        }
        let tally = &self.tally;
        let waiting = tally.n(ObjectState::Pending);
        let open = waiting + tally.n(ObjectState::InProgress);
        if open == 0 {
            if tally.n(ObjectState::Failed) + tally.n(ObjectState::Conflict) > 0 {
                PartitionState::Failed
            } else if self.checkpoints.validation_passed == Some(true)
                && !self.checkpoints.changed_since_validation
            {
                PartitionState::Validated
            } else {
                PartitionState::Migrated
            }
        } else if waiting == tally.n_total() - tally.n(ObjectState::Excluded) {
            PartitionState::Pending
        } else {
            PartitionState::InProgress
        }
    }

    /// The partition's name as its checkpoint row keeps it (`""` for `None`).
    pub fn row_name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// What `Store::cut_over` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutover {
    /// The flag is set now.
    Done,
    /// It was set before, at this time (milliseconds since the Unix epoch).
    AlreadyCutOver(i64),
    /// The partition was never validated.
    NotValidated,
    /// Its latest validation failed.
    ValidationFailed,
    /// An object of it became work again since its latest validation began.
    ChangedSince,
    /// The migration has no object in that partition.
    Unknown,
}

/// An object as validation reads it from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerObject {
    /// Relative key.
    pub key: String,
    /// Size recorded.
    pub size: u64,
    /// Its state.
    pub state: ObjectState,
    /// Its CRC-64/NVME (base64), when known.
    pub checksum: Option<String>,
    /// The destination's ETag, as recorded when it was copied or found.
    pub dest_etag: Option<String>,
    /// Its group.
    pub group: Option<String>,
    /// Its partition.
    pub partition: Option<String>,
}

/// The objects one pass found new, changed, and no longer at the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PassCounts {
    /// Objects first seen by this pass.
    pub new: u64,
    /// Objects seen before whose size or version changed in this pass (queued again, unless
    /// their partition was cut over).
    pub changed: u64,
    /// Of the new and changed, those in partitions already cut over: left alone, reported.
    pub in_cut_over: u64,
    /// Objects the pass before found that this pass did not (only once its scan is complete).
    pub vanished: u64,
}

/// A partition's checkpoint row, as both ledgers read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckpointRow {
    pub name: String,
    pub validated_at: Option<i64>,
    pub validation_passed: Option<bool>,
    pub validation: Option<String>,
    pub cut_over_at: Option<i64>,
    pub notice_delivered_at: Option<i64>,
    pub notice_attempts: Option<i64>,
    pub notice_error: Option<String>,
}

impl CheckpointRow {
    /// The checkpoints, given when an object of the partition last became work.
    pub(crate) fn checkpoints(self, changed_at: Option<i64>) -> Checkpoints {
        let notice = (self.notice_attempts.unwrap_or(0) > 0).then(|| Notice {
            delivered_at: self.notice_delivered_at,
            attempts: self.notice_attempts.unwrap_or(0) as u32,
            error: self.notice_error,
        });
        Checkpoints {
            changed_since_validation: match (self.validated_at, changed_at) {
                // A change in the same millisecond as the validation began may have come after.
                (Some(validated), Some(changed)) => changed >= validated,
                _ => false,
            },
            validated_at: self.validated_at,
            validation_passed: self.validation_passed,
            validation: self.validation,
            cut_over_at: self.cut_over_at,
            notice,
        }
    }

    /// Whether the partition may be cut over now.
    pub(crate) fn cutover(&self, changed_at: Option<i64>) -> Cutover {
        if let Some(at) = self.cut_over_at {
            return Cutover::AlreadyCutOver(at);
        }
        match (self.validated_at, self.validation_passed) {
            (None, _) => Cutover::NotValidated,
            (Some(_), Some(false) | None) => Cutover::ValidationFailed,
            (Some(validated), Some(true)) => {
                if changed_at.is_some_and(|changed| changed >= validated) {
                    Cutover::ChangedSince
                } else {
                    Cutover::Done
                }
            }
        }
    }
}

/// One partition's objects and bytes by state, and when one of its objects last became work
/// (milliseconds since the Unix epoch; `None` when none did since godwit recorded it).
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionCount {
    /// Its objects and bytes by state.
    pub tally: Tally,
    /// When one of its objects last became work.
    pub changed_at: Option<i64>,
}

/// Each partition's count, by name in byte order (the default partition, `None`, first): what
/// the counters hold, or what counting the objects again finds (both ledgers' `counted` and
/// `recount`, which the tests compare). A partition named `""` is the default one, as its
/// checkpoint row and claims name it.
#[doc(hidden)]
pub type PartitionCounts = std::collections::BTreeMap<Option<String>, PartitionCount>;

/// The name a counter row gives a partition (`""`: the default one) as the API names it.
pub(crate) fn partition_name(row_name: String) -> Option<String> {
    (!row_name.is_empty()).then_some(row_name)
}

/// The tally of the whole migration, from its partitions' counts.
#[doc(hidden)]
pub fn tally_of(counts: &PartitionCounts) -> Tally {
    let mut tally = Tally::default();
    for count in counts.values() {
        for state in 0..tally.objects.len() {
            tally.objects[state] += count.tally.objects[state];
            tally.bytes[state] += count.tally.bytes[state];
        }
    }
    tally
}

/// Each partition's tally with its checkpoints, from its counts and the checkpoint rows, in
/// byte order of the names (the default partition first).
pub(crate) fn assemble(counts: PartitionCounts, rows: Vec<CheckpointRow>) -> Vec<PartitionTally> {
    let mut rows: std::collections::HashMap<String, CheckpointRow> = rows
        .into_iter()
        .map(|row| (row.name.clone(), row))
        .collect();
    counts
        .into_iter()
        .map(|(name, count)| {
            let row = rows
                .remove(name.as_deref().unwrap_or(""))
                .unwrap_or_default();
            PartitionTally {
                name,
                tally: count.tally,
                checkpoints: row.checkpoints(count.changed_at),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(counts: &[(ObjectState, u64)], checkpoints: Checkpoints) -> PartitionTally {
        let mut tally = Tally::default();
        for (state, n) in counts {
            tally.objects[*state as usize] = *n;
        }
        PartitionTally {
            name: None,
            tally,
            checkpoints,
        }
    }

    #[test]
    fn a_partition_stands_where_its_objects_and_checkpoints_say() {
        use ObjectState::*;
        let none = Checkpoints::default;
        let passed = || Checkpoints {
            validated_at: Some(1),
            validation_passed: Some(true),
            ..Checkpoints::default()
        };
        let cases = [
            (vec![(Pending, 3)], none(), PartitionState::Pending),
            (
                vec![(Pending, 3), (Excluded, 2)],
                none(),
                PartitionState::Pending,
            ),
            (
                vec![(Pending, 2), (InProgress, 1)],
                none(),
                PartitionState::InProgress,
            ),
            (
                vec![(Pending, 2), (Copied, 1)],
                none(),
                PartitionState::InProgress,
            ),
            (
                vec![(InProgress, 1), (Failed, 1)],
                none(),
                PartitionState::InProgress,
            ),
            (
                vec![
                    (Copied, 2),
                    (AlreadyPresent, 1),
                    (SourceVanished, 1),
                    (Excluded, 4),
                ],
                none(),
                PartitionState::Migrated,
            ),
            (vec![(Copied, 2)], passed(), PartitionState::Validated),
            (
                vec![(Copied, 2)],
                Checkpoints {
                    changed_since_validation: true,
                    ..passed()
                },
                PartitionState::Migrated,
            ),
            (
                vec![(Copied, 2)],
                Checkpoints {
                    validation_passed: Some(false),
                    ..passed()
                },
                PartitionState::Migrated,
            ),
            (
                vec![(Copied, 1), (Pending, 1)],
                passed(),
                PartitionState::InProgress,
            ),
            (
                vec![(Copied, 1), (Pending, 1)],
                Checkpoints {
                    cut_over_at: Some(2),
                    ..passed()
                },
                PartitionState::CutOver,
            ),
            (
                vec![(Copied, 2), (Conflict, 1)],
                none(),
                PartitionState::Failed,
            ),
            (vec![(Failed, 1)], none(), PartitionState::Failed),
        ];
        for (counts, checkpoints, expected) in cases {
            assert_eq!(
                partition(&counts, checkpoints.clone()).state(),
                expected,
                "{counts:?} {checkpoints:?}"
            );
        }
    }
}
