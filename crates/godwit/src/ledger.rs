//! Where the ledger is, and opening it: a SQLite file (the embedded default) or a PostgreSQL
//! database (`postgres://...`, shared by a fleet of workers).

use std::path::PathBuf;
use std::sync::Arc;

use godwit_state::{PgStore, SqliteStore, Store, StoreError};

/// Where godwit keeps its own files by default: `$XDG_STATE_HOME/godwit`, else
/// `~/.local/state/godwit`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("godwit")
}

/// A ledger's place, as `--state` or `GODWIT_STATE` gives it.
#[derive(Debug, Clone)]
pub enum Place {
    /// A SQLite file.
    File(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Place {
    /// `--state`, else `GODWIT_STATE`, else `$XDG_STATE_HOME/godwit/ledger.db`, else
    /// `~/.local/state/godwit/ledger.db`.
    pub fn from_args(state: Option<String>) -> Self {
        let given = state.or_else(|| std::env::var("GODWIT_STATE").ok().filter(|s| !s.is_empty()));
        match given {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Place::Postgres(url)
            }
            Some(path) => Place::File(PathBuf::from(path)),
            None => Place::File(state_dir().join("ledger.db")),
        }
    }

    /// ` --state LEDGER`, shell-quoted, for a command a message suggests; empty for the default
    /// ledger, which the command finds by itself.
    pub fn flag(&self) -> String {
        match self {
            Place::File(path) if *path == state_dir().join("ledger.db") => String::new(),
            place => format!(" --state {}", crate::render::quoted(&place.to_string())),
        }
    }

    /// Whether there is a ledger to read (a file that exists; a database is assumed there).
    pub fn exists(&self) -> bool {
        match self {
            Place::File(path) => path.exists(),
            Place::Postgres(_) => true,
        }
    }

    /// The ledger to migrate with (the SQLite file's writer lock taken).
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            Place::File(path) => Arc::new(SqliteStore::open(path)?),
            Place::Postgres(url) => Arc::new(PgStore::connect(url).await?),
        })
    }

    /// The ledger to pause, resume or cancel a migration in, whoever works on it.
    pub async fn open_to_control(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            Place::File(path) => Arc::new(SqliteStore::open_to_control(path)?),
            Place::Postgres(url) => Arc::new(PgStore::connect(url).await?),
        })
    }

    /// The ledger to read, whoever works on it.
    pub async fn open_to_read(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            Place::File(path) => Arc::new(SqliteStore::open_read_only(path)?),
            Place::Postgres(url) => Arc::new(PgStore::connect(url).await?),
        })
    }
}

impl std::fmt::Display for Place {
    /// The place for messages: never a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::File(path) => write!(f, "{}", path.display()),
            Place::Postgres(url) => f.write_str(&godwit_state::without_password(url)),
        }
    }
}
