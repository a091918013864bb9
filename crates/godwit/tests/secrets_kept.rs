//! Secrets stay secret: keys planted in every place godwit reads them from are in no output, log
//! line (at trace level), API answer, dashboard page or ledger byte or row, after runs that
//! succeed, fail and are refused; and `godwit serve` takes secrets by name only. The real binary
//! against in-process S3 servers that accept only the keys a test grants, the moto server
//! `scripts/test.sh` starts (Secrets Manager), SQLite and PostgreSQL ledgers. Every key here is
//! an obviously fake test value.

mod support;

use std::path::{Path, PathBuf};

use support::keys::{ENV_KEY, Work, assert_kept_secret};
use support::secrets::{Secrets, keys, moto};
use support::{Run, Target, bytes, path_str};

/// One request to a running `godwit serve` with its token: the status and the text.
async fn request(address: &str, method: &str, path: &str, body: Option<String>) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", address)
        .header("authorization", format!("Bearer {SERVE_TOKEN}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or_default(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

const SERVE_TOKEN: &str = "a-test-token-for-the-credentials-suite";

/// `godwit serve`'s API takes a secret by name (keys are never posted); the server checks the
/// side with the keys it reads itself, and its workers read the secret again from the
/// migration's recorded options to copy. No API answer, dashboard page, log line (at trace
/// level) or ledger byte holds the keys.
#[tokio::test(flavor = "multi_thread")]
async fn serve_takes_a_secret_by_name_and_its_workers_read_it_themselves() {
    let Some(moto) = moto() else { return };
    let secrets = Secrets::new(&moto);
    const KEY: &str = "serve-key-from-secret";
    const SECRET: &str = "serve-secret-planted-3a7c41";
    let dest = Target::s3s_fs().await;
    dest.server_keys().grant(KEY, SECRET);
    let bucket = dest.bucket("serve-secret").await;
    let name = secrets
        .create("serve", &keys(KEY, SECRET, &dest.endpoint))
        .await;
    let work = Work::new(6);
    let mut command = work.godwit(&["serve", "--listen", "127.0.0.1:0"]);
    command.env("GODWIT_TOKEN", SERVE_TOKEN);
    secrets.point(&mut command);
    let serve = Served::start(work.dir.path(), command).await;
    let (address, stderr) = (serve.address.clone(), || serve.said());

    let mut answers = Vec::new();
    let body = serde_json::json!({
        "source": work.source(),
        "dest": format!("s3://{bucket}"),
        "dest_secret": name,
    });
    let (status, created) =
        request(&address, "POST", "/api/migrations", Some(body.to_string())).await;
    assert_eq!(status, 201, "{created}\n{}", stderr());
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_i64()
        .unwrap();
    answers.push(created);
    let finished = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let (_, seen) = request(&address, "GET", &format!("/api/migrations/{id}"), None).await;
            let view: serde_json::Value = serde_json::from_str(&seen).unwrap_or_default();
            if view["phase"] == "finished" {
                return view;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server's workers did not finish it:\n{}", stderr()));
    assert_eq!(finished["progress"]["objects"]["copied"], 6, "{finished}");
    assert_eq!(dest.keys(&bucket).await.len(), 6);
    assert!(dest.server_keys().uses(KEY) > 0);
    assert_eq!(dest.server_keys().uses(ENV_KEY), 0);

    for path in [
        "/api/migrations".to_owned(),
        format!("/api/migrations/{id}"),
        format!("/api/migrations/{id}/objects"),
        "/".to_owned(),
        format!("/migrations/{id}"),
    ] {
        let (status, text) = request(&address, "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        answers.push(text);
    }
    let said = serve.stop().await;
    assert!(said.contains("TRACE"), "not at trace level:\n{said}");
    let runs = as_runs(answers, said);
    assert_kept_secret(SECRET, &runs.iter().collect::<Vec<_>>(), &work);
}

/// A `godwit serve` started by a test, what it says going to a file.
struct Served {
    child: tokio::process::Child,
    address: String,
    stderr: PathBuf,
}

impl Served {
    /// Starts `command` (a `godwit serve` on 127.0.0.1:0) with this suite's token, and waits
    /// for its address.
    async fn start(dir: &Path, mut command: tokio::process::Command) -> Served {
        let stderr = dir.join("serve-stderr");
        command
            .env("GODWIT_TOKEN", SERVE_TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = command.spawn().unwrap();
        let said = || String::from_utf8_lossy(&std::fs::read(&stderr).unwrap()).into_owned();
        let address = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                if let Some(rest) = said().split("dashboard at http://").nth(1) {
                    return rest.split(['/', ' ', '\n']).next().unwrap().to_owned();
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("serve did not start:\n{}", said()));
        Served {
            child,
            address,
            stderr,
        }
    }

    /// What it has said so far.
    fn said(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap()).into_owned()
    }

    /// Stops it; all it said.
    async fn stop(mut self) -> String {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
        self.said()
    }
}

/// API answers and pages, and a log, as runs for [`assert_kept_secret`].
fn as_runs(answers: Vec<String>, said: String) -> Vec<Run> {
    let run = |stdout, stderr| Run {
        code: None,
        stdout,
        stderr,
    };
    answers
        .into_iter()
        .map(|answer| run(answer, String::new()))
        .chain([run(String::new(), said)])
        .collect()
}

/// Every table of the PostgreSQL ledger at `url` (its own schema), each row as text.
async fn postgres_rows(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let tables = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .await
        .unwrap();
    assert!(tables.len() >= 3, "no ledger tables in {url}");
    let mut all = String::new();
    for table in tables {
        let name: String = table.get(0);
        let rows = client
            .query(&format!("SELECT t::text FROM \"{name}\" t"), &[])
            .await
            .unwrap();
        for row in rows {
            all.push_str(&row.get::<_, String>(0));
            all.push('\n');
        }
    }
    all
}

/// The planting test: a unique secret planted in each place godwit reads keys from (the
/// environment's `AWS_SECRET_ACCESS_KEY`, a profile in `~/.aws/credentials`, a Secrets Manager
/// secret), runs that succeed, one whose objects fail and one whose keys are refused, all at
/// trace level, on a PostgreSQL ledger and a SQLite one; then `godwit serve` on the PostgreSQL
/// ledger, its API and dashboard pages. None of the secrets is in any output, log line, API
/// answer, page, ledger file byte or ledger table row.
#[tokio::test(flavor = "multi_thread")]
async fn a_secret_planted_in_each_place_is_found_nowhere_else() {
    let Some(ledger) = support::postgres_schema("planted").await else {
        return;
    };
    const ENV_KEY_PLANTED: &str = "env-key-planted";
    const ENV_SECRET_PLANTED: &str = "env-secret-planted-d81f4e";
    const PROFILE_KEY: &str = "profile-key-planted";
    const PROFILE_SECRET: &str = "profile-secret-planted-6b20ac";
    const WRONG_SECRET: &str = "profile-secret-planted-wrong-0e5d";
    const MANAGER_KEY: &str = "manager-key-planted";
    const MANAGER_SECRET: &str = "manager-secret-planted-f3392b";
    let source = Target::s3s_fs().await;
    let dest = Target::s3s_fs().await;
    source
        .server_keys()
        .grant(ENV_KEY_PLANTED, ENV_SECRET_PLANTED);
    dest.server_keys().grant(PROFILE_KEY, PROFILE_SECRET);
    dest.server_keys().grant(MANAGER_KEY, MANAGER_SECRET);
    let source_bucket = source.bucket("planted-src").await;
    for i in 0..4 {
        source
            .put(&source_bucket, &format!("p/k{i}"), &bytes(i, 900))
            .await;
    }
    let work = Work::new(0);
    work.aws_file(
        "credentials",
        &format!(
            "[archive]\naws_access_key_id = {PROFILE_KEY}\naws_secret_access_key = {PROFILE_SECRET}\n\n\
             [wrong]\naws_access_key_id = {PROFILE_KEY}\naws_secret_access_key = {WRONG_SECRET}\n"
        ),
    );
    let from = format!("s3://{source_bucket}");
    let sqlite = path_str(&work.state());
    let migrate = |state: &str, to: &str, dest_side: &[&str]| {
        let mut args = vec![
            "migrate",
            &from,
            to,
            "--source-endpoint",
            &source.endpoint,
            "--dest-endpoint",
            &dest.endpoint,
            "--json",
            "--no-progress",
        ];
        args.extend_from_slice(dest_side);
        let mut command = work.godwit_on(state, &args);
        command
            .env("AWS_ACCESS_KEY_ID", ENV_KEY_PLANTED)
            .env("AWS_SECRET_ACCESS_KEY", ENV_SECRET_PLANTED)
            .env("GODWIT_LOG", "trace");
        command
    };
    let mut runs = Vec::new();

    // Succeeds: the source's keys from the environment, the destination's from a profile.
    let copied = dest.bucket("planted-a").await;
    let to = format!("s3://{copied}");
    for state in [ledger.as_str(), sqlite.as_str()] {
        let run = support::run(migrate(state, &to, &["--dest-profile", "archive"])).await;
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stderr.contains("TRACE"), "not at trace level");
        runs.push(run);
    }
    assert_eq!(dest.keys(&copied).await.len(), 4);
    assert!(source.server_keys().uses(ENV_KEY_PLANTED) > 0);
    assert!(dest.server_keys().uses(PROFILE_KEY) > 0);

    // Objects fail: under this prefix every key is longer than S3 takes.
    let long = format!("{to}/{}/", "x".repeat(1020));
    let run = support::run(migrate(&ledger, &long, &["--dest-profile", "archive"])).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.n("failed"), 4, "{}", run.stdout);
    runs.push(run);

    // Refused: the profile's secret is wrong.
    let refused = dest.bucket("planted-b").await;
    let run = support::run(migrate(
        &ledger,
        &format!("s3://{refused}"),
        &["--dest-profile", "wrong"],
    ))
    .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("'wrong'"), "{}", run.stderr);
    runs.push(run);

    // The destination's keys from Secrets Manager.
    if let Some(moto) = moto() {
        let secrets = Secrets::new(&moto);
        let name = secrets
            .create(
                "planted",
                &keys(MANAGER_KEY, MANAGER_SECRET, &dest.endpoint),
            )
            .await;
        let managed = dest.bucket("planted-c").await;
        let mut command = migrate(
            &ledger,
            &format!("s3://{managed}"),
            &["--dest-secret", &name],
        );
        secrets.point(&mut command);
        let run = support::run(command).await;
        assert_eq!(run.code, Some(0), "{run:?}");
        runs.push(run);
        assert!(dest.server_keys().uses(MANAGER_KEY) > 0);
    } else {
        assert!(std::env::var_os("CI").is_none(), "no moto under CI");
    }

    // What `godwit serve` shows of them all.
    let mut command = work.godwit_on(
        &ledger,
        &["serve", "--listen", "127.0.0.1:0", "--no-workers"],
    );
    command.env("GODWIT_LOG", "trace");
    let serve = Served::start(work.dir.path(), command).await;
    let address = serve.address.clone();
    let (status, list) = request(&address, "GET", "/api/migrations", None).await;
    assert_eq!(status, 200, "{list}");
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    let ids: Vec<i64> = listed
        .as_array()
        .or_else(|| listed["migrations"].as_array())
        .unwrap_or_else(|| panic!("no migrations in {list}"))
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert!(ids.len() >= 3, "{list}");
    let mut answers = vec![list];
    let mut paths = vec![
        "/".to_owned(),
        "/migrations/new".to_owned(),
        "/api/workers".to_owned(),
        "/metrics".to_owned(),
    ];
    for id in ids {
        paths.extend([
            format!("/api/migrations/{id}"),
            format!("/api/migrations/{id}/objects"),
            format!("/api/migrations/{id}/objects?state=failed"),
            format!("/api/migrations/{id}/partitions"),
            format!("/migrations/{id}"),
            format!("/migrations/{id}/objects"),
        ]);
    }
    for path in paths {
        let (status, text) = request(&address, "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        answers.push(text);
    }
    // Serving reads the ledger and logs little, at trace level too; what it logs is searched.
    let said = serve.stop().await;
    let tables = postgres_rows(&ledger).await;
    assert!(
        tables.contains("archive") || tables.contains(&from),
        "the tables hold no migration"
    );
    answers.push(tables);
    runs.extend(as_runs(answers, said));
    for secret in [
        ENV_SECRET_PLANTED,
        PROFILE_SECRET,
        WRONG_SECRET,
        MANAGER_SECRET,
    ] {
        assert_kept_secret(secret, &runs.iter().collect::<Vec<_>>(), &work);
    }
}
