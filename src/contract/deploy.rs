//! deploy.json: the deployment as the VM program reads it (`/etc/imgforge/deploy.json`),
//! rendered from the user's input by [`crate::render`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::input::{BackupEvery, ClusterRole, DnsProvider, DockerSource};

/// The document version this imgforge writes; the program refuses one it does not know.
pub const VERSION: u32 = 1;

/// Processes the app's container may run at once.
pub const PIDS_LIMIT: u32 = 512;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployJson {
    /// Bumped when a field changes meaning.
    pub version: u32,
    pub domain: Option<String>,
    pub tls: bool,
    pub email: Option<String>,
    pub acme_server: Option<String>,
    /// Whether `acme_ca` (layout.json) holds the ACME server's CA bundle.
    pub acme_ca_bundle: bool,
    pub admin_user: String,
    pub image: String,
    pub bundle: BundleJson,
    pub docker_source: DockerSource,
    pub offline: bool,
    pub data_dir: String,
    pub data_path: String,
    pub container_port: u16,
    pub health_path: String,
    /// Seconds the app may take to answer its health path when it starts (first boot,
    /// reboots, and deploys that name no --health-timeout).
    pub app_start_timeout: u32,
    pub max_body_size: String,
    pub backup_keep: u32,
    pub app: AppLimits,
    /// The DNS provider the VM registers its address with (its token is in its own file).
    pub dns: Option<DnsJson>,
    /// The BorgBackup repository backups go to (passphrase and SSH key in their own
    /// files); none: archives on the VM's own disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borg: Option<BorgJson>,
    /// /metrics over HTTPS with the token (`nginx_metrics_auth` holds it): the app's
    /// metrics and node_exporter's, on loopback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics: bool,
    /// A webhook is told of failures (`notify_curlrc` holds its URL; `notify_dir` the
    /// messages of the units whose failure it is told).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notify: bool,
    /// Packages first boot installs beyond the base (and an image for --offline must
    /// carry): each with the command that shows it is there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<PackageJson>,
    /// A node of a Docker Swarm cluster (the join token, if any, in `swarm_join_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterJson {
    pub role: ClusterRole,
    /// The provider's private network, ADDRESS/PREFIX: the swarm's ports are open only to
    /// it, and the node advertises its own address in it.
    pub network: String,
    /// The manager a joining node contacts, ADDRESS:PORT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// The app's replicas (the manager's service); none: one on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageJson {
    /// The Debian/Ubuntu package.
    pub name: String,
    /// A command it installs.
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BorgJson {
    /// ssh://USER@HOST[:PORT]/PATH
    pub repo: String,
    pub every: BackupEvery,
    /// Whether `borg_known_hosts` holds the host's key from the user; otherwise it is
    /// trusted at the first backup and pinned there.
    pub known_hosts: bool,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsJson {
    pub provider: DnsProvider,
    pub zone: Option<String>,
    pub api_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppLimits {
    pub memory: String,
    pub pids_limit: u32,
}

/// Where the app's image comes from at first boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BundleJson {
    Registry,
    Url { url: String, sha256: String },
    Seed { sha256: String },
    File { sha256: String },
    Baked,
}
