//! How a side's HTTPS connections decide whom to trust: the system's roots (the SDK's own client,
//! untouched), those plus the CAs of a PEM bundle (`--ca-bundle`), or nobody checked at all
//! (`--insecure-skip-verify`, for test servers; warned about on every start).
//!
//! The bundle goes to the SDK's client as extra roots. The SDK's client has no switch to skip
//! verification, so that case is a small client of its own over hyper and rustls: it still
//! checks that the handshake is signed by the certificate's key, not whose key it is.

use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{ErrorKind, StorageError, TlsSettings};

/// The HTTP client for a side with `settings`, or `None` for the SDK's default one.
pub(crate) fn client(settings: &TlsSettings) -> Result<Option<SharedHttpClient>, StorageError> {
    if settings.skip_verify {
        return Ok(Some(SharedHttpClient::new(Unverified)));
    }
    let Some(path) = &settings.ca_bundle else {
        return Ok(None);
    };
    let pem = bundle(path)?;
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|error| {
            StorageError::new(
                ErrorKind::InvalidInput,
                format!("CA bundle {}: {error}", path.display()),
            )
        })?;
    Ok(Some(
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context)
            .build_https(),
    ))
}

/// The bytes of a PEM bundle, once each certificate in it is known to parse (the SDK's client
/// would panic on one that does not).
fn bundle(path: &Path) -> Result<Vec<u8>, StorageError> {
    let bad = |what: String| {
        StorageError::new(
            ErrorKind::InvalidInput,
            format!(
                "CA bundle {}: {what}; give a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        )
    };
    let pem = std::fs::read(path).map_err(|error| bad(format!("cannot read it: {error}")))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(format!("not PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(bad("holds no certificate".to_owned()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (n, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|error| bad(format!("certificate {} does not parse: {error}", n + 1)))?;
    }
    Ok(pem)
}

/// The signature algorithms of the one crypto provider godwit builds rustls with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// An HTTP client that accepts any server certificate.
#[derive(Debug)]
struct Unverified;

impl HttpClient for Unverified {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let provider = provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(settings.connect_timeout());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        SharedHttpConnector::new(UnverifiedConnector { client })
    }
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    SdkBody,
>;

#[derive(Debug, Clone)]
struct UnverifiedConnector {
    client: HyperClient,
}

impl HttpConnector for UnverifiedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|error| ConnectorError::other(error.into(), None))?;
            let response = client.request(request).await.map_err(|error| {
                if error.is_connect() {
                    ConnectorError::io(error.into())
                } else {
                    ConnectorError::other(error.into(), None)
                }
            })?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|error| ConnectorError::other(error.into(), None))
        })
    }
}

/// Takes any certificate for any name; still checks the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_that_is_not_pem_is_named_with_what_to_give() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = bundle(&path).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert!(error.message().contains("ca.pem"), "{error}");
        assert!(error.message().contains("holds no certificate"), "{error}");
        let missing = bundle(&dir.path().join("none.pem")).unwrap_err();
        assert!(missing.message().contains("cannot read it"), "{missing}");
    }
}
