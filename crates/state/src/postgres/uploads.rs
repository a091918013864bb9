//! Multipart uploads and their parts, recorded under a claim, and uploads left behind.

use std::time::SystemTime;

use crate::{
    Claim, MigrationId, ObjectId, PartRecord, SourceVersion, StaleUpload, StoreError, from_millis,
    millis,
};

use super::PgStore;

/// `Ok` when a write about a claimed object changed its row; the lease was lost otherwise.
fn held(changed: u64, claim: Claim) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(claim.id.0))
    }
}

impl PgStore {
    pub(super) async fn record_upload_intent(
        &self,
        claim: Claim,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client.prepare_cached("UPDATE objects SET upload_started_at = $2 WHERE id = $1 AND state = 1 AND lease_token = $3").await.map_err(|e| self.db(e))?,
                &[&claim.id.0, &millis(at), &claim.token.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        held(n, claim)
    }

    pub(super) async fn record_upload(
        &self,
        claim: Claim,
        upload_id: &str,
        part_size: u64,
        source: &SourceVersion,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        let n = transaction
            .execute(
                &transaction.prepare_cached("UPDATE objects SET upload_id = $2, part_size = $3, upload_size = $4, upload_version = $5
                 WHERE id = $1 AND state = 1 AND lease_token = $6").await.map_err(|e| self.db(e))?,
                &[
                    &claim.id.0,
                    &upload_id,
                    &(part_size as i64),
                    &(source.size as i64),
                    &source.version,
                    &claim.token.0,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        if n == 1 {
            transaction
                .execute(
                    &transaction
                        .prepare_cached("DELETE FROM parts WHERE object_id = $1")
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&claim.id.0],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))?;
        held(n, claim)
    }

    pub(super) async fn record_part(
        &self,
        claim: Claim,
        part: PartRecord,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        // Inserted only while the claim holds the object (its row locked against a new claim
        // for the moment of the insert).
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO parts (object_id, part_number, etag, checksum, size, md5)
                 SELECT id, $2, $3, $4, $5, $6 FROM objects
                 WHERE id = $1 AND state = 1 AND lease_token = $7 FOR SHARE
                 ON CONFLICT (object_id, part_number) DO UPDATE SET etag = excluded.etag,
                   checksum = excluded.checksum, size = excluded.size, md5 = excluded.md5",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[
                    &claim.id.0,
                    &i64::from(part.part_number),
                    &part.etag,
                    &part.checksum,
                    &(part.size as i64),
                    &part.md5,
                    &claim.token.0,
                ],
            )
            .await
            .map_err(|e| self.db(e))?;
        held(n, claim)
    }

    pub(super) async fn clear_upload(&self, claim: Claim) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        let n = transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "UPDATE objects SET upload_id = NULL, part_size = NULL, upload_size = NULL,
                   upload_version = NULL, upload_started_at = NULL
                 WHERE id = $1 AND state = 1 AND lease_token = $2",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&claim.id.0, &claim.token.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        if n == 1 {
            transaction
                .execute(
                    &transaction
                        .prepare_cached("DELETE FROM parts WHERE object_id = $1")
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&claim.id.0],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))?;
        held(n, claim)
    }

    pub(super) async fn forget_stale_upload(&self, object: ObjectId) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(|e| self.db(e))?;
        let n = transaction
            .execute(
                &transaction
                    .prepare_cached(
                        "UPDATE objects SET upload_id = NULL, part_size = NULL, upload_size = NULL,
                   upload_version = NULL, upload_started_at = NULL
                 WHERE id = $1 AND state NOT IN (0, 1)",
                    )
                    .await
                    .map_err(|e| self.db(e))?,
                &[&object.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        if n == 1 {
            transaction
                .execute(
                    &transaction
                        .prepare_cached("DELETE FROM parts WHERE object_id = $1")
                        .await
                        .map_err(|e| self.db(e))?,
                    &[&object.0],
                )
                .await
                .map_err(|e| self.db(e))?;
        }
        transaction.commit().await.map_err(|e| self.db(e))
    }

    pub(super) async fn stale_uploads(
        &self,
        migration: MigrationId,
    ) -> Result<Vec<StaleUpload>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client.prepare_cached("SELECT id, key, upload_id, upload_started_at FROM objects
                 WHERE migration_id = $1 AND (upload_id IS NOT NULL OR upload_started_at IS NOT NULL)
                   AND state NOT IN (0, 1)
                 ORDER BY id").await.map_err(|e| self.db(e))?,
                &[&migration.0],
            )
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|row| StaleUpload {
                id: ObjectId(row.get(0)),
                key: row.get(1),
                upload_id: row.get(2),
                started_at: row.get::<_, Option<i64>>(3).map(from_millis),
            })
            .collect())
    }
}
