//! Secrets in AWS Secrets Manager, served by the moto server that `scripts/test.sh` starts.

/// The moto server's endpoint (Secrets Manager), or `None` with the reason printed (under CI,
/// a failure: `scripts/test.sh` starts moto).
pub fn moto() -> Option<String> {
    match std::env::var("GODWIT_TEST_MOTO_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ if std::env::var_os("CI").is_some() => {
            panic!("GODWIT_TEST_MOTO_ENDPOINT is not set: run the tests with scripts/test.sh")
        }
        _ => {
            eprintln!(
                "note: GODWIT_TEST_MOTO_ENDPOINT unset; skipping this Secrets Manager test (scripts/test.sh starts moto)"
            );
            None
        }
    }
}

/// Secrets in moto's Secrets Manager (which takes any credentials).
pub struct Secrets {
    client: aws_sdk_secretsmanager::Client,
    endpoint: String,
}

impl Secrets {
    pub fn new(endpoint: &str) -> Secrets {
        let config = aws_sdk_secretsmanager::config::Builder::new()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                "moto", "moto", None, None, "test",
            ))
            .build();
        Secrets {
            client: aws_sdk_secretsmanager::Client::from_conf(config),
            endpoint: endpoint.to_owned(),
        }
    }

    /// Creates a secret with a unique name holding `value`; returns its name.
    pub async fn create(&self, hint: &str, value: &serde_json::Value) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "godwit-test/{hint}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.client
            .create_secret()
            .name(&name)
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap();
        name
    }

    /// Rotates secret `name` to `value`.
    pub async fn put(&self, name: &str, value: &serde_json::Value) {
        self.client
            .put_secret_value()
            .secret_id(name)
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap();
    }

    /// `command` reads Secrets Manager at moto, with the environment's keys as the bootstrap
    /// credentials (moto takes any).
    pub fn point(&self, command: &mut tokio::process::Command) {
        command
            .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &self.endpoint)
            .env("GODWIT_LOG", "trace");
    }
}

pub fn keys(key: &str, secret: &str, endpoint: &str) -> serde_json::Value {
    serde_json::json!({
        "aws_access_key_id": key,
        "aws_secret_access_key": secret,
        "endpoint_url": endpoint,
        "region": "eu-west-3",
    })
}
