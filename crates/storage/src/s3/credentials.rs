//! Where one side's credentials come from, and what a refusal of them means.
//!
//! In order: a secret in AWS Secrets Manager ([`S3Settings::secret`]); a named profile
//! ([`S3Settings::profile`], which wins over `AWS_ACCESS_KEY_ID` in the environment, as `aws
//! --profile` does, and may use `credential_process` or SSO); keys given by the caller
//! ([`S3Settings::credentials`]: the binary's per-side variables, or an in-process server's);
//! else the SDK's default chain. [`Origin`] names the choice in messages; no message holds a
//! key.

use std::error::Error as _;
use std::sync::Arc;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::SharedHttpClient;
use aws_sdk_s3::config::http::HttpResponse;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextMut, InterceptorContext,
};
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

use super::secret::{Refusal, SecretKeys, SecretValue};
use crate::{ErrorKind, S3Settings, StorageError};

/// Where a side's credentials come from.
#[derive(Debug)]
pub(crate) enum Origin {
    /// The SDK's default chain.
    Chain,
    /// A named profile.
    Profile(String),
    /// Keys the caller gave, found where it says.
    Given(String),
    /// A secret in Secrets Manager.
    Secret(Arc<SecretKeys>),
}

impl Origin {
    /// What to check when the server refuses the keys.
    pub(crate) fn check_hint(&self) -> String {
        match self {
            Origin::Chain => {
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or name a profile or secret for this side".to_owned()
            }
            Origin::Profile(name) => format!("check profile '{name}' in ~/.aws/config or ~/.aws/credentials"),
            Origin::Given(from) => format!("check {from}"),
            Origin::Secret(secret) => format!(
                "check the keys in secret '{}' (read again after the refusal)",
                secret.id()
            ),
        }
    }

    /// What to do when no credentials could be found or made.
    pub(crate) fn missing_hint(&self) -> String {
        match self {
            Origin::Chain => "no AWS credentials were found (environment, ~/.aws profiles, web identity, container or instance metadata): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or GODWIT_SOURCE_AWS_*/GODWIT_DEST_AWS_* for one side), or name a profile (--source-profile/--dest-profile) or a secret (--source-secret/--dest-secret)".to_owned(),
            Origin::Profile(name) => format!(
                "no AWS credentials could be had from profile '{name}' (an expired SSO session needs `aws sso login --profile {name}`)"
            ),
            Origin::Given(from) => format!("no AWS credentials could be had from {from}"),
            Origin::Secret(secret) => format!(
                "no AWS credentials could be had from secret '{}'",
                secret.id()
            ),
        }
    }

    fn secret(&self) -> Option<&Arc<SecretKeys>> {
        match self {
            Origin::Secret(secret) => Some(secret),
            _ => None,
        }
    }
}

/// A side's credentials as the S3 client takes them.
pub(crate) struct Chosen {
    pub(crate) origin: Origin,
    /// `None`: the SDK's default chain, as the config loader builds it (or, for a profile, its
    /// provider, built once the region is known).
    pub(crate) provider: Option<SharedCredentialsProvider>,
    /// The secret's endpoint and region, for the side when no flag sets them.
    pub(crate) endpoint_url: Option<String>,
    pub(crate) region: Option<String>,
}

/// Chooses a side's credentials from `settings` (see the module docs), reading its secret or
/// checking its profile first.
pub(crate) async fn choose(
    settings: &S3Settings,
    http: Option<&SharedHttpClient>,
) -> Result<Chosen, StorageError> {
    if let Some(id) = &settings.secret {
        let (
            keys,
            SecretValue {
                endpoint_url,
                region,
                ..
            },
        ) = SecretKeys::open(id, http).await?;
        let keys = Arc::new(keys);
        return Ok(Chosen {
            provider: Some(SharedCredentialsProvider::new(SharedSecret(Arc::clone(
                &keys,
            )))),
            origin: Origin::Secret(keys),
            endpoint_url,
            region,
        });
    }
    if let Some(name) = &settings.profile {
        check_profile(name).await?;
        return Ok(Chosen {
            origin: Origin::Profile(name.clone()),
            // Built once the side's region is known (`profile_provider`).
            provider: None,
            endpoint_url: None,
            region: None,
        });
    }
    if let Some(keys) = &settings.credentials {
        let from = settings
            .credentials_from
            .clone()
            .unwrap_or_else(|| "the keys godwit was given for this side".to_owned());
        return Ok(Chosen {
            origin: Origin::Given(from),
            provider: Some(SharedCredentialsProvider::new(Credentials::new(
                &keys.access_key_id,
                &keys.secret_access_key,
                keys.session_token.clone(),
                None,
                "godwit",
            ))),
            endpoint_url: None,
            region: None,
        });
    }
    Ok(Chosen {
        origin: Origin::Chain,
        provider: None,
        endpoint_url: None,
        region: None,
    })
}

/// Profile `name`'s credentials alone, not the environment's first as the default chain would;
/// `region` for what it calls (STS to assume a role, SSO).
pub(crate) fn profile_provider(
    name: &str,
    region: Option<&aws_config::Region>,
) -> SharedCredentialsProvider {
    let config =
        aws_config::provider_config::ProviderConfig::default().with_region(region.cloned());
    SharedCredentialsProvider::new(
        aws_config::profile::ProfileFileCredentialsProvider::builder()
            .configure(&config)
            .profile_name(name)
            .build(),
    )
}

/// Fails, naming the profile, when no AWS config or credentials file defines `name`.
async fn check_profile(name: &str) -> Result<(), StorageError> {
    let files = aws_runtime::env_config::file::EnvConfigFiles::default();
    let loaded = aws_config::profile::load(
        &aws_types::os_shim_internal::Fs::real(),
        &aws_types::os_shim_internal::Env::real(),
        &files,
        None,
    )
    .await;
    let place = |variable: &str, default: &str| {
        std::env::var(variable)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let config = place("AWS_CONFIG_FILE", "~/.aws/config");
    let credentials = place("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials");
    match loaded {
        Ok(profiles) if profiles.get_profile(name).is_some() => Ok(()),
        Ok(_) => Err(StorageError::new(
            ErrorKind::Credentials,
            format!(
                "profile '{name}' is not in {config} or {credentials}: add it there (`aws configure --profile {name}`) or fix the name"
            ),
        )),
        Err(error) => Err(StorageError::new(
            ErrorKind::InvalidInput,
            format!("the AWS profiles in {config} and {credentials} cannot be read: {error}"),
        )),
    }
}

/// The credentials problem behind an SDK error, if one is: the SDK reports credentials it could
/// not find or make as a failure to send the request.
pub(crate) fn problem<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<CredentialsError>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// The verdict on a refused request of a secret-backed side, if it was one.
pub(crate) fn refusal(response: &HttpResponse) -> Option<Refusal> {
    response.extension::<Refusal>().copied()
}

/// What the S3 client of a secret-backed side adds: an interceptor that notes which access key
/// signed each request and, when the server refuses the keys, asks the secret for a verdict
/// (kept on the response), and a retry classifier that lets the SDK try a refused request
/// again once the verdict says the keys were stale. Requests the SDK does not retry
/// (conditional writes) meet the verdict in the error (`ErrorKind::StaleCredentials`).
pub(crate) fn secret_hooks(origin: &Origin) -> Option<(Refusals, Refusals)> {
    let secret = origin.secret()?;
    Some((Refusals(Arc::clone(secret)), Refusals(Arc::clone(secret))))
}

/// [`SecretKeys`] as the SDK's credentials provider.
#[derive(Debug)]
struct SharedSecret(Arc<SecretKeys>);

impl aws_credential_types::provider::ProvideCredentials for SharedSecret {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.0.provide_credentials()
    }
}

/// The access key id a request was signed with.
#[derive(Debug, Clone)]
struct SignedWith(Option<String>);

impl Storable for SignedWith {
    type Storer = StoreReplace<Self>;
}

/// See [`secret_hooks`].
#[derive(Debug)]
pub(crate) struct Refusals(Arc<SecretKeys>);

/// The error codes with which S3 refuses keys (rather than a permission).
const REFUSED_KEYS: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
];

impl Intercept for Refusals {
    fn name(&self) -> &'static str {
        "godwit-secret-refusals"
    }

    fn read_after_signing(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/s3/aws4_request, ...`
        let key = context
            .request()
            .headers()
            .get("authorization")
            .and_then(|value| value.split("Credential=").nth(1))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned);
        cfg.interceptor_state().store_put(SignedWith(key));
        Ok(())
    }

    fn modify_before_attempt_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(response) = context.response_mut() else {
            return Ok(());
        };
        if response.status().as_u16() != 403 {
            return Ok(());
        }
        // A HEAD's refusal has no body to say why: it may be the keys.
        let code = response
            .body()
            .bytes()
            .and_then(|body| std::str::from_utf8(body).ok())
            .and_then(|body| body.split("<Code>").nth(1))
            .and_then(|rest| rest.split("</Code>").next());
        if code.is_some_and(|code| !REFUSED_KEYS.contains(&code)) {
            return Ok(());
        }
        let signed_with = cfg.load::<SignedWith>().and_then(|s| s.0.clone());
        let verdict = self.0.refused(signed_with.as_deref());
        tracing::debug!(secret = %self.0.id(), ?verdict, code, "the server refused the secret's keys");
        response.add_extension(verdict);
        Ok(())
    }
}

impl ClassifyRetry for Refusals {
    fn classify_retry(&self, context: &InterceptorContext) -> RetryAction {
        match context.response().and_then(refusal) {
            Some(Refusal::Stale) => RetryAction::transient_error(),
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "godwit-secret-refusals"
    }
}

/// A refused request's error, as the verdict on it says: `Stale` keys make the error
/// temporary, once.
pub(crate) fn stale_error(origin: &Origin, what: &str, detail: &str) -> StorageError {
    let id = origin.secret().map_or("", |secret| secret.id());
    StorageError::new(
        ErrorKind::StaleCredentials,
        format!(
            "{what}: {detail}; the keys from secret '{id}' were refused, so the secret is read again and the next attempt uses what it holds"
        ),
    )
}

/// A message for an SDK error whose cause is `problem`: what was missing and what to do.
pub(crate) fn missing(origin: &Origin, problem: &CredentialsError) -> String {
    let why = match problem {
        CredentialsError::CredentialsNotLoaded(_) => String::new(),
        other => match other.source() {
            Some(cause) => format!(" ({other}: {cause})"),
            None => format!(" ({other})"),
        },
    };
    format!("{}{why}", origin.missing_hint())
}
