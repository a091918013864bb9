//! Claims: packets taken under a lease and its fencing token, leases renewed and recovered,
//! outcomes recorded.

use std::time::{Duration, SystemTime};

use rusqlite::{OptionalExtension, params};

use crate::{
    ClaimedObject, LeaseToken, MigrationId, ObjectId, Outcome, OwnWrite, OwnWriteChange,
    PacketLimits, PartRecord, SourceVersion, StoreError, UploadRecord, from_millis, millis, now,
};

use super::SqliteStore;

/// A fencing token no earlier claim of this file used: the time in nanoseconds, made to grow
/// within a run.
pub(super) fn next_token() -> LeaseToken {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let token = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .map_or(now, |last| now.max(last + 1));
    LeaseToken(token)
}

/// A row as a claim returns it.
struct Claimed {
    key: String,
    size: u64,
    version: String,
    attempts: u32,
    upload_id: Option<String>,
    part_size: Option<i64>,
    upload_size: Option<i64>,
    upload_version: Option<String>,
    upload_started_at: Option<i64>,
    written_etag: Option<String>,
    written_version: Option<String>,
    group_key: Option<String>,
}

/// `names` as a JSON array of strings, for `json_each`.
fn json_strings(names: &[String]) -> String {
    let mut json = String::from("[");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push('"');
        for c in name.chars() {
            match c {
                '"' => json.push_str("\\\""),
                '\\' => json.push_str("\\\\"),
                c if (c as u32) < 0x20 => json.push_str(&format!("\\u{:04x}", c as u32)),
                c => json.push(c),
            }
        }
        json.push('"');
    }
    json.push(']');
    json
}

impl SqliteStore {
    pub(super) async fn claim(
        &self,
        migration: MigrationId,
        worker: &str,
        limits: PacketLimits,
    ) -> Result<Vec<ClaimedObject>, StoreError> {
        let worker = worker.to_owned();
        let only = limits.partitions.as_deref().map(json_strings);
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let mut claimed = Vec::new();
            {
                // Whole groups: none before the scan is complete, so a group has all its objects.
                let groups_ready = limits.whole_groups
                    && transaction
                        .prepare_cached(
                            "SELECT scan_completed_at IS NOT NULL FROM passes WHERE migration_id = ?1
                             ORDER BY number DESC LIMIT 1",
                        )?
                        .query_row(params![migration.0], |row| row.get::<_, bool>(0))
                        .optional()?
                        .unwrap_or(false);
                let mut candidates = transaction.prepare_cached(
                    "SELECT id, size, first_claimed_at, group_key FROM objects
                     WHERE migration_id = ?1 AND state = 0 AND (?3 OR group_key IS NULL)
                       AND (?4 IS NULL OR COALESCE(partition_key, '') IN (SELECT value FROM json_each(?4)))
                     ORDER BY id LIMIT ?2",
                )?;
                let at = millis(SystemTime::now());
                let mut ids = Vec::new();
                let mut taken = std::collections::HashSet::new();
                let mut groups = Vec::new();
                let mut bytes = 0u64;
                let everything = !limits.whole_groups;
                let mut rows =
                    candidates.query(params![migration.0, limits.max_objects, everything || groups_ready, only])?;
                while let Some(row) = rows.next()? {
                    let size = row.get::<_, i64>(1)? as u64;
                    if !ids.is_empty() && bytes + size > limits.max_bytes {
                        break;
                    }
                    bytes += size;
                    let id = row.get::<_, i64>(0)?;
                    taken.insert(id);
                    ids.push((id, row.get::<_, Option<i64>>(2)?));
                    if limits.whole_groups
                        && let Some(group) = row.get::<_, Option<String>>(3)?
                        && !groups.contains(&group)
                    {
                        groups.push(group);
                    }
                }
                drop(rows);
                // The rest of each group comes along, whatever the limits.
                let mut members = transaction.prepare_cached(
                    "SELECT id, first_claimed_at FROM objects
                     WHERE migration_id = ?1 AND group_key = ?2 AND state = 0 ORDER BY id",
                )?;
                for group in &groups {
                    let mut rows = members.query(params![migration.0, group])?;
                    while let Some(row) = rows.next()? {
                        let id = row.get::<_, i64>(0)?;
                        if taken.insert(id) {
                            ids.push((id, row.get::<_, Option<i64>>(1)?));
                        }
                    }
                }
                let expires = now() + limits.lease.as_secs() as i64;
                let token = next_token();
                // A `first_claimed_at` read before this claim sets it means an earlier claim.
                let mut take = transaction.prepare_cached(
                    "UPDATE objects SET state = 1, attempts = attempts + 1, lease_owner = ?2, lease_expires = ?3,
                       first_claimed_at = COALESCE(first_claimed_at, ?4), lease_token = ?5
                     WHERE id = ?1
                     RETURNING key, size, version, attempts, upload_id, part_size, upload_size, upload_version,
                       upload_started_at, written_etag, written_version, group_key",
                )?;
                let mut parts = transaction.prepare_cached(
                    "SELECT part_number, etag, checksum, size, md5 FROM parts WHERE object_id = ?1 ORDER BY part_number",
                )?;
                for (id, earlier_claim_at) in ids {
                    let row = take.query_row(params![id, worker, expires, at, token.0], |row| {
                        Ok(Claimed {
                            key: row.get(0)?,
                            size: row.get::<_, i64>(1)? as u64,
                            version: row.get(2)?,
                            attempts: row.get(3)?,
                            upload_id: row.get(4)?,
                            part_size: row.get(5)?,
                            upload_size: row.get(6)?,
                            upload_version: row.get(7)?,
                            upload_started_at: row.get(8)?,
                            written_etag: row.get(9)?,
                            written_version: row.get(10)?,
                            group_key: row.get(11)?,
                        })
                    })?;
                    let source = match (row.upload_size, row.upload_version) {
                        (Some(size), Some(version)) => Some(SourceVersion { size: size as u64, version }),
                        _ => None,
                    };
                    let unrecorded_upload_since = match &row.upload_id {
                        None => row.upload_started_at.map(from_millis),
                        Some(_) => None,
                    };
                    let upload = match row.upload_id {
                        Some(upload_id) => Some(UploadRecord {
                            upload_id,
                            part_size: row.part_size.unwrap_or(0) as u64,
                            source,
                            parts: parts
                                .query_map(params![id], |row| {
                                    Ok(PartRecord {
                                        part_number: row.get(0)?,
                                        etag: row.get(1)?,
                                        checksum: row.get(2)?,
                                        size: row.get::<_, i64>(3)? as u64,
                                        md5: row.get(4)?,
                                    })
                                })?
                                .collect::<rusqlite::Result<_>>()?,
                        }),
                        None => None,
                    };
                    let own_write = (row.written_etag.is_some() || row.written_version.is_some())
                        .then_some(OwnWrite {
                            etag: row.written_etag,
                            version_id: row.written_version,
                        });
                    claimed.push(ClaimedObject {
                        id: ObjectId(id),
                        token,
                        key: row.key,
                        size: row.size,
                        version: row.version,
                        attempts: row.attempts,
                        upload,
                        own_write,
                        earlier_claim_at: earlier_claim_at.map(from_millis),
                        unrecorded_upload_since,
                        group: row.group_key.filter(|_| limits.whole_groups),
                    });
                }
            }
            transaction.commit()?;
            Ok(claimed)
        })
        .await
    }

    pub(super) async fn recover_abandoned(
        &self,
        migration: MigrationId,
    ) -> Result<u64, StoreError> {
        // The lock taken in `open` means no other process works on this file: every claim in it
        // was left by a process that is gone.
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = ?1 AND state = 1",
                params![migration.0],
            )?;
            transaction.execute(
                "UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = ?1 AND state = 1",
                params![migration.0],
            )?;
            transaction.commit()?;
            Ok(n as u64)
        })
        .await
    }

    pub(super) async fn recover_expired(&self, migration: MigrationId) -> Result<u64, StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let at = now();
            let n = transaction.execute(
                "UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = ?1 AND state = 1 AND lease_expires <= ?2",
                params![migration.0, at],
            )?;
            transaction.execute(
                "UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE migration_id = ?1 AND state = 1 AND lease_expires <= ?2",
                params![migration.0, at],
            )?;
            transaction.commit()?;
            Ok(n as u64)
        })
        .await
    }

    pub(super) async fn release_claims(&self, worker: &str) -> Result<u64, StoreError> {
        let worker = worker.to_owned();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET state = 0, lease_owner = NULL, lease_expires = NULL,
                   attempts = MAX(attempts - 1, 0)
                 WHERE lease_owner = ?1 AND state = 1",
                params![worker],
            )?;
            transaction.execute(
                "UPDATE shards SET state = 0, lease_owner = NULL, lease_expires = NULL
                 WHERE lease_owner = ?1 AND state = 1",
                params![worker],
            )?;
            transaction.commit()?;
            Ok(n as u64)
        })
        .await
    }

    pub(super) async fn held_by_others(
        &self,
        migration: MigrationId,
        worker: &str,
    ) -> Result<u64, StoreError> {
        let worker = worker.to_owned();
        self.with(move |connection| {
            connection.query_row(
                "SELECT COUNT(*) FROM objects WHERE migration_id = ?1 AND state = 1
                   AND lease_owner IS NOT ?2",
                params![migration.0, worker],
                |row| row.get::<_, i64>(0).map(|n| n as u64),
            )
        })
        .await
    }

    pub(super) async fn renew_leases(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        let worker = worker.to_owned();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let expires = now() + lease.as_secs() as i64;
            let objects = transaction
                .prepare_cached(
                    "UPDATE objects SET lease_expires = ?2 WHERE lease_owner = ?1 AND state = 1",
                )?
                .execute(params![worker, expires])?;
            let shards = transaction
                .prepare_cached(
                    "UPDATE shards SET lease_expires = ?2 WHERE lease_owner = ?1 AND state = 1",
                )?
                .execute(params![worker, expires])?;
            transaction.commit()?;
            Ok((objects + shards) as u64)
        })
        .await
    }

    pub(super) async fn record_outcomes(&self, outcomes: Vec<Outcome>) -> Result<u64, StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            {
                // ?13: 0 keeps godwit's own write, 1 sets it to ?14/?15, 2 forgets it.
                let mut update = transaction.prepare_cached(
                    "UPDATE objects SET state = ?2, size = ?3, version = ?4, checksum = COALESCE(?5, checksum),
                       dest_etag = ?6, dest_version = ?7, verified_by = ?8, error_kind = ?9, last_error = ?10,
                       lease_owner = NULL, lease_expires = NULL, updated_at = ?11, attempts = ?12,
                       written_etag = CASE ?13 WHEN 0 THEN written_etag WHEN 1 THEN ?14 ELSE NULL END,
                       written_version = CASE ?13 WHEN 0 THEN written_version WHEN 1 THEN ?15 ELSE NULL END,
                       metadata = COALESCE(?16, metadata)
                     WHERE id = ?1 AND state = 1 AND lease_token IS ?17",
                )?;
                let at = now();
                let mut fenced = 0u64;
                for outcome in &outcomes {
                    let (kind, message) = match &outcome.error {
                        Some((kind, message)) => (Some(kind.as_str()), Some(message.as_str())),
                        None => (None, None),
                    };
                    let (own, own_etag, own_version) = match &outcome.own_write {
                        OwnWriteChange::Keep => (0, None, None),
                        OwnWriteChange::Set(write) => {
                            (1, write.etag.as_deref(), write.version_id.as_deref())
                        }
                        OwnWriteChange::Forget => (2, None, None),
                    };
                    if update.execute(params![
                        outcome.id.0,
                        outcome.state as i64,
                        outcome.size as i64,
                        outcome.version,
                        outcome.checksum,
                        outcome.dest_etag,
                        outcome.dest_version,
                        outcome.verified_by,
                        kind,
                        message,
                        at,
                        outcome.attempts,
                        own,
                        own_etag,
                        own_version,
                        outcome.metadata,
                        outcome.token.0
                    ])? == 0
                    {
                        fenced += 1;
                    }
                }
                drop(update);
                transaction.commit()?;
                Ok(fenced)
            }
        })
        .await
    }
}
