//! The deployment's settings as the user writes them: one struct that is both the
//! command-line flags (clap) and `imgforge.yaml` (serde), so the two cannot drift. Flags
//! win over the file. Each scalar setting is described once in [`Setting`] below: its
//! flag, its key, its default and its parser.

use std::path::PathBuf;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::borg::{BackupEvery, BackupRepo};
use super::cluster::{self, ClusterRole, ManagerAddr, PrivateNetwork};
use super::types::*;
use super::DockerSource;

/// The deployment, as flags or as the config file. Every field is optional: a missing
/// one takes its default, or is an error when it has none.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[command(next_help_heading = "Deployment")]
pub struct Settings {
    /// Config file (see `imgforge init`); flags override its values
    #[arg(long, short = 'c', value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Domain the API is served on; its DNS A/AAAA record points at the VM
    #[arg(long, value_name = "NAME")]
    #[serde(default, deserialize_with = "scalar")]
    pub domain: Option<String>,
    /// E-mail for the certificate account (expiry notices)
    #[arg(long, value_name = "ADDRESS")]
    #[serde(default, deserialize_with = "scalar")]
    pub email: Option<String>,
    #[command(flatten)]
    #[serde(default)]
    pub admin: AdminSettings,
    #[command(flatten)]
    #[serde(default)]
    pub app: AppSettings,
    /// Serve plain HTTP only (no domain or certificate yet)
    #[arg(long)]
    #[serde(skip)]
    pub no_tls: bool,
    #[command(flatten)]
    #[serde(default)]
    pub tls: TlsSettings,
    #[command(flatten)]
    #[serde(default)]
    pub dns: DnsSettings,
    /// Where Docker comes from [default: docker-ce]
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub docker_source: Option<DockerSource>,
    /// Install nothing at boot: the image already carries the packages
    #[arg(long)]
    #[serde(default)]
    pub offline: bool,
    #[command(flatten)]
    #[serde(default)]
    pub backup: BackupSettings,
    #[command(flatten)]
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// Webhook told of a failed deploy, an automatic rollback, a failed backup or certificate renewal (ntfy, Slack, Discord)
    #[arg(long = "notify-url", value_name = "URL")]
    #[serde(default, deserialize_with = "scalar")]
    pub notify_url: Option<String>,
    /// Serve /metrics over HTTPS to this file's bearer token (mode 0600): the app's and the node's Prometheus metrics
    #[arg(long = "metrics-token-file", value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Pre-generate the VM's SSH host key and print its known_hosts line
    #[arg(long)]
    #[serde(default)]
    pub host_key: bool,
    /// Directory of templates that replace the built-in ones, file by file
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// How `imgforge render` packages the user-data (its own flags; a key here too).
    #[arg(skip)]
    #[serde(default)]
    pub user_data: UserDataSettings,
}

#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminSettings {
    /// Admin user name [default: deploy]
    #[arg(long = "user", value_name = "NAME")]
    #[serde(default, deserialize_with = "scalar")]
    pub user: Option<String>,
    /// Admin's SSH public key file (repeatable) [default: ~/.ssh/id_ed25519.pub]
    #[arg(long = "ssh-key", value_name = "FILE.pub")]
    #[serde(default)]
    pub ssh_key_files: Vec<PathBuf>,
    /// Public keys written out in full (config file only).
    #[arg(skip)]
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AppSettings {
    /// Container image to run [default: imgforge/classifier:0.1.0, the project's classifier]
    #[arg(long, value_name = "REF")]
    #[serde(default, deserialize_with = "scalar")]
    pub image: Option<String>,
    /// Port the container listens on [default: 8000]
    #[arg(long = "app-port", value_name = "PORT")]
    #[serde(default, deserialize_with = "scalar")]
    pub port: Option<String>,
    /// Host directory for the app's data [default: /srv/app/data]
    #[arg(long, value_name = "DIR")]
    #[serde(default, deserialize_with = "scalar")]
    pub data_dir: Option<String>,
    /// Where the data directory is mounted in the container [default: /app/data]
    #[arg(long, value_name = "DIR")]
    #[serde(default, deserialize_with = "scalar")]
    pub data_path: Option<String>,
    /// Environment variable for the container (repeatable; secrets: --env-file)
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = EnvItem::from_flag)]
    #[serde(default, deserialize_with = "env_map")]
    pub env: Vec<EnvItem>,
    /// File of NAME=VALUE lines for the container (# comments); --env adds to it
    #[arg(long = "env-file", value_name = "FILE")]
    #[serde(default)]
    pub env_file: Option<PathBuf>,
    /// File (mode 0600) holding the app's PostgreSQL URL, postgres://USER:PASSWORD@HOST[:PORT]/DB[?sslmode=require]: the container's DATABASE_URL
    #[arg(long = "database-url-file", value_name = "FILE")]
    #[serde(default)]
    pub database_url_file: Option<PathBuf>,
    /// The app's health endpoint [default: /health]
    #[arg(long, value_name = "PATH")]
    #[serde(default, deserialize_with = "scalar")]
    pub health_path: Option<String>,
    /// Largest request body nginx passes to the app [default: 10m]
    #[arg(long, value_name = "SIZE")]
    #[serde(default, deserialize_with = "scalar")]
    pub max_body_size: Option<String>,
    /// Memory limit of the app's container [default: 1g]
    #[arg(long = "app-memory", value_name = "SIZE")]
    #[serde(default, deserialize_with = "scalar")]
    pub memory: Option<String>,
    /// Seconds the app may take to answer its health path after it starts, at first
    /// boot, after a reboot and in a deploy without --health-timeout [default: 600]
    #[arg(long = "app-start-timeout", value_name = "SECS")]
    #[serde(default, deserialize_with = "scalar")]
    pub start_timeout: Option<String>,
    #[command(flatten)]
    #[serde(default)]
    pub bundle: BundleSettings,
}

#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BundleSettings {
    /// Fetch the image as an OCI bundle from this https URL instead of a registry
    #[arg(
        long = "bundle-url",
        id = "bundle_url",
        value_name = "URL",
        requires = "bundle_sha256"
    )]
    #[serde(default, deserialize_with = "scalar")]
    pub url: Option<String>,
    /// sha256 of the bundle at --bundle-url
    #[arg(long = "bundle-sha256", id = "bundle_sha256", value_name = "HEX")]
    #[serde(default, deserialize_with = "scalar")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsSettings {
    /// `tls.enabled: false` in the file is `--no-tls`.
    #[arg(skip)]
    pub enabled: Option<bool>,
    /// ACME directory URL (staging or a private CA) [default: Let's Encrypt]
    #[arg(long = "acme-server", value_name = "URL")]
    #[serde(default, deserialize_with = "scalar")]
    pub acme_server: Option<String>,
    /// PEM bundle to trust for an ACME server that is not publicly trusted
    #[arg(long = "acme-ca-bundle", value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
}

/// The VM registers its own address (DuckDNS, Cloudflare) before the certificate.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DnsSettings {
    /// Register the VM's address with this DNS provider at boot
    #[arg(long = "dns", id = "dns_provider", value_enum, value_name = "PROVIDER")]
    pub provider: Option<DnsProvider>,
    /// File holding the provider's API token (mode 0600; never on the command line)
    #[arg(long = "dns-token-file", id = "dns_token_file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Cloudflare zone of the domain [default: found from the domain]
    #[arg(long = "dns-zone", id = "dns_zone", value_name = "ZONE")]
    #[serde(default, deserialize_with = "scalar")]
    pub zone: Option<String>,
    /// The provider's API at another address (tests: a stand-in)
    #[arg(
        long = "dns-api-url",
        id = "dns_api_url",
        value_name = "URL",
        hide = true
    )]
    #[serde(default, deserialize_with = "scalar")]
    pub api_url: Option<String>,
}

/// The cloud the user-data is for: its size limit and encoding (render::provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[default]
    Generic,
    Aws,
    Azure,
    Gcp,
    Hetzner,
    Digitalocean,
    Linode,
    Openstack,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DnsProvider {
    /// DuckDNS: free NAME.duckdns.org names
    Duckdns,
    /// Cloudflare: an A/AAAA record in your zone
    Cloudflare,
}

#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackupSettings {
    /// Daily data backups to keep [default: 7]
    #[arg(long = "backup-keep", value_name = "N")]
    #[serde(default, deserialize_with = "scalar")]
    pub keep: Option<String>,
    /// Back up off the VM, to this BorgBackup repository: ssh://USER@HOST[:PORT]/PATH
    #[arg(long = "backup-repo", value_name = "URL")]
    #[serde(default, deserialize_with = "scalar")]
    pub repo: Option<String>,
    /// File holding the repository's passphrase (mode 0600; never on the command line)
    #[arg(long = "backup-passphrase-file", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Private SSH key the VM logs in to the repository's host with (mode 0600)
    #[arg(long = "backup-ssh-key-file", value_name = "FILE")]
    pub ssh_key_file: Option<PathBuf>,
    /// The repository host's known_hosts lines [default: its key is trusted at the first backup]
    #[arg(long = "backup-known-hosts", value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// How often the VM backs up to the repository [default: daily]
    #[arg(long = "backup-every", value_enum, value_name = "WHEN")]
    pub every: Option<BackupEvery>,
    /// Weekly archives the repository keeps [default: 4]
    #[arg(long = "backup-keep-weekly", value_name = "N")]
    #[serde(default, deserialize_with = "scalar")]
    pub keep_weekly: Option<String>,
    /// Monthly archives the repository keeps [default: 6]
    #[arg(long = "backup-keep-monthly", value_name = "N")]
    #[serde(default, deserialize_with = "scalar")]
    pub keep_monthly: Option<String>,
}

/// A Docker Swarm cluster of VMs on the provider's private network.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSettings {
    /// Make this VM a node of a Docker Swarm cluster: `init` on the first, `join` on the others
    #[arg(long = "cluster", value_enum, value_name = "ROLE")]
    pub role: Option<ClusterRole>,
    /// The provider's private network the cluster runs on (its ports open only there), e.g. 10.0.0.0/16
    #[arg(long = "cluster-network", value_name = "CIDR")]
    #[serde(default, deserialize_with = "scalar")]
    pub network: Option<String>,
    /// The manager's private address a joining node contacts, ADDRESS[:PORT] (port 2377)
    #[arg(long = "manager", value_name = "ADDRESS")]
    #[serde(default, deserialize_with = "scalar")]
    pub manager: Option<String>,
    /// File (mode 0600) holding the swarm's join token (`imgforge cluster token` writes one)
    #[arg(long = "join-token-file", value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Replicas of the app the swarm runs [default: one on every node]
    #[arg(long = "replicas", value_name = "N")]
    #[serde(default, deserialize_with = "scalar")]
    pub replicas: Option<String>,
}

/// `imgforge render`'s packaging of the user-data: flags of render, keys under `user-data:`.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[command(next_help_heading = "User-data")]
pub struct UserDataSettings {
    /// Fit the user-data to this provider's limit and encoding [default: generic]
    #[arg(long, value_enum)]
    pub provider: Option<Provider>,
    /// gzip the user-data (cloud-init decompresses it)
    #[arg(long)]
    #[serde(default)]
    pub gzip: bool,
    /// base64-encode the output
    #[arg(long)]
    #[serde(default)]
    pub base64: bool,
}

impl Settings {
    /// The files these flags name (the config file, keys, CA bundle, token): an output
    /// must not be one of them.
    pub fn input_files(&self) -> Vec<&std::path::Path> {
        let mut files: Vec<&std::path::Path> = Vec::new();
        files.extend(self.config.as_deref());
        files.extend(self.admin.ssh_key_files.iter().map(PathBuf::as_path));
        files.extend(self.tls.ca_bundle.as_deref());
        files.extend(self.dns.token_file.as_deref());
        files.extend(self.backup.passphrase_file.as_deref());
        files.extend(self.backup.ssh_key_file.as_deref());
        files.extend(self.backup.known_hosts.as_deref());
        files.extend(self.metrics_token_file.as_deref());
        files.extend(self.app.env_file.as_deref());
        files.extend(self.app.database_url_file.as_deref());
        files.extend(self.cluster.join_token_file.as_deref());
        files
    }
}

/// One `--env NAME=VALUE` or `app.env` entry, as given. A file value that is not a
/// string is kept (as YAML) so the report can show it and ask for quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvItem {
    pub name: String,
    pub value: Result<String, String>,
}

impl EnvItem {
    fn from_flag(s: &str) -> Result<EnvItem, String> {
        match s.split_once('=') {
            Some((name, value)) => Ok(EnvItem {
                name: name.to_owned(),
                value: Ok(value.to_owned()),
            }),
            None => Err("expected NAME=VALUE, e.g. --env MODEL_DIR=/app/model".into()),
        }
    }
}

/// A scalar as text: `port: 8000` and `port: "8000"` read the same. Mappings and lists
/// are errors.
fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde_yaml_ng::Value;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        _ => Err(serde::de::Error::custom(
            "expected a single value, not a list or mapping",
        )),
    }
}

fn env_map<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EnvItem>, D::Error> {
    let map = IndexMap::<String, serde_yaml_ng::Value>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                serde_yaml_ng::Value::String(s) => Ok(s),
                other => Err(serde_yaml_ng::to_string(&other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()),
            };
            EnvItem { name, value }
        })
        .collect())
}

/// One scalar setting: where the user gives it, what it defaults to, how it is parsed.
pub struct Setting<T> {
    pub flag: &'static str,
    /// Its dotted path in imgforge.yaml.
    pub key: &'static str,
    pub default: Option<&'static str>,
    pub get: fn(&Settings) -> Option<&str>,
    pub parse: fn(&str) -> Result<T, Problem>,
}

pub const DEFAULT_IMAGE: &str = "imgforge/classifier:0.1.0";

pub const DOMAIN: Setting<Domain> = Setting {
    flag: "--domain",
    key: "domain",
    default: None,
    get: |s| s.domain.as_deref(),
    parse: Domain::parse,
};
pub const EMAIL: Setting<Email> = Setting {
    flag: "--email",
    key: "email",
    default: None,
    get: |s| s.email.as_deref(),
    parse: Email::parse,
};
pub const USER: Setting<Username> = Setting {
    flag: "--user",
    key: "admin.user",
    default: Some("deploy"),
    get: |s| s.admin.user.as_deref(),
    parse: Username::parse,
};
pub const IMAGE: Setting<ImageRef> = Setting {
    flag: "--image",
    key: "app.image",
    default: Some(DEFAULT_IMAGE),
    get: |s| s.app.image.as_deref(),
    parse: ImageRef::parse,
};
pub const APP_PORT: Setting<Port> = Setting {
    flag: "--app-port",
    key: "app.port",
    default: Some("8000"),
    get: |s| s.app.port.as_deref(),
    parse: Port::parse,
};
pub const DATA_DIR: Setting<UnixPath> = Setting {
    flag: "--data-dir",
    key: "app.data-dir",
    default: Some("/srv/app/data"),
    get: |s| s.app.data_dir.as_deref(),
    parse: UnixPath::parse_data_dir,
};
pub const DATA_PATH: Setting<UnixPath> = Setting {
    flag: "--data-path",
    key: "app.data-path",
    default: Some("/app/data"),
    get: |s| s.app.data_path.as_deref(),
    parse: UnixPath::parse_data_path,
};
pub const HEALTH_PATH: Setting<UrlPath> = Setting {
    flag: "--health-path",
    key: "app.health-path",
    default: Some("/health"),
    get: |s| s.app.health_path.as_deref(),
    parse: UrlPath::parse,
};
/// The classifier refuses bodies over 10 MiB itself; nginx stops them first.
pub const MAX_BODY_SIZE: Setting<BodySize> = Setting {
    flag: "--max-body-size",
    key: "app.max-body-size",
    default: Some("10m"),
    get: |s| s.app.max_body_size.as_deref(),
    parse: BodySize::parse,
};
pub const APP_MEMORY: Setting<MemorySize> = Setting {
    flag: "--app-memory",
    key: "app.memory",
    default: Some("1g"),
    get: |s| s.app.memory.as_deref(),
    parse: MemorySize::parse,
};
/// Generous: a model that loads for minutes on a small VM is slow, not broken.
pub const APP_START_TIMEOUT: Setting<u32> = Setting {
    flag: "--app-start-timeout",
    key: "app.start-timeout",
    default: Some("600"),
    get: |s| s.app.start_timeout.as_deref(),
    parse: |s| match s.parse::<u32>() {
        Ok(n @ 10..=86_400) => Ok(n),
        _ => Err(Problem::new(
            "not a start allowance in seconds",
            "give the seconds the app may take to answer its health path, 10 to 86400 (e.g. 600)",
        )),
    },
};
pub const BUNDLE_URL: Setting<HttpsUrl> = Setting {
    flag: "--bundle-url",
    key: "app.bundle.url",
    default: None,
    get: |s| s.app.bundle.url.as_deref(),
    parse: HttpsUrl::parse,
};
pub const BUNDLE_SHA256: Setting<Sha256Hex> = Setting {
    flag: "--bundle-sha256",
    key: "app.bundle.sha256",
    default: None,
    get: |s| s.app.bundle.sha256.as_deref(),
    parse: Sha256Hex::parse,
};
pub const ACME_SERVER: Setting<HttpsUrl> = Setting {
    flag: "--acme-server",
    key: "tls.acme-server",
    default: None,
    get: |s| s.tls.acme_server.as_deref(),
    parse: HttpsUrl::parse,
};
pub const DNS_ZONE: Setting<Domain> = Setting {
    flag: "--dns-zone",
    key: "dns.zone",
    default: None,
    get: |s| s.dns.zone.as_deref(),
    parse: Domain::parse,
};
pub const DNS_API_URL: Setting<ApiUrl> = Setting {
    flag: "--dns-api-url",
    key: "dns.api-url",
    default: None,
    get: |s| s.dns.api_url.as_deref(),
    parse: ApiUrl::parse,
};
pub const BACKUP_KEEP: Setting<u32> = Setting {
    flag: "--backup-keep",
    key: "backup.keep",
    default: Some("7"),
    get: |s| s.backup.keep.as_deref(),
    parse: |s| match s.parse::<u32>() {
        Ok(n @ 1..=365) => Ok(n),
        _ => Err(Problem::new(
            "not a backup count",
            "keep between 1 and 365 daily archives",
        )),
    },
};
pub const NOTIFY_URL: Setting<NotifyUrl> = Setting {
    flag: "--notify-url",
    key: "notify-url",
    default: None,
    get: |s| s.notify_url.as_deref(),
    parse: NotifyUrl::parse,
};
pub const BACKUP_REPO: Setting<BackupRepo> = Setting {
    flag: "--backup-repo",
    key: "backup.repo",
    default: None,
    get: |s| s.backup.repo.as_deref(),
    parse: BackupRepo::parse,
};
pub const BACKUP_KEEP_WEEKLY: Setting<u32> = Setting {
    flag: "--backup-keep-weekly",
    key: "backup.keep-weekly",
    default: Some("4"),
    get: |s| s.backup.keep_weekly.as_deref(),
    parse: |s| archive_count(s, "weekly", 520),
};
pub const BACKUP_KEEP_MONTHLY: Setting<u32> = Setting {
    flag: "--backup-keep-monthly",
    key: "backup.keep-monthly",
    default: Some("6"),
    get: |s| s.backup.keep_monthly.as_deref(),
    parse: |s| archive_count(s, "monthly", 120),
};

fn archive_count(s: &str, every: &str, max: u32) -> Result<u32, Problem> {
    match s.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(Problem::new(
            "not a backup count",
            format!("keep between 0 and {max} {every} archives"),
        )),
    }
}
pub const CLUSTER_NETWORK: Setting<PrivateNetwork> = Setting {
    flag: "--cluster-network",
    key: "cluster.network",
    default: None,
    get: |s| s.cluster.network.as_deref(),
    parse: PrivateNetwork::parse,
};
pub const MANAGER: Setting<ManagerAddr> = Setting {
    flag: "--manager",
    key: "cluster.manager",
    default: None,
    get: |s| s.cluster.manager.as_deref(),
    parse: ManagerAddr::parse,
};
pub const REPLICAS: Setting<u32> = Setting {
    flag: "--replicas",
    key: "cluster.replicas",
    default: None,
    get: |s| s.cluster.replicas.as_deref(),
    parse: cluster::parse_replicas,
};

/// Every scalar setting's flag, key and default (for the tests that hold flags, their help,
/// keys and `imgforge init`'s starter file together).
pub const NAMES: &[(&str, &str, Option<&str>)] = &[
    (DOMAIN.flag, DOMAIN.key, DOMAIN.default),
    (EMAIL.flag, EMAIL.key, EMAIL.default),
    (USER.flag, USER.key, USER.default),
    (IMAGE.flag, IMAGE.key, IMAGE.default),
    (APP_PORT.flag, APP_PORT.key, APP_PORT.default),
    (DATA_DIR.flag, DATA_DIR.key, DATA_DIR.default),
    (DATA_PATH.flag, DATA_PATH.key, DATA_PATH.default),
    (HEALTH_PATH.flag, HEALTH_PATH.key, HEALTH_PATH.default),
    (MAX_BODY_SIZE.flag, MAX_BODY_SIZE.key, MAX_BODY_SIZE.default),
    (APP_MEMORY.flag, APP_MEMORY.key, APP_MEMORY.default),
    (
        APP_START_TIMEOUT.flag,
        APP_START_TIMEOUT.key,
        APP_START_TIMEOUT.default,
    ),
    (BUNDLE_URL.flag, BUNDLE_URL.key, BUNDLE_URL.default),
    (BUNDLE_SHA256.flag, BUNDLE_SHA256.key, BUNDLE_SHA256.default),
    (ACME_SERVER.flag, ACME_SERVER.key, ACME_SERVER.default),
    (BACKUP_KEEP.flag, BACKUP_KEEP.key, BACKUP_KEEP.default),
    (BACKUP_REPO.flag, BACKUP_REPO.key, BACKUP_REPO.default),
    (NOTIFY_URL.flag, NOTIFY_URL.key, NOTIFY_URL.default),
    (
        BACKUP_KEEP_WEEKLY.flag,
        BACKUP_KEEP_WEEKLY.key,
        BACKUP_KEEP_WEEKLY.default,
    ),
    (
        BACKUP_KEEP_MONTHLY.flag,
        BACKUP_KEEP_MONTHLY.key,
        BACKUP_KEEP_MONTHLY.default,
    ),
    (DNS_ZONE.flag, DNS_ZONE.key, DNS_ZONE.default),
    (DNS_API_URL.flag, DNS_API_URL.key, DNS_API_URL.default),
    (
        CLUSTER_NETWORK.flag,
        CLUSTER_NETWORK.key,
        CLUSTER_NETWORK.default,
    ),
    (MANAGER.flag, MANAGER.key, MANAGER.default),
    (REPLICAS.flag, REPLICAS.key, REPLICAS.default),
];

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn every_setting_names_a_real_flag_and_a_key_of_the_starter_file() {
        let cmd = Flags::command();
        let longs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        let starter = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(include_str!(
            "../../templates/imgforge.yaml"
        ))
        .unwrap();
        let starter_keys = super::super::positions(include_str!("../../templates/imgforge.yaml"));
        for (flag, key, default) in NAMES {
            assert!(longs.contains(&flag.to_string()), "{flag} is not a flag");
            // One description of the default: the flag's help says it, and the starter
            // file, where it sets the key, sets it to the default.
            if let Some(default) = default {
                let arg = cmd
                    .get_arguments()
                    .find(|a| a.get_long() == flag.strip_prefix("--"))
                    .unwrap();
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    help.contains(&format!("[default: {default}")),
                    "{flag}'s help does not give its default {default}: {help:?}"
                );
                if starter_keys.contains_key(*key) {
                    let value = key.split('.').fold(&starter, |v, part| &v[part]);
                    let shown = match value {
                        serde_yaml_ng::Value::String(s) => s.clone(),
                        serde_yaml_ng::Value::Number(n) => n.to_string(),
                        other => format!("{other:?}"),
                    };
                    assert_eq!(&shown, default, "imgforge init's {key} is not the default");
                }
            }
            // The key parses in the file, and the starter file shows it (commented or not).
            let text = include_str!("../../templates/imgforge.yaml");
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                starter_keys.contains_key(*key)
                    || text.contains(&format!("# {leaf}:"))
                    || text.contains(&format!("#   {leaf}:")),
                "{key} is not in imgforge init's starter file"
            );
        }
        let _: Settings = serde_yaml_ng::from_value(starter).unwrap();
    }
}
