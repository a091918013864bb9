//! Recording outcomes: the writer that records them in batches (halting the run when the ledger
//! stops recording), and the gate where a group's members wait for each other (see `group`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use godwit_state::{
    ClaimedObject, MigrationId, ObjectState, Outcome, OwnWriteChange, Store, StoreError,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::group::{Decided, Ended, GroupAttempt};
use crate::migrate::Migrator;
use crate::progress::Progress;
use crate::transfer::Transfers;

/// What the outcome writer records in one go: one object's outcome, or a whole group's (in one
/// transaction, so a group is never recorded half).
// Nearly every unit is one outcome: boxing it would cost an allocation per object.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Recorded {
    One(Outcome),
    Group(Vec<Outcome>),
}

/// The group `object` belongs to in its packet, and its end to fill in.
pub(crate) fn member_of(
    groups: &HashMap<String, Arc<GroupAttempt>>,
    object: &ClaimedObject,
) -> Option<(Arc<GroupAttempt>, Ended)> {
    let group = groups.get(object.group.as_deref()?)?;
    Some((Arc::clone(group), Ended::of(object, None)))
}

/// Where a group's members end: the last one decides the group.
pub(crate) struct Gate {
    store: Arc<dyn Store>,
    migration: MigrationId,
    progress: Arc<Progress>,
}

impl Migrator {
    pub(crate) fn gate(&self, migration: MigrationId) -> Gate {
        Gate {
            store: Arc::clone(&self.store),
            migration,
            progress: Arc::clone(&self.progress),
        }
    }
}

impl Gate {
    /// Adds a member's end to its group; once every member has ended, decides the group (see
    /// `group`) and returns what to record.
    pub(crate) async fn end(
        &self,
        transfers: &Transfers,
        group: &GroupAttempt,
        ended: Ended,
    ) -> Result<Option<Recorded>, StoreError> {
        let Some(all) = group.end(ended) else {
            return Ok(None);
        };
        // A member may have failed before this attempt (unreadable at the scan, or left failed):
        // the group is not whole without it.
        let earlier = self
            .store
            .group_problem(self.migration, &group.name)
            .await?;
        let (decided, outcomes) = transfers.decide_group(group, all, earlier).await;
        let counter = match decided {
            Decided::Committed => &self.progress.n_groups_committed,
            Decided::RolledBack => &self.progress.n_groups_rolled_back,
            Decided::Released => &self.progress.n_groups_released,
        };
        Progress::add(counter, 1);
        if decided == Decided::RolledBack {
            tracing::warn!(group = %group.name, "a group failed and was rolled back: see `godwit failed`");
        }
        Ok((!outcomes.is_empty()).then_some(Recorded::Group(outcomes)))
    }
}

/// The outcome that hands a claimed, unstarted object back to the queue unchanged.
pub(crate) fn release(object: &ClaimedObject) -> Outcome {
    Outcome {
        id: object.id,
        token: object.token,
        state: ObjectState::Pending,
        attempts: object.attempts.saturating_sub(1),
        size: object.size,
        version: object.version.clone(),
        checksum: None,
        dest_etag: None,
        dest_version: None,
        verified_by: None,
        error: None,
        own_write: OwnWriteChange::Keep,
        metadata: None,
    }
}

/// Records outcomes in batches: whatever has arrived while the last batch was written.
pub(crate) async fn write_outcomes(
    store: Arc<dyn Store>,
    mut receiver: mpsc::Receiver<Recorded>,
    progress: Arc<Progress>,
    halt: CancellationToken,
) -> Result<(), StoreError> {
    const BATCH: usize = 1024;
    // Each commit costs WAL writes whatever its size: gather for a moment before writing. A kill
    // loses at most this window of outcomes, and those objects are settled by their next claim.
    const GATHER: Duration = Duration::from_millis(25);
    let mut units = Vec::with_capacity(BATCH);
    let mut more = Vec::with_capacity(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut units, BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + GATHER;
        while units.len() < BATCH {
            tokio::select! {
                n = receiver.recv_many(&mut more, BATCH) => {
                    units.append(&mut more);
                    if n == 0 { break }
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // A group's outcomes stay together: one batch is one transaction.
        for unit in units.drain(..) {
            match unit {
                Recorded::One(outcome) => batch.push(outcome),
                Recorded::Group(outcomes) => batch.extend(outcomes),
            }
        }
        let finished: Vec<(ObjectState, u64)> = batch
            .iter()
            .filter(|o| o.state.is_terminal())
            .map(|o| (o.state, o.size))
            .collect();
        let started = std::time::Instant::now();
        let recorded = store.record_outcomes(std::mem::take(&mut batch)).await;
        let took = started.elapsed();
        match recorded {
            Ok(0) => {}
            Ok(fenced) => tracing::warn!(
                fenced,
                "outcomes of claims another worker took over were not recorded"
            ),
            Err(error) => {
                // Nothing more can be recorded: stop taking work at once. The run ends with this
                // error, which its caller says (once).
                tracing::debug!("cannot record outcomes in the ledger, stopping: {error}");
                halt.cancel();
                return Err(error);
            }
        }
        let mut by_state = [0u64; 8];
        let mut copied = 0;
        for (state, size) in finished {
            by_state[state as usize] += 1;
            Progress::add(&progress.n_done, 1);
            Progress::add(&progress.bytes_done, size);
            match state {
                ObjectState::Copied => {
                    Progress::add(&progress.n_copied, 1);
                    Progress::add(&progress.bytes_copied, size);
                    copied += size;
                }
                ObjectState::Conflict | ObjectState::Failed => {
                    Progress::add(&progress.n_problems, 1)
                }
                _ => {}
            }
        }
        crate::metrics::committed(took, &by_state, copied);
    }
    Ok(())
}
