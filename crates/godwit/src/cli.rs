//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::size::Size;

/// Move objects into S3 and prove it: nothing lost, nothing corrupted, nothing overwritten.
#[derive(Debug, Parser)]
#[command(name = "godwit", version, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy every object of SOURCE to DEST, verify it, and record it in the ledger.
    ///
    /// Re-running the same command resumes; a finished migration re-run copies nothing.
    /// Exit codes: 0 all objects copied, already present or excluded; 1 some conflict or failed;
    /// 2 usage or configuration error (a paused or cancelled migration among them); 130 stopped
    /// by Ctrl-C, SIGTERM or `godwit cancel` (re-run to resume).
    Migrate(Box<MigrateArgs>),
    /// The dry run (`migrate --dry-run`): lists the source, reads the ledger and the
    /// destination, and prints per partition what would move, its groups, and the conflicts it
    /// can already see; writes nothing anywhere. Exit 1 when some object cannot be read or would
    /// conflict.
    Plan(Box<MigrateArgs>),
    /// Join a fleet on a shared PostgreSQL ledger: work on every migration there with objects
    /// waiting, until stopped (Ctrl-C or SIGTERM: objects in flight finish).
    Worker(WorkerArgs),
    /// Show the migrations in a ledger and their counts per state.
    Status(StatusArgs),
    /// List a migration's fail queue: each failed object with its error class, attempts and last
    /// error, a page at a time.
    Failed(FailedArgs),
    /// Put a migration's failed objects back in the queue; the next `migrate` retries them.
    RetryFailed(RetryArgs),
    /// Pause a migration on every worker within seconds: objects in flight finish, no new ones
    /// start (a running `migrate` waits for `resume`; workers turn to other migrations).
    Pause(ControlArgs),
    /// Let a paused or cancelled migration run again.
    Resume(ControlArgs),
    /// Stop a migration on every worker within seconds: objects in flight finish, a running
    /// `migrate` ends (exit 130), and nothing more is taken until `resume`.
    Cancel(ControlArgs),
    /// Check the destination itself against the ledger, partition by partition: every object
    /// there with the size and ETag (or checksum) godwit verified, every group whole (the
    /// destination may hold more). Records each partition's result; exit 0 when all passed, 1
    /// otherwise.
    Validate(ValidateArgs),
    /// Set a partition's cutover flag (the application may read it from the destination now),
    /// only if its latest validation passed and nothing changed in it since; then notify the
    /// webhook and/or run the command. Exit 0 when set (or set before), 1 when refused.
    Cutover(CutoverArgs),
    /// Serve the dashboard and the JSON API (`/api/`, described at `/api/openapi.json`) on the
    /// ledger, and run workers in-process (unless --no-workers). Every page and call needs the
    /// token: GODWIT_TOKEN, --token-file, or one generated on first start (its file is printed).
    Serve(ServeArgs),
    /// Serve a directory as a local S3 endpoint (each sub-directory is a bucket; listings carry
    /// ETags, as AWS S3's do).
    ServeS3(ServeS3Args),
    /// Run a self-contained demonstration: sample data, a local S3 endpoint, a migration, a re-run.
    Demo(DemoArgs),
}

/// Where the ledger lives.
#[derive(Debug, Default, Args)]
pub struct LedgerArgs {
    /// The ledger: a SQLite file, or a PostgreSQL database (postgres://USER@HOST:PORT/DB) that
    /// a fleet of workers shares. Default: $GODWIT_STATE, else
    /// $XDG_STATE_HOME/godwit/ledger.db, else ~/.local/state/godwit/ledger.db.
    #[arg(long, value_name = "PATH|URL")]
    pub state: Option<String>,
}

/// The arguments of `migrate`. Serialized (without the ledger and the output flags), they are the
/// migration's options in the ledger, from which `godwit worker` opens the same source and
/// destination with its own credentials.
#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct MigrateArgs {
    /// A directory (or file://PATH), s3://BUCKET[/PREFIX], or a database table:
    /// postgres://USER@HOST/DB?table=T&key=K&blob=B (also mysql://, sqlite://PATH; see the
    /// README). A password in the URL is used, never recorded: a worker reads it from
    /// PGPASSWORD or MYSQL_PWD.
    pub source: String,
    /// s3://BUCKET[/PREFIX]. A key is PREFIX plus the object's path below SOURCE.
    pub dest: String,
    #[command(flatten)]
    #[serde(skip)]
    pub ledger: LedgerArgs,
    /// The migration's name in the ledger. Default: "SOURCE -> DEST".
    #[arg(long)]
    pub name: Option<String>,
    /// List the source and report what would be copied; write nothing anywhere.
    #[arg(long)]
    #[serde(skip)]
    pub dry_run: bool,
    /// Print one JSON object with the summary on stdout at the end.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
    /// Hide the progress bar (it only shows on a terminal anyway).
    #[arg(long)]
    #[serde(skip)]
    pub no_progress: bool,
    /// Only take keys matching this glob (repeatable; `*` matches across `/`).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out keys matching this glob (repeatable; applied after --include).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Take only the objects this file names: JSON Lines (`.jsonl`, `.ndjson`) or CSV (`.csv`)
    /// with a header, each entry a `source` key relative to SOURCE and optionally its `group`,
    /// `partition`, `size`, `checksum` and `content_type` (see the README).
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub manifest: Option<std::path::PathBuf>,
    /// The all-or-nothing unit an object belongs to: `prefix:N` (the key's first N directories)
    /// or `regex:PATTERN` (its first capture group). Default: each object a group of its own.
    #[arg(long, value_name = "RULE")]
    pub group_by: Option<String>,
    /// The checkpoint unit (progress, validation, cutover) an object belongs to, by the same
    /// rules as --group-by. Default: the migration is one partition.
    #[arg(long, value_name = "RULE")]
    pub partition_by: Option<String>,
    /// Take only this partition's objects (repeatable; `-` for the objects no rule places).
    /// The scan still lists the whole source.
    #[arg(long = "partition", value_name = "PARTITION", conflicts_with_all = ["all", "max_partitions"])]
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Take every partition with work left (the default; validated and cut-over partitions
    /// have none).
    #[arg(long)]
    #[serde(default)]
    pub all: bool,
    /// Take only the first N partitions (by name) with work left, once the scan is complete.
    #[arg(long, value_name = "N", conflicts_with = "all", value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(default)]
    pub max_partitions: Option<u32>,
    /// After each pass, validate every partition whose objects all ended well and cut it over
    /// when it passes (see `godwit validate`, `godwit cutover`).
    #[arg(long)]
    #[serde(default)]
    pub auto_cutover: bool,
    /// POST each cutover as JSON to this URL (retried with backoff; its delivery recorded).
    #[arg(long, value_name = "URL")]
    #[serde(default)]
    pub cutover_webhook: Option<String>,
    /// Run this command (`sh -c`, with GODWIT_MIGRATION, GODWIT_PARTITION, GODWIT_CUT_OVER_AT)
    /// after each cutover.
    #[arg(long, value_name = "COMMAND")]
    #[serde(default)]
    pub cutover_command: Option<String>,
    /// Keep going: after each pass, wait this long, then scan the source again for new and
    /// changed objects (a delta pass), until stopped (`10s`, `5m`).
    #[arg(long, value_name = "INTERVAL", value_parser = parse_seconds)]
    #[serde(skip)]
    pub watch: Option<u64>,
    /// The most objects in flight at once. A run starts with 16 and moves the number with the
    /// throughput it measures, up to this.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Objects larger than this are uploaded in parallel parts. Default: chosen from what the
    /// destination is measured to do: objects up to 64 MiB go in one PUT; larger ones too where
    /// the server keeps no checksum of multipart objects and one request is fast enough to send
    /// the object within 2 s (and it fits 3/4 of --memory-budget), else in parts. An upload a
    /// stopped run left is finished in parts whatever this says.
    #[arg(long, value_name = "SIZE")]
    pub multipart_threshold: Option<Size>,
    /// The part size of multipart uploads (it grows so no object needs more than 10,000 parts).
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    pub part_size: Size,
    /// Parts of one object in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub part_concurrency: u32,
    /// Object data held in memory at once, across all transfers (an object sent in one PUT is
    /// held whole; a multipart object, its parts in flight).
    #[arg(long, default_value = "192MiB", value_name = "SIZE")]
    pub memory_budget: Size,
    /// Read every object through godwit even when the destination could copy it server-side
    /// (same endpoint, conditional copies): slower, but every byte is checked by godwit.
    #[arg(long)]
    pub no_server_side_copy: bool,
    /// Where the destination would copy onto an existing key (it ignores If-None-Match on
    /// CopyObject, as s3s-fs does), copy server-side all the same after a HEAD shows the key
    /// free: faster, but a writer racing in between could be overwritten (as with other tools'
    /// server-side copies). The summary's guarantees say so.
    #[arg(long, conflicts_with = "no_server_side_copy")]
    #[serde(default)]
    pub racy_server_side_copy: bool,
    /// Send every object with this Content-Type (instead of what its source serves, or the type
    /// guessed from a file's name).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Send every object with this user metadata (`x-amz-meta-KEY`), beside its own (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_metadata)]
    pub metadata: Vec<(String, String)>,
    /// Copy each object's tags too (S3 sources; GetObjectTagging per object).
    #[arg(long)]
    pub preserve_tags: bool,
    /// The storage class of the objects written (default: the bucket's).
    #[arg(long, value_name = "CLASS", value_parser = [
        "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
        "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "OUTPOSTS", "SNOW", "EXPRESS_ONEZONE",
    ])]
    pub storage_class: Option<String>,
    /// Server-side encryption of the objects written (default: the bucket's).
    #[arg(long, value_name = "ALGORITHM", value_parser = ["AES256", "aws:kms"])]
    pub sse: Option<String>,
    /// The KMS key for `--sse aws:kms` (default: the account's S3 key).
    #[arg(long, value_name = "KEY_ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,
    /// Before running a finished migration again, do not check that the destination still
    /// holds what the ledger counts as done (one LIST per 1,000 keys); trust the ledger.
    #[arg(long)]
    pub trust_ledger: bool,
    /// How long a claim on a packet holds without renewal (whole seconds, `90` or `90s`, or
    /// `2m`); the run renews its claims a few times a lease, so a worker that dies loses its
    /// packets to the others after about this long.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_seconds)]
    #[serde(default = "default_lease")]
    pub lease: u64,
    /// How long an endpoint may stop answering before the run gives up (exit 2; every object
    /// not yet copied stays queued). Meanwhile it takes no new objects and charges none an
    /// attempt.
    #[arg(long, default_value = "15m", value_name = "DURATION", value_parser = parse_seconds)]
    #[serde(default = "default_endpoint_timeout")]
    pub endpoint_timeout: u64,
    /// Attempts at one object before it goes to the fail queue (the first and two retries, with
    /// jittered exponential pauses that honour Retry-After).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    #[command(flatten)]
    pub sides: SideArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts (`127.0.0.1:9464`;
    /// port 0 picks a free one and prints it). No token: keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Queued by `godwit serve`'s API rather than run by a `migrate` command: a worker (of
    /// `serve`, or `godwit worker`) leads its first pass.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
}

impl Command {
    /// Whether the command was asked for JSON (`--json`): its errors are then JSON too.
    pub fn json(&self) -> bool {
        match self {
            Command::Migrate(args) | Command::Plan(args) => args.json,
            Command::Worker(args) => args.json,
            Command::Status(args) => args.json,
            Command::Validate(args) => args.json,
            Command::Cutover(args) => args.json,
            Command::Failed(args) => args.json,
            _ => false,
        }
    }
}

/// Per-side S3 settings; unset ones fall back to the standard AWS variables and files. Each
/// side's credentials come from the first of: its secret, its profile, its
/// `GODWIT_SOURCE_AWS_*`/`GODWIT_DEST_AWS_*` variables, the AWS default chain.
#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct SideArgs {
    /// S3 endpoint URL of the source (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL")]
    pub source_endpoint: Option<String>,
    /// S3 endpoint URL of the destination (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL")]
    pub dest_endpoint: Option<String>,
    /// AWS profile for the source (wins over AWS_ACCESS_KEY_ID in the environment).
    #[arg(long)]
    pub source_profile: Option<String>,
    /// AWS profile for the destination (wins over AWS_ACCESS_KEY_ID in the environment).
    #[arg(long)]
    pub dest_profile: Option<String>,
    /// AWS Secrets Manager secret (ARN or name) holding the source's keys as JSON, read with
    /// the default AWS credentials.
    #[arg(long, value_name = "ARN", conflicts_with = "source_profile")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_secret: Option<String>,
    /// AWS Secrets Manager secret (ARN or name) holding the destination's keys as JSON, read
    /// with the default AWS credentials.
    #[arg(long, value_name = "ARN", conflicts_with = "dest_profile")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_secret: Option<String>,
    /// Region of the source.
    #[arg(long)]
    pub source_region: Option<String>,
    /// Region of the destination.
    #[arg(long)]
    pub dest_region: Option<String>,
    /// Addressing style: path-style is the default when a custom endpoint is set, virtual-hosted otherwise.
    #[arg(long, value_parser = ["path", "virtual"])]
    pub addressing: Option<String>,
    /// A PEM file of CA certificates to trust, besides the system's, on both sides' HTTPS
    /// endpoints (and Secrets Manager): for servers with a private CA.
    #[arg(long, value_name = "FILE", env = "AWS_CA_BUNDLE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<PathBuf>,
    /// Accept any TLS certificate on both sides (whatever --ca-bundle says): for test servers
    /// only, as anyone on the network path could then read and change the data. Warned about on
    /// every start.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// How long this worker's claims hold without renewal (see `migrate --lease`).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_seconds)]
    pub lease: u64,
    /// Print one JSON line with the ledger's summary each time it has worked on a migration.
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while the worker runs (see `migrate
    /// --metrics-listen`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The migration's name (see `godwit status`); may be left out when the ledger holds one.
    pub name: Option<String>,
    /// Only this partition (`-` for the objects no rule places); default: every partition.
    #[arg(long, value_name = "PARTITION")]
    pub partition: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Debug, Args)]
pub struct CutoverArgs {
    /// `[NAME] PARTITION`: the migration (may be left out when the ledger holds one) and the
    /// partition (`-` for the objects no rule places).
    #[arg(num_args = 1..=2, required = true, value_names = ["NAME", "PARTITION"])]
    pub names: Vec<String>,
    /// POST the cutover as JSON to this URL (default: the migration's --cutover-webhook).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Run this command (`sh -c`) after the cutover (default: the migration's
    /// --cutover-command).
    #[arg(long, value_name = "COMMAND")]
    pub command: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The migration's name (see `godwit status`); may be left out when the ledger holds one.
    pub name: Option<String>,
    /// Only the failures of this error class (see `godwit failed`).
    #[arg(long, value_name = "CLASS")]
    pub class: Option<String>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The migration's name (see `godwit status`); may be left out when the ledger holds one.
    pub name: Option<String>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Debug, Args)]
pub struct FailedArgs {
    /// The migration's name (see `godwit status`); may be left out when the ledger holds one.
    pub name: Option<String>,
    /// Only the failures of this error class (`unreachable`, `access_denied`,
    /// `checksum_mismatch`, `invalid_input`, ...).
    #[arg(long, value_name = "CLASS")]
    pub class: Option<String>,
    /// At most this many (a page).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// The page after the object of this id (the `next` of the page before).
    #[arg(long, value_name = "ID")]
    pub after: Option<i64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Address to listen on. A non-loopback address without --tls-cert or a TLS proxy in front
    /// is warned about: the token and the session cookie would cross the network in clear.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve only: run no workers in this process (a fleet's `godwit worker`s do the work).
    #[arg(long)]
    pub no_workers: bool,
    /// Read the token from this file (its first line) instead of GODWIT_TOKEN. Without either,
    /// one is generated on first start and kept, owner-only, beside the default ledger.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate (PEM, the server's first, then its chain); needs
    /// --tls-key. Without it, serve plain HTTP on loopback or put a TLS proxy in front.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Let `/metrics` be scraped without the token.
    #[arg(long)]
    pub metrics_public: bool,
    /// How long the in-process workers' claims hold without renewal (see `migrate --lease`).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_seconds)]
    pub lease: u64,
}

#[derive(Debug, Args)]
pub struct ServeS3Args {
    /// The directory to serve; its sub-directories are buckets.
    pub dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Create these buckets (sub-directories) before serving.
    #[arg(long, value_name = "NAME")]
    pub bucket: Vec<String>,
    /// For benchmarks: one PutObject request carries at most this many bytes a second (e.g.
    /// `50MiB`), as on AWS, where a request's throughput is capped and parallel parts carry
    /// more. Parts are not slowed.
    #[arg(long, value_name = "SIZE")]
    pub put_rate: Option<Size>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Work directory for the sample data, the local S3 endpoint and the ledger (default: a
    /// temporary directory, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `KEY=VALUE` for `--metadata`: a key S3 takes in an `x-amz-meta-` header name.
fn parse_metadata(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))?;
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(format!(
            "'{key}' cannot be a metadata name: use letters, digits, '-', '_' and '.'"
        ));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "the value of '{key}' must be printable ASCII (S3 sends metadata in HTTP headers)"
        ));
    }
    Ok((key.to_ascii_lowercase(), value.to_owned()))
}

fn default_lease() -> u64 {
    60
}

fn default_endpoint_timeout() -> u64 {
    15 * 60
}

/// A duration in whole seconds: `90`, `90s` or `2m`, at least one second.
fn parse_seconds(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, scale) = if let Some(hours) = text.strip_suffix('h') {
        (hours, 3600)
    } else if let Some(minutes) = text.strip_suffix('m') {
        (minutes, 60)
    } else {
        (text.strip_suffix('s').unwrap_or(text), 1)
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&s| s >= 1)
        .ok_or_else(|| {
            format!("'{text}' is not a duration: write whole seconds (90, 90s), minutes (2m) or hours (1h)")
        })?;
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::parse_seconds;

    #[test]
    fn durations_take_seconds_minutes_and_hours() {
        assert_eq!(parse_seconds("90"), Ok(90));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert_eq!(parse_seconds("2m"), Ok(120));
        assert_eq!(parse_seconds("1h"), Ok(3600));
        for bad in ["0", "0s", "", "1.5m", "-1", "1d", "h"] {
            let error = parse_seconds(bad).unwrap_err();
            assert!(error.contains("hours (1h)"), "{bad}: {error}");
        }
    }
}
