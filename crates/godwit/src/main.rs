//! The `godwit` binary: parses the command line, starts the async runtime, runs the command.

use std::process::ExitCode;

use clap::Parser;
use godwit::{Cli, exit};

// The AWS SDK allocates a lot per request; mimalloc keeps that cheap across threads (glibc's
// malloc: 15% more instructions an object, callgrind). Built with `no_thp` (Cargo.toml): see
// ARCHITECTURE.md, "Speed on the hot path".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match Cli::try_parse() {
        Ok(args) => args,
        Err(error) => {
            godwit::usage_error_as_json(&error);
            error.exit()
        }
    };
    godwit::init_logging();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(godwit::worker_threads());
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("godwit: cannot start the async runtime: {error}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match runtime.block_on(godwit::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => ExitCode::from(godwit::fail(&error)),
    }
}
