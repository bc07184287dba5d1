//! The typed input: an `imgforge.yaml` and/or command-line flags, merged (flags win)
//! and validated into a [`Spec`] whose every field has a safe type, or a [`Report`]
//! listing every problem at once.

mod locate;
mod report;
pub mod types;

use std::fs;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

pub use report::{Entry, Origin, Report, Severity};
pub use types::*;

/// The image deployed when none is given: the project's own classifier, as
/// `imgforge pack images/classifier` names it.
pub const DEFAULT_IMAGE: &str = "imgforge/classifier:0.1.0";
pub const DEFAULT_USER: &str = "deploy";
pub const DEFAULT_DATA_DIR: &str = "/srv/app/data";
pub const DEFAULT_DATA_PATH: &str = "/app/data";
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_BODY_SIZE: &str = "20m";
pub const DEFAULT_BACKUP_KEEP: u32 = 7;
/// The loopback port the container is published on (fixed: nginx proxies to it).
pub const HOST_PORT: u16 = 8000;

/// The validated deployment.
#[derive(Debug, Clone)]
pub struct Spec {
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
    /// The port the container listens on; published as 127.0.0.1:[`HOST_PORT`].
    pub port: Port,
    /// Host directory for the app's data (backed up daily).
    pub data_dir: UnixPath,
    /// Where the data directory is mounted in the container.
    pub data_path: UnixPath,
    pub env: Vec<(EnvName, EnvValue)>,
    pub health_path: UrlPath,
    pub max_body_size: BodySize,
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
    Seed { file: String, sha256: Sha256Hex },
    /// An OCI bundle already on the VM's disk (a baked image), verified before loading.
    File { path: UnixPath, sha256: Sha256Hex },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DockerSource {
    /// docker-ce from Docker's apt repository
    #[default]
    DockerCe,
    /// the distribution's docker.io package
    Distro,
}

/// The config file as written. Every field optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub domain: Option<String>,
    pub email: Option<String>,
    pub admin: Option<AdminSection>,
    pub app: Option<AppSection>,
    pub tls: Option<TlsSection>,
    pub docker_source: Option<DockerSource>,
    pub offline: Option<bool>,
    pub backup: Option<BackupSection>,
    pub host_key: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminSection {
    pub user: Option<String>,
    /// Public keys written out in full (`ssh-ed25519 AAAA… comment`).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Files holding public keys; `~/` is the home directory, relative paths are
    /// relative to the config file.
    #[serde(default)]
    pub ssh_key_files: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AppSection {
    pub image: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<String>,
    pub data_path: Option<String>,
    #[serde(default)]
    pub env: IndexMap<String, serde_yaml_ng::Value>,
    pub health_path: Option<String>,
    pub max_body_size: Option<String>,
    pub bundle: Option<BundleSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BundleSection {
    pub url: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsSection {
    pub enabled: Option<bool>,
    pub acme_server: Option<String>,
    pub ca_bundle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackupSection {
    pub keep: Option<u32>,
}

/// Values from the command line; each overrides the config file's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub domain: Option<String>,
    pub email: Option<String>,
    pub user: Option<String>,
    pub ssh_key_files: Vec<PathBuf>,
    pub image: Option<String>,
    pub app_port: Option<String>,
    pub data_dir: Option<String>,
    pub data_path: Option<String>,
    pub env: Vec<String>,
    pub health_path: Option<String>,
    pub no_tls: bool,
    pub acme_server: Option<String>,
    pub acme_ca_bundle: Option<PathBuf>,
    pub docker_source: Option<DockerSource>,
    pub offline: bool,
    pub backup_keep: Option<String>,
    pub host_key: bool,
    pub bundle_url: Option<String>,
    pub bundle_sha256: Option<String>,
    /// Set by `imgforge seed`/`build`, not by a flag: where the bundle travels.
    pub bundle_local: Option<Bundle>,
}

/// Reads the config file (if any), applies the overrides and validates everything.
/// `home` is where `~/` and the default key are looked up.
pub fn load(
    config: Option<&Path>,
    overrides: &Overrides,
    home: Option<&Path>,
) -> Result<(Spec, Report), Report> {
    let mut report = Report::default();
    let file = match config {
        Some(path) => match read_config(path) {
            Ok(f) => Some(f),
            Err(entry) => {
                report.push(*entry);
                return Err(report);
            }
        },
        None => None,
    };
    let mut v = Validator {
        report,
        file: file.as_ref(),
    };
    let spec = v.spec(
        file.as_ref()
            .map(|f| &f.config)
            .unwrap_or(&ConfigFile::default()),
        overrides,
        home,
    );
    match spec {
        Some(spec) if !v.report.has_errors() => Ok((spec, v.report)),
        _ => Err(v.report),
    }
}

struct LoadedConfig {
    path: PathBuf,
    config: ConfigFile,
    positions: std::collections::HashMap<String, (usize, usize)>,
}

fn read_config(path: &Path) -> Result<LoadedConfig, Box<Entry>> {
    let origin = |line, column| Origin::File {
        file: path.to_owned(),
        path: "$".into(),
        line,
        column,
    };
    let text = fs::read_to_string(path).map_err(|e| {
        Box::new(Entry {
            severity: Severity::Error,
            origin: origin(None, None),
            value: None,
            message: format!("reading config file {}: {e}", path.display()),
            help: "check the path, or run `imgforge init` to write a starter file".into(),
        })
    })?;
    let config: ConfigFile = if text.trim().is_empty() {
        ConfigFile::default()
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| {
            let loc = e.location();
            // serde_yaml_ng appends " at line L column C"; the position is shown separately.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            Box::new(Entry {
                severity: Severity::Error,
                origin: origin(
                    loc.as_ref().map(|l| l.line()),
                    loc.as_ref().map(|l| l.column()),
                ),
                value: None,
                message: msg,
                help: "see `imgforge init` for every key the file takes".into(),
            })
        })?
    };
    Ok(LoadedConfig {
        path: path.to_owned(),
        positions: locate::positions(&text),
        config,
    })
}

struct Validator<'a> {
    report: Report,
    file: Option<&'a LoadedConfig>,
}

/// A raw value and where it came from.
struct Raw<'s> {
    text: std::borrow::Cow<'s, str>,
    origin: Origin,
}

impl<'a> Validator<'a> {
    fn file_origin(&self, key: &str) -> Origin {
        let (file, pos) = match self.file {
            Some(f) => (f.path.clone(), f.positions.get(key).copied()),
            None => (PathBuf::new(), None),
        };
        Origin::File {
            file,
            path: key.to_owned(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
        }
    }

    /// The flag's value if given, else the file's.
    fn pick<'s>(
        &self,
        flag: &'static str,
        flag_value: Option<&'s str>,
        key: &str,
        file_value: Option<&'s str>,
    ) -> Option<Raw<'s>> {
        if let Some(v) = flag_value {
            return Some(Raw {
                text: v.into(),
                origin: Origin::Flag(flag),
            });
        }
        file_value.map(|v| Raw {
            text: v.into(),
            origin: self.file_origin(key),
        })
    }

    fn check<T>(&mut self, raw: &Raw<'_>, parse: impl Fn(&str) -> Result<T, Problem>) -> Option<T> {
        match parse(&raw.text) {
            Ok(v) => Some(v),
            Err(p) => {
                self.report
                    .error(raw.origin.clone(), Some(&raw.text), p.message, p.help);
                None
            }
        }
    }

    fn check_or<T>(
        &mut self,
        raw: Option<Raw<'_>>,
        default: &'static str,
        what: &'static str,
        parse: impl Fn(&str) -> Result<T, Problem>,
    ) -> Option<T> {
        let raw = raw.unwrap_or(Raw {
            text: default.into(),
            origin: Origin::Default(what),
        });
        self.check(&raw, parse)
    }

    fn missing(&mut self, origin: Origin, message: &str, help: &str) {
        self.report.error(origin, None, message, help);
    }

    fn spec(&mut self, file: &ConfigFile, o: &Overrides, home: Option<&Path>) -> Option<Spec> {
        let admin = file.admin.as_ref();
        let app = file.app.as_ref();
        let tls_section = file.tls.as_ref();

        let tls_enabled = !o.no_tls && tls_section.and_then(|t| t.enabled).unwrap_or(true);
        let domain_raw = self.pick(
            "--domain",
            o.domain.as_deref(),
            "domain",
            file.domain.as_deref(),
        );
        let domain = match &domain_raw {
            Some(raw) => self.check(raw, Domain::parse),
            None if tls_enabled => {
                self.missing(Origin::Flag("--domain"), "a domain is needed for HTTPS", "pass --domain api.example.com (its DNS A record pointing at the VM), or --no-tls for HTTP only");
                None
            }
            None => None,
        };

        let tls = if tls_enabled {
            let email = match self.pick(
                "--email",
                o.email.as_deref(),
                "email",
                file.email.as_deref(),
            ) {
                Some(raw) => self.check(&raw, Email::parse),
                None => {
                    self.missing(Origin::Flag("--email"), "an e-mail address is needed for the certificate account", "pass --email ops@example.com (Let's Encrypt sends expiry notices there), or --no-tls");
                    None
                }
            };
            let acme_server = self
                .pick(
                    "--acme-server",
                    o.acme_server.as_deref(),
                    "tls.acme-server",
                    tls_section.and_then(|t| t.acme_server.as_deref()),
                )
                .and_then(|raw| self.check(&raw, HttpsUrl::parse));
            let ca_bundle = self.ca_bundle(o, tls_section);
            email.map(|email| Tls {
                email,
                acme_server,
                ca_bundle,
            })
        } else {
            for (flag, given) in [
                ("--email", o.email.is_some()),
                ("--acme-server", o.acme_server.is_some()),
                ("--acme-ca-bundle", o.acme_ca_bundle.is_some()),
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
            None
        };

        let user_raw = self.pick(
            "--user",
            o.user.as_deref(),
            "admin.user",
            admin.and_then(|a| a.user.as_deref()),
        );
        let admin_user = self.check_or(user_raw, DEFAULT_USER, "admin user", Username::parse);
        let ssh_keys = self.ssh_keys(o, admin, home);

        let image_raw = self.pick(
            "--image",
            o.image.as_deref(),
            "app.image",
            app.and_then(|a| a.image.as_deref()),
        );
        let image = self.check_or(image_raw, DEFAULT_IMAGE, "image", ImageRef::parse);
        let file_port = app.and_then(|a| a.port).map(|p| p.to_string());
        let port_raw = self.pick(
            "--app-port",
            o.app_port.as_deref(),
            "app.port",
            file_port.as_deref(),
        );
        let port = self.check_or(port_raw, "8000", "app port", Port::parse);
        let data_dir_raw = self.pick(
            "--data-dir",
            o.data_dir.as_deref(),
            "app.data-dir",
            app.and_then(|a| a.data_dir.as_deref()),
        );
        let data_dir = self.check_or(
            data_dir_raw,
            DEFAULT_DATA_DIR,
            "data directory",
            UnixPath::parse,
        );
        let data_path_raw = self.pick(
            "--data-path",
            o.data_path.as_deref(),
            "app.data-path",
            app.and_then(|a| a.data_path.as_deref()),
        );
        let data_path = self.check_or(
            data_path_raw,
            DEFAULT_DATA_PATH,
            "data path",
            UnixPath::parse,
        );
        let health_raw = self.pick(
            "--health-path",
            o.health_path.as_deref(),
            "app.health-path",
            app.and_then(|a| a.health_path.as_deref()),
        );
        let health_path = self.check_or(
            health_raw,
            DEFAULT_HEALTH_PATH,
            "health path",
            UrlPath::parse,
        );
        let body_raw = self.pick(
            "--max-body-size",
            None,
            "app.max-body-size",
            app.and_then(|a| a.max_body_size.as_deref()),
        );
        let max_body_size =
            self.check_or(body_raw, DEFAULT_BODY_SIZE, "body size", BodySize::parse);
        let env = self.env(o, app);
        let bundle = self.bundle(o, app);
        if bundle == Some(Bundle::Registry)
            && image.as_ref().is_some_and(|i| i.as_str() == DEFAULT_IMAGE)
        {
            self.report.push(Entry {
                severity: Severity::Warning,
                origin: Origin::Default("image"),
                value: Some(format!("{DEFAULT_IMAGE:?}")),
                message: "the classifier image is not on a public registry, so the VM cannot pull it".into(),
                help: "deliver it as a bundle (`imgforge seed --bundle`, --bundle-url, `imgforge build`), or push it and pass --image".into(),
            });
        }

        let file_keep = file
            .backup
            .as_ref()
            .and_then(|b| b.keep)
            .map(|k| k.to_string());
        let keep_raw = self.pick(
            "--backup-keep",
            o.backup_keep.as_deref(),
            "backup.keep",
            file_keep.as_deref(),
        );
        let backup_keep =
            self.check_or(keep_raw, "7", "backup count", |s| match s.parse::<u32>() {
                Ok(n @ 1..=365) => Ok(n),
                _ => Err(Problem {
                    message: "not a backup count".into(),
                    help: "keep between 1 and 365 daily archives".into(),
                }),
            });

        Some(Spec {
            domain,
            tls: if tls_enabled { Some(tls?) } else { None },
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
                bundle: bundle?,
            },
            docker_source: o.docker_source.or(file.docker_source).unwrap_or_default(),
            offline: o.offline || file.offline.unwrap_or(false),
            backup_keep: backup_keep?,
            host_key: o.host_key || file.host_key.unwrap_or(false),
        })
    }

    fn ca_bundle(&mut self, o: &Overrides, tls: Option<&TlsSection>) -> Option<PemBundle> {
        let (path, origin) = match (&o.acme_ca_bundle, tls.and_then(|t| t.ca_bundle.as_deref())) {
            (Some(p), _) => (p.clone(), Origin::Flag("--acme-ca-bundle")),
            (None, Some(p)) => (
                self.relative_to_config(p, None),
                self.file_origin("tls.ca-bundle"),
            ),
            (None, None) => return None,
        };
        match fs::read_to_string(&path) {
            Ok(text) => match PemBundle::parse(&text) {
                Ok(pem) => Some(pem),
                Err(p) => {
                    self.report
                        .error(origin, Some(&path.display().to_string()), p.message, p.help);
                    None
                }
            },
            Err(e) => {
                self.report.error(
                    origin,
                    Some(&path.display().to_string()),
                    format!("reading CA bundle {}: {e}", path.display()),
                    "pass a readable PEM file",
                );
                None
            }
        }
    }

    /// Resolves `~/` against the home directory and relative paths against the
    /// config file's directory.
    fn relative_to_config(&self, p: &str, home: Option<&Path>) -> PathBuf {
        if let (Some(rest), Some(home)) = (p.strip_prefix("~/"), home) {
            return home.join(rest);
        }
        let path = PathBuf::from(p);
        match self.file.and_then(|f| f.path.parent()) {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }
    }

    fn ssh_keys(
        &mut self,
        o: &Overrides,
        admin: Option<&AdminSection>,
        home: Option<&Path>,
    ) -> Option<Vec<SshPublicKey>> {
        let mut sources: Vec<(PathBuf, Origin)> = Vec::new();
        let mut literal: Vec<(String, Origin)> = Vec::new();
        if !o.ssh_key_files.is_empty() {
            sources.extend(
                o.ssh_key_files
                    .iter()
                    .map(|p| (p.clone(), Origin::Flag("--ssh-key"))),
            );
        } else if let Some(admin) = admin {
            for (i, p) in admin.ssh_key_files.iter().enumerate() {
                sources.push((
                    self.relative_to_config(p, home),
                    self.file_origin(&format!("admin.ssh-key-files.{i}")),
                ));
            }
            for (i, k) in admin.ssh_keys.iter().enumerate() {
                literal.push((k.clone(), self.file_origin(&format!("admin.ssh-keys.{i}"))));
            }
        }
        if sources.is_empty() && literal.is_empty() {
            let default = home.map(|h| h.join(".ssh/id_ed25519.pub"));
            match default {
                Some(p) if p.exists() => sources.push((p, Origin::Default("SSH key"))),
                _ => {
                    self.missing(
                        Origin::Flag("--ssh-key"),
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
            match fs::read_to_string(&path) {
                Ok(text) => {
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
                Err(e) => {
                    self.report.error(
                        origin,
                        Some(&shown),
                        format!("reading ssh key {shown}: {e}"),
                        "pass the path of your public key, or create one with `imgforge keygen`",
                    );
                    ok = false;
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

    fn env(&mut self, o: &Overrides, app: Option<&AppSection>) -> Option<Vec<(EnvName, EnvValue)>> {
        let mut merged: IndexMap<String, (String, Origin)> = IndexMap::new();
        let mut ok = true;
        if let Some(app) = app {
            for (name, value) in &app.env {
                let key = format!("app.env.{name}");
                let origin = self.file_origin(&key);
                match value {
                    serde_yaml_ng::Value::String(s) => {
                        merged.insert(name.clone(), (s.clone(), origin));
                    }
                    other => {
                        let shown = serde_yaml_ng::to_string(other).unwrap_or_default();
                        self.report.error(
                            origin,
                            Some(shown.trim()),
                            "environment values must be strings",
                            format!(
                                "quote it, e.g. {name}: \"{}\", so YAML cannot reinterpret it",
                                shown.trim()
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        for item in &o.env {
            match item.split_once('=') {
                Some((name, value)) => {
                    merged.insert(name.to_owned(), (value.to_owned(), Origin::Flag("--env")));
                }
                None => {
                    self.report.error(
                        Origin::Flag("--env"),
                        Some(item),
                        "expected NAME=VALUE",
                        "pass --env MODEL_DIR=/app/model",
                    );
                    ok = false;
                }
            }
        }
        let mut env = Vec::new();
        for (name, (value, origin)) in merged {
            let n = self.check(
                &Raw {
                    text: name.as_str().into(),
                    origin: origin.clone(),
                },
                EnvName::parse,
            );
            let v = self.check(
                &Raw {
                    text: value.as_str().into(),
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

    fn bundle(&mut self, o: &Overrides, app: Option<&AppSection>) -> Option<Bundle> {
        if let Some(local) = &o.bundle_local {
            return Some(local.clone());
        }
        let section = app.and_then(|a| a.bundle.as_ref());
        let url = self.pick(
            "--bundle-url",
            o.bundle_url.as_deref(),
            "app.bundle.url",
            section.and_then(|b| b.url.as_deref()),
        );
        let sha = self.pick(
            "--bundle-sha256",
            o.bundle_sha256.as_deref(),
            "app.bundle.sha256",
            section.and_then(|b| b.sha256.as_deref()),
        );
        match (url, sha) {
            (None, None) => Some(Bundle::Registry),
            (Some(url), Some(sha)) => {
                let url = self.check(&url, HttpsUrl::parse);
                let sha256 = self.check(&sha, Sha256Hex::parse);
                Some(Bundle::Url {
                    url: url?,
                    sha256: sha256?,
                })
            }
            (Some(url), None) => {
                self.missing(url.origin, "a bundle URL needs its sha256", "pass --bundle-sha256 with the digest `imgforge pack` printed (sha256sum of the file)");
                None
            }
            (None, Some(sha)) => {
                self.missing(
                    sha.origin,
                    "a bundle sha256 without a URL",
                    "pass --bundle-url too, or drop --bundle-sha256",
                );
                None
            }
        }
    }
}
