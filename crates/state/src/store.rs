//! The [`Store`] trait: all the engine asks of the ledger.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{
    Claim, ClaimedObject, ControlState, Cutover, DoneObject, FailedObject, KnownObject,
    LedgerObject, Migration, MigrationId, MigrationSpec, MigrationStatus, Notice, ObjectId,
    ObjectPage, ObjectQuery, Outcome, PacketLimits, PartRecord, PartitionTally, Pass, PassCounts,
    Problem, ScannedObject, ShardClaim, ShardMark, SourceVersion, StaleUpload, StoreError, Tally,
    WorkerBeat, WorkerRecord,
};

/// The ledger. All methods take batches where the hot path calls them, so one transaction covers
/// many objects.
#[async_trait]
pub trait Store: Send + Sync {
    /// Finds the migration named in `spec`, or creates it. A migration of that name that moves
    /// objects elsewhere (other locations, other endpoints) is [`StoreError::NameTaken`].
    async fn open_migration(&self, spec: &MigrationSpec) -> Result<Migration, StoreError>;
    /// Pauses, resumes or cancels the migration (see [`MigrationStatus`]).
    async fn set_status(
        &self,
        migration: MigrationId,
        status: MigrationStatus,
    ) -> Result<(), StoreError>;
    /// What steers the migration's workers now: its status, and when a worker last found the
    /// destination throttling.
    async fn control_of(&self, migration: MigrationId) -> Result<ControlState, StoreError>;
    /// The migration's status now.
    async fn status_of(&self, migration: MigrationId) -> Result<MigrationStatus, StoreError> {
        Ok(self.control_of(migration).await?.status)
    }
    /// Tells every worker of the migration that the destination (or source) is throttling: they
    /// each lower their objects in flight. `at` is kept if it is the latest such note.
    async fn note_throttled(
        &self,
        migration: MigrationId,
        at: SystemTime,
    ) -> Result<(), StoreError>;
    /// Records a worker's heartbeat.
    async fn beat(&self, beat: &WorkerBeat) -> Result<(), StoreError>;
    /// The workers the ledger heard of, most recent heartbeat first.
    async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;
    /// Records how the migration runs (see [`Migration::options`]).
    async fn save_options(&self, migration: MigrationId, options: &str) -> Result<(), StoreError>;
    /// The migration named `name`, if the ledger has it (without creating it).
    async fn find_migration(&self, name: &str) -> Result<Option<Migration>, StoreError>;
    /// Every migration in the ledger, oldest first.
    async fn migrations(&self) -> Result<Vec<Migration>, StoreError>;
    /// Starts a new pass, whose scan applies `filter`, and returns it.
    async fn start_pass(&self, migration: MigrationId, filter: &str) -> Result<Pass, StoreError>;
    /// Scans pass `pass` again (its scan was cut short, or the filter changed), applying `filter`.
    /// With the filter the pass recorded, its shards keep how far they were listed (the scan
    /// resumes); with another, they are forgotten (planned again and listed from the start).
    async fn restart_scan(
        &self,
        migration: MigrationId,
        pass: u32,
        filter: &str,
    ) -> Result<(), StoreError>;
    /// Records a batch the scan found, in one transaction. An object seen before is left alone
    /// unless its size or version changed (then it is queued again) or it had not started (then the
    /// current filters decide). With `mark`, the same transaction records how far its shard has
    /// been listed; a mark whose claim was lost (another worker holds the shard now) is
    /// [`StoreError::ShardLost`], and nothing is recorded.
    async fn record_scanned(
        &self,
        migration: MigrationId,
        pass: u32,
        batch: Vec<ScannedObject>,
        mark: Option<ShardMark>,
    ) -> Result<(), StoreError>;
    /// Records the shards the pass's listing is cut into (see [`ShardClaim::name`]), unless the
    /// pass has shards already (another worker planned them, or the scan resumes): then nothing
    /// changes. Returns how many shards the pass has.
    async fn plan_shards(
        &self,
        migration: MigrationId,
        pass: u32,
        names: Vec<String>,
    ) -> Result<u64, StoreError>;
    /// How many shards of the pass are not listed to their end yet; `None` when the pass has no
    /// shards planned.
    async fn shards_left(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<Option<u64>, StoreError>;
    /// Claims one shard of the pass that nobody holds (never claimed, handed back, or its lease
    /// ran out), the first by name, for `worker` under a fresh token and a lease of `lease`.
    async fn claim_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ShardClaim>, StoreError>;
    /// Marks a claimed shard listed to its end; returns how many shards of the pass are left.
    /// [`StoreError::ShardLost`] when the claim was lost.
    async fn finish_shard(
        &self,
        migration: MigrationId,
        pass: u32,
        shard: &ShardClaim,
    ) -> Result<u64, StoreError>;
    /// Marks the pass's scan as complete.
    async fn finish_scan(&self, migration: MigrationId, pass: u32) -> Result<(), StoreError>;
    /// Claims a packet of pending objects for `worker`.
    async fn claim(
        &self,
        migration: MigrationId,
        worker: &str,
        limits: PacketLimits,
    ) -> Result<Vec<ClaimedObject>, StoreError>;
    /// Puts claims whose holders are gone back in the pool, when a run starts; returns how many
    /// objects. SQLite is held by one process, so every claim in it is abandoned; on PostgreSQL
    /// other workers may be alive, so only claims whose lease ran out go back. Shard claims go
    /// back alike (keeping how far they were listed).
    async fn recover_abandoned(&self, migration: MigrationId) -> Result<u64, StoreError>;
    /// Puts claims whose lease ran out back in the pool (their holders stopped renewing them);
    /// returns how many. Called as a run goes.
    async fn recover_expired(&self, migration: MigrationId) -> Result<u64, StoreError>;
    /// How many objects of the migration other workers than `worker` hold now.
    async fn held_by_others(&self, migration: MigrationId, worker: &str)
    -> Result<u64, StoreError>;
    /// Renews the leases of every claim `worker` holds (objects and shards), to `lease` from now;
    /// returns how many.
    async fn renew_leases(&self, worker: &str, lease: Duration) -> Result<u64, StoreError>;
    /// Hands every claim `worker` holds back to the pool at once, without charging the attempt
    /// (a worker told to quit now); returns how many objects. Its shards go back too, keeping how
    /// far they were listed. Its writes about them are refused after.
    async fn release_claims(&self, worker: &str) -> Result<u64, StoreError>;
    /// Records a batch of outcomes in one transaction. An outcome whose claim was lost (another
    /// worker took the object since) changes nothing; returns how many were so fenced off.
    async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<u64, StoreError>;
    /// Records, before a multipart upload is started for an object, that one is being started
    /// (at `at`): should the run stop before the upload's id is recorded, the next one knows to
    /// look for it and abort it.
    async fn record_upload_intent(&self, claim: Claim, at: SystemTime) -> Result<(), StoreError>;
    /// Records that a multipart upload was started for an object, for `source` (its parts belong
    /// to that version alone).
    async fn record_upload(
        &self,
        claim: Claim,
        upload_id: &str,
        part_size: u64,
        source: &SourceVersion,
    ) -> Result<(), StoreError>;
    /// Records a finished part of the object's current upload.
    async fn record_part(&self, claim: Claim, part: PartRecord) -> Result<(), StoreError>;
    /// Forgets the object's upload and its parts (after it completed or was aborted).
    async fn clear_upload(&self, claim: Claim) -> Result<(), StoreError>;
    /// Forgets the upload of an object nobody holds (see [`Store::stale_uploads`]); an object
    /// claimed since keeps its upload.
    async fn forget_stale_upload(&self, object: ObjectId) -> Result<(), StoreError>;
    /// Uploads recorded (or begun) for objects that are neither pending nor claimed: nothing
    /// will complete them.
    async fn stale_uploads(&self, migration: MigrationId) -> Result<Vec<StaleUpload>, StoreError>;
    /// Counts and bytes per state, read from counters the database keeps (not counted anew).
    async fn tally(&self, migration: MigrationId) -> Result<Tally, StoreError>;
    /// Counts and bytes per state of each partition, with its checkpoints, in byte order of their
    /// names (the default partition, `None`, first; a partition named `""` is the default one),
    /// read from counters the database keeps.
    async fn partitions(&self, migration: MigrationId) -> Result<Vec<PartitionTally>, StoreError>;
    /// A page of the migration's objects in byte order of their keys, as `query` asks (a
    /// prefix, a state, after a key); each call reads a bounded number of objects (see
    /// [`ObjectQuery::budget`]), so a page may come short with a next one to read.
    async fn objects_page(
        &self,
        migration: MigrationId,
        query: ObjectQuery,
    ) -> Result<ObjectPage, StoreError>;
    /// Records a validation of `partition` that began at `started` (milliseconds since the Unix
    /// epoch): whether it passed, and its report (JSON).
    async fn record_validation(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        started: i64,
        passed: bool,
        report: &str,
    ) -> Result<(), StoreError>;
    /// Sets `partition`'s cutover flag at `at`, only if its latest validation passed and none
    /// of its objects became work again since it began: one transaction, so a change recorded
    /// meanwhile either comes before (and refuses) or after.
    async fn cut_over(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        at: i64,
    ) -> Result<Cutover, StoreError>;
    /// Records how the notice of `partition`'s cutover went.
    async fn record_notice(
        &self,
        migration: MigrationId,
        partition: Option<&str>,
        notice: &Notice,
    ) -> Result<(), StoreError>;
    /// Up to `limit` of the migration's objects in key order after `after`, for validation.
    async fn objects_after(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LedgerObject>, StoreError>;
    /// What pass `pass` found new, changed and (once its scan is complete) vanished.
    async fn pass_counts(
        &self,
        migration: MigrationId,
        pass: u32,
    ) -> Result<PassCounts, StoreError>;
    /// Why group `group` cannot commit as the ledger stands: its first member (by key) in the
    /// fail queue or in conflict, as `KEY ended STATE: ERROR`; `None` when it has none.
    async fn group_problem(
        &self,
        migration: MigrationId,
        group: &str,
    ) -> Result<Option<String>, StoreError>;
    /// The first `limit` conflicts and failures.
    async fn problems(
        &self,
        migration: MigrationId,
        limit: u32,
    ) -> Result<Vec<Problem>, StoreError>;
    /// Puts the failed objects (of error class `class`, or all) back in the queue with fresh
    /// attempts, with every failed member of their groups (a group is tried whole); returns how
    /// many. When any were, and the last pass had listed the source in full, its listing is
    /// opened again (shards forgotten): the next run lists all of the source, so what was fixed
    /// by a rename or a new file is found in that run, and a retried object gone from the source
    /// settles as vanished.
    async fn requeue_failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
    ) -> Result<u64, StoreError>;
    /// The fail queue, a page at a time: up to `limit` failed objects (of error class `class`,
    /// or all) after object `after`, in id order.
    async fn failed(
        &self,
        migration: MigrationId,
        class: Option<&str>,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<FailedObject>, StoreError>;
    /// Up to `limit` objects counted done at the destination, in key order, after `after`.
    async fn done_objects(
        &self,
        migration: MigrationId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DoneObject>, StoreError>;
    /// Puts these objects back in the queue with fresh attempts (the destination lost them);
    /// returns how many. Only done ones (`copied`, `already_present`): one a worker claimed
    /// since it was read stays that worker's; one of a partition cut over is the application's.
    async fn requeue(&self, objects: &[ObjectId]) -> Result<u64, StoreError>;
    /// What the ledger knows of these keys (those it has).
    async fn lookup(
        &self,
        migration: MigrationId,
        keys: Vec<String>,
    ) -> Result<Vec<KnownObject>, StoreError>;
}
