//! All-or-nothing groups: the objects of one group, claimed whole in one packet, commit together
//! or not at all.
//!
//! Each member's outcome waits here until the group's last member has ended. Then the group is
//! decided:
//! - every member ended well (copied, already present, gone from the source): the outcomes are
//!   recorded in one transaction, and the group is committed;
//! - a member failed for good or met someone else's object (conflict), now or in an earlier
//!   attempt: the objects this attempt created are taken back (deleted under `If-Match` on the
//!   ETag godwit's write got, so never someone else's object), objects that were already present
//!   are never touched, and every member the attempt copied joins the fail queue with the
//!   group's reason (`rolled_back`), again in one transaction;
//! - a member went back to the queue unfinished (a pause, an outage, a stop): the whole group
//!   goes back, and its next claim finds the writes of this attempt as godwit's own.
//!
//! Nothing is recorded before the decision, so a run killed anywhere in a group, its rollback
//! included, leaves the group's objects claimed: the next claim takes the group whole again, and
//! either commits it or rolls it back. A group is never recorded half.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use godwit_state::{ClaimedObject, ObjectState, Outcome, OwnWriteChange};

use crate::transfer::Transfers;

/// The error class of objects taken back with their group.
pub(crate) const ROLLED_BACK: &str = "rolled_back";

/// One member's end, as its group waits for the others.
#[derive(Debug)]
pub(crate) struct Ended {
    pub key: String,
    /// The outcome; `None` when the claim was lost (another worker holds the group now).
    pub outcome: Option<Outcome>,
    /// Whether a write of godwit's own was at the key when the object was claimed (an earlier
    /// copy this attempt replaced): such an object was not created by this attempt.
    pub owned_before: bool,
    /// Its attempts before this claim: what a member handed back unfinished keeps.
    pub attempts_before: u32,
}

impl Ended {
    /// The end of `object` with `outcome`.
    pub(crate) fn of(object: &ClaimedObject, outcome: Option<Outcome>) -> Self {
        Self {
            key: object.key.clone(),
            outcome,
            owned_before: object.own_write.is_some(),
            attempts_before: object.attempts.saturating_sub(1),
        }
    }
}

/// The members of one group in one packet, as they end.
#[derive(Debug)]
pub(crate) struct GroupAttempt {
    pub name: String,
    members: usize,
    ended: Mutex<Vec<Ended>>,
}

impl GroupAttempt {
    /// Adds a member's end; returns every member's once the last has ended.
    pub(crate) fn end(&self, ended: Ended) -> Option<Vec<Ended>> {
        let mut all = self.ended.lock().expect("a group's lock is never poisoned");
        all.push(ended);
        (all.len() == self.members).then(|| std::mem::take(&mut *all))
    }
}

/// The groups of a packet, by name; objects in no group are not in it.
pub(crate) fn groups_of(packet: &[ClaimedObject]) -> HashMap<String, Arc<GroupAttempt>> {
    let mut members: HashMap<&str, usize> = HashMap::new();
    for object in packet {
        if let Some(group) = &object.group {
            *members.entry(group).or_default() += 1;
        }
    }
    members
        .into_iter()
        .map(|(name, members)| {
            let attempt = GroupAttempt {
                name: name.to_owned(),
                members,
                ended: Mutex::new(Vec::with_capacity(members)),
            };
            (name.to_owned(), Arc::new(attempt))
        })
        .collect()
}

/// What becomes of a group whose members have all ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every member ended well: record them as they are.
    Commit,
    /// A member came back unfinished: the whole group goes back to the queue.
    Release,
    /// A member failed or met a conflict: take back what this attempt created. The reason names
    /// the first such member and why.
    RollBack(String),
}

/// Judges a group by its members' ends, and by `earlier`, a member's failure or conflict the
/// ledger already holds (from the scan, or an earlier attempt).
pub(crate) fn verdict(group: &str, ended: &[Ended], earlier: Option<String>) -> Verdict {
    let outcomes = || ended.iter().filter_map(|e| e.outcome.as_ref());
    if outcomes().any(|o| !o.state.is_terminal()) {
        return Verdict::Release;
    }
    let bad = ended.iter().find_map(|e| {
        let outcome = e.outcome.as_ref()?;
        (!outcome.state.is_good()).then(|| {
            let why = outcome
                .error
                .as_ref()
                .map_or_else(|| outcome.state.as_str().to_owned(), |(_, m)| m.clone());
            format!("{} ended {}: {why}", e.key, outcome.state)
        })
    });
    match bad.or(earlier) {
        Some(why) => Verdict::RollBack(format!("group '{group}' rolled back: {why}")),
        None => Verdict::Commit,
    }
}

/// What deciding a group did, for the run's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    Committed,
    RolledBack,
    Released,
}

impl Transfers {
    /// Decides a group whose members have all ended (see the module's doc) and returns the
    /// outcomes to record in one transaction.
    pub(crate) async fn decide_group(
        &self,
        group: &GroupAttempt,
        ended: Vec<Ended>,
        earlier: Option<String>,
    ) -> (Decided, Vec<Outcome>) {
        match verdict(&group.name, &ended, earlier) {
            Verdict::Commit => (
                Decided::Committed,
                ended.into_iter().filter_map(|e| e.outcome).collect(),
            ),
            Verdict::Release => (
                Decided::Released,
                ended.into_iter().filter_map(release).collect(),
            ),
            Verdict::RollBack(reason) => {
                let mut outcomes = Vec::with_capacity(ended.len());
                for member in ended {
                    if let Some(outcome) = self.roll_back(group, member, &reason).await {
                        outcomes.push(outcome);
                    }
                }
                (Decided::RolledBack, outcomes)
            }
        }
    }

    /// One member of a group being rolled back: an object this attempt created is taken back
    /// and failed with the group's reason; anything else keeps its outcome (an object already
    /// present is never touched).
    async fn roll_back(
        &self,
        group: &GroupAttempt,
        member: Ended,
        reason: &str,
    ) -> Option<Outcome> {
        let mut outcome = member.outcome?;
        if outcome.state != ObjectState::Copied {
            if !outcome.state.is_good() {
                let rolled_back = format!("its group '{}' was rolled back", group.name);
                outcome.error = Some(match outcome.error.take() {
                    Some((kind, message)) => (kind, format!("{message} ({rolled_back})")),
                    None => (outcome.state.as_str().to_owned(), rolled_back),
                });
            }
            return Some(outcome);
        }
        let mut why = reason.to_owned();
        if member.owned_before {
            // It replaced godwit's own earlier copy, which cannot be brought back: the key keeps
            // the newer one, recorded as godwit's own, and the group's next attempt settles it.
            why.push_str(&format!(
                "; {} replaced godwit's earlier copy, which stays replaced",
                member.key
            ));
        } else {
            match self
                .take_back(&member.key, outcome.dest_etag.as_deref())
                .await
            {
                Ok(()) => {
                    outcome.own_write = OwnWriteChange::Forget;
                    outcome.dest_etag = None;
                    outcome.dest_version = None;
                }
                Err(left) => why.push_str(&format!("; {}: {left}", member.key)),
            }
        }
        outcome.state = ObjectState::Failed;
        outcome.verified_by = None;
        outcome.error = Some((ROLLED_BACK.to_owned(), why));
        Some(outcome)
    }
}

/// A member's outcome as it goes back to the queue, uncharged and with nothing new learnt of the
/// key (its next claim finds this attempt's write as godwit's own by its time).
fn release(member: Ended) -> Option<Outcome> {
    let mut outcome = member.outcome?;
    outcome.state = ObjectState::Pending;
    outcome.attempts = member.attempts_before;
    outcome.checksum = None;
    outcome.dest_etag = None;
    outcome.dest_version = None;
    outcome.verified_by = None;
    outcome.error = None;
    outcome.own_write = OwnWriteChange::Keep;
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_state::{LeaseToken, ObjectId};

    fn ended(key: &str, state: ObjectState, error: Option<&str>) -> Ended {
        Ended {
            key: key.to_owned(),
            outcome: Some(Outcome {
                id: ObjectId(1),
                token: LeaseToken(1),
                state,
                attempts: 1,
                size: 1,
                version: String::new(),
                checksum: None,
                dest_etag: None,
                dest_version: None,
                verified_by: None,
                error: error.map(|m| ("access_denied".to_owned(), m.to_owned())),
                own_write: OwnWriteChange::Keep,
                metadata: None,
            }),
            owned_before: false,
            attempts_before: 0,
        }
    }

    #[test]
    fn a_group_commits_only_when_every_member_ended_well() {
        use ObjectState::*;
        let commit = [
            ended("a", Copied, None),
            ended("b", AlreadyPresent, None),
            ended("c", SourceVanished, None),
        ];
        assert_eq!(verdict("g", &commit, None), Verdict::Commit);
        assert_eq!(
            verdict("g", &commit, Some("x ended failed: gone".into())),
            Verdict::RollBack("group 'g' rolled back: x ended failed: gone".into())
        );
        let failed = [
            ended("a", Copied, None),
            ended("b", Failed, Some("cannot read")),
            ended("c", Copied, None),
        ];
        assert_eq!(
            verdict("g", &failed, None),
            Verdict::RollBack("group 'g' rolled back: b ended failed: cannot read".into())
        );
        let conflict = [ended("a", Copied, None), ended("b", Conflict, None)];
        assert_eq!(
            verdict("g", &conflict, None),
            Verdict::RollBack("group 'g' rolled back: b ended conflict: conflict".into())
        );
        // Unfinished beats failed: the group is tried again whole.
        let paused = [ended("a", Failed, Some("x")), ended("b", Pending, None)];
        assert_eq!(verdict("g", &paused, None), Verdict::Release);
    }
}
