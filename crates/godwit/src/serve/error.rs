//! What the API answers when it cannot do what was asked: a status and a JSON body naming the
//! problem, never internals. A ledger error is logged here and answered as 503.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use godwit_state::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// A stable code: `bad_request`, `unauthorized`, `csrf`, `cross_site`, `not_found`,
    /// `conflict`, `payload_too_large`, `unprocessable`, `unsupported_media_type`,
    /// `ledger_unavailable`.
    #[schema(example = "not_found")]
    pub error: String,
    /// What is wrong and what to do, for a person.
    #[schema(example = "no migration has id 7")]
    pub message: String,
}

/// An error answer.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl Failure {
    /// An answer with this status, code and message.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request is well-formed but the ledger's state refuses it.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422: a setting cannot be used (a source that cannot be opened, say).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What is wrong, as answered.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: self.error.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NameTaken { .. } => Self::conflict(error.to_string()),
            other => {
                tracing::error!("the ledger failed a request: {other}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ledger_unavailable",
                    "the ledger cannot be read or written just now (the server's log says why); try again shortly",
                )
            }
        }
    }
}

/// A JSON body, rejected with a JSON error (400 malformed, 413 too large, 415 not JSON, 422
/// wrong fields).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<Self, Failure> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    return Err(Failure::new(
                        status,
                        "payload_too_large",
                        format!(
                            "the request body is larger than {} bytes, the most this API takes",
                            super::MAX_BODY
                        ),
                    ));
                }
                let error = match status {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
                    _ => "bad_request",
                };
                Err(Failure::new(status, error, rejection.body_text()))
            }
        }
    }
}

/// Query parameters, rejected with a JSON 400.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|rejection| Failure::bad_request(rejection.body_text()))
    }
}

/// Path parameters, rejected with a JSON 400 (a migration id that is not a number, say).
pub struct Segments<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Segments<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Segments(p.0))
            .map_err(|rejection| Failure::bad_request(rejection.body_text()))
    }
}
