//! Cutover: a partition's flag, set once its latest validation passed with nothing changed since,
//! and the notice of it (a webhook, a command), retried with growing pauses and recorded in the
//! ledger, so an application that cannot read `godwit status` still learns it may read the
//! partition from the destination.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use godwit_state::{Cutover, Migration, Notice, PartitionState, Store};
use godwit_storage::Destination;
use http_body_util::Full;
use serde::Serialize;

use crate::EngineError;
use crate::validate::validate;

/// Who hears of a cutover.
#[derive(Debug, Clone, Default)]
pub struct Notify {
    /// An HTTP(S) URL POSTed a JSON body (see [`CutoverNotice`]).
    pub webhook: Option<String>,
    /// A command run by `sh -c`, with `GODWIT_MIGRATION`, `GODWIT_PARTITION` and
    /// `GODWIT_CUT_OVER_AT` in its environment.
    pub command: Option<String>,
    /// Attempts at each before giving up (pauses of 0.5 s, 1 s, 2 s, ... between them).
    pub attempts: u32,
}

/// What a webhook receives.
#[derive(Debug, Clone, Serialize)]
pub struct CutoverNotice {
    /// Always `cutover`.
    pub event: &'static str,
    /// The migration's name.
    pub migration: String,
    /// The partition (`null`: the objects no rule places).
    pub partition: Option<String>,
    /// When the flag was set (milliseconds since the Unix epoch).
    pub cut_over_at: i64,
}

/// What a cutover did.
#[derive(Debug, Clone)]
pub struct CutoverDone {
    /// What the ledger said.
    pub cutover: Cutover,
    /// How the notice went, when there was one to send.
    pub notice: Option<Notice>,
}

/// Sets `partition`'s cutover flag if its latest validation passed and nothing changed since
/// (see `Store::cut_over`), then sends the notice and records how it went.
pub async fn cut_over(
    store: &dyn Store,
    migration: &Migration,
    partition: Option<&str>,
    notify: &Notify,
) -> Result<CutoverDone, EngineError> {
    let at = millis_now();
    let cutover = store.cut_over(migration.id, partition, at).await?;
    if cutover != Cutover::Done || (notify.webhook.is_none() && notify.command.is_none()) {
        return Ok(CutoverDone {
            cutover,
            notice: None,
        });
    }
    let body = CutoverNotice {
        event: "cutover",
        migration: migration.spec.name.clone(),
        partition: partition.map(str::to_owned),
        cut_over_at: at,
    };
    let notice = send(notify, &body).await;
    store
        .record_notice(migration.id, partition, &notice)
        .await?;
    Ok(CutoverDone {
        cutover,
        notice: Some(notice),
    })
}

/// After a pass (`--auto-cutover`): validates the destination once for every partition, and cuts
/// over each partition whose objects all ended well, not cut over yet, whose validation passed.
/// Returns what each such partition's cutover did.
pub async fn auto_cutover(
    dest: &dyn Destination,
    store: &dyn Store,
    migration: &Migration,
    notify: &Notify,
) -> Result<Vec<(Option<String>, CutoverDone)>, EngineError> {
    let ready: Vec<Option<String>> = store
        .partitions(migration.id)
        .await?
        .into_iter()
        .filter(|p| {
            matches!(
                p.state(),
                PartitionState::Migrated | PartitionState::Validated
            )
        })
        .map(|p| p.name)
        .collect();
    if ready.is_empty() {
        return Ok(Vec::new());
    }
    let validation = validate(dest, store, migration, None).await?;
    let mut done = Vec::new();
    for report in validation.partitions {
        if report.passed && ready.contains(&report.partition) {
            let cutover = cut_over(store, migration, report.partition.as_deref(), notify).await?;
            done.push((report.partition, cutover));
        }
    }
    Ok(done)
}

fn millis_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sends the notice by every way asked, each retried with growing pauses.
async fn send(notify: &Notify, body: &CutoverNotice) -> Notice {
    let attempts = notify.attempts.max(1);
    let mut notice = Notice::default();
    let mut pause = Duration::from_millis(500);
    for attempt in 1..=attempts {
        notice.attempts = attempt;
        match deliver(notify, body).await {
            Ok(()) => {
                notice.delivered_at = Some(millis_now());
                notice.error = None;
                return notice;
            }
            Err(error) => {
                tracing::warn!(
                    attempt,
                    "the notice of the cutover was not delivered: {error}"
                );
                notice.error = Some(error);
            }
        }
        if attempt < attempts {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    notice
}

async fn deliver(notify: &Notify, body: &CutoverNotice) -> Result<(), String> {
    if let Some(url) = &notify.webhook {
        post(url, body).await?;
    }
    if let Some(command) = &notify.command {
        run(command, body).await?;
    }
    Ok(())
}

/// POSTs the notice as JSON; any 2xx answer is a delivery.
async fn post(url: &str, body: &CutoverNotice) -> Result<(), String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("cannot load the system's TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "godwit")
        .body(Full::new(Bytes::from(json)))
        .map_err(|e| format!("the webhook URL '{url}' is not usable: {e}"))?;
    let answer = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| format!("the webhook {url} did not answer within 30 s"))?
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = answer.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("POST {url} answered {status}"))
    }
}

/// Runs the command; exit status 0 is a delivery.
async fn run(command: &str, body: &CutoverNotice) -> Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("GODWIT_MIGRATION", &body.migration)
        .env("GODWIT_PARTITION", body.partition.as_deref().unwrap_or(""))
        .env("GODWIT_CUT_OVER_AT", body.cut_over_at.to_string())
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot run the cutover command: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the cutover command ended with {status}"))
    }
}
