//! Multipart uploads and their parts, recorded under a claim, and uploads left behind.

use std::time::SystemTime;

use rusqlite::params;

use crate::{
    Claim, MigrationId, ObjectId, PartRecord, SourceVersion, StaleUpload, StoreError, from_millis,
    millis,
};

use super::SqliteStore;

/// `Ok` when a write about a claimed object changed its row; the lease was lost otherwise.
fn held(changed: usize, claim: Claim) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(claim.id.0))
    }
}

impl SqliteStore {
    pub(super) async fn record_upload_intent(
        &self,
        claim: Claim,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.with(move |connection| {
            let n = connection.execute(
                "UPDATE objects SET upload_started_at = ?2 WHERE id = ?1 AND state = 1 AND lease_token IS ?3",
                params![claim.id.0, millis(at), claim.token.0],
            )?;
            Ok(n)
        })
        .await
        .and_then(|n| held(n, claim))
    }

    pub(super) async fn record_upload(
        &self,
        claim: Claim,
        upload_id: &str,
        part_size: u64,
        source: &SourceVersion,
    ) -> Result<(), StoreError> {
        let upload_id = upload_id.to_owned();
        let source = source.clone();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET upload_id = ?2, part_size = ?3, upload_size = ?4, upload_version = ?5
                 WHERE id = ?1 AND state = 1 AND lease_token IS ?6",
                params![claim.id.0, upload_id, part_size as i64, source.size as i64, source.version, claim.token.0],
            )?;
            if n == 1 {
                transaction.execute("DELETE FROM parts WHERE object_id = ?1", params![claim.id.0])?;
            }
            transaction.commit()?;
            Ok(n)
        })
        .await
        .and_then(|n| held(n, claim))
    }

    pub(super) async fn record_part(
        &self,
        claim: Claim,
        part: PartRecord,
    ) -> Result<(), StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let held = transaction
                .prepare_cached("SELECT COUNT(*) FROM objects WHERE id = ?1 AND state = 1 AND lease_token IS ?2")?
                .query_row(params![claim.id.0, claim.token.0], |row| row.get::<_, i64>(0))?;
            if held == 1 {
                transaction
                    .prepare_cached(
                        "INSERT OR REPLACE INTO parts (object_id, part_number, etag, checksum, size, md5)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        claim.id.0,
                        part.part_number,
                        part.etag,
                        part.checksum,
                        part.size as i64,
                        part.md5
                    ])?;
            }
            transaction.commit()?;
            Ok(held as usize)
        })
        .await
        .and_then(|n| held(n, claim))
    }

    pub(super) async fn clear_upload(&self, claim: Claim) -> Result<(), StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET upload_id = NULL, part_size = NULL, upload_size = NULL,
                   upload_version = NULL, upload_started_at = NULL
                 WHERE id = ?1 AND state = 1 AND lease_token IS ?2",
                params![claim.id.0, claim.token.0],
            )?;
            if n == 1 {
                transaction.execute(
                    "DELETE FROM parts WHERE object_id = ?1",
                    params![claim.id.0],
                )?;
            }
            transaction.commit()?;
            Ok(n)
        })
        .await
        .and_then(|n| held(n, claim))
    }

    pub(super) async fn forget_stale_upload(&self, object: ObjectId) -> Result<(), StoreError> {
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let n = transaction.execute(
                "UPDATE objects SET upload_id = NULL, part_size = NULL, upload_size = NULL,
                   upload_version = NULL, upload_started_at = NULL
                 WHERE id = ?1 AND state NOT IN (0, 1)",
                params![object.0],
            )?;
            if n == 1 {
                transaction.execute("DELETE FROM parts WHERE object_id = ?1", params![object.0])?;
            }
            transaction.commit()
        })
        .await
    }

    pub(super) async fn stale_uploads(
        &self,
        migration: MigrationId,
    ) -> Result<Vec<StaleUpload>, StoreError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, key, upload_id, upload_started_at FROM objects
                 WHERE migration_id = ?1 AND (upload_id IS NOT NULL OR upload_started_at IS NOT NULL)
                   AND state NOT IN (0, 1)
                 ORDER BY id",
            )?;
            let rows = statement.query_map(params![migration.0], |row| {
                Ok(StaleUpload {
                    id: ObjectId(row.get(0)?),
                    key: row.get(1)?,
                    upload_id: row.get(2)?,
                    started_at: row.get::<_, Option<i64>>(3)?.map(from_millis),
                })
            })?;
            rows.collect()
        })
        .await
    }
}
