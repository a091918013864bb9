//! The server's token: from `--token-file`, else `GODWIT_TOKEN`, else a file of its own, made on
//! first start with owner-only permissions. The token itself is never printed or logged; where it
//! is, is.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

/// Fewer characters than this cannot be a token: a guessable one would open the ledger to anyone.
const SHORTEST: usize = 16;

/// The token and where it came from.
pub struct Token {
    /// The secret.
    pub secret: String,
    /// Where it is, for a person: `GODWIT_TOKEN`, or a file's path.
    pub origin: String,
    /// Whether it was generated just now.
    pub generated: bool,
}

/// Reads the token from `file`, else `GODWIT_TOKEN`, else the file in `dir` (made if missing);
/// what is wrong otherwise, said for a person.
pub fn load(file: Option<&Path>, dir: &Path) -> Result<Token, String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|error| format!("--token-file {}: {error}", file.display()))?;
        let secret = text.lines().next().unwrap_or("").trim().to_owned();
        return checked(secret, format!("--token-file {}", file.display())).map(|secret| Token {
            secret,
            origin: file.display().to_string(),
            generated: false,
        });
    }
    if let Ok(secret) = std::env::var("GODWIT_TOKEN")
        && !secret.is_empty()
    {
        return checked(secret.trim().to_owned(), "GODWIT_TOKEN".to_owned()).map(|secret| Token {
            secret,
            origin: "GODWIT_TOKEN".to_owned(),
            generated: false,
        });
    }
    let path = dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.lines().next().unwrap_or("").trim().to_owned();
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.permissions().mode() & 0o077 != 0
            {
                eprintln!(
                    "godwit: warning: {} can be read by others (mode {:o}); `chmod 600` it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
            checked(secret, path.display().to_string()).map(|secret| Token {
                secret,
                origin: path.display().to_string(),
                generated: false,
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => generate(&path),
        Err(error) => Err(format!("the token file {}: {error}", path.display())),
    }
}

fn checked(secret: String, origin: String) -> Result<String, String> {
    if secret.chars().count() < SHORTEST {
        return Err(format!(
            "{origin}: a token must have at least {SHORTEST} characters (a generated one has 43); leave GODWIT_TOKEN and --token-file unset to have one made"
        ));
    }
    Ok(secret)
}

/// A new random token in a new owner-only file at `path`.
fn generate(path: &PathBuf) -> Result<Token, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| format!("no randomness for a token: {error}"))?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| format!("cannot create the token file {}: {error}", path.display()))?;
    writeln!(file, "{secret}")
        .map_err(|error| format!("cannot write the token file {}: {error}", path.display()))?;
    Ok(Token {
        secret,
        origin: path.display().to_string(),
        generated: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_generated_once_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(&dir.path().join("sub/token")).unwrap();
        assert!(first.generated);
        assert!(first.secret.len() >= 43);
        let mode = std::fs::metadata(dir.path().join("sub/token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second start reads the same token (GODWIT_TOKEN unset in this process's tests).
        let again = load(None, &dir.path().join("sub")).unwrap();
        assert_eq!(again.secret, first.secret);
        assert!(!again.generated);
    }

    #[test]
    fn a_short_token_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "short\n").unwrap();
        let error = load(Some(&file), dir.path()).err().unwrap();
        assert!(
            error.contains("--token-file") && error.contains("16"),
            "{error}"
        );
    }
}
