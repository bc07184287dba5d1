//! The image-classifier HTTP service that imgforge deploys by default: EfficientNet-Lite0
//! (ONNX, run by ONNX Runtime) behind a small axum API, with a prediction history in SQLite.
//! The binary in `main.rs` only reads the environment and serves [`server::app`].

pub mod config;
pub mod error;
pub mod healthcheck;
pub mod history;
pub mod metrics;
pub mod model;
pub mod server;
pub mod web;
