//! `godwit migrate`: parse, open the parts, run the engine, render.

use std::sync::Arc;

use anyhow::Context;
use godwit_engine::{
    EngineError, Filter, MetadataOptions, MigrateOptions, Migrator, Notify, PartitionChoice,
    Progress, TransferOptions, Units,
};
use godwit_state::MigrationSpec;
use godwit_storage::manifest::{Manifest, ManifestSource};
use godwit_storage::{
    Encryption, Location, S3Settings, StaticCredentials, TlsSettings, WriteSettings,
};

use crate::cli::{MigrateArgs, SideArgs};
use crate::exit;
use crate::ledger::Place;
use crate::metrics;
use crate::render;
use crate::shutdown::Shutdown;

/// One side's flags.
struct Side<'a> {
    /// `SOURCE` or `DEST`, as its variables are named.
    name: &'static str,
    endpoint: &'a Option<String>,
    region: &'a Option<String>,
    profile: &'a Option<String>,
    secret: &'a Option<String>,
}

/// One side's S3 settings: its flags, and its keys from `GODWIT_{SIDE}_AWS_*` in this
/// process's environment, else `given`.
fn settings(
    side: Side<'_>,
    sides: &SideArgs,
    given: Option<&StaticCredentials>,
) -> Result<S3Settings, String> {
    let (credentials, credentials_from) = match side_keys(side.name)? {
        Some((keys, from)) => (Some(keys), Some(from)),
        None => (given.cloned(), None),
    };
    Ok(S3Settings {
        endpoint: side.endpoint.clone(),
        region: side.region.clone(),
        profile: side.profile.clone(),
        path_style: sides.addressing.as_deref().map(|style| style == "path"),
        credentials,
        credentials_from,
        secret: side.secret.clone(),
        tls: TlsSettings {
            ca_bundle: sides.ca_bundle.as_deref().map(absolute),
            skip_verify: sides.insecure_skip_verify,
        },
    })
}

/// The keys `GODWIT_{SIDE}_AWS_ACCESS_KEY_ID`, `..._SECRET_ACCESS_KEY` and `..._SESSION_TOKEN`
/// name, and where they were found; an error when only one of the pair is set.
fn side_keys(side: &str) -> Result<Option<(StaticCredentials, String)>, String> {
    let var = |name: &str| {
        let name = format!("GODWIT_{side}_AWS_{name}");
        let value = std::env::var(&name).ok().filter(|v| !v.is_empty());
        (name, value)
    };
    let (id_name, id) = var("ACCESS_KEY_ID");
    let (secret_name, secret) = var("SECRET_ACCESS_KEY");
    let (_, session_token) = var("SESSION_TOKEN");
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some((
            StaticCredentials {
                access_key_id,
                secret_access_key,
                session_token,
            },
            format!("{id_name}/{secret_name}"),
        ))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(format!("{id_name} is set without {secret_name}: set both")),
        (None, Some(_)) => Err(format!("{secret_name} is set without {id_name}: set both")),
    }
}

/// The canonical text of a location, so `./files` and `files` name the same migration.
fn canonical(location: &Location) -> String {
    match location {
        Location::Local(path) => std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        Location::Table(table) => {
            let mut table = table.clone();
            table.path = table
                .path
                .map(|path| std::path::absolute(&path).unwrap_or(path));
            // Shown without its password, as every location is.
            table.to_string()
        }
        Location::S3 { .. } => location.to_string(),
    }
}

/// A path as workers elsewhere must read it.
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A location argument as workers elsewhere must read it (a local path made absolute).
fn canonical_text(text: &str) -> String {
    Location::parse(text).map_or_else(
        |_| godwit_state::without_password(text),
        |location| canonical(&location),
    )
}

/// What identifies the migration: where it moves objects from and to, the endpoints included
/// (the same bucket name on staging and on production is two migrations). The default name says
/// all of it; a custom endpoint is written after its location.
fn spec(
    name: Option<String>,
    source: &Location,
    source_endpoint: Option<&str>,
    dest: &Location,
    dest_endpoint: Option<&str>,
) -> MigrationSpec {
    let side = |location: &Location, endpoint: Option<&str>| match endpoint {
        Some(endpoint) if endpoint != godwit_storage::endpoint::AWS => {
            format!("{} at {endpoint}", canonical(location))
        }
        _ => canonical(location),
    };
    MigrationSpec {
        name: name.unwrap_or_else(|| {
            format!(
                "{} -> {}",
                side(source, source_endpoint),
                side(dest, dest_endpoint)
            )
        }),
        source_url: canonical(source),
        dest_url: canonical(dest),
        source_endpoint: source_endpoint.map(str::to_owned),
        dest_endpoint: dest_endpoint.map(str::to_owned),
    }
}

/// How the destination stores what godwit writes.
fn write_settings(args: &MigrateArgs) -> WriteSettings {
    WriteSettings {
        storage_class: args.storage_class.clone(),
        encryption: match args.sse.as_deref() {
            Some("AES256") => Some(Encryption::Aes256),
            Some(_) => Some(Encryption::Kms {
                key_id: args.sse_kms_key_id.clone(),
            }),
            None => None,
        },
    }
}

/// Which partitions the run takes, as `--partition`, `--max-partitions` and `--all` say.
fn partition_choice(args: &MigrateArgs) -> PartitionChoice {
    if !args.partitions.is_empty() {
        PartitionChoice::Named(args.partitions.iter().map(|p| partition_name(p)).collect())
    } else if let Some(n) = args.max_partitions {
        PartitionChoice::First(n)
    } else {
        PartitionChoice::All
    }
}

/// A partition as the command line names it: `-` for the objects no rule places (`""` in the
/// ledger).
pub fn partition_name(given: &str) -> String {
    if given == "-" {
        String::new()
    } else {
        given.to_owned()
    }
}

/// Prints a configuration error and returns the exit code for it.
fn config_error(message: impl std::fmt::Display) -> u8 {
    render::fail(message)
}

/// A migration's parts, opened as its arguments say: both sides (with this process's own
/// credentials), the engine's options, and what identifies it.
pub struct Prepared {
    pub source: Arc<dyn godwit_storage::Source>,
    pub dest: Arc<dyn godwit_storage::Destination>,
    pub options: MigrateOptions,
    pub spec: MigrationSpec,
}

/// Opens what `args` name, checking each setting; a bad one is said on stderr and its exit code
/// returned.
pub async fn prepare(args: &MigrateArgs) -> Result<Prepared, u8> {
    open(args).await.map_err(config_error)
}

/// Opens what `args` name, checking each setting; what is wrong with a bad one, said for a
/// person (`godwit serve` answers it to the API).
pub async fn open(args: &MigrateArgs) -> Result<Prepared, String> {
    open_with(args, None).await
}

/// [`open`], with `credentials` for both S3 sides instead of the standard chain when given (an
/// in-process S3 server's, for `godwit serve` embedded in a demo or a test).
pub async fn open_with(
    args: &MigrateArgs,
    credentials: Option<&StaticCredentials>,
) -> Result<Prepared, String> {
    let source_location = match Location::parse(&args.source) {
        Ok(location) => location,
        Err(error) => return Err(format!("source: {error}")),
    };
    let dest_location = match Location::parse(&args.dest) {
        Ok(location) => location,
        Err(error) => return Err(format!("destination: {error}")),
    };
    if args.sse_kms_key_id.is_some() && args.sse.as_deref() != Some("aws:kms") {
        return Err("--sse-kms-key-id names a KMS key: it goes with --sse aws:kms".to_owned());
    }
    let filter = match Filter::new(&args.include, &args.exclude) {
        Ok(filter) => filter,
        Err(error) => {
            let flag = if args.include.iter().any(|p| p == error.pattern()) {
                "--include"
            } else {
                "--exclude"
            };
            return Err(format!("{flag}: {error}"));
        }
    };
    let filter = match Units::parse(args.group_by.as_deref(), args.partition_by.as_deref()) {
        Ok(units) => filter.with_units(units),
        Err(error) => return Err(error.to_string()),
    };
    // The whole manifest is read and checked before anything is opened, listed or written.
    let manifest = match &args.manifest {
        Some(path) => match Manifest::read(path) {
            Ok(manifest) => Some(manifest),
            Err(error) => {
                return Err(format!("--manifest {} {error}", path.display()));
            }
        },
        None => None,
    };
    let filter = match (&args.manifest, &manifest) {
        (Some(path), Some(manifest)) => {
            filter.with_manifest(&absolute(path).display().to_string(), &manifest.digest)
        }
        _ => filter,
    };
    if !(5 << 20..=5 << 30).contains(&args.part_size.0) {
        return Err(format!(
            "--part-size {}: S3 takes parts of 5 MiB to 5 GiB; choose a size in that range (default 16MiB)",
            render::bytes(args.part_size.0)
        ));
    }
    if args
        .multipart_threshold
        .is_some_and(|size| size.0 > 5 << 30)
    {
        return Err(
            "--multipart-threshold: S3 takes at most 5 GiB in one PUT; choose 5GiB or less"
                .to_owned(),
        );
    }
    let sides = &args.sides;
    let source_settings = settings(
        Side {
            name: "SOURCE",
            endpoint: &sides.source_endpoint,
            region: &sides.source_region,
            profile: &sides.source_profile,
            secret: &sides.source_secret,
        },
        sides,
        credentials,
    )
    .map_err(|error| format!("source: {error}"))?;
    let dest_settings = settings(
        Side {
            name: "DEST",
            endpoint: &sides.dest_endpoint,
            region: &sides.dest_region,
            profile: &sides.dest_profile,
            secret: &sides.dest_secret,
        },
        sides,
        credentials,
    )
    .map_err(|error| format!("destination: {error}"))?;
    let source = match godwit_storage::open_source(&source_location, &source_settings).await {
        Ok(source) => source,
        Err(error) => return Err(format!("source: {error}")),
    };
    let source: Arc<dyn godwit_storage::Source> = match manifest {
        Some(manifest) => Arc::new(ManifestSource::new(source, manifest)),
        None => source,
    };
    let dest = match godwit_storage::open_destination(
        &dest_location,
        &dest_settings,
        &write_settings(args),
    )
    .await
    {
        Ok(dest) => dest,
        Err(error) => return Err(format!("destination: {error}")),
    };

    let options = MigrateOptions {
        concurrency: args.concurrency as usize,
        filter,
        transfer: TransferOptions {
            multipart_threshold: args.multipart_threshold.map(|size| size.0),
            part_size: args.part_size.0,
            part_concurrency: args.part_concurrency as usize,
            max_attempts: args.max_attempts,
            memory_budget: args.memory_budget.0,
            racy_server_side_copy: args.racy_server_side_copy,
            metadata: MetadataOptions {
                content_type: args.content_type.clone(),
                user: args.metadata.iter().cloned().collect(),
                preserve_tags: args.preserve_tags,
            },
        },
        partitions: partition_choice(args),
        server_side_copy: !args.no_server_side_copy,
        trust_ledger: args.trust_ledger,
        lease: std::time::Duration::from_secs(args.lease),
        endpoint_timeout: std::time::Duration::from_secs(args.endpoint_timeout),
        ..MigrateOptions::default()
    };
    let spec = spec(
        args.name.clone(),
        &source_location,
        source.endpoint(),
        &dest_location,
        dest.endpoint(),
    );
    Ok(Prepared {
        source,
        dest,
        options,
        spec,
    })
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<u8> {
    let Prepared {
        source,
        dest,
        options,
        spec,
    } = match prepare(&args).await {
        Ok(prepared) => prepared,
        Err(code) => return Ok(code),
    };
    let shutdown = Shutdown::watch();
    let stop = shutdown.token();
    let place = Place::from_args(args.ledger.state.clone());

    if args.dry_run {
        // A dry run writes nothing anywhere: it reads the ledger, if there is one, and never
        // creates it.
        let reader = if place.exists() {
            match place.open_to_read().await {
                Ok(reader) => Some(reader),
                Err(error) => return Ok(config_error(error)),
            }
        } else {
            None
        };
        let migration = match &reader {
            Some(reader) => reader.find_migration(&spec.name).await?,
            None => None,
        };
        if let Some(found) = &migration
            && found.spec != spec
        {
            return Ok(config_error(godwit_state::StoreError::NameTaken {
                name: spec.name.clone(),
                recorded: found.spec.describe(),
            }));
        }
        let ledger = match (&reader, &migration) {
            (Some(reader), Some(migration)) => Some((reader.as_ref(), migration.id)),
            _ => None,
        };
        let progress = Arc::new(Progress::default());
        let bar = render::ProgressBar::start(Arc::clone(&progress), !args.no_progress);
        let plan = godwit_engine::plan(
            source.as_ref(),
            dest.as_ref(),
            &options.filter,
            ledger,
            &progress,
            &stop,
        )
        .await;
        bar.finish();
        return Ok(match plan {
            Ok(plan) => render::plan(&plan, args.json),
            Err(error) => engine_error(error),
        });
    }

    // Bound before the ledger is touched: an address in use refuses the run with nothing done.
    let metrics_listener = match args.metrics_listen {
        Some(address) => match metrics::bind(address).await {
            Ok(listener) => Some(listener),
            Err(message) => return Ok(config_error(message)),
        },
        None => None,
    };
    let store = match place.open().await {
        Ok(store) => store,
        Err(error) => return Ok(config_error(error)),
    };
    // Stops the metrics listener however this function returns.
    let _metrics = metrics_listener.map(|listener| {
        let done = stop.child_token();
        tokio::spawn(metrics::serve(listener, Arc::clone(&store), done.clone()));
        done.drop_guard()
    });
    // What workers need to run it too (never a secret: credentials stay in each one's
    // environment).
    let migration = match store.open_migration(&spec).await {
        Ok(migration) => migration,
        Err(error) => return Ok(config_error(error)),
    };
    store
        .save_options(migration.id, &recorded_options(&args)?)
        .await?;
    shutdown.holds_claims_in(Arc::clone(&store), options.worker.clone());
    let notify = Notify {
        webhook: args.cutover_webhook.clone(),
        command: args.cutover_command.clone(),
        attempts: NOTICE_ATTEMPTS,
    };
    // One pass, or (`--watch`) a pass after each interval until stopped: each a run of its own.
    loop {
        let migrator = Migrator::new(
            Arc::clone(&source),
            Arc::clone(&dest),
            Arc::clone(&store),
            options.clone(),
            stop.clone(),
        );
        let bar = render::ProgressBar::start(migrator.progress(), !args.no_progress);
        let summary = migrator.run(&spec).await;
        bar.finish();
        let mut summary = match summary {
            Ok(summary) => summary,
            Err(error) => return Ok(engine_error(error)),
        };
        if args.auto_cutover && !summary.interrupted {
            let cutovers = match store.find_migration(&spec.name).await? {
                Some(found) => {
                    godwit_engine::auto_cutover(dest.as_ref(), store.as_ref(), &found, &notify)
                        .await
                }
                None => Ok(Vec::new()),
            };
            match cutovers {
                Ok(cutovers) => {
                    for (partition, done) in cutovers {
                        render::cutover(&spec.name, partition.as_deref(), &done);
                        summary.cut_over_this_run.push(partition);
                    }
                }
                Err(error) => return Ok(engine_error(error)),
            }
        }
        render::summary(&summary, &place, args.json).context("writing the summary")?;
        let cancelled = summary.status == godwit_state::MigrationStatus::Cancelled;
        let code = if (summary.interrupted || cancelled) && summary.pending > 0 {
            exit::INTERRUPTED
        } else if summary.all_good() {
            exit::OK
        } else {
            exit::PROBLEMS
        };
        let Some(interval) = args.watch else {
            return Ok(code);
        };
        if summary.interrupted || cancelled {
            return Ok(code);
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(interval)) => {}
            () = stop.cancelled() => return Ok(code),
        }
    }
}

/// The options a migration records for workers elsewhere: its arguments (never a secret), the
/// source, a manifest and a CA bundle named as any machine must read them.
pub fn recorded_options(args: &MigrateArgs) -> serde_json::Result<String> {
    let mut recorded = serde_json::to_value(args)?;
    recorded["source"] = canonical_text(&args.source).into();
    if let Some(path) = &args.manifest {
        recorded["manifest"] = absolute(path).display().to_string().into();
    }
    if let Some(path) = &args.sides.ca_bundle {
        recorded["sides"]["ca_bundle"] = absolute(path).display().to_string().into();
    }
    Ok(recorded.to_string())
}

/// Attempts at a cutover's notice (pauses of 0.5 s, 1 s, 2 s, 4 s between them).
pub const NOTICE_ATTEMPTS: u32 = 5;

fn engine_error(error: EngineError) -> u8 {
    config_error(error)
}
