//! Spec → cloud-config: the users, the files written onto the VM (from templates/)
//! and the one command that runs the deployment on first boot.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::cloud_config::{CloudConfig, HostKeys, User, WriteFile};
use crate::keys::KeyPair;
use crate::spec::{Bundle, DockerSource, Spec, HOST_PORT};
use crate::templates::Templates;

/// Where the on-VM program is installed.
pub const VM_PROGRAM: &str = "/usr/local/lib/imgforge/imgforge-vm";
/// The seed-disk file name of the bundle.
pub const SEED_BUNDLE_FILE: &str = "bundle.oci.tar";

/// What a render produced beyond the cloud-config itself.
pub struct Rendered {
    pub cloud_config: CloudConfig,
    /// The `known_hosts` line when a host key was generated.
    pub known_hosts: Option<String>,
}

/// What the on-VM program reads from /etc/imgforge/deploy.json.
#[derive(Serialize)]
struct DeployJson<'a> {
    domain: Option<&'a str>,
    tls: bool,
    email: Option<&'a str>,
    acme_server: Option<&'a str>,
    acme_ca_bundle: bool,
    image: &'a str,
    bundle: BundleJson<'a>,
    docker_source: &'static str,
    offline: bool,
    data_dir: &'a str,
    data_path: &'a str,
    container_port: u16,
    host_port: u16,
    health_path: &'a str,
    backup_keep: u32,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum BundleJson<'a> {
    Registry,
    Url { url: &'a str, sha256: &'a str },
    Seed { file: &'a str, sha256: &'a str },
    File { path: &'a str, sha256: &'a str },
}

impl<'a> From<&'a Bundle> for BundleJson<'a> {
    fn from(b: &'a Bundle) -> Self {
        match b {
            Bundle::Registry => BundleJson::Registry,
            Bundle::Url { url, sha256 } => BundleJson::Url {
                url: url.as_str(),
                sha256: sha256.as_str(),
            },
            Bundle::Seed { file, sha256 } => BundleJson::Seed {
                file,
                sha256: sha256.as_str(),
            },
            Bundle::File { path, sha256 } => BundleJson::File {
                path: path.as_str(),
                sha256: sha256.as_str(),
            },
        }
    }
}

/// Builds the cloud-config for `spec`. With `spec.host_key`, a new host key is generated.
pub fn render(spec: &Spec, templates: &Templates) -> Result<Rendered> {
    let domain = spec.domain.as_ref().map(|d| d.as_str());
    let tls = spec.tls.as_ref();
    let app = &spec.app;

    let deploy = DeployJson {
        domain,
        tls: tls.is_some(),
        email: tls.map(|t| t.email.as_str()),
        acme_server: tls.and_then(|t| t.acme_server.as_ref()).map(|u| u.as_str()),
        acme_ca_bundle: tls.is_some_and(|t| t.ca_bundle.is_some()),
        image: app.image.as_str(),
        bundle: (&app.bundle).into(),
        docker_source: match spec.docker_source {
            DockerSource::DockerCe => "docker-ce",
            DockerSource::Distro => "distro",
        },
        offline: spec.offline,
        data_dir: app.data_dir.as_str(),
        data_path: app.data_path.as_str(),
        container_port: app.port.get(),
        host_port: HOST_PORT,
        health_path: app.health_path.as_str(),
        backup_keep: spec.backup_keep,
    };
    let vars = json!({
        "domain": domain,
        "server_name": domain.unwrap_or("_"),
        "host_port": HOST_PORT,
        "container_port": app.port.get(),
        "image": app.image.as_str(),
        "data_dir": app.data_dir.as_str(),
        "data_path": app.data_path.as_str(),
        "max_body_size": app.max_body_size.as_str(),
        "keep": spec.backup_keep,
    });
    let t = |name: &str| templates.render(name, &vars);
    let unit = |name: &str| format!("/etc/systemd/system/{name}");

    let mut files = vec![
        WriteFile::new(
            "/etc/imgforge/deploy.json",
            serde_json::to_string_pretty(&deploy)? + "\n",
            "0600",
        ),
        WriteFile::new("/etc/imgforge/app.env", env_file(spec), "0600"),
        WriteFile::new(
            "/etc/ssh/sshd_config.d/00-imgforge.conf",
            t("sshd-hardening.conf.hbs")?,
            "0644",
        ),
        WriteFile::new("/etc/docker/daemon.json", docker_daemon_json()?, "0644"),
        WriteFile::new(
            "/etc/apt/apt.conf.d/20auto-upgrades",
            t("20auto-upgrades.hbs")?,
            "0644",
        ),
        WriteFile::new(
            "/etc/nginx/sites-available/imgforge",
            t("nginx-site.conf.hbs")?,
            "0644",
        ),
        WriteFile::new(
            &unit("imgforge-app.service"),
            t("imgforge-app.service.hbs")?,
            "0644",
        ),
        WriteFile::new(
            &unit("imgforge-backup.service"),
            t("imgforge-backup.service.hbs")?,
            "0644",
        ),
        WriteFile::new(
            &unit("imgforge-backup.timer"),
            t("imgforge-backup.timer.hbs")?,
            "0644",
        ),
        WriteFile::new(
            &unit("imgforge-report.service"),
            t("imgforge-report.service.hbs")?,
            "0644",
        ),
    ];
    if let Some(tls) = tls {
        files.push(WriteFile::new(
            &unit("imgforge-cert.service"),
            t("imgforge-cert.service.hbs")?,
            "0644",
        ));
        files.push(WriteFile::new(
            &unit("imgforge-cert.timer"),
            t("imgforge-cert.timer.hbs")?,
            "0644",
        ));
        if let Some(ca) = &tls.ca_bundle {
            files.push(WriteFile::new(
                "/etc/imgforge/acme-ca.pem",
                ca.as_str().to_owned(),
                "0644",
            ));
            files.push(WriteFile::new(
                &unit("certbot.service.d/imgforge-ca.conf"),
                t("certbot-ca.conf.hbs")?,
                "0644",
            ));
        }
    }
    files.push(WriteFile::new(
        VM_PROGRAM,
        templates.file("imgforge-vm.py")?,
        "0755",
    ));

    let (ssh_keys, known_hosts) = if spec.host_key {
        let pair = KeyPair::generate("imgforge host key")?;
        let public = pair.public_openssh()?;
        let line = crate::keys::known_hosts_line(domain.unwrap_or("VM_ADDRESS"), &public);
        let keys = HostKeys {
            ed25519_private: pair.private_openssh()?.to_string(),
            ed25519_public: public,
        };
        (Some(keys), Some(line))
    } else {
        (None, None)
    };

    let cloud_config = CloudConfig {
        users: vec![User {
            name: spec.admin_user.as_str().to_owned(),
            groups: "sudo".into(),
            shell: "/bin/bash".into(),
            // The admin has no password (lock_passwd), so sudo cannot ask for one.
            sudo: "ALL=(ALL) NOPASSWD:ALL".into(),
            lock_passwd: true,
            ssh_authorized_keys: spec.ssh_keys.iter().map(|k| k.to_openssh()).collect(),
        }],
        disable_root: true,
        ssh_pwauth: false,
        ssh_keys,
        manage_etc_hosts: "localhost",
        write_files: files,
        runcmd: vec![vec![VM_PROGRAM.to_owned(), "deploy".to_owned()]],
        final_message: "imgforge: cloud-init finished after $UPTIME seconds; deployment status in /var/lib/imgforge/status.json".into(),
    };
    Ok(Rendered {
        cloud_config,
        known_hosts,
    })
}

/// Docker's env-file: one `NAME=VALUE` a line, the value taken literally to the end
/// of the line (validated: no line breaks, no NUL).
fn env_file(spec: &Spec) -> String {
    let mut out = String::from(
        "# Generated by imgforge: the app container's environment (docker --env-file).\n",
    );
    for (name, value) in &spec.app.env {
        out.push_str(&format!("{name}={value}\n"));
    }
    out
}

fn docker_daemon_json() -> Result<String> {
    let daemon = json!({
        "log-driver": "json-file",
        "log-opts": { "max-size": "10m", "max-file": "5" },
    });
    Ok(serde_json::to_string_pretty(&daemon).context("serializing daemon.json")? + "\n")
}

/// Checks what imgforge generated, not what the user gave: the text starts with
/// `#cloud-config` and parses back to the same document.
pub fn check_parses_back(text: &str) -> Result<()> {
    anyhow::ensure!(
        text.starts_with("#cloud-config\n"),
        "internal error: generated user-data does not start with #cloud-config"
    );
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .context("internal error: generated user-data does not parse as YAML")?;
    anyhow::ensure!(
        value.get("runcmd").is_some() && value.get("write_files").is_some(),
        "internal error: generated user-data lost its runcmd or write_files"
    );
    Ok(())
}
