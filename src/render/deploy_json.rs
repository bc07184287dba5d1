//! deploy.json from the user's input: the values the templates take too, so each is
//! defined once.

use crate::contract::deploy::{
    AppLimits, BorgJson, BundleJson, ClusterJson, DeployJson, DnsJson, PackageJson, PIDS_LIMIT,
    VERSION,
};
use crate::input::cluster::Node;
use crate::input::BackupEvery;
use crate::input::{Bundle, ClusterRole, Deployment};

pub fn deploy_json(spec: &Deployment) -> DeployJson {
    let tls = spec.tls.as_ref();
    let app = &spec.app;
    let owned = |s: &str| s.to_owned();
    DeployJson {
        version: VERSION,
        domain: spec.domain.as_ref().map(|d| d.to_string()),
        tls: tls.is_some(),
        email: tls.map(|t| t.email.to_string()),
        acme_server: tls
            .and_then(|t| t.acme_server.as_ref())
            .map(|u| u.to_string()),
        acme_ca_bundle: tls.is_some_and(|t| t.ca_bundle.is_some()),
        admin_user: spec.admin_user.to_string(),
        image: app.image.to_string(),
        bundle: match &app.bundle {
            Bundle::Registry => BundleJson::Registry,
            Bundle::Url { url, sha256 } => BundleJson::Url {
                url: url.to_string(),
                sha256: sha256.to_string(),
            },
            Bundle::Seed { sha256 } => BundleJson::Seed {
                sha256: sha256.to_string(),
            },
            Bundle::File { sha256 } => BundleJson::File {
                sha256: sha256.to_string(),
            },
            Bundle::Baked => BundleJson::Baked,
        },
        docker_source: spec.docker_source,
        offline: spec.offline,
        data_dir: owned(app.data_dir.as_str()),
        data_path: owned(app.data_path.as_str()),
        container_port: app.port.get(),
        health_path: owned(app.health_path.as_str()),
        app_start_timeout: app.start_timeout,
        max_body_size: owned(app.max_body_size.as_str()),
        backup_keep: spec.backup_keep,
        app: AppLimits {
            memory: owned(app.memory.as_str()),
            pids_limit: PIDS_LIMIT,
        },
        dns: spec.dns.as_ref().map(|d| DnsJson {
            provider: d.provider,
            zone: d.zone.as_ref().map(|z| z.to_string()),
            api_url: d.api_url.as_ref().map(|u| u.to_string()),
        }),
        borg: spec.borg.as_ref().map(|b| BorgJson {
            repo: b.repo.to_string(),
            every: b.every,
            known_hosts: b.known_hosts.is_some(),
            keep_hourly: if b.every == BackupEvery::Hourly {
                24
            } else {
                0
            },
            keep_daily: spec.backup_keep,
            keep_weekly: b.keep_weekly,
            keep_monthly: b.keep_monthly,
        }),
        metrics: spec.metrics_token.is_some(),
        notify: spec.notify.is_some(),
        packages: packages(spec),
        cluster: spec.cluster.as_ref().map(|c| match &c.node {
            Node::Init { replicas } => ClusterJson {
                role: ClusterRole::Init,
                network: c.network.to_string(),
                manager: None,
                replicas: *replicas,
            },
            Node::Join { manager, .. } => ClusterJson {
                role: ClusterRole::Join,
                network: c.network.to_string(),
                manager: Some(manager.to_string()),
                replicas: None,
            },
        }),
    }
}

/// What the deployment's options need installed beyond the base.
fn packages(spec: &Deployment) -> Vec<PackageJson> {
    let package = |name: &str, command: &str| PackageJson {
        name: name.to_owned(),
        command: command.to_owned(),
    };
    let mut out = Vec::new();
    if spec.borg.is_some() {
        out.push(package("borgbackup", "borg"));
    }
    if spec.metrics_token.is_some() {
        out.push(package(
            "prometheus-node-exporter",
            "prometheus-node-exporter",
        ));
    }
    out
}
