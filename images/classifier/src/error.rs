//! The API's error answer: a status code and `{"error": "<code>", "message": "..."}`.
//! `error` is a stable machine-readable code; `message` is for people and may change.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// Every error answer of the API.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "too_many_pixels", "message": "the image is 11900 x 11900 pixels; at most 50000000 pixels are accepted"}))]
pub struct ErrorBody {
    /// Stable code: `empty_upload`, `missing_file`, `bad_multipart`, `invalid_parameter`,
    /// `unauthorized`, `not_found`, `method_not_allowed`, `request_timeout`, `body_too_large`,
    /// `unsupported_media_type`, `not_an_image`, `corrupt_image`, `too_many_pixels`,
    /// `image_too_large`, `busy`, `internal_error`.
    pub error: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(err: &anyhow::Error) -> Self {
        tracing::error!(error = format!("{err:#}"), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }

    /// An axum extractor's refusal (body limit, malformed multipart) as our JSON.
    pub fn from_rejection(status: StatusCode, text: String) -> Self {
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            s if s.is_client_error() => "bad_multipart",
            _ => "internal_error",
        };
        if !status.is_client_error() {
            tracing::error!(error = %text, "request body could not be read");
        }
        Self::new(status, code, text)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let busy = status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.code,
                message: self.message,
            }),
        )
            .into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"classifier\""),
            );
        }
        if busy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
