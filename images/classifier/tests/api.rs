//! End-to-end tests of the classifier service: the real binary on 127.0.0.1, the real
//! model from `dist/`, real photos (scikit-image's CC0 `chelsea.png` and `coffee.png`).
//! `images/classifier/build.sh` must have been run first.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;
use support::postgres::{cluster, Database};

const CAT_LABELS: [&str; 3] = ["tabby, tabby cat", "tiger cat", "Egyptian cat"];
const COFFEE_LABELS: [&str; 2] = ["espresso", "cup"];

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist")
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run images/classifier/build.sh first",
        path.display()
    );
    path
}

fn model_dir() -> PathBuf {
    require(dist().join("model/efficientnet-lite0.onnx"));
    require(dist().join("model/labels.txt"));
    dist().join("model")
}

fn ort_library() -> PathBuf {
    require(dist().join("lib/libonnxruntime.so.1.23.2"))
}

fn photo(name: &str) -> Vec<u8> {
    let path = require(dist().join("testdata").join(name));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The service under test: `CLASSIFIER_BIN` if set (e.g. `dist/classifier`), else the
/// binary cargo built with these tests.
fn binary() -> PathBuf {
    std::env::var_os("CLASSIFIER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_classifier")))
}

struct Server {
    child: Child,
    addr: SocketAddr,
    logs: mpsc::Receiver<String>,
}

/// Where the service keeps its history: the tests that touch it run on both.
enum Store {
    /// `$DATA_DIR/history.sqlite3`, the default.
    Sqlite,
    /// A fresh database of the tests' PostgreSQL server (tests/support/postgres.rs).
    Postgres(Database),
}

impl Store {
    fn postgres() -> Store {
        Store::Postgres(cluster().database())
    }
}

/// Each named test, `async fn NAME(store: Store)`, as `both::NAME::sqlite` and
/// `both::NAME::postgres`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod both {
            $(
                mod $name {
                    #[tokio::test(flavor = "multi_thread")]
                    async fn sqlite() {
                        crate::$name(crate::Store::Sqlite).await
                    }
                    #[tokio::test(flavor = "multi_thread")]
                    async fn postgres() {
                        crate::$name(crate::Store::postgres()).await
                    }
                }
            )*
        }
    };
}

on_both_stores!(
    concurrent_predictions_all_answer,
    history_survives_a_restart,
    bad_inputs_get_json_4xx,
    history_is_bounded_capped_and_paginated,
    history_is_private_or_anonymous,
);

impl Server {
    fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        Self::start_on(&Store::Sqlite, data_dir, extra_env)
    }

    fn start_on(store: &Store, data_dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(binary());
        cmd.env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("MODEL_DIR", model_dir())
            .env("DATA_DIR", data_dir)
            .env("ORT_DYLIB_PATH", ort_library())
            .env_remove("HISTORY_TOKEN")
            .env_remove("APP_VERSION")
            .env_remove("DATABASE_URL")
            .env_remove("DATABASE_PASSWORD_FILE")
            .env_remove("DATABASE_CA_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Store::Postgres(db) = store {
            cmd.envs(db.env());
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary().display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Owned by a Server from here on, so any panic below still kills and reaps it.
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match server.logs.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!("service did not report its address ({e:?})"),
            };
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                panic!("log line is not JSON: {line}");
            };
            if event["message"] == "listening" {
                server.addr = event["addr"].as_str().expect("addr field").parse().unwrap();
                return server;
            }
            if event["message"] == "fatal" {
                panic!("service failed to start: {line}");
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) -> (ExitStatus, Vec<String>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "service ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let logs = self.logs.try_iter().collect();
        (exit, logs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

async fn predict_multipart(server: &Server, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    let part = Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str("image/png")
        .unwrap();
    client()
        .post(server.url("/predict"))
        .multipart(Form::new().part("file", part))
        .send()
        .await
        .unwrap()
}

async fn predict_raw(
    server: &Server,
    query: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = client()
        .post(server.url(&format!("/predict{query}")))
        .body(body);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

fn top1(body: &Value) -> &str {
    body["predictions"][0]["label"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn photos_get_their_imagenet_class() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);

    let resp = predict_multipart(&server, "chelsea.png", photo("chelsea.png")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(CAT_LABELS.contains(&top1(&body)), "chelsea.png: {body:#}");
    let preds = body["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 5, "default top_k is 5");
    let scores: Vec<f64> = preds.iter().map(|p| p["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().sum::<f64>() <= 1.0 + 1e-4 && scores[0] > 0.2);
    assert!(body["inference_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(body["image"]["width"], 451);

    let resp = predict_raw(&server, "?top_k=3", Some("image/png"), photo("coffee.png")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(COFFEE_LABELS.contains(&top1(&body)), "coffee.png: {body:#}");
    assert_eq!(body["predictions"].as_array().unwrap().len(), 3);
}

async fn concurrent_predictions_all_answer(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_on(&store, data.path(), &[]);
    let bytes = photo("coffee.png");
    let url = server.url("/predict");
    let jobs: Vec<_> = (0..4)
        .map(|_| {
            let req = client()
                .post(&url)
                .header("content-type", "image/png")
                .body(bytes.clone());
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    for job in jobs {
        let resp = job.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert!(COFFEE_LABELS.contains(&top1(&body)), "{body:#}");
    }
}

const TOKEN: &str = "test-token-0123456789";

async fn get_history(server: &Server, query: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(server.url(&format!("/history{query}")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

async fn history_survives_a_restart(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_on(&store, data.path(), &[]);
    let first = predict_multipart(&server, "chelsea.png", photo("chelsea.png")).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = predict_raw(&server, "", Some("image/png"), photo("coffee.png")).await;
    assert_eq!(second.status(), StatusCode::OK);
    let (exit, logs) = server.stop();
    assert!(exit.success(), "exit after SIGTERM: {exit:?}");
    assert!(
        logs.iter().any(|l| l.contains("\"shut down\"")),
        "no shutdown log line in {logs:?}"
    );
    // SQLite writes its file in DATA_DIR; with PostgreSQL nothing is written there.
    assert_eq!(
        data.path().join("history.sqlite3").exists(),
        matches!(store, Store::Sqlite)
    );

    let server = Server::start_on(&store, data.path(), &[("HISTORY_TOKEN", TOKEN)]);
    let resp = get_history(&server, "", Some(TOKEN)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{body:#}");
    // Newest first.
    assert!(COFFEE_LABELS.contains(&items[0]["top_label"].as_str().unwrap()));
    assert_eq!(items[0]["content_type"], "image/png");
    assert!(CAT_LABELS.contains(&items[1]["top_label"].as_str().unwrap()));
    assert_eq!(items[1]["filename"], "chelsea.png");
    assert_eq!(items[1]["predictions"].as_array().unwrap().len(), 5);

    let resp = get_history(&server, "?limit=1", Some(TOKEN)).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
}

/// A browser gets the page and Swagger UI, with everything they load from the service
/// itself under a strict Content-Security-Policy; an API client still gets JSON.
#[tokio::test(flavor = "multi_thread")]
async fn browsers_get_pages_that_load_nothing_from_elsewhere() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let get = |path: &str, accept: &str| {
        client()
            .get(server.url(path))
            .header("Accept", accept.to_owned())
            .send()
    };
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for path in ["/", "/docs"] {
        let resp = get(path, browser).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let csp = resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        let html = resp.text().await.unwrap();
        assert!(html.starts_with("<!doctype html>"), "{path}: {html}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{path} names another host"
        );
        // Every file it loads is served here.
        for asset in html.split("\"/static/").skip(1) {
            let name = asset.split('"').next().unwrap();
            let resp = get(&format!("/static/{name}"), "*/*").await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "/static/{name}");
            assert!(!resp.bytes().await.unwrap().is_empty(), "/static/{name}");
        }
    }
    let resp = get("/static/nothing.js", "*/*").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = get("/", "application/json").await.unwrap();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn index_and_health_describe_the_service() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let body = get_json(&server, "/").await;
    assert_eq!(body["service"], "classifier");
    assert_eq!(body["model"]["name"], "efficientnet-lite0");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let resp = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    drop(server);

    // A later deployment only changes the version label.
    let server = Server::start(data.path(), &[("APP_VERSION", "v2")]);
    let body: Value = client()
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["version"], "v2");
    let doc: Value = client()
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["info"]["version"], "v2");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_is_described_by_openapi() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let resp = client()
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for path in ["/", "/health", "/predict", "/history"] {
        assert!(doc["paths"][path].is_object(), "{path} is not described");
    }
    let resp = client().get(server.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("openapi.json"));
}

async fn get_json(server: &Server, path: &str) -> Value {
    let resp = client().get(server.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    resp.json().await.unwrap()
}

/// The value of the sample `series` in Prometheus' text format (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_uploads_and_model_time() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    for _ in 0..3 {
        let resp = predict_multipart(&server, "chelsea.png", photo("chelsea.png")).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = predict_raw(&server, "", Some("image/png"), b"not a png".to_vec()).await;
    assert!(resp.status().is_client_error());
    let refused = resp.status().as_u16();
    client().get(server.url("/nowhere")).send().await.unwrap();
    let resp = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    let predict = "route=\"/predict\"";
    assert_eq!(
        sample(
            &text,
            &format!("classifier_requests_total{{{predict},status=\"200\"}}")
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("classifier_rejected_uploads_total{{status=\"{refused}\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "classifier_requests_total{route=\"other\",status=\"404\"}"
        ),
        1.0,
        "a path no route matched is `other`, never the client's path"
    );
    assert!(!text.contains("/nowhere"));
    assert_eq!(sample(&text, "classifier_inference_seconds_count"), 3.0);
    assert_eq!(sample(&text, "classifier_decode_seconds_count"), 3.0);
    assert!(sample(&text, "classifier_inference_seconds_sum") > 0.0);
    assert_eq!(
        sample(
            &text,
            &format!("classifier_request_duration_seconds_count{{{predict}}}")
        ),
        4.0
    );
    assert!(sample(&text, "classifier_model_load_seconds") > 0.0);
    assert_eq!(sample(&text, "classifier_uploads_in_progress"), 0.0);
    // Not part of the API its clients see.
    let doc = get_json(&server, "/openapi.json").await;
    assert!(doc["paths"]["/metrics"].is_null());
}

async fn expect_error(resp: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(resp.status(), status, "{code}");
    let body: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{code}: error body is not JSON: {e}"));
    assert_eq!(body["error"], code, "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "{code}: {body}");
}

async fn bad_inputs_get_json_4xx(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let limit = 200 * 1024;
    let server = Server::start_on(
        &store,
        data.path(),
        &[("MAX_BODY_BYTES", &limit.to_string())],
    );
    let png = photo("chelsea.png");
    assert!(png.len() > limit);

    let r = predict_raw(&server, "", Some("image/png"), Vec::new()).await;
    expect_error(r, StatusCode::BAD_REQUEST, "empty_upload").await;
    let r = predict_multipart(&server, "empty.png", Vec::new()).await;
    expect_error(r, StatusCode::BAD_REQUEST, "empty_upload").await;
    let form = Form::new().text("other", "value");
    let r = client()
        .post(server.url("/predict"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "missing_file").await;

    let r = predict_raw(&server, "", Some("text/plain"), b"hello".to_vec()).await;
    expect_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let r = predict_raw(&server, "", None, png[..1000].to_vec()).await;
    expect_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let r = predict_raw(
        &server,
        "",
        Some("image/png"),
        b"not an image at all".to_vec(),
    )
    .await;
    expect_error(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_an_image").await;
    let r = predict_raw(&server, "", Some("image/png"), png[..20_000].to_vec()).await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "corrupt_image").await;

    let r = predict_raw(&server, "", Some("image/png"), png.clone()).await;
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    let r = predict_multipart(&server, "chelsea.png", png.clone()).await;
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;

    let small = photo("coffee.png")[..1000].to_vec();
    for q in ["?top_k=0", "?top_k=1001", "?top_k=five"] {
        let r = predict_raw(&server, q, Some("image/png"), small.clone()).await;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    }
    let r = client()
        .get(server.url("/history?limit=0"))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    let r = client().get(server.url("/nope")).send().await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let r = client().get(server.url("/predict")).send().await.unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    // None of the rejected requests reached the history.
    let body: Value = get_history(&server, "", None).await.json().await.unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 0);
}

#[test]
fn missing_model_dir_fails_at_start_up() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("MODEL_DIR", data.path().join("no-such-dir"))
        .env("ORT_DYLIB_PATH", ort_library())
        .env("DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-dir"), "{stderr}");
}

fn png_bytes(
    img: &image::DynamicImage,
    compression: image::codecs::png::CompressionType,
) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        compression,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(
        img.as_bytes(),
        img.width(),
        img.height(),
        img.color().into(),
    )
    .unwrap();
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small valid PNG whose header claims `width` x `height`: what a pixel bomb looks
/// like to a server that reads only the header.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let img = image::DynamicImage::ImageLuma8(image::GrayImage::new(1, 1));
    let mut png = png_bytes(&img, image::codecs::png::CompressionType::Fast);
    // Signature (8), IHDR length (4) and type (4), then width and height.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread")]
async fn pixel_bombs_are_refused_from_the_header() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    // 50.4 megapixels, under the 12000 px side cap: refused by the pixel cap.
    let r = predict_raw(&server, "", Some("image/png"), png_claiming(7100, 7100)).await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "too_many_pixels").await;
    let r = predict_raw(&server, "", Some("image/png"), png_claiming(12_001, 10)).await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "too_many_pixels").await;
    drop(server);

    // The cap is configurable, and so is the decoded-bytes budget.
    let server = Server::start(
        data.path(),
        &[
            ("MAX_IMAGE_PIXELS", "100000"),
            ("DECODE_MEMORY_BYTES", "500000"),
        ],
    );
    let r = predict_raw(&server, "", Some("image/png"), photo("chelsea.png")).await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "too_many_pixels").await;
    let big = image::DynamicImage::ImageRgba16(image::ImageBuffer::new(300, 300));
    let r = predict_raw(
        &server,
        "",
        Some("image/png"),
        png_bytes(&big, image::codecs::png::CompressionType::Fast),
    )
    .await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "image_too_large").await;
}

/// Large images decode into one buffer in their own pixel format, and the decode budget
/// holds concurrent decodes to what fits in it: three uploads of a 48 MB image at once
/// with a 64 MiB budget raise the peak RSS by little more than one image.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_large_decodes_stay_within_the_budget() {
    const SIDE: u32 = 4000;
    let decoded = u64::from(SIDE) * u64::from(SIDE) * 3;
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        SIDE,
        SIDE,
        image::Rgb([90, 120, 200]),
    ));
    let png = png_bytes(&img, image::codecs::png::CompressionType::Default);
    drop(img);
    assert!(png.len() < 10 << 20, "{} bytes", png.len());
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(
        data.path(),
        &[
            ("DECODE_MEMORY_BYTES", &(64u64 << 20).to_string()),
            ("DECODE_CONCURRENCY", "4"),
            ("MAX_PENDING_UPLOADS", "4"),
        ],
    );
    let resp = predict_raw(&server, "", Some("image/png"), photo("coffee.png")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Reset the peak to what is resident now.
    std::fs::write(format!("/proc/{}/clear_refs", server.pid()), "5").unwrap();
    let before = status_kb(server.pid(), "VmRSS:");

    let url = server.url("/predict");
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            let req = client()
                .post(&url)
                .header("content-type", "image/png")
                .body(png.clone());
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    for job in jobs {
        let resp = job.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["image"]["width"], SIDE, "{body}");
    }
    let growth = (status_kb(server.pid(), "VmHWM:") - before) * 1024;
    eprintln!("peak RSS grew by {growth} bytes for three {decoded}-byte images");
    assert!(
        growth < decoded * 3 / 2,
        "peak RSS grew by {growth} bytes for {decoded}-byte images"
    );
}

async fn history_is_bounded_capped_and_paginated(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_on(
        &store,
        data.path(),
        &[("HISTORY_MAX_ROWS", "5"), ("HISTORY_TOKEN", TOKEN)],
    );
    let tiny = png_bytes(
        &image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1)),
        image::codecs::png::CompressionType::Fast,
    );
    let long_name = format!("{}.png", "x".repeat(100_000));
    for _ in 0..8 {
        let resp = predict_multipart(&server, &long_name, tiny.clone()).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = get_history(&server, "?limit=100", Some(TOKEN)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.len() < 10_000, "GET /history is {} bytes", text.len());
    let body: Value = serde_json::from_str(&text).unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "only HISTORY_MAX_ROWS rows are kept");
    for item in items {
        let name = item["filename"].as_str().unwrap();
        assert!(name.chars().count() <= 100, "{} characters", name.len());
    }
    assert!(body["next_before"].is_null());

    // Two at a time, following next_before, newest first, each row once.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let body: Value = get_history(&server, &query, Some(TOKEN))
            .await
            .json()
            .await
            .unwrap();
        for item in body["items"].as_array().unwrap() {
            seen.push(item["id"].as_i64().unwrap());
        }
        match body["next_before"].as_i64() {
            Some(id) => query = format!("?limit=2&before={id}"),
            None => break,
        }
    }
    let want: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(seen, want);
}

async fn history_is_private_or_anonymous(store: Store) {
    let data = tempfile::tempdir().unwrap();
    // No token configured: anyone may look, but sees no file names or content types.
    let server = Server::start_on(&store, data.path(), &[]);
    let resp = predict_multipart(&server, "my-passport.png", photo("coffee.png")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = get_history(&server, "", None).await.json().await.unwrap();
    assert_eq!(body["anonymous"], true);
    assert_eq!(body["items"][0]["filename"], Value::Null);
    assert_eq!(body["items"][0]["content_type"], Value::Null);
    assert!(!body.to_string().contains("passport"), "{body}");
    drop(server);

    // With a token, the history needs it and then shows everything.
    let server = Server::start_on(&store, data.path(), &[("HISTORY_TOKEN", TOKEN)]);
    let r = get_history(&server, "", None).await;
    assert!(r.headers().contains_key("www-authenticate"));
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = get_history(&server, "", Some("not-the-token-0000000")).await;
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let body: Value = get_history(&server, "", Some(TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["anonymous"], false);
    assert_eq!(body["items"][0]["filename"], "my-passport.png");
}

/// Replicas on several VMs share one PostgreSQL history: rows written through each are
/// one history, read back the same through either, while both write at once.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_one_history() {
    let store = Store::postgres();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = [("HISTORY_TOKEN", TOKEN)];
    let a = Server::start_on(&store, a_dir.path(), &env);
    let b = Server::start_on(&store, b_dir.path(), &env);
    let bytes = photo("coffee.png");
    let jobs: Vec<_> = (0..6)
        .map(|i| {
            let server = if i % 2 == 0 { &a } else { &b };
            let req = client()
                .post(server.url("/predict"))
                .header("content-type", "image/png")
                .body(bytes.clone());
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    for job in jobs {
        let resp = job.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["id"].as_i64().expect("an id"));
    }
    ids.sort_unstable_by(|x, y| y.cmp(x));
    let mut seen = Vec::new();
    for server in [&a, &b] {
        let body: Value = get_history(server, "?limit=100", Some(TOKEN))
            .await
            .json()
            .await
            .unwrap();
        let listed: Vec<i64> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect();
        seen.push(listed);
    }
    assert_eq!(
        seen[0], ids,
        "replica A lists every replica's rows, newest first"
    );
    assert_eq!(seen[1], ids, "replica B lists the same");
}

/// A database the service cannot use stops it at start-up, with the reason and the
/// variable, and never the password.
#[test]
fn a_bad_database_setting_fails_at_start_up() {
    let db = cluster().database();
    let data = tempfile::tempdir().unwrap();
    let wrong_password = data.path().join("wrong");
    std::fs::write(&wrong_password, "not-the-password-hunter2\n").unwrap();
    let cases = [
        (
            vec![("DATABASE_URL", "postgres://classifier@/history".to_owned())],
            "DATABASE_URL names no host",
        ),
        (
            vec![(
                "DATABASE_PASSWORD_FILE",
                db.password_file.display().to_string(),
            )],
            "DATABASE_PASSWORD_FILE is set without DATABASE_URL",
        ),
        (
            vec![
                ("DATABASE_URL", db.url.clone()),
                (
                    "DATABASE_PASSWORD_FILE",
                    wrong_password.display().to_string(),
                ),
                ("DATABASE_CA_FILE", db.ca_file.display().to_string()),
            ],
            "password authentication failed",
        ),
    ];
    for (env, expected) in cases {
        let out = Command::new(binary())
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("MODEL_DIR", model_dir())
            .env("ORT_DYLIB_PATH", ort_library())
            .env("DATA_DIR", data.path())
            .env_remove("DATABASE_URL")
            .env_remove("DATABASE_PASSWORD_FILE")
            .env_remove("DATABASE_CA_FILE")
            .envs(env)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

/// `classifier healthcheck`, the container's health check (no shell or curl in the
/// image): 0 while the service answers /health, 1 with the reason otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn the_healthcheck_command_says_whether_the_service_answers() {
    let check = |port: u16| {
        Command::new(binary())
            .arg("healthcheck")
            .env("PORT", port.to_string())
            .output()
            .unwrap()
    };
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let port = server.addr.port();
    let out = tokio::task::spawn_blocking(move || check(port))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let out = tokio::task::spawn_blocking(move || check(port))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy: connecting"));

    // Something else on the port, answering 503.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ =
                conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let out = tokio::task::spawn_blocking(move || check(port))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("503"), "{stderr}");
}
