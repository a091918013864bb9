//! Keys kept in AWS Secrets Manager, read with the default chain's credentials and read again
//! when they may have been rotated.
//!
//! The secret is JSON with `aws_access_key_id` and `aws_secret_access_key`, and optionally
//! `aws_session_token`, `endpoint_url` and `region` (the names of the AWS config files).
//! [`SecretKeys`] is the side's credentials provider and keeps the keys itself: the SDK's
//! identity cache cannot be told to drop keys a server refused, so the S3 client runs without
//! one and asks here for every request, which answers from memory. The keys carry an expiry
//! [`REFRESH`] after they were read, and are read again then. A refusal of the keys (403 with
//! `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `ExpiredToken`, or a 403 without a body) is
//! judged by [`SecretKeys::refused`]: when the secret has not been read again since, or now
//! holds other keys, it is worth one more attempt ([`Refusal::Stale`], read again first);
//! when a read made for a refusal just found the same keys, the refusal stands
//! ([`Refusal::Confirmed`]).
//!
//! Nothing here puts a key in a message: errors name the secret, never its value, and the
//! parser reports missing or mistyped fields by name only (serde's own messages quote values).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::{ErrorKind, StorageError};

/// How long keys read from a secret are used before it is read again.
const REFRESH: Duration = Duration::from_secs(300);
/// How long a read made for a refusal that found the same keys makes further refusals of them
/// final (after that, a refusal reads the secret again: it may have been rotated since).
const CONFIRMATION_HOLDS: Duration = Duration::from_secs(30);

/// What a secret holds.
pub(crate) struct SecretValue {
    pub(crate) keys: Credentials,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) region: Option<String>,
}

/// Whether a refusal of a secret's keys is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The request was signed with keys the secret may no longer hold: the secret is read
    /// again before the next request, which uses what it holds.
    Stale,
    /// The secret was just read again and holds the refused keys: the refusal stands.
    Confirmed,
}

/// A secret's keys as a credentials provider (see the module docs).
pub(crate) struct SecretKeys {
    /// The secret's ARN or name, as given.
    id: String,
    client: aws_sdk_secretsmanager::Client,
    /// Where it is read from, for messages.
    place: String,
    state: Mutex<State>,
    /// One read at a time: requests that need the secret read again share one read.
    reading: tokio::sync::Mutex<()>,
}

struct State {
    keys: Credentials,
    read_at: Instant,
    /// A refusal asked for the secret to be read again before the next request.
    stale: bool,
    /// When a read made for a refusal found the keys unchanged.
    confirmed_at: Option<Instant>,
    /// Reads so far, so a request that waited for another's read uses its result.
    n_reads: u64,
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeys").field("id", &self.id).finish()
    }
}

impl SecretKeys {
    /// Reads secret `id` (an ARN or a name) with the default chain's credentials; its region,
    /// when `id` is an ARN, is the ARN's. Over `http` when the side has its own TLS settings.
    pub(crate) async fn open(
        id: &str,
        http: Option<&aws_sdk_s3::config::SharedHttpClient>,
    ) -> Result<(SecretKeys, SecretValue), StorageError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(http) = http {
            loader = loader.http_client(http.clone());
        }
        if let Some(region) = arn_region(id) {
            loader = loader.region(aws_config::Region::new(region.to_owned()));
        }
        let sdk = loader.load().await;
        let mut config = aws_sdk_secretsmanager::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            config = config.region(aws_config::Region::from_static("us-east-1"));
        }
        let config = config.build();
        // As the SDK resolves it: the service's own variable, else the shared endpoint.
        let endpoint = ["AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
            .or_else(|| sdk.endpoint_url().map(str::to_owned));
        let region = config.region().map_or("no region", |r| r.as_ref());
        let place = match endpoint {
            Some(url) => format!("Secrets Manager at {url} ({region})"),
            None => format!("Secrets Manager ({region})"),
        };
        let client = aws_sdk_secretsmanager::Client::from_conf(config);
        let value = read(&client, &place, id).await?;
        let keys = SecretKeys {
            id: id.to_owned(),
            client,
            place,
            state: Mutex::new(State {
                keys: value.keys.clone(),
                read_at: Instant::now(),
                stale: false,
                confirmed_at: None,
                n_reads: 1,
            }),
            reading: tokio::sync::Mutex::new(()),
        };
        Ok((keys, value))
    }

    /// The secret's ARN or name.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The keys to sign the next request with: those held, or the secret's after reading it
    /// again when they are due or a refusal asked for it.
    async fn current(&self) -> Result<Credentials, CredentialsError> {
        let seen = {
            let state = self.state.lock().expect("secret state");
            if !state.stale && state.read_at.elapsed() < REFRESH {
                return Ok(state.keys.clone());
            }
            state.n_reads
        };
        let _reading = self.reading.lock().await;
        let forced = {
            let state = self.state.lock().expect("secret state");
            if state.n_reads != seen {
                // Another request read it while this one waited.
                return Ok(state.keys.clone());
            }
            state.stale
        };
        let fresh = read(&self.client, &self.place, &self.id).await;
        let mut state = self.state.lock().expect("secret state");
        state.n_reads += 1;
        state.stale = false;
        match fresh {
            Ok(value) => {
                let same = value.keys.access_key_id() == state.keys.access_key_id()
                    && value.keys.secret_access_key() == state.keys.secret_access_key()
                    && value.keys.session_token() == state.keys.session_token();
                if same {
                    if forced {
                        state.confirmed_at = Some(Instant::now());
                    }
                } else {
                    tracing::info!(secret = %self.id, "the secret holds new keys; using them");
                    state.confirmed_at = None;
                }
                state.keys = value.keys;
                state.read_at = Instant::now();
            }
            Err(error) => {
                // The keys held may still be good: keep them, and try the secret again at the
                // next refusal or in a minute.
                tracing::warn!("{error}; going on with the keys read before");
                state.read_at = Instant::now() - REFRESH + Duration::from_secs(60);
            }
        }
        Ok(state.keys.clone())
    }

    /// Judges a refusal of a request signed with `access_key_id` (when it is known).
    pub(crate) fn refused(&self, access_key_id: Option<&str>) -> Refusal {
        let mut state = self.state.lock().expect("secret state");
        if access_key_id.is_some_and(|id| id != state.keys.access_key_id()) {
            return Refusal::Stale;
        }
        match state.confirmed_at {
            Some(at) if at.elapsed() < CONFIRMATION_HOLDS => Refusal::Confirmed,
            _ => {
                state.stale = true;
                Refusal::Stale
            }
        }
    }
}

impl ProvideCredentials for SecretKeys {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.current())
    }
}

/// The region of a Secrets Manager ARN (`arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME`).
fn arn_region(id: &str) -> Option<&str> {
    let mut parts = id.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("arn"), Some(_), Some("secretsmanager"), Some(region)) if !region.is_empty() => {
            Some(region)
        }
        _ => None,
    }
}

/// Reads secret `id` and parses what it holds.
async fn read(
    client: &aws_sdk_secretsmanager::Client,
    place: &str,
    id: &str,
) -> Result<SecretValue, StorageError> {
    let answer = client.get_secret_value().secret_id(id).send().await;
    let output = match answer {
        Ok(output) => output,
        Err(error) => return Err(read_error(place, id, &error)),
    };
    let Some(text) = output.secret_string() else {
        return Err(StorageError::new(
            ErrorKind::InvalidInput,
            format!(
                "secret '{id}' holds binary data: godwit reads a JSON text with aws_access_key_id and aws_secret_access_key"
            ),
        ));
    };
    parse(id, text)
}

fn read_error<E>(
    place: &str,
    id: &str,
    error: &SdkError<E, aws_sdk_secretsmanager::config::http::HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, detail) = match error {
        SdkError::ServiceError(_) => {
            let code = error.code().unwrap_or("");
            match code {
                "ResourceNotFoundException" => (
                    ErrorKind::InvalidInput,
                    format!(
                        "secret '{id}' is not in {place}: check its name or ARN (an ARN names its region), or set AWS_REGION"
                    ),
                ),
                "AccessDeniedException" => (
                    ErrorKind::AccessDenied,
                    format!(
                        "{place} refused to let the default AWS credentials read secret '{id}': they need secretsmanager:GetSecretValue on it"
                    ),
                ),
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException" => (
                    ErrorKind::Credentials,
                    format!(
                        "{place} rejected the default AWS credentials ({code}) used to read secret '{id}': check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
                    ),
                ),
                _ => (
                    ErrorKind::Other,
                    format!(
                        "{place} could not give secret '{id}': {code}: {}",
                        error.message().unwrap_or("")
                    ),
                ),
            }
        }
        _ if super::credentials::problem(error).is_some() => (
            ErrorKind::Credentials,
            format!(
                "no AWS credentials to read secret '{id}' with: the secret is read with the default AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity, container or instance metadata)"
            ),
        ),
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
            ErrorKind::Unreachable,
            format!(
                "{place} could not be reached to read secret '{id}' ({}); set AWS_ENDPOINT_URL_SECRETS_MANAGER for another endpoint",
                DisplayErrorContext(error)
            ),
        ),
        _ => (
            ErrorKind::Other,
            format!(
                "reading secret '{id}' from {place}: {}",
                DisplayErrorContext(error)
            ),
        ),
    };
    StorageError::new(kind, detail)
}

/// Parses a secret's JSON text; errors name fields, never values.
fn parse(id: &str, text: &str) -> Result<SecretValue, StorageError> {
    let wrong = |what: String| {
        StorageError::new(
            ErrorKind::InvalidInput,
            format!(
                "secret '{id}' {what}: godwit reads a JSON object with aws_access_key_id, aws_secret_access_key and optionally aws_session_token, endpoint_url, region"
            ),
        )
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| wrong("is not JSON".to_owned()))?;
    let Some(object) = value.as_object() else {
        return Err(wrong("is not a JSON object".to_owned()));
    };
    let field = |name: &str| -> Result<Option<String>, StorageError> {
        match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(text)) => Ok(Some(text.trim().to_owned())),
            Some(_) => Err(wrong(format!("has a field {name} that is not a string"))),
        }
    };
    let required = |name: &str| -> Result<String, StorageError> {
        field(name)?.ok_or_else(|| wrong(format!("has no {name}")))
    };
    let access_key_id = required("aws_access_key_id")?;
    let secret_access_key = required("aws_secret_access_key")?;
    let session_token = field("aws_session_token")?;
    Ok(SecretValue {
        keys: Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
            Some(SystemTime::now() + REFRESH),
            "godwit-secrets-manager",
        ),
        endpoint_url: field("endpoint_url")?,
        region: field("region")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_fields_and_never_values() {
        let planted = "planted-secret-value-0b1d";
        let check = |text: &str, wanted: &str| {
            let message = match parse("s", text) {
                Ok(_) => "ok".to_owned(),
                Err(error) => error.to_string(),
            };
            assert!(message.contains(wanted), "{text}: {message}");
            assert!(!message.contains(planted), "{text}: {message}");
        };
        check(&format!("\"{planted}\""), "is not a JSON object");
        check(
            &format!("{{\"aws_access_key_id\": \"{planted}"),
            "is not JSON",
        );
        check(
            &format!("{{\"aws_secret_access_key\": \"{planted}\"}}"),
            "has no aws_access_key_id",
        );
        check(
            &format!(
                "{{\"aws_access_key_id\": \"k\", \"aws_secret_access_key\": [\"{planted}\"]}}"
            ),
            "aws_secret_access_key that is not a string",
        );
        check(
            &format!("{{\"aws_access_key_id\": \"k\", \"aws_secret_access_key\": \"{planted}\"}}"),
            "ok",
        );
        let value = parse(
            "s",
            r#"{"aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_session_token": "t",
                "endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1"}"#,
        )
        .unwrap();
        assert_eq!(value.keys.session_token(), Some("t"));
        assert_eq!(value.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(value.region.as_deref(), Some("eu-west-1"));
        assert!(value.keys.expiry().is_some());
    }

    #[test]
    fn arn_region_reads_the_fourth_field() {
        assert_eq!(
            arn_region("arn:aws:secretsmanager:eu-central-1:123456789012:secret:godwit-AbCdEf"),
            Some("eu-central-1")
        );
        assert_eq!(arn_region("godwit/dest"), None);
        assert_eq!(arn_region("arn:aws:s3:::bucket"), None);
    }
}
