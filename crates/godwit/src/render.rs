//! What the user sees: the progress bar, the summary, the problems.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use godwit_engine::{Plan, Progress, Summary};
use godwit_state::{MigrationStatus, Problem};

use crate::exit;

/// Binary-prefixed byte counts: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whether errors are also said as JSON on stdout (`--json`).
static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says errors as JSON on stdout too, from now on (the command was given `--json`).
pub fn json_errors() {
    JSON_ERRORS.store(true, Ordering::Relaxed);
}

/// Says why the command cannot go on: a line on stderr, and under `--json` the object
/// `{"error": "config", "exit_code": 2, "message": ...}` on stdout. The exit code for it.
pub fn fail(message: impl std::fmt::Display) -> u8 {
    let message = message.to_string();
    eprintln!("godwit: {message}");
    if JSON_ERRORS.load(Ordering::Relaxed) {
        let value = serde_json::json!({
            "error": "config",
            "exit_code": exit::CONFIG,
            "message": message,
        });
        println!("{value}");
    }
    exit::CONFIG
}

/// `1 object`, `2 objects`.
pub fn objects(n: u64) -> String {
    if n == 1 {
        "1 object".to_owned()
    } else {
        format!("{n} objects")
    }
}

/// `text` as one shell word: as it is when it is plain, else in single quotes.
pub fn quoted(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

pub fn duration(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    match whole {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole / 60 % 60),
    }
}

/// A progress bar on stderr, drawn only on a terminal.
pub struct ProgressBar {
    ticker: Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl ProgressBar {
    pub fn start(progress: Arc<Progress>, wanted: bool) -> Self {
        if !wanted || !std::io::stderr().is_terminal() {
            return Self { ticker: None };
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
        let style =
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        let shown = bar.clone();
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            loop {
                shown.set_message(line(&progress, started.elapsed()));
                shown.tick();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self {
            ticker: Some((bar, ticker)),
        }
    }

    pub fn finish(self) {
        if let Some((bar, ticker)) = self.ticker {
            ticker.abort();
            bar.finish_and_clear();
        }
    }
}

fn line(progress: &Progress, elapsed: Duration) -> String {
    let get = Progress::get;
    let n_done = get(&progress.n_done);
    let bytes_sent = get(&progress.bytes_sent);
    let seconds = elapsed.as_secs_f64().max(0.001);
    let rate = bytes_sent as f64 / seconds;
    let objects_rate = n_done as f64 / seconds;
    if !progress.scan_complete.load(Ordering::Relaxed) {
        return format!(
            "scanning: {} objects found ({}) | {} done, {}/s, {:.0} objects/s",
            get(&progress.n_scanned),
            bytes(get(&progress.bytes_scanned)),
            n_done,
            bytes(rate as u64),
            objects_rate
        );
    }
    let n_to_do = get(&progress.n_to_do).max(n_done);
    let bytes_to_do = get(&progress.bytes_to_do);
    // Objects done, and the finished parts of those still uploading.
    let bytes_done = (get(&progress.bytes_done) + get(&progress.bytes_in_parts)).min(bytes_to_do);
    let bytes_left = bytes_to_do - bytes_done;
    let eta = if rate > 0.0 && bytes_left > 0 {
        duration(bytes_left as f64 / rate)
    } else if objects_rate > 0.0 {
        duration(n_to_do.saturating_sub(n_done) as f64 / objects_rate)
    } else {
        "-".to_owned()
    };
    let percent = if bytes_to_do > 0 {
        100.0 * bytes_done as f64 / bytes_to_do as f64
    } else if n_to_do > 0 {
        100.0 * n_done as f64 / n_to_do as f64
    } else {
        100.0
    };
    let problems = get(&progress.n_problems);
    let problems = if problems > 0 {
        format!(" | {problems} problems")
    } else {
        String::new()
    };
    format!(
        "{percent:5.1}% | {n_done}/{n_to_do} objects | {}/{} | {}/s, {objects_rate:.0} objects/s | ETA {eta}{problems}",
        bytes(bytes_done),
        bytes(bytes_to_do),
        bytes(rate as u64),
    )
}

/// `reason` without the object's own name, which the line shows already before it: "writing
/// s3://b/KEY: AccessDenied" after KEY reads "writing: AccessDenied".
fn without_key<'a>(reason: &'a str, key: &str) -> std::borrow::Cow<'a, str> {
    let Some(at) = (!key.is_empty())
        .then(|| reason.find(&format!("{key}: ")))
        .flatten()
    else {
        return reason.into();
    };
    // The word that ends with the key: its path or URL.
    let word = reason[..at].rfind(' ').map_or(0, |space| space + 1);
    let before = reason[..word].trim_end();
    let after = &reason[at + key.len() + 2..];
    if before.is_empty() {
        after.into()
    } else {
        format!("{before}: {after}").into()
    }
}

/// `key` with its control characters shown as `\xNN` (a terminal would act on them, or hide
/// them).
fn visible(key: &str) -> std::borrow::Cow<'_, str> {
    if !key.chars().any(char::is_control) {
        return key.into();
    }
    key.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\x{:02X}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Lists `problems`, the first of `more`; `rest` says where to see them all.
fn list_problems(problems: &[Problem], more: u64, rest: &str) {
    let mut err = std::io::stderr().lock();
    for problem in problems {
        let reason = problem.message.as_deref().unwrap_or("no reason recorded");
        let reason = without_key(reason, &problem.key);
        let _ = writeln!(
            err,
            "  {:<8} {}: {reason}",
            problem.state.as_str(),
            visible(&problem.key)
        );
    }
    if more > problems.len() as u64 {
        let _ = writeln!(err, "  … and {} more{rest}", more - problems.len() as u64);
    }
}

/// Prints the end-of-run summary (JSON on stdout with `json`), and the first problems on stderr.
pub fn summary(summary: &Summary, place: &crate::ledger::Place, json: bool) -> anyhow::Result<()> {
    let ledger = place.to_string();
    let n_problems = summary.conflict + summary.failed;
    if !summary.problems.is_empty() {
        let need = if n_problems == 1 { "needs" } else { "need" };
        eprintln!("godwit: {} {need} attention:", objects(n_problems));
        let name = quoted(&summary.migration);
        let flag = place.flag();
        list_problems(
            &summary.problems,
            n_problems,
            &format!(" (all of them: `godwit failed {name}{flag}`)"),
        );
        if summary.failed > 0 {
            eprintln!(
                "godwit: fix the cause and run the same migrate command again (a file renamed or removed is settled by the next listing); where the objects stay as they are (a permission granted, a server fixed, a new --exclude), first `godwit retry-failed {name}{flag}`"
            );
        }
    }
    if json {
        let mut value = serde_json::to_value(summary)?;
        value["ledger"] = serde_json::Value::String(ledger.to_owned());
        println!("{value}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "migration '{}' (pass {}): {}, {} in {}",
        summary.migration,
        summary.pass,
        objects(summary.scanned),
        bytes(summary.bytes_scanned),
        duration(summary.seconds)
    )?;
    let rows = [
        ("copied", summary.copied),
        ("already_present", summary.already_present),
        ("conflict", summary.conflict),
        ("excluded", summary.excluded),
        ("source_vanished", summary.source_vanished),
        ("failed", summary.failed),
        ("pending", summary.pending),
    ];
    for (name, n) in rows {
        if n > 0 || name == "copied" {
            writeln!(out, "  {name:<16} {n:>10}")?;
        }
    }
    let rate = summary.bytes_copied_this_run as f64 / summary.seconds.max(0.001);
    writeln!(
        out,
        "this run copied {} ({}, {}/s); ledger: {}",
        objects(summary.copied_this_run),
        bytes(summary.bytes_copied_this_run),
        bytes(rate as u64),
        ledger
    )?;
    let found = &summary.this_pass;
    if summary.pass > 1 && found.new + found.changed + found.vanished > 0 {
        writeln!(
            out,
            "pass {} found {} new, {} changed and {} vanished objects at the source{}",
            summary.pass,
            found.new,
            found.changed,
            found.vanished,
            if found.in_cut_over > 0 {
                format!(
                    "; {} of the new and changed are in partitions cut over: left alone",
                    found.in_cut_over
                )
            } else {
                String::new()
            }
        )?;
    }
    if let Some(taken) = &summary.partitions_taken {
        let names: Vec<&str> = taken
            .iter()
            .map(|p| if p.is_empty() { "-" } else { p.as_str() })
            .collect();
        writeln!(
            out,
            "partitions taken: {}; {} left in the others",
            names.join(", "),
            objects(summary.pending_elsewhere)
        )?;
    }
    if summary.groups_rolled_back_this_run > 0 {
        writeln!(
            out,
            "{} groups rolled back (a member failed: see `godwit failed`), {} committed",
            summary.groups_rolled_back_this_run, summary.groups_committed_this_run
        )?;
    }
    if summary.replaced_this_run > 0 {
        writeln!(
            out,
            "{} of them replaced godwit's own earlier copy of an object that changed at the source",
            summary.replaced_this_run
        )?;
    }
    if summary.throttled > 0 || summary.backoffs > 0 {
        writeln!(
            out,
            "endpoints asked to slow down {} times; objects in flight were halved {} times (here or across the fleet)",
            summary.throttled, summary.backoffs
        )?;
    }
    if summary.missing_at_destination > 0 {
        writeln!(
            out,
            "{} objects the ledger counted as done were missing at the destination ({} held another object): queued again",
            summary.missing_at_destination, summary.changed_at_destination
        )?;
    }
    let guarantees = &summary.guarantees;
    if guarantees.conditions.is_some() && guarantees.no_overwrite != "enforced by server" {
        writeln!(
            out,
            "no overwrite: {} (the destination does not enforce If-None-Match everywhere)",
            guarantees.no_overwrite
        )?;
    }
    if summary.server_side_copy {
        writeln!(
            out,
            "the destination copied {} of them server-side (conditionally; checked by their ETags)",
            summary.copied_server_side_this_run
        )?;
    }
    if summary.status == MigrationStatus::Cancelled {
        writeln!(
            out,
            "cancelled by `godwit cancel`: {} left; `godwit resume {}{}`, then run the same command again to go on",
            objects(summary.pending),
            quoted(&summary.migration),
            place.flag()
        )?;
    } else if summary.interrupted && summary.pending > 0 {
        writeln!(
            out,
            "stopped before the end: run the same command again to resume"
        )?;
    }
    Ok(())
}

/// Prints a dry run's findings; returns the exit code.
pub fn plan(plan: &Plan, json: bool) -> u8 {
    if !plan.problems.is_empty() {
        eprintln!(
            "godwit: {} objects cannot be read, {} would be left as a conflict (the destination holds something else at the key):",
            plan.unreadable, plan.conflicts
        );
        list_problems(&plan.problems, plan.unreadable + plan.conflicts, "");
    }
    if json {
        let mut value = serde_json::to_value(plan).unwrap_or_default();
        value["dry_run"] = serde_json::Value::Bool(true);
        println!("{value}");
    } else {
        println!(
            "dry run: {} ({}) found; {} ({}) would be copied, {} up to date, {} excluded, {} unreadable, {} conflicts seen at the destination; nothing was written",
            objects(plan.scanned),
            bytes(plan.bytes_scanned),
            plan.to_copy,
            bytes(plan.bytes_to_copy),
            plan.up_to_date,
            plan.excluded,
            plan.unreadable,
            plan.conflicts
        );
        if plan.missing_at_destination > 0 {
            println!(
                "  of those, {} the ledger counts as done are missing (or different) at the destination",
                plan.missing_at_destination
            );
        }
        if plan.partitions.iter().any(|p| p.name.is_some()) {
            for partition in &plan.partitions {
                let groups = match partition.groups {
                    0 => String::new(),
                    n => format!(" in {n} groups"),
                };
                println!(
                    "  partition {}: {} ({}){groups}; {} ({}) would be copied; {} conflicts seen",
                    partition.name.as_deref().unwrap_or("-"),
                    objects(partition.scanned),
                    bytes(partition.bytes_scanned),
                    partition.to_copy,
                    bytes(partition.bytes_to_copy),
                    partition.conflicts
                );
            }
        }
    }
    if plan.unreadable + plan.conflicts > 0 {
        exit::PROBLEMS
    } else {
        exit::OK
    }
}

/// Says what a cutover did, on stderr (stdout keeps the summary).
pub fn cutover(migration: &str, partition: Option<&str>, done: &godwit_engine::CutoverDone) {
    use godwit_state::Cutover;
    let shown = partition.unwrap_or("-");
    match done.cutover {
        Cutover::Done => eprintln!("godwit: '{migration}' partition {shown}: cut over"),
        Cutover::AlreadyCutOver(_) => {
            eprintln!("godwit: '{migration}' partition {shown}: was cut over before")
        }
        Cutover::NotValidated => eprintln!(
            "godwit: '{migration}' partition {shown}: not cut over: it was never validated; run `godwit validate '{migration}' --partition {shown}` first"
        ),
        Cutover::ValidationFailed => eprintln!(
            "godwit: '{migration}' partition {shown}: not cut over: its latest validation failed (`godwit validate` says why); migrate again, then validate"
        ),
        Cutover::ChangedSince => eprintln!(
            "godwit: '{migration}' partition {shown}: not cut over: objects of it changed since its latest validation began; migrate again, then validate"
        ),
        Cutover::Unknown => eprintln!(
            "godwit: '{migration}' has no objects in partition {shown}; `godwit status` lists its partitions"
        ),
    }
    if let Some(notice) = &done.notice {
        match (&notice.delivered_at, &notice.error) {
            (Some(_), _) => eprintln!(
                "godwit: the cutover's notice was delivered (attempt {})",
                notice.attempts
            ),
            (None, error) => eprintln!(
                "godwit: the cutover's notice was not delivered after {} attempts: {}; the flag is set all the same (`godwit status --json` shows it)",
                notice.attempts,
                error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_moves_with_the_parts_of_objects_still_uploading() {
        let progress = Progress::default();
        progress.scan_complete.store(true, Ordering::Relaxed);
        progress.n_to_do.store(2, Ordering::Relaxed);
        progress.bytes_to_do.store(200 << 20, Ordering::Relaxed);
        progress.bytes_in_parts.store(48 << 20, Ordering::Relaxed);
        let shown = line(&progress, Duration::from_secs(2));
        assert!(
            shown.starts_with(" 24.0% | 0/2 objects | 48.0 MiB/200.0 MiB"),
            "{shown}"
        );
        // One object done (its parts no longer counted apart), the other half way.
        progress.n_done.store(1, Ordering::Relaxed);
        progress.bytes_done.store(100 << 20, Ordering::Relaxed);
        progress.bytes_in_parts.store(50 << 20, Ordering::Relaxed);
        let shown = line(&progress, Duration::from_secs(4));
        assert!(
            shown.starts_with(" 75.0% | 1/2 objects | 150.0 MiB/200.0 MiB"),
            "{shown}"
        );
    }

    #[test]
    fn a_problem_names_its_object_once() {
        assert_eq!(
            without_key(
                "writing s3://dst/pre/a/b.txt: AccessDenied (HTTP 403)",
                "a/b.txt"
            ),
            "writing: AccessDenied (HTTP 403)"
        );
        assert_eq!(
            without_key("src/a/b.txt: cannot be read: permission denied", "a/b.txt"),
            "cannot be read: permission denied"
        );
        assert_eq!(
            without_key("changed while read", "a/b.txt"),
            "changed while read"
        );
        assert_eq!(without_key("x: y", ""), "x: y");
        assert_eq!(visible("a\u{1}b\tc"), r"a\x01b\x09c");
        assert_eq!(visible("plain/key"), "plain/key");
    }

    #[test]
    fn counts_and_words_read_as_a_person_writes_them() {
        assert_eq!(objects(1), "1 object");
        assert_eq!(objects(0), "0 objects");
        assert_eq!(objects(2), "2 objects");
        assert_eq!(quoted("plain-name_1"), "plain-name_1");
        assert_eq!(quoted("/tmp/a -> s3://b/"), "'/tmp/a -> s3://b/'");
        assert_eq!(quoted("it's"), r"'it'\''s'");
        assert_eq!(quoted(""), "''");
    }

    #[test]
    fn formats_bytes_and_durations() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration(2.25), "2.2s");
        assert_eq!(duration(75.0), "1m15s");
        assert_eq!(duration(7300.0), "2h01m");
    }
}
