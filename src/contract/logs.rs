//! `imgforge-vm logs`: the request (one JSON line) and the lines it answers with, one
//! JSON object each, oldest first, then (following) as they come.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a line comes from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The app's output, every version that ran (from the journal)
    App,
    /// nginx's access log (with request times) and error log
    Proxy,
    /// Deploys and rollbacks, step by step
    Deploy,
    /// First boot's steps, and each boot's recovery
    Boot,
    /// The data backups
    Backup,
    /// The certificate's renewals
    Cert,
    /// The DNS registrations
    Dns,
}

/// The request: a field left out is none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogsRequest {
    /// The sources to read; none or empty: all of them.
    pub sources: Vec<Source>,
    /// Lines from the last this many seconds (the VM's clock).
    pub since: Option<u64>,
    /// At most this many lines, the newest (200 when neither this nor `since` is given).
    pub lines: Option<u32>,
    /// Go on with new lines as they come, until the client goes.
    pub follow: bool,
}

/// One line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LogLine {
    /// RFC 3339, UTC, milliseconds (`2026-12-06T21:04:36.123Z`).
    pub time: String,
    pub source: Source,
    /// The text, as written (proxy access lines: method, URI, status, time).
    pub message: String,
    /// app: the slot that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// app: the version that wrote it (null for lines older than the version records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// proxy: the request of an access log line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
}

/// A request nginx served, as its JSON access log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Request {
    pub remote: String,
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub bytes: u64,
    /// Seconds from the first byte read to the last byte sent.
    pub request_time: f64,
    /// Seconds the app took (the last one tried); null when no app answered.
    pub upstream_time: Option<f64>,
}
