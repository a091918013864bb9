//! Trusting the destination over the ledger: before a finished migration is run again, every
//! object the ledger counts as done (`copied`, `already_present`) must still be at the
//! destination, with its size (and ETag, where both sides know it). One LIST per 1,000 keys,
//! walked alongside the ledger's done objects, both in key order; whatever is missing or
//! different there goes back to the queue, so the run copies it again (or finds someone else's
//! object at the key: a conflict).

use godwit_state::{MigrationId, ObjectId, Store};
use godwit_storage::Destination;
use serde::Serialize;

use crate::EngineError;
use crate::walk::{DestinationWalk, etags_differ};

/// What the destination lacked of what the ledger counts as done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Recheck {
    /// Objects not at the destination any more.
    pub missing: u64,
    /// Objects at the destination with another size or ETag than recorded.
    pub changed: u64,
}

/// Ledger rows read at once.
const PAGE: u32 = 1000;

/// Walks the ledger's done objects and the destination's listing together; with `requeue`, puts
/// what is missing or different back in the queue.
pub(crate) async fn recheck(
    dest: &dyn Destination,
    store: &dyn Store,
    migration: MigrationId,
    requeue: bool,
) -> Result<Recheck, EngineError> {
    let mut walk = DestinationWalk::new(dest);
    let mut found = Recheck::default();
    let mut lost: Vec<ObjectId> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .done_objects(migration, after.as_deref(), PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for done in page {
            match walk.find(&done.key).await? {
                Some(there) => {
                    if there.size != done.size
                        || etags_differ(&there.version, done.dest_etag.as_deref())
                    {
                        found.changed += 1;
                        lost.push(done.id);
                    }
                }
                None => {
                    found.missing += 1;
                    lost.push(done.id);
                }
            }
            if requeue && lost.len() >= PAGE as usize {
                store.requeue(&lost).await?;
                lost.clear();
            }
        }
    }
    if requeue && !lost.is_empty() {
        store.requeue(&lost).await?;
    }
    Ok(found)
}
