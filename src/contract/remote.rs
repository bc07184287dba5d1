//! The VM program's requests and answers over SSH (`ssh … sudo imgforge-vm COMMAND`): a
//! request is one JSON line on stdin (then the bytes it announces), an answer one JSON
//! line on stdout; progress goes to stderr. Exit 2 is a refusal, 1 a failure.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::Status;

/// `deploy-version` and `rollback`: what to run and how long to wait for it (a field left
/// out or null is none). The answer is the deploy's entry ([`super::status::Deploy`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeployRequest {
    /// The image to run (deploys; a rollback names none).
    pub image: Option<String>,
    /// The new version's environment file; none keeps the running one's.
    pub env: Option<String>,
    /// Seconds to wait for the health path; none: deploy.json's app_start_timeout.
    pub health_timeout: Option<u64>,
    /// Seconds the old version keeps serving requests it already has.
    pub drain: u64,
    /// Seconds after the switch during which the old version stays ready (nginx's
    /// backup server) and the new one is watched: failing health, or more 5xx answers
    /// than the old one gave, switches back by itself. None: 60; 0: no watch.
    pub watch: Option<u64>,
    /// The bundle that follows the request line on stdin.
    pub bundle: Option<Upload>,
    /// `restore`: the archive to restore; none: the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
}

/// Bytes that follow a request line: exactly `size`, with this sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    pub size: u64,
    pub sha256: String,
}

/// `install-program`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Installed {
    /// The VM ran another program, and runs this one now.
    pub replaced: bool,
}

/// `status`'s answer: status.json and what only root sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StatusAnswer {
    /// status.json (none before first boot wrote it).
    pub status: Option<Status>,
    /// What serves, checked on the VM.
    pub serving: Serving,
    /// The path users take answers and everything on the VM agrees on what serves.
    pub healthy: bool,
    /// The deploy running now (its job name), if any.
    pub deploy: Option<String>,
    /// The certificate nginx serves, if one is installed.
    pub certificate: Option<Certificate>,
    /// Bytes on disk, by what they are (`data`, `backups`).
    #[serde(default)]
    pub disk: IndexMap<String, u64>,
    /// The backups' records.
    #[serde(default)]
    pub backup: BackupState,
    /// The app's requests in the last 5 and 60 minutes (`5m`, `60m`), from nginx's log.
    #[serde(default)]
    pub traffic: IndexMap<String, Traffic>,
    /// The VM's CPU, memory and disk.
    #[serde(default)]
    pub machine: Option<Machine>,
    /// A cluster's nodes and the app's replicas, as the swarm's manager sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// What a cluster's node knows of the swarm: all of it on the manager; a worker sees
/// only its own part (`manager: false`, no nodes or replicas).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ClusterStatus {
    /// This node manages the swarm.
    pub manager: bool,
    /// This node's state in the swarm (`active`, `pending`, `inactive`, `error`).
    pub state: String,
    pub nodes: Vec<ClusterNode>,
    /// The app's tasks that should run, by node.
    pub replicas: Vec<Replica>,
    /// The last update of the service: `updating`, `completed`, `rollback_completed`, …;
    /// none before any.
    pub update: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ClusterNode {
    pub hostname: String,
    /// Its address on the private network.
    pub addr: String,
    /// `ready`, `down`, …
    pub state: String,
    /// `active`, `pause`, `drain`.
    pub availability: String,
    pub manager: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Replica {
    /// The node's hostname (its id when the node is gone).
    pub node: String,
    pub version: String,
    /// `running`, `starting`, `failed`, …
    pub state: String,
}

/// The app's requests in a window, as nginx's access log has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Traffic {
    /// The window's length.
    pub seconds: u64,
    pub requests: u64,
    pub per_second: f64,
    /// The share (0 to 1) of answers 400-499, and 500-599.
    pub share_4xx: f64,
    pub share_5xx: f64,
    /// Request time percentiles, seconds (none without requests).
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// CPU use over half a second (0 to 1), memory and the root filesystem, bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Machine {
    pub cpu: f64,
    pub memory_used: u64,
    pub memory_total: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// What serves: the health path through nginx the way users come, and whether app.json,
/// the upstream file, nginx's running configuration and the units enabled for boot agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Serving {
    /// The slot app.json names as active.
    pub slot: Option<String>,
    /// The URL checked.
    pub path: String,
    /// Its HTTP status; 0 when nothing answered.
    pub answer: u16,
    pub answers: bool,
    /// Each disagreement, in words.
    #[serde(default)]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Certificate {
    pub issuer: String,
    pub not_after: String,
}

/// A backup's record (`backup-now`'s answer; `status` and `backup-list` show the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BackupRecord {
    /// When it started, RFC 3339 UTC.
    pub started: String,
    /// The archive's name.
    pub archive: String,
    /// Where the archive is: `local` (this VM's disk) or `borg` (the repository).
    #[serde(rename = "where")]
    pub location: String,
    /// `ok` or `failed`.
    pub result: String,
    /// Seconds it took.
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// SQLite databases copied through SQLite's online backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<u64>,
    /// The archive's size (in a repository: the data's, before compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What the repository stored for it: compressed and deduplicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The backup records: the last one, and the last that worked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BackupState {
    #[serde(default)]
    pub last: Option<BackupRecord>,
    #[serde(default)]
    pub last_ok: Option<BackupRecord>,
}

/// `backup-list`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BackupList {
    /// Oldest first.
    pub archives: Vec<Archive>,
    pub last: Option<BackupRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Archive {
    pub name: String,
    /// RFC 3339 UTC.
    pub time: String,
    /// Its size on the VM's disk; none for a repository's (borg would read each one).
    pub bytes: Option<u64>,
    #[serde(rename = "where")]
    pub location: String,
}

/// `cluster-token`'s answer (the manager of a cluster): the swarm's worker join token, a
/// secret, and the address nodes join at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ClusterToken {
    pub token: String,
    /// ADDRESS:PORT on the cluster's private network.
    pub manager: String,
}
