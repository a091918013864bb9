//! `godwit validate` and `godwit cutover`: a migration's partitions checked at the destination,
//! and switched over to it.

use godwit_engine::Notify;
use godwit_state::{Cutover, Migration};

use crate::cli::{CutoverArgs, MigrateArgs, ValidateArgs};
use crate::exit;
use crate::migrate::{NOTICE_ATTEMPTS, Prepared, partition_name, prepare};
use crate::status::{Access, open, pick};

/// The arguments the migration was last run with, as recorded in the ledger.
fn recorded_args(migration: &Migration) -> Result<MigrateArgs, u8> {
    let name = &migration.spec.name;
    let Some(options) = &migration.options else {
        return Err(crate::render::fail(format!(
            "migration '{name}' records no options: run its migrate command once with this godwit"
        )));
    };
    serde_json::from_str(options).map_err(|error| {
        crate::render::fail(format!("migration '{name}': its options cannot be read ({error}); a newer godwit may have written them"))
    })
}

pub async fn validate(args: ValidateArgs) -> anyhow::Result<u8> {
    let (store, _) = match open(args.ledger.state, Access::Control).await {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let migration = match pick(store.as_ref(), args.name.as_deref()).await? {
        Ok(migration) => migration,
        Err(code) => return Ok(code),
    };
    let recorded = match recorded_args(&migration) {
        Ok(recorded) => recorded,
        Err(code) => return Ok(code),
    };
    // The destination, opened with this process's own credentials.
    let Prepared { dest, .. } = match prepare(&recorded).await {
        Ok(prepared) => prepared,
        Err(code) => return Ok(code),
    };
    let name = args.partition.as_deref().map(partition_name);
    let only = name.as_deref().map(|n| (!n.is_empty()).then_some(n));
    let validation =
        match godwit_engine::validate(dest.as_ref(), store.as_ref(), &migration, only).await {
            Ok(validation) => validation,
            Err(error) => {
                return Ok(crate::render::fail(error));
            }
        };
    if validation.partitions.is_empty() {
        return Ok(crate::render::fail(format!(
            "migration '{}' has no objects{}; `godwit status` lists its partitions",
            migration.spec.name,
            args.partition
                .as_deref()
                .map_or(String::new(), |p| format!(" in partition {p}"))
        )));
    }
    if args.json {
        println!("{}", serde_json::to_value(&validation)?);
    } else {
        for report in &validation.partitions {
            println!(
                "partition {}: {} — {} of {} objects verified at the destination ({} missing, {} different, {} not migrated); groups {} passed, {} failed",
                report.partition.as_deref().unwrap_or("-"),
                if report.passed { "PASSED" } else { "FAILED" },
                report.verified,
                report.objects,
                report.missing,
                report.different,
                report.not_migrated,
                report.groups_passed,
                report.groups_failed,
            );
            for difference in &report.differences {
                println!("  {}: {}", difference.key, difference.problem);
            }
        }
    }
    Ok(if validation.passed() {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}

pub async fn cutover(args: CutoverArgs) -> anyhow::Result<u8> {
    let (name, partition) = match args.names.as_slice() {
        [partition] => (None, partition_name(partition)),
        [name, partition] => (Some(name.as_str()), partition_name(partition)),
        _ => unreachable!("clap takes one or two names"),
    };
    let (store, _) = match open(args.ledger.state, Access::Control).await {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let migration = match pick(store.as_ref(), name).await? {
        Ok(migration) => migration,
        Err(code) => return Ok(code),
    };
    let recorded = recorded_args(&migration).ok();
    let notify = Notify {
        webhook: args
            .webhook
            .or_else(|| recorded.as_ref().and_then(|r| r.cutover_webhook.clone())),
        command: args
            .command
            .or_else(|| recorded.as_ref().and_then(|r| r.cutover_command.clone())),
        attempts: NOTICE_ATTEMPTS,
    };
    let partition = (!partition.is_empty()).then_some(partition);
    let done =
        godwit_engine::cut_over(store.as_ref(), &migration, partition.as_deref(), &notify).await?;
    crate::render::cutover(&migration.spec.name, partition.as_deref(), &done);
    if args.json {
        let (state, reason) = match done.cutover {
            Cutover::Done => ("cut_over", None),
            Cutover::AlreadyCutOver(_) => ("cut_over", Some("cut over before")),
            Cutover::NotValidated => ("refused", Some("never validated")),
            Cutover::ValidationFailed => ("refused", Some("its latest validation failed")),
            Cutover::ChangedSince => ("refused", Some("changed since its latest validation")),
            Cutover::Unknown => ("refused", Some("no such partition")),
        };
        println!(
            "{}",
            serde_json::json!({
                "migration": migration.spec.name,
                "partition": partition,
                "state": state,
                "reason": reason,
                "notice": done.notice,
            })
        );
    }
    Ok(match done.cutover {
        Cutover::Done | Cutover::AlreadyCutOver(_) => exit::OK,
        Cutover::Unknown => exit::CONFIG,
        _ => exit::PROBLEMS,
    })
}
