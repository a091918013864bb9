//! A source narrowed to the objects a manifest names (`migrate --manifest FILE`).
//!
//! [`ManifestSource`] wraps the real source: its listing is the manifest's keys in key order,
//! each stat'ed at the source (size and version are the real object's), placed in the group and
//! partition the manifest gives. Everything else is the real source's, but the Content-Type a
//! manifest entry gives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{
    CopyOrigin, ErrorKind, Listed, Listing, Location, Metadata, ObjectMeta, PartLayout, Source,
    SourceCapabilities, StorageError,
};

mod parse;
pub use parse::{Manifest, ManifestEntry, ManifestError, ManifestFormat};

/// Entries a listing page holds.
const PAGE: usize = 1000;
/// Stat requests in flight at once while listing.
const STATS_IN_FLIGHT: usize = 16;

/// The source `inner`, listing only what a [`Manifest`] names.
pub struct ManifestSource {
    inner: Arc<dyn Source>,
    entries: Arc<Vec<ManifestEntry>>,
    /// Each key's entry, by its index in `entries`.
    index: HashMap<String, usize>,
}

impl ManifestSource {
    /// `inner`, listing only `manifest`'s entries.
    pub fn new(inner: Arc<dyn Source>, manifest: Manifest) -> Self {
        let index = manifest
            .entries
            .iter()
            .enumerate()
            .map(|(i, entry)| (entry.key.clone(), i))
            .collect();
        Self {
            inner,
            entries: Arc::new(manifest.entries),
            index,
        }
    }

    /// Reads the manifest at `path` and wraps `inner` in it.
    pub fn open(inner: Arc<dyn Source>, path: &Path) -> Result<Self, ManifestError> {
        Ok(Self::new(inner, Manifest::read(path)?))
    }

    fn entry(&self, key: &str) -> Option<&ManifestEntry> {
        self.index.get(key).map(|&i| &self.entries[i])
    }

    fn content_type(&self, key: &str, mut metadata: Metadata) -> Metadata {
        if let Some(content_type) = self.entry(key).and_then(|e| e.content_type.clone()) {
            metadata.content_type = Some(content_type);
        }
        metadata
    }
}

/// What the listing makes of one entry, given the source's answer.
fn listed(entry: &ManifestEntry, found: Result<Option<ObjectMeta>, StorageError>) -> Listed {
    let unreadable = |kind, message: String| Listed::Unreadable {
        key: entry.key.clone(),
        error: StorageError::new(kind, message),
    };
    match found {
        Ok(Some(meta)) => match entry.size {
            Some(size) if size != meta.size => unreadable(
                ErrorKind::InvalidInput,
                format!(
                    "{}: the manifest (line {}) gives a size of {size} bytes, the source's object has {}; fix the manifest or the object",
                    entry.key, entry.line, meta.size
                ),
            ),
            _ => Listed::Object(ObjectMeta {
                group: entry.group.clone(),
                partition: entry.partition.clone(),
                ..meta
            }),
        },
        Ok(None) => unreadable(
            ErrorKind::NotFound,
            format!(
                "{}: listed in the manifest (line {}), not found at the source",
                entry.key, entry.line
            ),
        ),
        Err(error) => Listed::Unreadable {
            key: entry.key.clone(),
            error,
        },
    }
}

#[async_trait]
impl Source for ManifestSource {
    fn location(&self) -> &Location {
        self.inner.location()
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            places_groups: self.inner.capabilities().places_groups
                || self.entries.iter().any(|e| e.group.is_some()),
            ..self.inner.capabilities()
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.inner.check().await
    }

    fn list(&self) -> Listing {
        let (pages, receiver) = mpsc::channel(1);
        let inner = Arc::clone(&self.inner);
        let entries = Arc::clone(&self.entries);
        tokio::spawn(async move {
            for chunk in entries.chunks(PAGE) {
                // Owned entries: a future borrowing from the chunk is not `Send` for tokio.
                let page: Vec<Listed> = futures::stream::iter(chunk.to_vec())
                    .map(|entry| {
                        let inner = Arc::clone(&inner);
                        async move {
                            let found = inner.stat(&entry.key).await;
                            listed(&entry, found)
                        }
                    })
                    .buffered(STATS_IN_FLIGHT)
                    .collect()
                    .await;
                if pages.send(Ok(page)).await.is_err() {
                    return;
                }
            }
        });
        receiver
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let found = self.inner.stat(key).await?;
        Ok(found.map(|meta| match self.entry(key) {
            Some(entry) => ObjectMeta {
                group: entry.group.clone(),
                partition: entry.partition.clone(),
                ..meta
            },
            None => meta,
        }))
    }

    async fn read(
        &self,
        expected: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        self.inner.read(expected, offset, len).await
    }

    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }

    async fn read_whole(&self, expected: &ObjectMeta) -> Result<(Bytes, Metadata), StorageError> {
        let (bytes, metadata) = self.inner.read_whole(expected).await?;
        Ok((bytes, self.content_type(&expected.key, metadata)))
    }

    async fn metadata(&self, expected: &ObjectMeta) -> Result<Metadata, StorageError> {
        let metadata = self.inner.metadata(expected).await?;
        Ok(self.content_type(&expected.key, metadata))
    }

    async fn tags(&self, expected: &ObjectMeta) -> Result<Option<String>, StorageError> {
        self.inner.tags(expected).await
    }

    fn copy_origin(&self) -> Option<CopyOrigin> {
        // A server-side copy would keep the source's Content-Type, not the manifest's.
        if self.entries.iter().any(|e| e.content_type.is_some()) {
            return None;
        }
        self.inner.copy_origin()
    }

    async fn part_layout(&self, meta: &ObjectMeta) -> Result<Option<PartLayout>, StorageError> {
        self.inner.part_layout(meta).await
    }
}
