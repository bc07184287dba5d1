//! The HTTP API: `GET /`, `GET /health`, `POST /predict`, `GET /history`.
//! Inference runs on tokio's blocking pool, at most one job per core, so concurrent
//! requests use every core without oversubscribing them.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::ApiError;
use crate::history::{History, NewEntry};
use crate::model::{self, Classifier, DecodeError};

pub const SERVICE_NAME: &str = "classifier";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const DEFAULT_TOP_K: usize = 5;
pub const DEFAULT_HISTORY_LIMIT: usize = 20;
pub const MAX_HISTORY_LIMIT: usize = 1000;

pub struct AppState {
    pub classifier: Classifier,
    pub history: History,
    inference_slots: Semaphore,
    started: Instant,
}

impl AppState {
    /// Loads the model from `config.model_dir` and opens the history in `config.data_dir`.
    pub fn load(config: &Config) -> Result<Self> {
        let classifier = Classifier::load(&config.model_dir)?;
        let history = History::open(&config.data_dir)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            classifier,
            history,
            inference_slots: Semaphore::new(cores),
            started: Instant::now(),
        })
    }
}

pub fn app(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/predict", post(predict))
        .route("/history", get(history))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Serves until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    tracing::info!(addr = %addr, model = model::MODEL_NAME, "listening");
    axum::serve(listener, app(state, max_body_bytes))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    tracing::info!("shut down");
    Ok(())
}

/// Binds `config.addr` and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let loading = config.clone();
    let state = tokio::task::spawn_blocking(move || AppState::load(&loading))
        .await
        .context("loading the model")??;
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("listening on {}", config.addr))?;
    serve(
        listener,
        Arc::new(state),
        config.max_body_bytes,
        shutdown_signal(),
    )
    .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        () = term => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    tracing::info!(
        target: "access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

async fn index() -> Json<Value> {
    Json(json!({
        "service": SERVICE_NAME,
        "version": VERSION,
        "model": {
            "name": model::MODEL_NAME,
            "input": [1, 3, model::INPUT_SIZE, model::INPUT_SIZE],
            "classes": model::NUM_CLASSES,
        },
        "endpoints": ["GET /", "GET /health", "POST /predict", "GET /history"],
    }))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": model::MODEL_NAME,
        "uptime_s": state.started.elapsed().as_secs(),
    }))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// The value of `key` in a query string of plain numbers and names (no decoding needed).
fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn bounded_param(
    query: Option<&str>,
    key: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query_param(query, key) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("{key} must be an integer from 1 to {max}"))
            }),
    }
}

struct Upload {
    bytes: Bytes,
    filename: Option<String>,
    content_type: Option<String>,
}

async fn read_upload(req: Request) -> Result<Upload, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match content_type.as_deref() {
        Some(ct) if ct.starts_with("multipart/form-data") => {
            let mut multipart = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?
            {
                if field.name() != Some("file") {
                    continue;
                }
                let filename = field.file_name().map(str::to_owned);
                let content_type = field.content_type().map(str::to_owned);
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
                return Ok(Upload {
                    bytes,
                    filename,
                    content_type,
                });
            }
            Err(ApiError::bad_request("multipart form has no `file` field"))
        }
        Some(ct) if ct.starts_with("image/") => {
            let ct = ct.split(';').next().unwrap_or(ct).trim().to_owned();
            let bytes = Bytes::from_request(req, &())
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
            Ok(Upload {
                bytes,
                filename: None,
                content_type: Some(ct),
            })
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {} is not accepted: send multipart/form-data with a `file` \
                 field, or the image itself with an image/* content type",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

async fn predict(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let top_k = bounded_param(query.as_deref(), "top_k", DEFAULT_TOP_K, model::NUM_CLASSES)?;
    let upload = read_upload(req).await?;
    if upload.bytes.is_empty() {
        return Err(ApiError::bad_request("the uploaded image is empty"));
    }

    let permit = state
        .inference_slots
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e.into()))?;
    let job_state = Arc::clone(&state);
    let result =
        tokio::task::spawn_blocking(move || classify_and_record(&job_state, &upload, top_k))
            .await
            .map_err(|e| ApiError::internal(&e.into()))?;
    drop(permit);
    result.map(Json)
}

fn classify_and_record(state: &AppState, upload: &Upload, top_k: usize) -> Result<Value, ApiError> {
    let img = model::decode_image(&upload.bytes).map_err(|e| match e {
        DecodeError::NotAnImage => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the upload is not an image in a supported format (PNG, JPEG, WebP, GIF, BMP)",
        ),
        DecodeError::Corrupt(msg) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the image could not be decoded: {msg}"),
        ),
        DecodeError::TooLarge(msg) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the image is too large to decode: {msg}"),
        ),
    })?;
    let start = Instant::now();
    let predictions = state
        .classifier
        .classify(&img, top_k)
        .map_err(|e| ApiError::internal(&e))?;
    let inference_ms = start.elapsed().as_secs_f64() * 1000.0;

    // A full disk should not stop the service from answering; the history is a log.
    let id = state
        .history
        .record(&NewEntry {
            filename: upload.filename.as_deref(),
            content_type: upload.content_type.as_deref(),
            predictions: &predictions,
            inference_ms,
        })
        .map_err(|e| tracing::warn!(error = format!("{e:#}"), "history not recorded"))
        .ok();

    Ok(json!({
        "id": id,
        "model": model::MODEL_NAME,
        "top_k": top_k,
        "predictions": predictions,
        "inference_ms": inference_ms,
        "image": { "width": img.width(), "height": img.height() },
    }))
}

async fn history(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let limit = bounded_param(
        query.as_deref(),
        "limit",
        DEFAULT_HISTORY_LIMIT,
        MAX_HISTORY_LIMIT,
    )?;
    let job_state = Arc::clone(&state);
    let items = tokio::task::spawn_blocking(move || job_state.history.recent(limit))
        .await
        .map_err(|e| ApiError::internal(&e.into()))?
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "items": items })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_by_name() {
        assert_eq!(query_param(Some("a=1&top_k=3"), "top_k"), Some("3"));
        assert_eq!(query_param(Some("top_k"), "top_k"), Some(""));
        assert_eq!(query_param(Some("top_kk=3"), "top_k"), None);
        assert_eq!(query_param(None, "top_k"), None);
    }

    #[test]
    fn bounded_params_reject_out_of_range_values() {
        assert_eq!(bounded_param(None, "top_k", 5, 1000).unwrap(), 5);
        assert_eq!(
            bounded_param(Some("top_k=1000"), "top_k", 5, 1000).unwrap(),
            1000
        );
        for bad in ["top_k=0", "top_k=1001", "top_k=-1", "top_k=x", "top_k="] {
            let e = bounded_param(Some(bad), "top_k", 5, 1000).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
