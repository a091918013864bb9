//! godwit's migration engine: scan → ledger → packets → transfer → verify.
//!
//! The engine sees storage only through `godwit_storage`'s [`Source`](godwit_storage::Source) and
//! [`Destination`](godwit_storage::Destination) traits and the ledger only through
//! `godwit_state`'s [`Store`](godwit_state::Store) trait. It never names a backend.
//!
//! The entry point is [`Migrator`]: [`Migrator::run`] runs a migration to the end and summarises
//! the ledger; [`plan`] is the dry run.

#![deny(missing_docs)]

pub mod checksum;
mod control;
mod cutover;
mod dispatch;
mod filter;
mod group;
pub mod metrics;
mod migrate;
mod outage;
mod plan;
mod progress;
mod recheck;
mod record;
mod scan;
mod throttle;
mod transfer;
mod units;
mod validate;
mod walk;

pub use control::{worker_beat, worker_name};
pub use cutover::{CutoverDone, CutoverNotice, Notify, auto_cutover, cut_over};
pub use filter::{BadPattern, Filter};
pub use migrate::{MigrateOptions, Migrator, PartitionChoice, Summary};
pub use plan::{Ledger, PartitionPlan, Plan, plan};
pub use progress::Progress;
pub use recheck::Recheck;
pub use scan::check;
pub use transfer::{
    ConditionsFound, DEFAULT_MEMORY_BUDGET, Guarantees, MetadataOptions, TransferOptions,
};
pub use units::{BadRule, KeyRule, Units};
pub use validate::{Difference, PartitionReport, Validation, validate};

use godwit_state::StoreError;
use godwit_storage::StorageError;

/// Why a run could not go on. Per-object failures are not errors: they end in the ledger.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The source cannot be used (missing, unreadable, rejected credentials).
    #[error("source: {0}")]
    Source(StorageError),
    /// The destination cannot be used (missing bucket, rejected credentials, unreachable).
    #[error("destination: {0}")]
    Destination(StorageError),
    /// The destination lies inside the source, or the source inside the destination, on one
    /// server: a scan would find godwit's own copies.
    #[error("{0}")]
    Overlap(String),
    /// An endpoint stopped answering for longer than the run waits.
    #[error("{0}")]
    Unreachable(String),
    /// The migration was paused or cancelled (`godwit pause`, `godwit cancel`): nothing is taken
    /// until `godwit resume`.
    #[error(
        "migration '{name}' is {}: nothing is copied until `godwit resume '{name}'`",
        status.as_str()
    )]
    NotRunning {
        /// The migration.
        name: String,
        /// What it is.
        status: godwit_state::MigrationStatus,
    },
    /// Listing the source failed part-way.
    #[error("scanning the source: {0}")]
    Scan(StorageError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] StoreError),
    /// A bug: a task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}
