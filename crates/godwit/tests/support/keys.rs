//! A credentials test's working directory (a HOME for `~/.aws`, a source tree, the ledger), and
//! the checks that a run copied all and kept its secrets.

use std::path::{Path, PathBuf};

use super::{Run, bytes, path_str, write_tree};

/// A key pair the environment names and no server here accepts.
pub const ENV_KEY: &str = "env-key-never-granted";
pub const ENV_SECRET: &str = "env-secret-never-granted";

/// A test's working directory: a HOME for `~/.aws`, a source tree and the ledger.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new(n_files: u64) -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..n_files)
            .map(|i| (format!("d{}/f{i}", i % 3), bytes(i, 300 + i as usize)))
            .collect();
        let files: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        write_tree(&dir.path().join("src"), &files);
        Work { dir }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn source(&self) -> String {
        path_str(&self.dir.path().join("src"))
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    /// Writes `~/.aws/NAME` in this test's HOME.
    pub fn aws_file(&self, name: &str, text: &str) {
        let dir = self.home().join(".aws");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// `godwit ARGS --state LEDGER`, with this test's HOME, the environment's keys set to a pair
    /// no server accepts, and no AWS file or profile from the machine running the tests.
    pub fn godwit(&self, args: &[&str]) -> tokio::process::Command {
        self.godwit_on(&path_str(&self.state()), args)
    }

    /// [`Work::godwit`] with the ledger at `state` (a path or a PostgreSQL URL).
    pub fn godwit_on(&self, state: &str, args: &[&str]) -> tokio::process::Command {
        let mut command = super::godwit();
        command
            .args(args)
            .arg("--state")
            .arg(state)
            .env("HOME", self.home())
            .env("AWS_ACCESS_KEY_ID", ENV_KEY)
            .env("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_CONFIG_FILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI");
        for side in ["SOURCE", "DEST"] {
            for name in ["ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN"] {
                command.env_remove(format!("GODWIT_{side}_AWS_{name}"));
            }
        }
        command
    }

    /// The ledger file's bytes (SQLite: the main file and its write-ahead log).
    pub fn ledger_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.state().into_os_string();
            path.push(suffix);
            if let Ok(bytes) = std::fs::read(Path::new(&path)) {
                all.extend(bytes);
            }
        }
        all
    }
}

/// Fails the test when `secret` appears in the run's output or the ledger's bytes.
pub fn assert_kept_secret(secret: &str, runs: &[&Run], work: &Work) {
    for run in runs {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "the secret {secret} appears in a run's output:\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            run.stderr
        );
    }
    let ledger = work.ledger_bytes();
    assert!(
        !ledger.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret {secret} is in the ledger's bytes"
    );
}

pub fn copied_all(run: &Run, n_files: u64) {
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.n("copied"), n_files, "{}", run.stdout);
}
