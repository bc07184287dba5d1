//! The HTTP API: `GET /`, `GET /health`, `POST /predict`, `GET /history`, and its own
//! description at `GET /openapi.json` (generated from the handlers below) and `GET /docs`.
//!
//! Every stage of a prediction is bounded: request bodies held in memory
//! (`MAX_PENDING_UPLOADS`), decoded pixels (`DECODE_MEMORY_BYTES`, reserved from the
//! image header before decoding), concurrent decodes (`DECODE_CONCURRENCY`) and
//! concurrent inferences (one per ONNX Runtime session).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, FromRequest, MatchedPath, Multipart, RawQuery, Request, State,
};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::error::{ApiError, ErrorBody};
use crate::history::{Entry, History, NewEntry, Retention};
use crate::metrics::{InProgress, Metrics};
use crate::model::{self, Classifier, DecodeError, DecodeLimits, EngineConfig, Prediction};
use crate::web;

pub const SERVICE_NAME: &str = "classifier";
pub const DEFAULT_TOP_K: usize = 5;
pub const DEFAULT_HISTORY_LIMIT: usize = 20;
pub const MAX_HISTORY_LIMIT: usize = 100;
/// How long a request waits for an upload slot before it is told to come back.
const UPLOAD_WAIT: Duration = Duration::from_secs(30);
/// How long a client may take to send its upload (a slow sender holds an upload slot).
const UPLOAD_READ_TIMEOUT: Duration = Duration::from_secs(60);

pub struct AppState {
    pub classifier: Classifier,
    pub history: History,
    version: String,
    limits: DecodeLimits,
    history_token: Option<String>,
    upload_slots: Semaphore,
    /// In KiB of decoded pixels.
    decode_memory: Arc<Semaphore>,
    decode_slots: Arc<Semaphore>,
    inference_slots: Arc<Semaphore>,
    max_uploads: usize,
    pub metrics: Metrics,
    started: Instant,
}

impl AppState {
    /// Loads ONNX Runtime and the model from `config.model_dir`, and opens the history in
    /// `config.data_dir`.
    pub fn load(config: &Config) -> Result<Self> {
        let library = config
            .ort_library
            .clone()
            .unwrap_or_else(model::default_ort_library);
        model::init_runtime(&library)?;
        let loading = Instant::now();
        let classifier = Classifier::load(
            &config.model_dir,
            &EngineConfig {
                sessions: config.inference_sessions,
                lead_threads: config.inference_threads,
            },
        )?;
        let retention = Retention {
            max_rows: config.history_max_rows,
            max_age_days: config.history_max_age_days,
        };
        let history = match &config.database {
            None => History::open(&config.data_dir, retention)?,
            Some(database) => History::open_postgres(database, retention)?,
        };
        tracing::info!(history = history.location(), "history opened");
        let decode_kib = usize::try_from(config.decode_memory_bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        Ok(Self {
            inference_slots: Arc::new(Semaphore::new(classifier.parallelism())),
            classifier,
            history,
            version: config.version.clone(),
            limits: DecodeLimits {
                max_pixels: config.max_image_pixels,
                max_side: config.max_image_side,
                max_bytes: config.decode_memory_bytes,
            },
            history_token: config.history_token.clone(),
            upload_slots: Semaphore::new(config.max_pending_uploads),
            max_uploads: config.max_pending_uploads,
            metrics: Metrics::new(loading.elapsed().as_secs_f64()),
            decode_memory: Arc::new(Semaphore::new(decode_kib)),
            decode_slots: Arc::new(Semaphore::new(config.decode_concurrency)),
            started: Instant::now(),
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "classifier",
        description = "Image classification with EfficientNet-Lite0 (ImageNet, 1000 classes). \
            Every error is a 4xx (or 503 when busy) JSON body with a stable `error` code.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The router with its OpenAPI description, before state is attached.
fn api_router() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(index))
        .routes(routes!(health))
        .routes(routes!(predict))
        .routes(routes!(history))
        .split_for_parts()
}

/// The OpenAPI document `GET /openapi.json` serves, with `version` as the API version.
pub fn openapi(version: &str) -> utoipa::openapi::OpenApi {
    let mut doc = api_router().1;
    doc.info.version = version.to_owned();
    doc
}

pub fn app(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let (router, mut doc) = api_router();
    doc.info.version = state.version.clone();
    let doc_json = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".into()));
    router
        .route(
            "/openapi.json",
            get(move || {
                let doc_json = Arc::clone(&doc_json);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc_json.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/docs", get(docs))
        .route("/static/{file}", get(web::asset))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            log_request,
        ))
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
    tracing::info!(
        addr = %addr,
        model = model::MODEL_NAME,
        sessions = state.classifier.parallelism(),
        "listening"
    );
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

async fn log_request(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = route_of(req.extensions().get::<MatchedPath>());
    let response = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    state
        .metrics
        .request(route, response.status().as_u16(), seconds);
    tracing::info!(
        target: "access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = seconds * 1000.0,
        "request"
    );
    response
}

/// The route a request matched, as the router names it (a bounded set of labels).
fn route_of(matched: Option<&MatchedPath>) -> &'static str {
    const ROUTES: [&str; 8] = [
        "/",
        "/health",
        "/predict",
        "/history",
        "/openapi.json",
        "/docs",
        "/static/{file}",
        "/metrics",
    ];
    matched
        .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()).copied())
        .unwrap_or("other")
}

/// Prometheus metrics ([`crate::metrics`]); imgforge's nginx does not forward this path.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let now = InProgress {
        uploads: state.max_uploads - state.upload_slots.available_permits(),
        max_uploads: state.max_uploads,
        inferences: state.classifier.parallelism() - state.inference_slots.available_permits(),
        max_inferences: state.classifier.parallelism(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(now),
    )
        .into_response()
}

#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    #[schema(example = "efficientnet-lite0")]
    pub name: &'static str,
    /// Input tensor shape, NCHW.
    #[schema(example = json!([1, 3, 224, 224]))]
    pub input: [u32; 4],
    pub classes: usize,
}

#[derive(Serialize, ToSchema)]
pub struct IndexResponse {
    #[schema(example = "classifier")]
    pub service: &'static str,
    /// `APP_VERSION`, or the service's own version.
    #[schema(example = "0.1.0")]
    pub version: String,
    pub model: ModelInfo,
    pub endpoints: Vec<&'static str>,
}

/// Service name, version and model; to a browser (a request that prefers text/html), the
/// page where a person drops a photo and sees its classes.
#[utoipa::path(get, path = "/", responses(
    (status = 200, description = "The service, or its page for browsers", content(
        (IndexResponse = "application/json"),
        (String = "text/html"),
    )),
))]
async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if prefers_html(accept) {
        return web::page(web::INDEX_HTML);
    }
    Json(IndexResponse {
        service: SERVICE_NAME,
        version: state.version.clone(),
        model: ModelInfo {
            name: model::MODEL_NAME,
            input: [1, 3, model::INPUT_SIZE, model::INPUT_SIZE],
            classes: model::NUM_CLASSES,
        },
        endpoints: vec![
            "GET /",
            "GET /health",
            "POST /predict",
            "GET /history",
            "GET /openapi.json",
            "GET /docs",
        ],
    })
    .into_response()
}

/// Whether an Accept header asks for HTML before JSON (a browser's does; curl's `*/*`
/// and API clients' do not).
pub fn prefers_html(accept: &str) -> bool {
    let quality = |wanted: &[&str]| {
        accept
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next()?.to_ascii_lowercase();
                let q = parts
                    .find_map(|p| p.strip_prefix("q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                wanted.contains(&media.as_str()).then_some(q)
            })
            .fold(None, |best: Option<f32>, q| {
                Some(best.map_or(q, |b| b.max(q)))
            })
    };
    match quality(&["text/html"]) {
        Some(html) if html > 0.0 => {
            let json = quality(&["application/json"])
                .or_else(|| quality(&["application/*", "*/*"]))
                .unwrap_or(0.0);
            html > json
        }
        _ => false,
    }
}

#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    #[schema(example = "ok")]
    pub status: &'static str,
    pub model: &'static str,
    pub uptime_s: u64,
}

/// Liveness: answers as soon as the model is loaded.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthResponse)))]
async fn health(State(state): State<Arc<AppState>>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok",
        model: model::MODEL_NAME,
        uptime_s: state.started.elapsed().as_secs(),
    })
}

/// Interactive documentation of `/openapi.json` (Swagger UI, served by this service).
async fn docs() -> Response {
    web::page(web::DOCS_HTML)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    )
}

/// The first value of `key` in a URL query string, percent-decoded.
fn query_param(query: Option<&str>, key: &str) -> Result<Option<String>, ApiError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| ApiError::bad_request("invalid_parameter", "the query string is malformed"))?;
    Ok(pairs.into_iter().find(|(k, _)| k == key).map(|(_, v)| v))
}

fn bounded_param(
    query: Option<&str>,
    key: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query_param(query, key)? {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    format!("{key} must be an integer from 1 to {max}"),
                )
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
    let rejection = |e: axum::extract::rejection::BytesRejection| {
        ApiError::from_rejection(e.status(), e.body_text())
    };
    match content_type.as_deref() {
        Some(ct) if ct.starts_with("multipart/form-data") => {
            let mut multipart = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::from_rejection(e.status(), e.body_text()))?;
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::from_rejection(e.status(), e.body_text()))?
            {
                if field.name() != Some("file") {
                    continue;
                }
                let filename = field.file_name().map(str::to_owned);
                let content_type = field.content_type().map(str::to_owned);
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::from_rejection(e.status(), e.body_text()))?;
                return Ok(Upload {
                    bytes,
                    filename,
                    content_type,
                });
            }
            Err(ApiError::bad_request(
                "missing_file",
                "multipart form has no `file` field",
            ))
        }
        Some(ct) if ct.starts_with("image/") => {
            let ct = ct.split(';').next().unwrap_or(ct).trim().to_owned();
            let bytes = Bytes::from_request(req, &()).await.map_err(rejection)?;
            Ok(Upload {
                bytes,
                filename: None,
                content_type: Some(ct),
            })
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type {} is not accepted: send multipart/form-data with a `file` \
                 field, or the image itself with an image/* content type",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

fn decode_error(e: DecodeError, limits: &DecodeLimits) -> ApiError {
    match e {
        DecodeError::NotAnImage => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_an_image",
            "the upload is not an image in a supported format (PNG, JPEG, WebP, GIF, BMP)",
        ),
        DecodeError::Corrupt(msg) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "corrupt_image",
            format!("the image could not be decoded: {msg}"),
        ),
        DecodeError::TooManyPixels { width, height } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_pixels",
            format!(
                "the image is {width} x {height} pixels; at most {} pixels and {} a side \
                 are accepted",
                limits.max_pixels, limits.max_side
            ),
        ),
        DecodeError::TooLarge { bytes } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_too_large",
            format!(
                "the decoded image would take {bytes} bytes; at most {} are accepted",
                limits.max_bytes
            ),
        ),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(&e.into()))?
}

#[derive(Serialize, ToSchema)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

#[derive(Serialize, ToSchema)]
pub struct PredictResponse {
    /// The history entry's id; `null` when the history keeps nothing or could not write.
    pub id: Option<i64>,
    #[schema(example = "efficientnet-lite0")]
    pub model: &'static str,
    pub top_k: usize,
    /// Best first.
    pub predictions: Vec<Prediction>,
    /// Time spent in the model, in milliseconds.
    pub inference_ms: f64,
    pub image: ImageSize,
}

/// A multipart upload: the image in a field named `file`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PredictForm {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// The image itself as the request body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct ImageBytes(Vec<u8>);

/// Classifies one image: a multipart form with a `file` field, or the image itself with
/// an `image/*` content type. PNG, JPEG, WebP, GIF and BMP are decoded.
#[utoipa::path(
    post,
    path = "/predict",
    params(
        ("top_k" = Option<usize>, Query, minimum = 1, maximum = 1000,
            description = "How many classes to return (default 5)")
    ),
    request_body(content(
        (PredictForm = "multipart/form-data"),
        (ImageBytes = "image/png"),
        (ImageBytes = "image/jpeg"),
        (ImageBytes = "image/webp"),
        (ImageBytes = "image/gif"),
        (ImageBytes = "image/bmp")
    )),
    responses(
        (status = 200, body = PredictResponse),
        (status = 400, description = "`empty_upload`, `missing_file`, `bad_multipart` or `invalid_parameter`", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body took over 60 s to arrive", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over `MAX_BODY_BYTES`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type` or `not_an_image`", body = ErrorBody),
        (status = 422, description = "`corrupt_image`, `too_many_pixels` or `image_too_large`", body = ErrorBody),
        (status = 503, description = "`busy`: too many uploads are waiting", body = ErrorBody),
    )
)]
async fn predict(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Result<Json<PredictResponse>, ApiError> {
    let top_k = bounded_param(query.as_deref(), "top_k", DEFAULT_TOP_K, model::NUM_CLASSES)?;
    // Bodies held in memory at once are bounded: a request waits for a slot first.
    let upload_slot = tokio::time::timeout(UPLOAD_WAIT, state.upload_slots.acquire())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many uploads are in progress; try again",
            )
        })?
        .map_err(|e| ApiError::internal(&e.into()))?;
    let upload = tokio::time::timeout(UPLOAD_READ_TIMEOUT, read_upload(req))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the upload was not received within {} s",
                    UPLOAD_READ_TIMEOUT.as_secs()
                ),
            )
        })??;
    if upload.bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty_upload",
            "the uploaded image is empty",
        ));
    }
    let Upload {
        bytes,
        filename,
        content_type,
    } = upload;

    // The header tells what decoding will allocate; that much of the decode budget is
    // reserved before any pixel is decoded. Reading a header is cheap (no pixels), so it
    // runs here rather than on the blocking pool.
    let limits = state.limits;
    let header = model::probe(&bytes, &limits).map_err(|e| decode_error(e, &limits))?;
    let kib = u32::try_from(header.decoded_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    let memory = Arc::clone(&state.decode_memory)
        .acquire_many_owned(kib)
        .await
        .map_err(|e| ApiError::internal(&e.into()))?;
    let decode_slot = Arc::clone(&state.decode_slots)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(&e.into()))?;
    let decoding = Instant::now();
    let input = blocking(move || {
        let img = model::decode_image(&bytes, &limits).map_err(|e| decode_error(e, &limits))?;
        drop(bytes);
        let input = model::preprocess(&img).map_err(|e| ApiError::internal(&e));
        drop((img, decode_slot, memory));
        input
    })
    .await?;
    state.metrics.decode(decoding.elapsed().as_secs_f64());
    drop(upload_slot);

    let inference_slot = Arc::clone(&state.inference_slots)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(&e.into()))?;
    let job_state = Arc::clone(&state);
    let (predictions, inference_ms, id) = blocking(move || {
        let start = Instant::now();
        let probs = job_state
            .classifier
            .scores(input)
            .map_err(|e| ApiError::internal(&e))?;
        let inference_ms = start.elapsed().as_secs_f64() * 1000.0;
        drop(inference_slot);
        job_state.metrics.inference(inference_ms / 1000.0);
        let predictions = job_state.classifier.top_k(&probs, top_k);
        // A full disk should not stop the service from answering; the history is a log.
        let id = job_state
            .history
            .record(&NewEntry {
                filename: filename.as_deref(),
                content_type: content_type.as_deref(),
                predictions: &predictions,
                inference_ms,
            })
            .map_err(|e| tracing::warn!(error = format!("{e:#}"), "history not recorded"))
            .ok()
            .flatten();
        Ok((predictions, inference_ms, id))
    })
    .await?;

    Ok(Json(PredictResponse {
        id,
        model: model::MODEL_NAME,
        top_k,
        predictions,
        inference_ms,
        image: ImageSize {
            width: header.width,
            height: header.height,
        },
    }))
}

#[derive(Serialize, ToSchema)]
pub struct HistoryResponse {
    /// Newest first.
    pub items: Vec<Entry>,
    /// Pass as `before` to get the next (older) page; `null` on the last page.
    pub next_before: Option<i64>,
    /// True when file names and content types are left out (no valid token was sent,
    /// or none is configured).
    pub anonymous: bool,
}

/// Whether `a` equals `b`, in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Recent predictions, newest first, a page at a time. With `HISTORY_TOKEN` set this needs
/// `Authorization: Bearer <token>` and shows file names and content types; without it the
/// history is public and anonymous.
#[utoipa::path(
    get,
    path = "/history",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100,
            description = "Entries per page (default 20)"),
        ("before" = Option<i64>, Query, minimum = 1,
            description = "Only entries with a smaller id: `next_before` of the previous page")
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = HistoryResponse),
        (status = 400, description = "`invalid_parameter`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: `HISTORY_TOKEN` is set and the request does not carry it", body = ErrorBody),
    )
)]
async fn history(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<HistoryResponse>, ApiError> {
    let anonymous = match &state.history_token {
        None => true,
        Some(token) => {
            let sent = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match sent {
                Some(sent) if same_secret(sent.as_bytes(), token.as_bytes()) => false,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "GET /history needs Authorization: Bearer <HISTORY_TOKEN>",
                    ))
                }
            }
        }
    };
    let limit = bounded_param(
        query.as_deref(),
        "limit",
        DEFAULT_HISTORY_LIMIT,
        MAX_HISTORY_LIMIT,
    )?;
    let before = match query_param(query.as_deref(), "before")? {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::bad_request("invalid_parameter", "before must be a positive integer")
        })?),
    };
    let job_state = Arc::clone(&state);
    let (mut items, more) = blocking(move || {
        let items = job_state
            .history
            .recent(limit, before)
            .map_err(|e| ApiError::internal(&e))?;
        let more = match items.last() {
            Some(last) if items.len() == limit => job_state
                .history
                .has_older(last.id)
                .map_err(|e| ApiError::internal(&e))?,
            _ => false,
        };
        Ok((items, more))
    })
    .await?;
    if anonymous {
        for item in &mut items {
            item.filename = None;
            item.content_type = None;
        }
    }
    let next_before = if more {
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(HistoryResponse {
        items,
        next_before,
        anonymous,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_by_name() {
        assert_eq!(
            query_param(Some("a=1&top_k=3"), "top_k")
                .unwrap()
                .as_deref(),
            Some("3")
        );
        assert_eq!(
            query_param(Some("top_k"), "top_k").unwrap().as_deref(),
            Some("")
        );
        assert_eq!(
            query_param(Some("top_k=%33"), "top_k").unwrap().as_deref(),
            Some("3")
        );
        assert_eq!(query_param(Some("top_kk=3"), "top_k").unwrap(), None);
        assert_eq!(query_param(None, "top_k").unwrap(), None);
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
            assert_eq!(e.code, "invalid_parameter");
        }
    }

    #[test]
    fn browsers_get_the_page_and_api_clients_json() {
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(chrome) && prefers_html(firefox));
        for api in [
            "",
            "*/*",
            "application/json",
            "application/json, text/html;q=0.5",
            "text/html;q=0",
            "text/html;q=0.5, */*",
        ] {
            assert!(!prefers_html(api), "{api:?}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
    }

    #[test]
    fn openapi_describes_every_route() {
        let doc = openapi("9.9.9");
        assert_eq!(doc.info.version, "9.9.9");
        let json: serde_json::Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3."));
        for (path, method) in [
            ("/", "get"),
            ("/health", "get"),
            ("/predict", "post"),
            ("/history", "get"),
        ] {
            assert!(json["paths"][path][method].is_object(), "{path} {method}");
        }
        let predict = &json["paths"]["/predict"]["post"];
        assert!(predict["requestBody"]["content"]["multipart/form-data"].is_object());
        assert!(predict["responses"]["422"].is_object());
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
    }
}
