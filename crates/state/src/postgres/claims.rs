//! Claims: packets taken under a lease and its fencing token, leases renewed and recovered,
//! outcomes recorded.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;

use crate::{
    ClaimedObject, LeaseToken, MigrationId, ObjectId, Outcome, OwnWrite, OwnWriteChange,
    PacketLimits, PartRecord, SourceVersion, StoreError, UploadRecord, from_millis, millis, now,
};

use super::PgStore;

/// Claims a packet, in one statement: locks the first pending rows (other workers' packets are
/// skipped, not waited for), cuts them at the byte limit (always one), and takes them under a
/// fresh token; the `first_claimed_at` returned is the one from before this claim. Pending rows
/// are read in the order of `objects_pending`'s `id + 0`, which no other index gives: the planner
/// cannot walk the primary key instead and filter out every finished row (as it would, with a
/// generic plan or statistics taken while all were pending). Public for the plan test.
#[doc(hidden)]
pub const CLAIM: &str = "WITH locked AS (
           SELECT id, size, first_claimed_at FROM objects
           WHERE migration_id = $1 AND state = 0
             AND ($7::text[] IS NULL OR COALESCE(partition_key, '') = ANY($7))
           ORDER BY id + 0 LIMIT $2
           FOR UPDATE SKIP LOCKED
         ), cut AS (
           SELECT id, first_claimed_at,
             (SUM(size) OVER (ORDER BY id))::bigint AS through, ROW_NUMBER() OVER (ORDER BY id) AS n
           FROM locked
         ), token AS (SELECT nextval('lease_tokens') AS value)
         UPDATE objects SET state = 1, attempts = attempts + 1, lease_owner = $3,
           lease_expires = $4, first_claimed_at = COALESCE(objects.first_claimed_at, $5),
           lease_token = token.value
         FROM cut, token
         WHERE objects.id = cut.id AND (cut.n = 1 OR cut.through <= $6)
         RETURNING objects.id, key, size, version, attempts, upload_id, part_size, upload_size,
           upload_version, upload_started_at, written_etag, written_version,
           cut.first_claimed_at, token.value, objects.group_key";

/// `CLAIM` for a migration whose groups are taken whole (`PacketLimits::whole_groups`): objects
/// in no group as ever; an object of a group only once the pass's scan is complete, and only
/// under the group's advisory lock (held to the end of the statement, so two workers never take
/// parts of one group), bringing every other pending object of its group along, whatever the
/// limits.
const CLAIM_GROUPED: &str = "WITH ready AS (
           SELECT COALESCE((SELECT scan_completed_at IS NOT NULL FROM passes
             WHERE migration_id = $1 ORDER BY number DESC LIMIT 1), false) AS done
         ), heads AS (
           SELECT o.id, o.size, o.first_claimed_at, o.group_key FROM objects o
           WHERE o.migration_id = $1 AND o.state = 0
             AND ($7::text[] IS NULL OR COALESCE(o.partition_key, '') = ANY($7))
             AND (o.group_key IS NULL OR ((SELECT done FROM ready)
               AND pg_try_advisory_xact_lock(hashtextextended(o.group_key, $1))))
           ORDER BY o.id + 0 LIMIT $2
           FOR UPDATE OF o SKIP LOCKED
         ), cut AS (
           SELECT id, first_claimed_at, group_key,
             (SUM(size) OVER (ORDER BY id))::bigint AS through, ROW_NUMBER() OVER (ORDER BY id) AS n
           FROM heads
         ), picked AS (
           SELECT id, first_claimed_at, group_key FROM cut WHERE n = 1 OR through <= $6
         ), members AS (
           SELECT o.id, o.first_claimed_at FROM objects o
           WHERE o.migration_id = $1 AND o.state = 0
             AND o.group_key IN (SELECT group_key FROM picked WHERE group_key IS NOT NULL)
           FOR UPDATE OF o
         ), taken AS (
           SELECT id, first_claimed_at FROM picked UNION SELECT id, first_claimed_at FROM members
         ), token AS (SELECT nextval('lease_tokens') AS value)
         UPDATE objects SET state = 1, attempts = attempts + 1, lease_owner = $3,
           lease_expires = $4, first_claimed_at = COALESCE(objects.first_claimed_at, $5),
           lease_token = token.value
         FROM taken, token
         WHERE objects.id = taken.id
         RETURNING objects.id, key, size, version, attempts, upload_id, part_size, upload_size,
           upload_version, upload_started_at, written_etag, written_version,
           taken.first_claimed_at, token.value, objects.group_key";

impl PgStore {
    /// Runs a statement that changes objects and shards at once and counts each.
    async fn objects_and_shards(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.db(e))?;
        let row = client
            .query_one(&statement, params)
            .await
            .map_err(|e| self.db(e))?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    pub(super) async fn claim(
        &self,
        migration: MigrationId,
        worker: &str,
        limits: PacketLimits,
    ) -> Result<Vec<ClaimedObject>, StoreError> {
        let client = self.client().await?;
        let expires = now() + limits.lease.as_secs() as i64;
        let at = millis(SystemTime::now());
        // One statement (`CLAIM`, or `CLAIM_GROUPED`), committing on its own: one round trip a
        // packet.
        let claim = if limits.whole_groups {
            CLAIM_GROUPED
        } else {
            CLAIM
        };
        let rows = client
            .query(
                &client.prepare_cached(claim).await.map_err(|e| self.db(e))?,
                &[
                    &migration.0,
                    &i64::from(limits.max_objects),
                    &worker,
                    &expires,
                    &at,
                    &(limits.max_bytes.min(i64::MAX as u64) as i64),
                    &limits.partitions.as_deref().map(<[String]>::to_vec),
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let earlier: HashMap<i64, Option<i64>> =
            rows.iter().map(|row| (row.get(0), row.get(12))).collect();
        let token: i64 = rows[0].get(13);
        let with_uploads: Vec<i64> = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(5).is_some())
            .map(|row| row.get(0))
            .collect();
        let mut parts: HashMap<i64, Vec<PartRecord>> = HashMap::new();
        // Read after the claim: the objects are this worker's now, and only the holder of their
        // token records parts.
        if !with_uploads.is_empty() {
            for row in client
                .query(
                    &client
                        .prepare_cached(
                            "SELECT object_id, part_number, etag, checksum, size, md5 FROM parts
                     WHERE object_id = ANY($1) ORDER BY object_id, part_number",
                        )
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&with_uploads],
                )
                .await
                .map_err(|e| self.db(e))?
            {
                parts.entry(row.get(0)).or_default().push(PartRecord {
                    part_number: row.get::<_, i64>(1) as u32,
                    etag: row.get(2),
                    checksum: row.get(3),
                    size: row.get::<_, i64>(4) as u64,
                    md5: row.get(5),
                });
            }
        }
        let mut claimed: Vec<ClaimedObject> = rows
            .into_iter()
            .map(|row| {
                let id: i64 = row.get(0);
                let upload_id: Option<String> = row.get(5);
                let source = match (
                    row.get::<_, Option<i64>>(7),
                    row.get::<_, Option<String>>(8),
                ) {
                    (Some(size), Some(version)) => Some(SourceVersion {
                        size: size as u64,
                        version,
                    }),
                    _ => None,
                };
                let started: Option<i64> = row.get(9);
                let written_etag: Option<String> = row.get(10);
                let written_version: Option<String> = row.get(11);
                ClaimedObject {
                    id: ObjectId(id),
                    token: LeaseToken(token),
                    key: row.get(1),
                    size: row.get::<_, i64>(2) as u64,
                    version: row.get(3),
                    attempts: row.get::<_, i64>(4) as u32,
                    unrecorded_upload_since: match &upload_id {
                        None => started.map(from_millis),
                        Some(_) => None,
                    },
                    upload: upload_id.map(|upload_id| UploadRecord {
                        upload_id,
                        part_size: row.get::<_, Option<i64>>(6).unwrap_or(0) as u64,
                        source,
                        parts: parts.remove(&id).unwrap_or_default(),
                    }),
                    own_write: (written_etag.is_some() || written_version.is_some()).then_some(
                        OwnWrite {
                            etag: written_etag,
                            version_id: written_version,
                        },
                    ),
                    earlier_claim_at: earlier.get(&id).copied().flatten().map(from_millis),
                    group: row
                        .get::<_, Option<String>>(14)
                        .filter(|_| limits.whole_groups),
                }
            })
            .collect();
        // In id order, as the SQLite ledger hands them out.
        claimed.sort_by_key(|c| c.id.0);
        Ok(claimed)
    }

    pub(super) async fn recover_abandoned(
        &self,
        migration: MigrationId,
    ) -> Result<u64, StoreError> {
        // Other workers may be alive: only claims whose lease ran out go back. Objects and
        // shards in one statement: one round trip, all or nothing.
        self.objects_and_shards(
            "WITH objects AS (
               UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL
               WHERE migration_id = $1 AND state = 1 AND lease_expires <= $2 RETURNING 1
             ), shards AS (
               UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
               WHERE migration_id = $1 AND state = 1 AND lease_expires <= $2 RETURNING 1
             )
             SELECT (SELECT COUNT(*) FROM objects), (SELECT COUNT(*) FROM shards)",
            &[&migration.0, &now()],
        )
        .await
        .map(|(objects, _)| objects)
    }

    pub(super) async fn recover_expired(&self, migration: MigrationId) -> Result<u64, StoreError> {
        self.recover_abandoned(migration).await
    }

    pub(super) async fn release_claims(&self, worker: &str) -> Result<u64, StoreError> {
        self.objects_and_shards(
            "WITH objects AS (
               UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL,
                 attempts = GREATEST(attempts - 1, 0)
               WHERE lease_owner = $1 AND state = 1 RETURNING 1
             ), shards AS (
               UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
               WHERE lease_owner = $1 AND state = 1 RETURNING 1
             )
             SELECT (SELECT COUNT(*) FROM objects), (SELECT COUNT(*) FROM shards)",
            &[&worker],
        )
        .await
        .map(|(objects, _)| objects)
    }

    pub(super) async fn held_by_others(
        &self,
        migration: MigrationId,
        worker: &str,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT COUNT(*) FROM objects WHERE migration_id = $1 AND state = 1
                   AND lease_owner IS DISTINCT FROM $2",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&migration.0, &worker],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(super) async fn renew_leases(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        let expires = now() + lease.as_secs() as i64;
        self.objects_and_shards(
            "WITH objects AS (
               UPDATE objects SET lease_expires = $2 WHERE lease_owner = $1 AND state = 1 RETURNING 1
             ), shards AS (
               UPDATE shards SET lease_expires = $2 WHERE lease_owner = $1 AND state = 1 RETURNING 1
             )
             SELECT (SELECT COUNT(*) FROM objects), (SELECT COUNT(*) FROM shards)",
            &[&worker, &expires],
        )
        .await
        .map(|(objects, shards)| objects + shards)
    }

    pub(super) async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<u64, StoreError> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut sizes = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut checksums = Vec::with_capacity(n);
        let mut etags = Vec::with_capacity(n);
        let mut dest_versions = Vec::with_capacity(n);
        let mut verified = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut messages = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut own = Vec::with_capacity(n);
        let mut own_etags = Vec::with_capacity(n);
        let mut own_versions = Vec::with_capacity(n);
        let mut metadata = Vec::with_capacity(n);
        for outcome in outcomes {
            ids.push(outcome.id.0);
            tokens.push(outcome.token.0);
            states.push(outcome.state as i64);
            sizes.push(outcome.size as i64);
            versions.push(outcome.version);
            checksums.push(outcome.checksum);
            etags.push(outcome.dest_etag);
            dest_versions.push(outcome.dest_version);
            verified.push(outcome.verified_by.map(str::to_owned));
            let (kind, message) = outcome.error.unzip();
            kinds.push(kind);
            messages.push(message);
            attempts.push(i64::from(outcome.attempts));
            let (code, etag, version) = match outcome.own_write {
                OwnWriteChange::Keep => (0i64, None, None),
                OwnWriteChange::Set(write) => (1, write.etag, write.version_id),
                OwnWriteChange::Forget => (2, None, None),
            };
            own.push(code);
            own_etags.push(etag);
            own_versions.push(version);
            metadata.push(outcome.metadata);
        }
        let client = self.client().await?;
        let params: [&(dyn ToSql + Sync); 17] = [
            &ids,
            &states,
            &sizes,
            &versions,
            &checksums,
            &etags,
            &dest_versions,
            &verified,
            &kinds,
            &messages,
            &attempts,
            &own,
            &own_etags,
            &own_versions,
            &metadata,
            &now(),
            &tokens,
        ];
        let written = client
            .execute(
                &client.prepare_cached("UPDATE objects SET state = o.state, size = o.size, version = o.version,
                   checksum = COALESCE(o.checksum, objects.checksum), dest_etag = o.dest_etag,
                   dest_version = o.dest_version, verified_by = o.verified_by,
                   error_kind = o.error_kind, last_error = o.last_error,
                   lease_owner = NULL, lease_expires = NULL, updated_at = $16, attempts = o.attempts,
                   written_etag = CASE o.own WHEN 0 THEN objects.written_etag WHEN 1 THEN o.own_etag ELSE NULL END,
                   written_version = CASE o.own WHEN 0 THEN objects.written_version WHEN 1 THEN o.own_version ELSE NULL END,
                   metadata = COALESCE(o.metadata, objects.metadata)
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                   $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[],
                   $13::text[], $14::text[], $15::text[], $17::bigint[])
                   AS o(id, state, size, version, checksum, dest_etag, dest_version, verified_by,
                     error_kind, last_error, attempts, own, own_etag, own_version, metadata, token)
                 WHERE objects.id = o.id AND objects.state = 1 AND objects.lease_token = o.token").await.map_err(|e| self.db(e))?,
                &params,
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(n as u64 - written)
    }
}
