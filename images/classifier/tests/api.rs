//! End-to-end tests of the classifier service: the real binary on 127.0.0.1, the real
//! model from `dist/`, real photos (scikit-image's CC0 `chelsea.png` and `coffee.png`).
//! `images/classifier/build.sh` must have been run first.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;

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

impl Server {
    fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(binary());
        cmd.env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("MODEL_DIR", model_dir())
            .env("DATA_DIR", data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
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

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_predictions_all_answer() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
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

#[tokio::test(flavor = "multi_thread")]
async fn history_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
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
    assert!(data.path().join("history.sqlite3").exists());

    let server = Server::start(data.path(), &[]);
    let resp = client().get(server.url("/history")).send().await.unwrap();
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

    let resp = client()
        .get(server.url("/history?limit=1"))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn index_and_health_describe_the_service() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let body: Value = client()
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["service"], "classifier");
    assert_eq!(body["model"]["name"], "efficientnet-lite0");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let resp = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

async fn expect_error(resp: reqwest::Response, status: StatusCode, what: &str) {
    assert_eq!(resp.status(), status, "{what}");
    let body: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON: {e}"));
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_json_4xx() {
    let data = tempfile::tempdir().unwrap();
    let limit = 200 * 1024;
    let server = Server::start(data.path(), &[("MAX_BODY_BYTES", &limit.to_string())]);
    let png = photo("chelsea.png");
    assert!(png.len() > limit);

    let r = predict_raw(&server, "", Some("image/png"), Vec::new()).await;
    expect_error(r, StatusCode::BAD_REQUEST, "empty raw body").await;
    let r = predict_multipart(&server, "empty.png", Vec::new()).await;
    expect_error(r, StatusCode::BAD_REQUEST, "empty multipart file").await;
    let form = Form::new().text("other", "value");
    let r = client()
        .post(server.url("/predict"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "multipart without file").await;

    let r = predict_raw(&server, "", Some("text/plain"), b"hello".to_vec()).await;
    expect_error(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "text/plain").await;
    let r = predict_raw(&server, "", None, png[..1000].to_vec()).await;
    expect_error(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "no content type").await;
    let r = predict_raw(
        &server,
        "",
        Some("image/png"),
        b"not an image at all".to_vec(),
    )
    .await;
    expect_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "text sent as image/png",
    )
    .await;
    let r = predict_raw(&server, "", Some("image/png"), png[..20_000].to_vec()).await;
    expect_error(r, StatusCode::UNPROCESSABLE_ENTITY, "truncated png").await;

    let r = predict_raw(&server, "", Some("image/png"), png.clone()).await;
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "raw body over the limit").await;
    let r = predict_multipart(&server, "chelsea.png", png.clone()).await;
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "multipart over the limit").await;

    let small = photo("coffee.png")[..1000].to_vec();
    for q in ["?top_k=0", "?top_k=1001", "?top_k=five"] {
        let r = predict_raw(&server, q, Some("image/png"), small.clone()).await;
        expect_error(r, StatusCode::BAD_REQUEST, q).await;
    }
    let r = client()
        .get(server.url("/history?limit=0"))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "history limit=0").await;
    let r = client().get(server.url("/nope")).send().await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "unknown path").await;
    let r = client().get(server.url("/predict")).send().await.unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "GET /predict").await;

    // None of the rejected requests reached the history.
    let body: Value = client()
        .get(server.url("/history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 0);
}

#[test]
fn missing_model_dir_fails_at_start_up() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("MODEL_DIR", data.path().join("no-such-dir"))
        .env("DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-dir"), "{stderr}");
}
