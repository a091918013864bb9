//! The `godwit` command as a library: a thin CLI over the engine. Commands parse, open the
//! parts, call the engine or the store, and render; no migration logic lives here. The binary
//! (`main.rs`) only starts the runtime; `serve::app` is public so the API is tested without a
//! socket.

use godwit_state::MigrationStatus;

pub use cli::Cli;

mod checkpoints;
mod cli;
mod demo;
mod ledger;
mod metrics;
mod migrate;
mod render;
pub mod serve;
mod serve_s3;
mod shutdown;
pub mod size;
mod status;
pub mod tls;
mod worker;

/// Exit codes, as documented in the README.
pub mod exit {
    /// Every object reached a good terminal state.
    pub const OK: u8 = 0;
    /// Some object ended in conflict or failed.
    pub const PROBLEMS: u8 = 1;
    /// Usage or configuration error: nothing was migrated.
    pub const CONFIG: u8 = 2;
    /// Stopped by Ctrl-C, SIGTERM or `godwit cancel` before the end; a re-run resumes.
    pub const INTERRUPTED: u8 = 130;
}

/// Runs one command to its end; the exit code to return.
pub async fn run(args: Cli) -> anyhow::Result<u8> {
    if args.command.json() {
        render::json_errors();
    }
    match args.command {
        cli::Command::Migrate(args) => migrate::run(*args).await,
        cli::Command::Plan(mut args) => {
            args.dry_run = true;
            migrate::run(*args).await
        }
        cli::Command::Worker(args) => worker::run(args).await,
        cli::Command::Status(args) => status::run(args).await,
        cli::Command::RetryFailed(args) => status::retry_failed(args).await,
        cli::Command::Failed(args) => status::failed(args).await,
        cli::Command::Pause(args) => status::control(args, MigrationStatus::Paused).await,
        cli::Command::Resume(args) => status::control(args, MigrationStatus::Running).await,
        cli::Command::Cancel(args) => status::control(args, MigrationStatus::Cancelled).await,
        cli::Command::Validate(args) => checkpoints::validate(args).await,
        cli::Command::Cutover(args) => checkpoints::cutover(args).await,
        cli::Command::Serve(args) => serve::run(args).await,
        cli::Command::ServeS3(args) => serve_s3::run(args).await,
        cli::Command::Demo(args) => demo::run(args).await,
    }
}

/// Says a command's failure (an error no command handled itself): on stderr, and as JSON on
/// stdout when it was given `--json`. The exit code for it.
pub fn fail(error: &anyhow::Error) -> u8 {
    render::fail(format!("{error:#}"))
}

/// A command line clap refused (not `--help` or `--version`), said as JSON on stdout when it
/// asks for `--json`; clap says it on stderr itself.
pub fn usage_error_as_json(error: &clap::Error) {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) || !std::env::args().any(|arg| arg == "--json")
    {
        return;
    }
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let value = serde_json::json!({
        "error": "usage",
        "exit_code": exit::CONFIG,
        "message": message,
    });
    println!("{value}");
}

/// Logs to stderr, filtered by `GODWIT_LOG` (default: warnings).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // The in-process S3 server (demo, serve-s3) logs every refused request as an error, the
    // 412s godwit's probes expect among them: not news to a user.
    let filter = EnvFilter::try_from_env("GODWIT_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,s3s=off,s3s_fs=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Async worker threads: `GODWIT_THREADS`, else one core fewer than the machine has (at least
/// one). The async threads only drive requests; checksums, file reads and the ledger run on the
/// blocking pool, and the spare core goes to it (and to an S3 server on the same machine). On 2
/// cores, one worker instead of two cut godwit's CPU per small object by about 6% and the wall
/// time of the bench's small case by 6%, with the large case unchanged.
pub fn worker_threads() -> usize {
    std::env::var("GODWIT_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1)
        })
}
