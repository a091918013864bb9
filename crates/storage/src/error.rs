use std::fmt;

/// What kind of failure a storage operation met. The engine decides on retries, the fail queue
/// and exit codes from the kind alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object does not exist (any more).
    NotFound,
    /// The bucket does not exist.
    BucketNotFound,
    /// The credentials are missing, unknown or have a wrong secret.
    Credentials,
    /// Keys read from a secret were refused, and the secret is read again for the next attempt,
    /// which uses what it holds then (a rotation). Temporary, once: a refusal after a read that
    /// found the same keys is [`ErrorKind::Credentials`].
    StaleCredentials,
    /// The credentials are valid but lack a permission.
    AccessDenied,
    /// The source object changed since it was scanned, or while it was read.
    SourceChanged,
    /// A checksum did not match the bytes.
    ChecksumMismatch,
    /// A multipart upload id is no longer known to the server.
    NoSuchUpload,
    /// The server's answer to a write could not be read, so whether it took effect is unknown.
    Unclear,
    /// The endpoint could not be reached or timed out.
    Unreachable,
    /// The server asked to slow down or had an internal error.
    Busy,
    /// The server does not implement the operation.
    Unsupported,
    /// The request or the configuration is wrong (a bad URL, a bad key).
    InvalidInput,
    /// Something is at the destination that godwit can neither verify nor prove its own (a
    /// server kept an upload whose checksum it rejected). Needs a person.
    Unverifiable,
    /// A local I/O error.
    Io,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short stable name, used in the ledger and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::BucketNotFound => "bucket_not_found",
            ErrorKind::Credentials => "credentials",
            ErrorKind::StaleCredentials => "stale_credentials",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::SourceChanged => "source_changed",
            ErrorKind::ChecksumMismatch => "checksum_mismatch",
            ErrorKind::NoSuchUpload => "no_such_upload",
            ErrorKind::Unclear => "unclear",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Busy => "busy",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unverifiable => "unverifiable",
            ErrorKind::Io => "io",
            ErrorKind::Other => "other",
        }
    }

    /// Whether trying the same thing again may succeed.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            ErrorKind::SourceChanged
                | ErrorKind::StaleCredentials
                | ErrorKind::ChecksumMismatch
                | ErrorKind::NoSuchUpload
                | ErrorKind::Unclear
                | ErrorKind::Unreachable
                | ErrorKind::Busy
                | ErrorKind::Io
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed storage operation: its kind and a message that names the object, the operation and,
/// where there is one, what the user can do. Messages never hold credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StorageError {
    kind: ErrorKind,
    message: String,
    /// How long the server asked to wait before trying again (`Retry-After`).
    retry_after: Option<std::time::Duration>,
}

impl StorageError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, with the wait the server asked for before a retry.
    pub fn with_retry_after(mut self, wait: Option<std::time::Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    /// How long the server asked to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        self.kind.is_temporary()
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn io(what: &str, err: &std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::AccessDenied,
            _ => ErrorKind::Io,
        };
        let hint = match kind {
            ErrorKind::AccessDenied => ": give the user running godwit read permission",
            _ => "",
        };
        Self::new(kind, format!("{what}: {err}{hint}"))
    }
}
