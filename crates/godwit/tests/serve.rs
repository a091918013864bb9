//! `godwit serve` as a process: its token (generated once, owner-only, never printed; a short
//! one refused), its address (taken: a clear error; beyond loopback: a warning), and a clean stop.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::path_str;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `godwit serve` with `args` in `home`, and returns it with the first line it says.
async fn start(
    home: &std::path::Path,
    args: &[&str],
    token: Option<&str>,
) -> (tokio::process::Child, String) {
    let mut command = support::godwit();
    command
        .arg("serve")
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_STATE_HOME")
        .env_remove("GODWIT_STATE");
    match token {
        Some(token) => command.env("GODWIT_TOKEN", token),
        None => command.env_remove("GODWIT_TOKEN"),
    };
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            said.push_str(&line);
            said.push('\n');
            if line.contains("dashboard at") {
                break;
            }
        }
    })
    .await;
    (child, said)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_makes_an_owner_only_token_and_says_where_not_what() {
    let home = tempfile::tempdir().unwrap();
    let (mut serve, said) = start(home.path(), &["--listen", "127.0.0.1:0"], None).await;
    let file = home.path().join(".local/state/godwit/token");
    let token = std::fs::read_to_string(&file).unwrap();
    let token = token.trim();
    assert!(token.len() >= 43, "{token}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(said.contains(&path_str(&file)), "{said}");
    assert!(said.contains("made now"), "{said}");
    assert!(
        !said.contains(token),
        "the token itself was printed: {said}"
    );
    // The default ledger beside it.
    assert!(said.contains(".local/state/godwit/ledger.db"), "{said}");
    serve.start_kill().unwrap();
    let _ = serve.wait().await;

    // A second start keeps it.
    let (mut serve, said) = start(home.path(), &["--listen", "127.0.0.1:0"], None).await;
    assert!(!said.contains("made now"), "{said}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    serve.start_kill().unwrap();
    let _ = serve.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_settings_are_refused_with_exit_2_before_anything_is_served() {
    let home = tempfile::tempdir().unwrap();
    let (mut serve, said) = start(home.path(), &["--listen", "127.0.0.1:0"], Some("short")).await;
    let status = serve.wait().await.unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains("GODWIT_TOKEN") && said.contains("16"),
        "{said}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let token = Some("a-long-enough-test-token");
    let (mut serve, said) = start(home.path(), &["--listen", &address], token).await;
    let status = serve.wait().await.unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("cannot listen on {address}")),
        "{said}"
    );
    assert!(said.contains("--listen"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn listening_beyond_loopback_is_warned_about() {
    let home = tempfile::tempdir().unwrap();
    let token = Some("a-long-enough-test-token");
    let (mut serve, said) = start(home.path(), &["--listen", "0.0.0.0:0"], token).await;
    assert!(
        said.contains("warning") && said.contains("without TLS"),
        "{said}"
    );
    serve.start_kill().unwrap();
    let _ = serve.wait().await;
    let (mut serve, said) = start(home.path(), &["--listen", "127.0.0.1:0"], token).await;
    assert!(!said.contains("without TLS"), "{said}");
    serve.start_kill().unwrap();
    let _ = serve.wait().await;
}
