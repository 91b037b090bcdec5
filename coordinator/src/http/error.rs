//! The API's errors: an HTTP status and a JSON body `{"error": {"code", "message", "key"?}}`
//! whose message says what happened and what to do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code (`unauthenticated`, `forbidden`, `bad_json`, ...).
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// The configuration key at fault, for task definitions.
    pub key: Option<String>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            key: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for task `id`.
    pub fn unknown_task(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_task",
            format!("no task {id:?}; GET /api/v1/tasks lists the tasks"),
        )
    }

    /// 409: the request makes no sense in the current state; nothing changed.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 500: the coordinator failed.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{message}; see the coordinator's log"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(key) = &self.key {
            body["key"] = json!(key);
        }
        (self.status, Json(json!({ "error": body }))).into_response()
    }
}
