//! The typed input: `imgforge.yaml` and/or command-line flags ([`Settings`], one struct
//! for both; flags win), validated into a [`Deployment`] whose every field has a safe type, or
//! a [`Problems`] listing every problem at once.

pub mod borg;
pub mod cluster;
pub mod database;
mod locate;
mod problems;
pub mod settings;
pub mod types;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use borg::{BackupEvery, Borg};
pub use cluster::{Cluster, ClusterRole};
use database::DatabaseUrl;
pub use locate::positions;
pub use problems::{parse_message, Entry, Origin, Problems, Severity};
pub use settings::{DnsProvider, Provider, Setting, Settings, UserDataSettings, DEFAULT_IMAGE};
pub use types::*;

use settings as s;

/// The validated deployment.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `None` only for an HTTP-only deployment without a domain.
    pub domain: Option<Domain>,
    /// `None` renders an HTTP-only deployment (`--no-tls`).
    pub tls: Option<Tls>,
    pub admin_user: Username,
    pub ssh_keys: Vec<SshPublicKey>,
    pub app: App,
    pub docker_source: DockerSource,
    pub offline: bool,
    pub backup_keep: u32,
    pub host_key: bool,
    /// The VM registers its own address before the certificate.
    pub dns: Option<Dns>,
    /// Backups go off the VM, to a BorgBackup repository.
    pub borg: Option<Borg>,
    /// /metrics over HTTPS answers requests with this bearer token.
    pub metrics_token: Option<Secret>,
    /// Told of failures the VM meets on its own.
    pub notify: Option<NotifyUrl>,
    /// A node of a Docker Swarm cluster: the app runs as a Swarm service.
    pub cluster: Option<Cluster>,
}

#[derive(Debug, Clone)]
pub struct Dns {
    pub provider: DnsProvider,
    pub token: DnsToken,
    pub zone: Option<Domain>,
    pub api_url: Option<ApiUrl>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub email: Email,
    pub acme_server: Option<HttpsUrl>,
    pub ca_bundle: Option<PemBundle>,
}

#[derive(Debug, Clone)]
pub struct App {
    pub image: ImageRef,
    /// The port the container listens on; published on a loopback port of the VM.
    pub port: Port,
    /// Host directory for the app's data (backed up daily).
    pub data_dir: UnixPath,
    /// Where the data directory is mounted in the container.
    pub data_path: UnixPath,
    pub env: Vec<(EnvName, EnvValue)>,
    pub health_path: UrlPath,
    pub max_body_size: BodySize,
    pub memory: MemorySize,
    /// Seconds the app may take to answer its health path when it starts.
    pub start_timeout: u32,
    pub bundle: Bundle,
}

/// How the VM gets the container image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bundle {
    /// `docker pull` from the image's registry.
    Registry,
    /// An OCI bundle at an https URL, verified against its sha256 before loading.
    Url { url: HttpsUrl, sha256: Sha256Hex },
    /// An OCI bundle on the NoCloud seed disk (label CIDATA), verified before loading.
    Seed { sha256: Sha256Hex },
    /// An OCI bundle already on the VM's disk (a baked image), verified before loading.
    File { sha256: Sha256Hex },
    /// The image is already in Docker's store (`imgforge build --provision`).
    Baked,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ValueEnum, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DockerSource {
    /// docker-ce from Docker's apt repository
    #[default]
    DockerCe,
    /// the distribution's docker.io package
    Distro,
}

/// The config file, read: its settings and where each value sits in it.
pub struct ConfigFile {
    pub path: PathBuf,
    pub settings: Settings,
    positions: HashMap<String, (usize, usize)>,
}

impl ConfigFile {
    /// Reads and parses `path`; a problem comes back as a report (exit code 2).
    pub fn read(path: &Path) -> Result<ConfigFile, Problems> {
        let origin = |line, column| Origin::File {
            file: path.to_owned(),
            path: "$".into(),
            line,
            column,
        };
        let text = crate::fsutil::read_small(path).map_err(|e| {
            Problems::single(Entry {
                severity: Severity::Error,
                origin: origin(None, None),
                value: None,
                message: format!("reading config file {}: {e}", path.display()),
                help: "check the path, or run `imgforge init` to write a starter file".into(),
            })
        })?;
        // A byte order mark is not YAML's business.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_owned();
        let settings: Settings = if text.trim().is_empty() {
            Settings::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| {
                let loc = e.location();
                let msg = problems::parse_message(&e.to_string());
                Problems::single(Entry {
                    severity: Severity::Error,
                    origin: origin(loc.as_ref().map(|l| l.line()), loc.map(|l| l.column())),
                    value: None,
                    message: msg,
                    help: "see `imgforge init` for every key the file takes".into(),
                })
            })?
        };
        Ok(ConfigFile {
            path: path.to_owned(),
            positions: locate::positions(&text),
            settings,
        })
    }

    /// Where `key` (a dotted path) sits in the file.
    fn origin(&self, key: &str) -> Origin {
        let pos = self.positions.get(key).copied();
        Origin::File {
            file: self.path.clone(),
            path: key.to_owned(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
        }
    }

    /// `~/` against the home directory, a relative path against the file's directory.
    fn resolve(&self, p: &Path, home: Option<&Path>) -> PathBuf {
        if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), home) {
            return home.join(rest);
        }
        match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_owned(),
        }
    }
}

/// Validates the flags over the config file. `bundle` is where `imgforge seed`/`build`
/// carry the image (it replaces the bundle settings); `home` is where `~/` and the default
/// key are looked up.
pub fn load(
    flags: &Settings,
    file: Option<&ConfigFile>,
    bundle: Option<Bundle>,
    home: Option<&Path>,
) -> Result<(Deployment, Problems), Problems> {
    let empty = Settings::default();
    let mut v = Validator {
        report: Problems::default(),
        flags,
        file,
        file_settings: file.map_or(&empty, |f| &f.settings),
        home,
    };
    let spec = v.spec(bundle);
    match spec {
        Some(spec) if !v.report.has_errors() => Ok((spec, v.report)),
        _ => Err(v.report),
    }
}

struct Validator<'a> {
    report: Problems,
    flags: &'a Settings,
    file: Option<&'a ConfigFile>,
    file_settings: &'a Settings,
    home: Option<&'a Path>,
}

/// A raw value and where it came from.
struct Raw<'s> {
    text: &'s str,
    origin: Origin,
}

impl<'a> Validator<'a> {
    fn file_origin(&self, key: &str) -> Origin {
        match self.file {
            Some(f) => f.origin(key),
            None => Origin::Default("config"),
        }
    }

    /// The flag's value if given, else the file's, else the default.
    fn raw<T>(&self, setting: &Setting<T>) -> Option<Raw<'a>> {
        if let Some(text) = (setting.get)(self.flags) {
            return Some(Raw {
                text,
                origin: Origin::Flag(setting.flag),
            });
        }
        if let Some(text) = (setting.get)(self.file_settings) {
            return Some(Raw {
                text,
                origin: self.file_origin(setting.key),
            });
        }
        setting.default.map(|text| Raw {
            text,
            origin: Origin::Default(setting.key),
        })
    }

    fn check<T>(&mut self, raw: &Raw<'_>, parse: fn(&str) -> Result<T, Problem>) -> Option<T> {
        match parse(raw.text) {
            Ok(v) => Some(v),
            Err(p) => {
                self.report
                    .error(raw.origin.clone(), Some(raw.text), p.message, p.help);
                None
            }
        }
    }

    /// The setting's value; `Err(())` when it was invalid (and reported).
    fn value<T>(&mut self, setting: &Setting<T>) -> Result<Option<T>, ()> {
        match self.raw(setting) {
            Some(raw) => self.check(&raw, setting.parse).map(Some).ok_or(()),
            None => Ok(None),
        }
    }

    /// A setting with a default: always has a value unless it was invalid.
    fn with_default<T>(&mut self, setting: &Setting<T>) -> Option<T> {
        self.value(setting).ok().flatten()
    }

    fn missing(&mut self, flag: &'static str, message: &str, help: &str) {
        self.report.error(Origin::Flag(flag), None, message, help);
    }

    fn spec(&mut self, bundle: Option<Bundle>) -> Option<Deployment> {
        let (flags, file) = (self.flags, self.file_settings);
        let tls_enabled = !flags.no_tls && file.tls.enabled.unwrap_or(true);
        let domain = match self.value(&s::DOMAIN) {
            Ok(None) if tls_enabled => {
                self.missing("--domain", "a domain is needed for HTTPS", "pass --domain api.example.com (its DNS A record pointing at the VM), or --no-tls for HTTP only");
                None
            }
            Ok(d) => Some(d),
            Err(()) => None,
        };
        let tls = if tls_enabled {
            let email = match self.value(&s::EMAIL) {
                Ok(None) => {
                    self.missing("--email", "an e-mail address is needed for the certificate account", "pass --email ops@example.com (Let's Encrypt sends expiry notices there), or --no-tls");
                    None
                }
                Ok(e) => e,
                Err(()) => None,
            };
            let acme_server = self.value(&s::ACME_SERVER);
            let ca_bundle = self.ca_bundle();
            match (email, acme_server, ca_bundle) {
                (Some(email), Ok(acme_server), Ok(ca_bundle)) => Some(Some(Tls {
                    email,
                    acme_server,
                    ca_bundle,
                })),
                _ => None,
            }
        } else {
            for (flag, given) in [
                ("--email", flags.email.is_some()),
                ("--acme-server", flags.tls.acme_server.is_some()),
                ("--acme-ca-bundle", flags.tls.ca_bundle.is_some()),
            ] {
                if given {
                    self.report.push(Entry {
                        severity: Severity::Warning,
                        origin: Origin::Flag(flag),
                        value: None,
                        message: format!("{flag} has no effect with TLS off"),
                        help: "drop it, or drop --no-tls".into(),
                    });
                }
            }
            Some(None)
        };

        let admin_user = self.with_default(&s::USER);
        let ssh_keys = self.ssh_keys();
        let image = self.with_default(&s::IMAGE);
        let port = self.with_default(&s::APP_PORT);
        let data_dir = self.with_default(&s::DATA_DIR);
        let data_path = self.with_default(&s::DATA_PATH);
        let health_path = self.with_default(&s::HEALTH_PATH);
        let max_body_size = self.with_default(&s::MAX_BODY_SIZE);
        let memory = self.with_default(&s::APP_MEMORY);
        let start_timeout = self.with_default(&s::APP_START_TIMEOUT);
        let backup_keep = self.with_default(&s::BACKUP_KEEP);
        let env = self.env();
        let env = match (env, self.database_url()) {
            (Some(env), Some(url)) => self.with_database_url(env, url),
            _ => None,
        };
        let dns = self.dns(domain.as_ref().and_then(|d| d.as_ref()));
        let borg = self.borg();
        let metrics_token = self.metrics_token(tls_enabled);
        let notify = self.value(&s::NOTIFY_URL);
        let cluster = self.cluster(dns.as_ref().is_some_and(Option::is_some));
        let bundle = match bundle {
            Some(b) => Some(b),
            None => self.bundle(),
        };
        if bundle == Some(Bundle::Registry)
            && image.as_ref().is_some_and(|i| i.as_str() == DEFAULT_IMAGE)
        {
            self.report.push(Entry {
                severity: Severity::Warning,
                origin: Origin::Default("app.image"),
                value: Some(format!("{DEFAULT_IMAGE:?}")),
                message: "the classifier image is not on a public registry, so the VM cannot pull it".into(),
                help: "deliver it as a bundle (`imgforge seed --bundle`, --bundle-url, `imgforge build`), or push it and pass --image".into(),
            });
        }

        Some(Deployment {
            domain: domain?,
            tls: tls?,
            admin_user: admin_user?,
            ssh_keys: ssh_keys?,
            app: App {
                image: image?,
                port: port?,
                data_dir: data_dir?,
                data_path: data_path?,
                env: env?,
                health_path: health_path?,
                max_body_size: max_body_size?,
                memory: memory?,
                start_timeout: start_timeout?,
                bundle: bundle?,
            },
            docker_source: flags
                .docker_source
                .or(file.docker_source)
                .unwrap_or_default(),
            offline: flags.offline || file.offline,
            backup_keep: backup_keep?,
            host_key: flags.host_key || file.host_key,
            dns: dns?,
            borg: borg?,
            metrics_token: metrics_token?,
            notify: notify.ok()?,
            cluster: cluster?,
        })
    }

    /// `--database-url-file`: the app's PostgreSQL URL (a secret: never shown). `Some(None)`
    /// when none is given.
    fn database_url(&mut self) -> Option<Option<(DatabaseUrl, Origin)>> {
        let Some((path, origin)) =
            self.file_setting("--database-url-file", "app.database-url-file", |s| {
                s.app.database_url_file.as_ref()
            })
        else {
            return Some(None);
        };
        self.secret(&path, origin.clone(), "database URL", DatabaseUrl::parse)
            .map(|url| Some((url, origin)))
    }

    /// The app's environment with `DATABASE_URL` from `--database-url-file`, which the
    /// environment must not set as well.
    fn with_database_url(
        &mut self,
        mut env: Vec<(EnvName, EnvValue)>,
        url: Option<(DatabaseUrl, Origin)>,
    ) -> Option<Vec<(EnvName, EnvValue)>> {
        let Some((url, origin)) = url else {
            return Some(env);
        };
        if env
            .iter()
            .any(|(name, _)| name.as_str() == database::DATABASE_URL)
        {
            self.report.error(
                origin,
                None,
                "DATABASE_URL is set twice: by the database URL file and by the app's environment",
                "drop DATABASE_URL from --env/--env-file/app.env, or drop --database-url-file",
            );
            return None;
        }
        let name = EnvName::parse(database::DATABASE_URL).ok()?;
        let value = EnvValue::parse(url.expose()).ok()?;
        env.push((name, value));
        Some(env)
    }

    /// `--cluster` and what each role needs: the private network; for a joining node the
    /// manager's address in it and the join token (a file only its owner reads). `Some(None)`
    /// when the VM stands alone.
    fn cluster(&mut self, dns: bool) -> Option<Option<Cluster>> {
        use cluster::Node;
        let role = self.flags.cluster.role.or(self.file_settings.cluster.role);
        let network = self.value(&s::CLUSTER_NETWORK);
        let manager = self.value(&s::MANAGER);
        let replicas = self.value(&s::REPLICAS);
        let token = self.file_setting("--join-token-file", "cluster.join-token-file", |s| {
            s.cluster.join_token_file.as_ref()
        });
        fn given<T>(v: &Result<Option<T>, ()>) -> bool {
            !matches!(v, Ok(None))
        }
        let Some(role) = role else {
            let stray = [
                ("--cluster-network", given(&network)),
                ("--manager", given(&manager)),
                ("--replicas", given(&replicas)),
                ("--join-token-file", token.is_some()),
            ];
            for (flag, _) in stray.iter().filter(|(_, g)| *g) {
                self.missing(
                    flag,
                    &format!("{flag} without --cluster"),
                    "pass --cluster init (the first node) or --cluster join (the others), or drop it",
                );
            }
            return stray.iter().all(|(_, g)| !g).then_some(None);
        };
        if dns {
            self.missing(
                "--dns",
                "every node of a cluster would register the domain with its own address",
                "point the domain at the load balancer (or at the nodes) yourself, and drop --dns",
            );
        }
        let network = match network {
            Ok(None) => {
                self.missing("--cluster-network", "a cluster runs on the provider's private network", "pass --cluster-network with its CIDR, e.g. 10.0.0.0/16 (hcloud network, DigitalOcean VPC, AWS subnet)");
                None
            }
            Ok(n) => n,
            Err(()) => None,
        };
        let node = match role {
            ClusterRole::Init => {
                for (flag, g) in [
                    ("--manager", given(&manager)),
                    ("--join-token-file", token.is_some()),
                ] {
                    if g {
                        self.missing(
                            flag,
                            &format!("{flag} is for a joining node; this one makes the cluster"),
                            "drop it, or use --cluster join",
                        );
                    }
                }
                if given(&manager) || token.is_some() {
                    return None;
                }
                Some(Node::Init {
                    replicas: replicas.ok()?,
                })
            }
            ClusterRole::Join => {
                if given(&replicas) {
                    self.missing(
                        "--replicas",
                        "the manager decides the replicas; a joining node runs what it is given",
                        "pass --replicas to the --cluster init node, or drop it",
                    );
                }
                let manager = match manager {
                    Ok(None) => {
                        self.missing("--manager", "a joining node needs the manager's address", "pass --manager with the first node's private address, e.g. --manager 10.0.0.2");
                        None
                    }
                    Ok(Some(m)) => match network {
                        Some(net) if !net.contains(m.ip) => {
                            let origin = self.raw(&s::MANAGER).map(|r| r.origin);
                            self.report.error(
                                origin.unwrap_or(Origin::Flag("--manager")),
                                Some(&m.to_string()),
                                format!("the manager is not on the cluster's network {net}"),
                                "give the manager's address on the private network, or fix --cluster-network",
                            );
                            None
                        }
                        _ => Some(m),
                    },
                    Err(()) => None,
                };
                let token = match token {
                    None => {
                        self.missing("--join-token-file", "a joining node needs the swarm's join token", "write it with `imgforge cluster token --host MANAGER -o swarm.token` and pass --join-token-file swarm.token");
                        None
                    }
                    Some((path, origin)) => {
                        self.secret(&path, origin, "join token", cluster::JoinToken::parse)
                    }
                };
                if given(&replicas) {
                    return None;
                }
                Some(Node::Join {
                    manager: manager?,
                    token: token?,
                })
            }
        };
        Some(Some(Cluster {
            network: network?,
            node: node?,
        }))
    }

    /// `--metrics-token-file`: the token Prometheus sends; HTTPS only (the token would
    /// cross the network in clear otherwise). `Some(None)` when /metrics stays closed.
    fn metrics_token(&mut self, tls: bool) -> Option<Option<Secret>> {
        let Some((path, origin)) =
            self.file_setting("--metrics-token-file", "metrics-token-file", |s| {
                s.metrics_token_file.as_ref()
            })
        else {
            return Some(None);
        };
        if !tls {
            self.report.error(
                origin,
                Some(&path.display().to_string()),
                "the metrics token would cross the network in clear without HTTPS",
                "drop --no-tls (with --domain and --email), or drop --metrics-token-file",
            );
            return None;
        }
        self.secret(&path, origin, "metrics token", Secret::bearer_token)
            .map(Some)
    }

    /// A file setting (flag, else the config file's key, resolved against the file).
    fn file_setting(
        &self,
        flag: &'static str,
        key: &str,
        get: fn(&Settings) -> Option<&PathBuf>,
    ) -> Option<(PathBuf, Origin)> {
        match (get(self.flags), get(self.file_settings), self.file) {
            (Some(p), _, _) => Some((p.clone(), Origin::Flag(flag))),
            (None, Some(p), Some(f)) => Some((f.resolve(p, self.home), f.origin(key))),
            _ => None,
        }
    }

    /// `--backup-repo` and what it needs: the passphrase and the SSH key (files only
    /// their owner reads), the host's key if given, the schedule and what to keep.
    /// `Some(None)` when backups stay on the VM.
    fn borg(&mut self) -> Option<Option<Borg>> {
        let repo = self.value(&s::BACKUP_REPO);
        let keep_weekly = self.with_default(&s::BACKUP_KEEP_WEEKLY);
        let keep_monthly = self.with_default(&s::BACKUP_KEEP_MONTHLY);
        let passphrase =
            self.file_setting("--backup-passphrase-file", "backup.passphrase-file", |s| {
                s.backup.passphrase_file.as_ref()
            });
        let ssh_key = self.file_setting("--backup-ssh-key-file", "backup.ssh-key-file", |s| {
            s.backup.ssh_key_file.as_ref()
        });
        let known_hosts = self.file_setting("--backup-known-hosts", "backup.known-hosts", |s| {
            s.backup.known_hosts.as_ref()
        });
        let every = self.flags.backup.every.or(self.file_settings.backup.every);
        let repo = match repo {
            Err(()) => return None,
            Ok(Some(repo)) => repo,
            Ok(None) => {
                let given = [passphrase.as_ref(), ssh_key.as_ref(), known_hosts.as_ref()];
                for (_, origin) in given.into_iter().flatten() {
                    self.report.error(
                        origin.clone(),
                        None,
                        "a backup repository setting without a repository",
                        "pass --backup-repo ssh://USER@HOST/PATH too, or drop it",
                    );
                }
                return given.iter().all(Option::is_none).then_some(None);
            }
        };
        let passphrase = match passphrase {
            None => {
                self.missing("--backup-passphrase-file", "the repository is encrypted with a passphrase", "put a passphrase in a file only you can read (chmod 600; `openssl rand -base64 32`) and pass --backup-passphrase-file FILE; keep a copy: without it the archives cannot be read");
                None
            }
            Some((path, origin)) => self.secret(&path, origin, "passphrase", Secret::passphrase),
        };
        let ssh_key = match ssh_key {
            None => {
                self.missing("--backup-ssh-key-file", "the VM needs a key to log in to the repository's host", "make one with `imgforge keygen -o backup_key`, add backup_key.pub to the repository host's authorized_keys, and pass --backup-ssh-key-file backup_key");
                None
            }
            Some((path, origin)) => self.secret(&path, origin, "SSH key", Secret::ssh_private_key),
        };
        let known_hosts = match known_hosts {
            None => Some(None),
            Some((path, origin)) => {
                let shown = path.display().to_string();
                match crate::fsutil::read_small(&path) {
                    Err(e) => {
                        self.report.error(
                            origin,
                            Some(&shown),
                            format!("reading {shown}: {e}"),
                            "pass a readable known_hosts file",
                        );
                        None
                    }
                    Ok(text) => match borg::KnownHosts::parse(&text) {
                        Ok(k) => Some(Some(k)),
                        Err(p) => {
                            self.report.error(origin, Some(&shown), p.message, p.help);
                            None
                        }
                    },
                }
            }
        };
        Some(Some(Borg {
            repo,
            passphrase: passphrase?,
            ssh_key: ssh_key?,
            known_hosts: known_hosts?,
            every: every.unwrap_or_default(),
            keep_weekly: keep_weekly?,
            keep_monthly: keep_monthly?,
        }))
    }

    /// `--dns`: the provider, its token (from a file only the owner reads), and the
    /// domain it can register. `Some(None)` when no DNS registration is asked for.
    fn dns(&mut self, domain: Option<&Domain>) -> Option<Option<Dns>> {
        let (flags, file) = (&self.flags.dns, &self.file_settings.dns);
        let provider = flags.provider.or(file.provider);
        let token_file = self.file_setting("--dns-token-file", "dns.token-file", |s| {
            s.dns.token_file.as_ref()
        });
        let zone = self.value(&s::DNS_ZONE);
        let api_url = self.value(&s::DNS_API_URL);
        let Some(provider) = provider else {
            if let Some((_, origin)) = token_file {
                self.report.error(
                    origin,
                    None,
                    "a DNS token without a DNS provider",
                    "pass --dns duckdns or --dns cloudflare too, or drop the token file",
                );
                return None;
            }
            return Some(None);
        };
        let mut ok = true;
        match (provider, domain) {
            (_, None) => {
                self.missing(
                    "--dns",
                    "registering the VM's address needs its domain",
                    "pass --domain NAME.duckdns.org or a name in your Cloudflare zone",
                );
                ok = false;
            }
            (DnsProvider::Duckdns, Some(d)) => {
                let labels: Vec<&str> = d.as_str().split('.').collect();
                if labels.len() != 3 || !d.as_str().ends_with(".duckdns.org") {
                    self.report.error(Origin::Flag("--domain"), Some(d.as_str()), "DuckDNS registers NAME.duckdns.org names only", "use --domain NAME.duckdns.org (the subdomain of your DuckDNS account), or --dns cloudflare");
                    ok = false;
                }
                if let Ok(Some(zone)) = &zone {
                    self.report.error(
                        Origin::Flag("--dns-zone"),
                        Some(zone.as_str()),
                        "DuckDNS has no zones: --dns-zone is for Cloudflare",
                        "leave --dns-zone out",
                    );
                    ok = false;
                }
            }
            (DnsProvider::Cloudflare, Some(d)) => {
                if let Ok(Some(zone)) = &zone {
                    let inside = d.as_str() == zone.as_str()
                        || d.as_str().ends_with(&format!(".{}", zone.as_str()));
                    if !inside {
                        self.report.error(
                            Origin::Flag("--dns-zone"),
                            Some(zone.as_str()),
                            format!("{d} is not in the zone {zone}"),
                            "pass the zone the domain belongs to, or leave --dns-zone out",
                        );
                        ok = false;
                    }
                }
            }
        }
        let token = match token_file {
            None => {
                self.missing("--dns-token-file", "the DNS provider needs an API token", "put the token in a file only you can read (chmod 600) and pass --dns-token-file FILE");
                None
            }
            Some((path, origin)) => self.secret(&path, origin, "DNS token", DnsToken::parse),
        };
        match (ok, token, zone, api_url) {
            (true, Some(token), Ok(zone), Ok(api_url)) => Some(Some(Dns {
                provider,
                token,
                zone,
                api_url,
            })),
            _ => None,
        }
    }

    /// A secret from a file only its owner may read: refused for its mode before a
    /// byte of it is read, then parsed; never shown.
    fn secret<T>(
        &mut self,
        path: &Path,
        origin: Origin,
        what: &str,
        parse: fn(&str) -> Result<T, Problem>,
    ) -> Option<T> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let read = fs::metadata(path).and_then(|m| {
            if m.is_file() && m.permissions().mode() & 0o077 != 0 {
                return Ok((m, String::new()));
            }
            Ok((m, crate::fsutil::read_small(path)?))
        });
        match read {
            Err(e) => {
                self.report.error(
                    origin,
                    Some(&shown),
                    format!("reading the {what} file {shown}: {e}"),
                    format!("pass a readable file holding the {what}"),
                );
                None
            }
            Ok((meta, _)) if meta.permissions().mode() & 0o077 != 0 => {
                self.report.error(
                    origin,
                    Some(&shown),
                    format!(
                        "the {what} file is readable by others (mode {:o})",
                        meta.permissions().mode() & 0o777
                    ),
                    format!("chmod 600 {shown}: it holds a secret"),
                );
                None
            }
            Ok((_, text)) => match parse(&text) {
                Ok(t) => Some(t),
                Err(p) => {
                    self.report.error(origin, Some(&shown), p.message, p.help);
                    None
                }
            },
        }
    }

    fn ca_bundle(&mut self) -> Result<Option<PemBundle>, ()> {
        let (path, origin) = match (&self.flags.tls.ca_bundle, &self.file_settings.tls.ca_bundle) {
            (Some(p), _) => (p.clone(), Origin::Flag("--acme-ca-bundle")),
            (None, Some(p)) => match self.file {
                Some(f) => (f.resolve(p, self.home), f.origin("tls.ca-bundle")),
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let shown = path.display().to_string();
        match crate::fsutil::read_small(&path) {
            Ok(text) => match PemBundle::parse(&text) {
                Ok(pem) => Ok(Some(pem)),
                Err(p) => {
                    self.report.error(origin, Some(&shown), p.message, p.help);
                    Err(())
                }
            },
            Err(e) => {
                self.report.error(
                    origin,
                    Some(&shown),
                    format!("reading CA bundle {shown}: {e}"),
                    "pass a readable PEM file",
                );
                Err(())
            }
        }
    }

    fn ssh_keys(&mut self) -> Option<Vec<SshPublicKey>> {
        let mut sources: Vec<(PathBuf, Origin)> = Vec::new();
        let mut literal: Vec<(String, Origin)> = Vec::new();
        if !self.flags.admin.ssh_key_files.is_empty() {
            sources.extend(
                self.flags
                    .admin
                    .ssh_key_files
                    .iter()
                    .map(|p| (p.clone(), Origin::Flag("--ssh-key"))),
            );
        } else if let Some(file) = self.file {
            let admin = &file.settings.admin;
            for (i, p) in admin.ssh_key_files.iter().enumerate() {
                sources.push((
                    file.resolve(p, self.home),
                    file.origin(&format!("admin.ssh-key-files.{i}")),
                ));
            }
            for (i, k) in admin.ssh_keys.iter().enumerate() {
                literal.push((k.clone(), file.origin(&format!("admin.ssh-keys.{i}"))));
            }
        }
        if sources.is_empty() && literal.is_empty() {
            match self.home.map(|h| h.join(".ssh/id_ed25519.pub")) {
                Some(p) if p.exists() => sources.push((p, Origin::Default("SSH key"))),
                _ => {
                    self.missing(
                        "--ssh-key",
                        "no SSH public key given and ~/.ssh/id_ed25519.pub does not exist",
                        "pass --ssh-key FILE.pub, or create a key pair with `imgforge keygen -o ~/.ssh/id_ed25519`",
                    );
                    return None;
                }
            }
        }
        let mut keys = Vec::new();
        let mut ok = true;
        for (path, origin) in sources {
            let shown = path.display().to_string();
            let text = match crate::fsutil::read_small(&path) {
                Ok(text) => text,
                Err(e) => {
                    self.report.error(
                        origin,
                        Some(&shown),
                        format!("reading ssh key {shown}: {e}"),
                        "pass the path of your public key, or create one with `imgforge keygen`",
                    );
                    ok = false;
                    continue;
                }
            };
            // One file may hold several keys (an authorized_keys file).
            let lines: Vec<&str> = if looks_private(&text) {
                vec![text.as_str()]
            } else {
                text.lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                    .collect()
            };
            if lines.is_empty() {
                self.report.error(
                    origin.clone(),
                    Some(&shown),
                    "the file holds no key",
                    "pass the .pub file of your key pair",
                );
                ok = false;
            }
            for line in lines {
                match SshPublicKey::parse(line) {
                    Ok(k) => keys.push(k),
                    Err(p) => {
                        self.report
                            .error(origin.clone(), Some(&shown), p.message, p.help);
                        ok = false;
                    }
                }
            }
        }
        for (text, origin) in literal {
            match SshPublicKey::parse(&text) {
                Ok(k) => keys.push(k),
                Err(p) => {
                    let shown = (!looks_private(&text)).then_some(text.as_str());
                    self.report.error(origin, shown, p.message, p.help);
                    ok = false;
                }
            }
        }
        ok.then_some(keys)
    }

    /// The file's `app.env`, then the env file's lines, then `--env` entries, each
    /// replacing or adding to what came before.
    fn env(&mut self) -> Option<Vec<(EnvName, EnvValue)>> {
        let mut merged: indexmap::IndexMap<String, (Result<String, String>, Origin)> =
            indexmap::IndexMap::new();
        for item in &self.file_settings.app.env {
            let origin = self.file_origin(&format!("app.env.{}", item.name));
            merged.insert(item.name.clone(), (item.value.clone(), origin));
        }
        let env_file = match (&self.flags.app.env_file, &self.file_settings.app.env_file) {
            (Some(p), _) => Some((p.clone(), Origin::Flag("--env-file"))),
            (None, Some(p)) => self
                .file
                .map(|f| (f.resolve(p, self.home), f.origin("app.env-file"))),
            (None, None) => None,
        };
        let mut ok = true;
        if let Some((path, origin)) = env_file {
            let shown = path.display().to_string();
            match crate::fsutil::read_small(&path) {
                Ok(text) => {
                    for (line, item) in env_file_lines(&text) {
                        match item {
                            Some((name, value)) => {
                                merged.insert(name, (Ok(value), origin.clone()));
                            }
                            None => {
                                self.report.error(
                                    origin.clone(),
                                    Some(&format!("{shown}:{line}")),
                                    "not a NAME=VALUE line",
                                    "write one NAME=VALUE a line (# starts a comment)",
                                );
                                ok = false;
                            }
                        }
                    }
                }
                Err(e) => {
                    self.report.error(
                        origin,
                        Some(&shown),
                        format!("reading env file {shown}: {e}"),
                        "pass a readable file of NAME=VALUE lines",
                    );
                    ok = false;
                }
            }
        }
        if !self.flags.app.env.is_empty() {
            self.report.push(Entry {
                severity: Severity::Warning,
                origin: Origin::Flag("--env"),
                value: None,
                message: "values on the command line are in this machine's process list and shell history".into(),
                help: "pass secrets with --env-file FILE (chmod 600) or in imgforge.yaml's app.env".into(),
            });
        }
        for item in &self.flags.app.env {
            merged.insert(
                item.name.clone(),
                (item.value.clone(), Origin::Flag("--env")),
            );
        }
        let mut env = Vec::new();
        for (name, (value, origin)) in merged {
            let value = match value {
                Ok(v) => v,
                Err(shown) => {
                    self.report.error(
                        origin,
                        Some(&shown),
                        "environment values must be strings",
                        format!(
                            "quote it, e.g. {name}: \"{shown}\", so YAML cannot reinterpret it"
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            let n = self.check(
                &Raw {
                    text: &name,
                    origin: origin.clone(),
                },
                EnvName::parse,
            );
            let v = self.check(
                &Raw {
                    text: &value,
                    origin,
                },
                EnvValue::parse,
            );
            match (n, v) {
                (Some(n), Some(v)) => env.push((n, v)),
                _ => ok = false,
            }
        }
        ok.then_some(env)
    }

    fn bundle(&mut self) -> Option<Bundle> {
        let url = self.raw(&s::BUNDLE_URL);
        let sha = self.raw(&s::BUNDLE_SHA256);
        match (url, sha) {
            (None, None) => Some(Bundle::Registry),
            (Some(url), Some(sha)) => {
                let url = self.check(&url, s::BUNDLE_URL.parse);
                let sha256 = self.check(&sha, s::BUNDLE_SHA256.parse);
                Some(Bundle::Url {
                    url: url?,
                    sha256: sha256?,
                })
            }
            (Some(url), None) => {
                self.report.error(url.origin, None, "a bundle URL needs its sha256", "pass --bundle-sha256 with the digest `imgforge pack` printed (sha256sum of the file)");
                None
            }
            (None, Some(sha)) => {
                self.report.error(
                    sha.origin,
                    None,
                    "a bundle sha256 without a URL",
                    "pass --bundle-url too, or drop --bundle-sha256",
                );
                None
            }
        }
    }
}

/// The lines of an env file (`NAME=VALUE` a line, blank lines and `#` comments skipped),
/// numbered from 1: each a name and a value, or `None` for a line that is not one.
pub fn env_file_lines(text: &str) -> Vec<(usize, Option<(String, String)>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let item = l.split_once('=').map(|(n, v)| (n.to_owned(), v.to_owned()));
            (i + 1, item)
        })
        .collect()
}
