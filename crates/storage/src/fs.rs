//! A local or network-mounted directory as a source.
//!
//! A file's version is its modification time in nanoseconds; a read checks it, and the size, both
//! before and after reading, so a file that changes under godwit is never copied torn.

use std::fs::{File, Metadata};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{
    ErrorKind, Listed, Listing, Location, ObjectMeta, Source, SourceCapabilities, StorageError,
    shard,
};

/// How many entries one listing page holds.
const PAGE: usize = 1000;

/// Reads up to this size run on the async threads; larger ones on the blocking pool.
const INLINE_READ: u64 = 256 << 10;

/// A directory tree read as objects: each regular file is one, keyed by its path below the root.
pub struct LocalSource {
    root: PathBuf,
    location: Location,
}

impl LocalSource {
    /// A source rooted at `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            location: Location::Local(root.clone()),
            root,
        }
    }

    fn path_of(&self, key: &str) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(key.split('/'));
        path
    }
}

fn version_of(metadata: &Metadata) -> String {
    let nanos = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    nanos.to_string()
}

fn meta_of(key: String, metadata: &Metadata) -> ObjectMeta {
    ObjectMeta {
        key,
        size: metadata.len(),
        version: version_of(metadata),
        group: None,
        partition: None,
    }
}

/// The `/`-separated key of `path` below `root`. `Err` when a component is not UTF-8 (S3 keys
/// must be): then a stand-in that names the file unambiguously, for the ledger and messages. It
/// writes each invalid byte as `\xNN` (and a backslash as `\\`), so two names that differ only
/// in invalid bytes stay two, and starts with `/`, which no real key does, so it cannot merge
/// with the key of another file.
fn key_of(root: &Path, path: &Path) -> Result<String, String> {
    use std::os::unix::ffi::OsStrExt;
    let relative = path.strip_prefix(root).unwrap_or(path);
    let mut key = String::new();
    let mut valid = true;
    for component in relative.components() {
        if !key.is_empty() {
            key.push('/');
        }
        let part = component.as_os_str();
        match part.to_str() {
            Some(text) => key.push_str(text),
            None => {
                valid = false;
                key.push_str(&escaped(part.as_bytes()));
            }
        }
    }
    if valid {
        Ok(key)
    } else {
        let relative: Vec<String> = relative
            .components()
            .map(|c| escaped(c.as_os_str().as_bytes()))
            .collect();
        Err(format!("/{}", relative.join("/")))
    }
}

/// `bytes` as text: valid UTF-8 as it is (backslashes doubled), every other byte as `\xNN`.
fn escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02X}"));
        }
    }
    out
}

/// What one walk lists: the whole tree, the files at the root, or one top-level directory's
/// tree (see [`crate::shard`]).
enum Scope {
    Whole,
    Top,
    Below(String),
}

impl Scope {
    fn of(shard: &str) -> Scope {
        match shard {
            shard::WHOLE => Scope::Whole,
            shard::TOP => Scope::Top,
            dir => Scope::Below(dir.trim_end_matches('/').to_owned()),
        }
    }
}

/// The top-level directories (following links, as the walk does) as shards, and the root's files
/// as one more; the whole tree as one shard when a top-level name is not UTF-8 (a shard's name is
/// text).
fn shards_blocking(root: &Path) -> Result<Vec<String>, StorageError> {
    let mut shards = vec![shard::TOP.to_owned()];
    let top = walkdir::WalkDir::new(root)
        .min_depth(1)
        .max_depth(1)
        .follow_links(true)
        .sort_by_file_name();
    for entry in top {
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_dir() {
            continue;
        }
        match entry.file_name().to_str() {
            Some(name) => shards.push(format!("{name}/")),
            None => return Ok(vec![shard::WHOLE.to_owned()]),
        }
    }
    Ok(shards)
}

fn list_blocking(
    root: PathBuf,
    scope: Scope,
    after: Option<String>,
    pages: mpsc::Sender<Result<Vec<Listed>, StorageError>>,
) {
    let mut page = Vec::with_capacity(PAGE);
    let start = match &scope {
        Scope::Below(dir) => root.join(dir),
        Scope::Whole | Scope::Top => root.clone(),
    };
    let mut walk = walkdir::WalkDir::new(&start)
        .min_depth(1)
        .follow_links(true)
        .sort_by_file_name();
    if matches!(scope, Scope::Top) {
        walk = walk.max_depth(1);
    }
    // A resumed walk skips what it listed before: whole directories where it can.
    let mut walk = walk.into_iter().filter_entry(|entry| {
        let Some(after) = &after else { return true };
        if !entry.file_type().is_dir() {
            return true;
        }
        key_of(&root, entry.path()).map_or(true, |dir| !shard::walked_past(&dir, after))
    });
    while let Some(entry) = walk.next() {
        let listed = match entry {
            Ok(entry) => {
                let file_type = entry.file_type();
                // Directories are walked into (or, at the root's top, are shards of their own),
                // but not a link back to one of their own ancestors, the root among them (which
                // walkdir does not see as a loop until the second time round).
                if file_type.is_dir() {
                    if entry.path_is_symlink() && links_to_ancestor(entry.path()) {
                        walk.skip_current_dir();
                        let key = key_of(&root, entry.path()).unwrap_or_else(|lossy| lossy);
                        Listed::Unreadable {
                            error: StorageError::new(
                                ErrorKind::Io,
                                format!(
                                    "{}: a symbolic link to a directory that holds it (a loop); remove the link or leave it out with --exclude",
                                    entry.path().display()
                                ),
                            ),
                            key,
                        }
                    } else {
                        continue;
                    }
                } else {
                    if let (Some(after), Ok(key)) = (&after, key_of(&root, entry.path()))
                        && shard::walk_order(&key, after).is_le()
                    {
                        continue;
                    }
                    match key_of(&root, entry.path()) {
                        Err(stand_in) => Listed::Unreadable {
                            error: StorageError::new(
                                ErrorKind::InvalidInput,
                                format!(
                                    "{}{stand_in}: the file name is not valid UTF-8, which S3 keys must be (invalid bytes shown as \\xNN); rename it",
                                    root.display()
                                ),
                            ),
                            key: stand_in,
                        },
                        Ok(key) if !file_type.is_file() => Listed::Unreadable {
                            error: StorageError::new(
                                ErrorKind::InvalidInput,
                                format!(
                                    "{}: not a regular file (a socket, FIFO or device); exclude it with --exclude",
                                    entry.path().display()
                                ),
                            ),
                            key,
                        },
                        Ok(key) => match entry.metadata() {
                            Ok(metadata) => Listed::Object(meta_of(key, &metadata)),
                            Err(err) => Listed::Unreadable {
                                error: StorageError::new(
                                    ErrorKind::Io,
                                    format!(
                                        "{}: cannot read its metadata: {err}",
                                        entry.path().display()
                                    ),
                                ),
                                key,
                            },
                        },
                    }
                }
            }
            Err(err) => {
                let Some(path) = err.path() else {
                    let _ = pages.blocking_send(Err(StorageError::new(
                        ErrorKind::Io,
                        format!("listing {}: {err}", root.display()),
                    )));
                    return;
                };
                let key = key_of(&root, path).unwrap_or_else(|lossy| lossy);
                // ELOOP (40 on Linux): a link that leads to itself, or through others back.
                let looped = err.loop_ancestor().is_some()
                    || err.io_error().and_then(std::io::Error::raw_os_error) == Some(40);
                let hint = if looped {
                    "a symbolic link loop; remove the link or leave it out with --exclude"
                } else {
                    "check its permissions, or leave it out with --exclude"
                };
                // The io error alone: walkdir's own text repeats the path.
                let cause = match err.io_error() {
                    Some(io) => io.to_string(),
                    None => err.to_string(),
                };
                let cause = match cause.rfind(" (os error ") {
                    Some(at) => &cause[..at],
                    None => &cause,
                };
                Listed::Unreadable {
                    error: StorageError::new(
                        ErrorKind::Io,
                        format!("{}: cannot be listed: {cause}; {hint}", path.display()),
                    ),
                    key,
                }
            }
        };
        page.push(listed);
        if page.len() == PAGE {
            let full = std::mem::replace(&mut page, Vec::with_capacity(PAGE));
            if pages.blocking_send(Ok(full)).is_err() {
                return;
            }
        }
    }
    if !page.is_empty() {
        let _ = pages.blocking_send(Ok(page));
    }
}

/// Whether the symbolic link at `path` leads to a directory that holds the link itself.
fn links_to_ancestor(path: &Path) -> bool {
    let (Ok(target), Some(Ok(parent))) = (
        std::fs::canonicalize(path),
        path.parent().map(std::fs::canonicalize),
    ) else {
        return false;
    };
    parent.starts_with(target)
}

fn changed(expected: &ObjectMeta, now: &Metadata) -> bool {
    now.len() != expected.size || version_of(now) != expected.version
}

fn read_blocking(
    path: &Path,
    expected: &ObjectMeta,
    offset: u64,
    len: u64,
) -> Result<Bytes, StorageError> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| StorageError::io(&format!("opening {shown}"), &e))?;
    let before = file
        .metadata()
        .map_err(|e| StorageError::io(&format!("reading {shown}"), &e))?;
    if changed(expected, &before) {
        return Err(source_changed(&shown));
    }
    let len = usize::try_from(len)
        .map_err(|_| StorageError::new(ErrorKind::InvalidInput, "read too large"))?;
    let mut buffer = vec![0u8; len];
    file.read_exact_at(&mut buffer, offset)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => source_changed(&shown),
            _ => StorageError::io(&format!("reading {shown}"), &e),
        })?;
    let after = file
        .metadata()
        .map_err(|e| StorageError::io(&format!("reading {shown}"), &e))?;
    if changed(expected, &after) {
        return Err(source_changed(&shown));
    }
    Ok(Bytes::from(buffer))
}

fn source_changed(shown: &impl std::fmt::Display) -> StorageError {
    StorageError::new(
        ErrorKind::SourceChanged,
        format!("{shown} changed while godwit was reading it; it will be read again"),
    )
}

#[async_trait]
impl Source for LocalSource {
    fn location(&self) -> &Location {
        &self.location
    }

    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities {
            ranged_reads: true,
            places_groups: false,
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        let root = self.root.clone();
        let metadata = tokio::fs::metadata(&root).await.map_err(|e| {
            let mut err = StorageError::io(&format!("source directory {}", root.display()), &e);
            if err.kind() == ErrorKind::NotFound {
                err = StorageError::new(
                    ErrorKind::NotFound,
                    format!(
                        "source directory {} does not exist; check the path",
                        root.display()
                    ),
                );
            }
            err
        })?;
        if !metadata.is_dir() {
            return Err(StorageError::new(
                ErrorKind::InvalidInput,
                format!(
                    "source {} is not a directory; give the directory that holds the files",
                    root.display()
                ),
            ));
        }
        let _listing = tokio::fs::read_dir(&root).await.map_err(|e| {
            StorageError::io(&format!("listing source directory {}", root.display()), &e)
        })?;
        Ok(())
    }

    fn list(&self) -> Listing {
        self.list_shard(shard::WHOLE, None)
    }

    async fn shards(&self) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || shards_blocking(&root))
            .await
            .map_err(|e| StorageError::new(ErrorKind::Other, format!("listing task failed: {e}")))?
    }

    fn list_shard(&self, shard: &str, after: Option<&str>) -> Listing {
        let (sender, receiver) = mpsc::channel(4);
        let root = self.root.clone();
        let (scope, after) = (Scope::of(shard), after.map(str::to_owned));
        tokio::task::spawn_blocking(move || list_blocking(root, scope, after, sender));
        receiver
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_of(key);
        match tokio::fs::metadata(&path).await {
            Ok(metadata) if metadata.is_file() => Ok(Some(meta_of(key.to_owned(), &metadata))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(&format!("reading {}", path.display()), &e)),
        }
    }

    async fn metadata(&self, expected: &ObjectMeta) -> Result<crate::Metadata, StorageError> {
        Ok(crate::Metadata::guessed(&expected.key))
    }

    async fn read(
        &self,
        expected: &ObjectMeta,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        let path = self.path_of(&expected.key);
        if len <= INLINE_READ {
            // A small read is answered from the page cache in microseconds; a hop to the blocking
            // pool would cost more than the read.
            return read_blocking(&path, expected, offset, len);
        }
        let expected = expected.clone();
        tokio::task::spawn_blocking(move || read_blocking(&path, &expected, offset, len))
            .await
            .map_err(|e| StorageError::new(ErrorKind::Other, format!("read task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_all(source: &LocalSource) -> Vec<Listed> {
        let mut listing = source.list();
        let mut all = Vec::new();
        while let Some(page) = listing.recv().await {
            all.extend(page.unwrap());
        }
        all
    }

    #[tokio::test]
    async fn lists_nested_files_with_slash_keys_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/c.txt"), b"abc").unwrap();
        std::fs::write(dir.path().join("z"), b"").unwrap();
        std::fs::write(dir.path().join("a/x y+%#?.txt"), b"1").unwrap();
        let source = LocalSource::new(dir.path().to_owned());
        let keys: Vec<(String, u64)> = list_all(&source)
            .await
            .into_iter()
            .map(|l| match l {
                Listed::Object(m) => (m.key, m.size),
                Listed::Unreadable { key, error } => panic!("{key}: {error}"),
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("a/b/c.txt".into(), 3),
                ("a/x y+%#?.txt".into(), 1),
                ("z".into(), 0)
            ]
        );
    }

    async fn keys_of(mut listing: Listing) -> Vec<String> {
        let mut keys = Vec::new();
        while let Some(page) = listing.recv().await {
            keys.extend(page.unwrap().into_iter().map(|listed| match listed {
                Listed::Object(meta) => meta.key,
                Listed::Unreadable { key, .. } => key,
            }));
        }
        keys
    }

    /// The shards list every file once, in walk order within each, and a shard resumed after a
    /// key lists exactly what came after it (skipping whole directories it had walked).
    #[tokio::test]
    async fn shards_cover_the_tree_once_and_resume_after_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "top-a", "top-b", "a/1", "a/b/2", "a/b/3", "a/c", "a-b/4", "d/e/f/5", "d/e/g", "d/h",
        ];
        for file in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, file).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("empty")).unwrap();
        let source = LocalSource::new(dir.path().to_owned());
        let shards = source.shards().await.unwrap();
        assert_eq!(shards, ["", "a/", "a-b/", "d/", "empty/"]);
        let mut all = Vec::new();
        for shard in &shards {
            all.extend(keys_of(source.list_shard(shard, None)).await);
        }
        let mut whole = keys_of(source.list()).await;
        assert_eq!(whole.len(), files.len());
        whole.sort();
        all.sort();
        assert_eq!(all, whole);

        assert_eq!(
            keys_of(source.list_shard("a/", Some("a/b/2"))).await,
            ["a/b/3", "a/c"]
        );
        assert_eq!(
            keys_of(source.list_shard("d/", Some("d/e/f/5"))).await,
            ["d/e/g", "d/h"]
        );
        assert_eq!(
            keys_of(source.list_shard("d/", Some("d/e/g"))).await,
            ["d/h"]
        );
        assert_eq!(
            keys_of(source.list_shard("", Some("top-a"))).await,
            ["top-b"]
        );
        assert_eq!(
            keys_of(source.list_shard(shard::WHOLE, Some("a/c"))).await,
            ["a-b/4", "d/e/f/5", "d/e/g", "d/h", "top-a", "top-b"]
        );
        // A key gone since still resumes at its place.
        assert_eq!(
            keys_of(source.list_shard("a/", Some("a/b/25"))).await,
            ["a/b/3", "a/c"]
        );
    }

    #[tokio::test]
    async fn names_that_are_not_utf8_get_distinct_stand_ins() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        for name in [
            &b"a\xff"[..],
            b"a\xfe",
            "a\\xFF".as_bytes(),
            "b\u{FFFD}".as_bytes(),
        ] {
            std::fs::write(dir.path().join(std::ffi::OsStr::from_bytes(name)), b"x").unwrap();
        }
        let source = LocalSource::new(dir.path().to_owned());
        let mut keys: Vec<String> = list_all(&source)
            .await
            .into_iter()
            .map(|l| match l {
                Listed::Object(m) => m.key,
                Listed::Unreadable { key, .. } => key,
            })
            .collect();
        keys.sort();
        assert_eq!(keys, ["/a\\xFE", "/a\\xFF", "a\\xFF", "b\u{FFFD}"]);
    }

    #[tokio::test]
    async fn read_notices_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let source = LocalSource::new(dir.path().to_owned());
        let meta = source.stat("f").await.unwrap().unwrap();
        assert_eq!(&source.read(&meta, 1, 3).await.unwrap()[..], b"ell");
        std::fs::write(&path, b"hello, world").unwrap();
        let err = source.read(&meta, 0, 5).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SourceChanged);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            source.read(&meta, 0, 5).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(source.stat("f").await.unwrap(), None);
    }
}
