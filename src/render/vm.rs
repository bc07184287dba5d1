//! What the VM program reads: where things live on the VM (`guest/imgforge_vm/layout.json`,
//! shared with the program) and the deployment itself (deploy.json). The same values fill
//! the templates, so each is defined once.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::spec::{Bundle, DockerSource, Spec};

/// guest/imgforge_vm/layout.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub program: String,
    pub program_src: String,
    pub config: String,
    pub app_env: String,
    pub app_env_dir: String,
    pub acme_ca: String,
    pub dns_token: String,
    pub state_dir: String,
    pub status: String,
    pub switch_intent: String,
    pub jobs_dir: String,
    pub log_dir: String,
    pub hold: String,
    pub baked_bundle: String,
    pub probe_token: String,
    pub acme_webroot: String,
    pub backup_dir: String,
    pub docker_keyring: String,
    pub sshd_config: String,
    pub nginx_site: String,
    pub nginx_site_http: String,
    pub nginx_site_tls: String,
    pub nginx_app: String,
    pub nginx_upstream: String,
    pub nginx_check_port: u16,
    pub system_cloud_config: String,
    pub seed_bundle: String,
    pub container: String,
    pub deploy_unit: String,
    pub slots: BTreeMap<String, u16>,
    pub console: String,
    pub boot_id: String,
}

/// The layout the VM program was built with.
pub fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        serde_json::from_str(include_str!("../../guest/imgforge_vm/layout.json")).expect(
            "guest/imgforge_vm/layout.json matches render::vm::Layout (a unit test reads it)",
        )
    })
}

/// deploy.json: the deployment as the VM program reads it.
#[derive(Debug, Serialize)]
pub struct VmConfig<'a> {
    /// Bumped when a field changes meaning; the program refuses a version it does not know.
    pub version: u32,
    pub domain: Option<&'a str>,
    pub tls: bool,
    pub email: Option<&'a str>,
    pub acme_server: Option<&'a str>,
    pub acme_ca_bundle: bool,
    pub admin_user: &'a str,
    pub image: &'a str,
    pub bundle: BundleJson<'a>,
    pub docker_source: DockerSource,
    pub offline: bool,
    pub data_dir: &'a str,
    pub data_path: &'a str,
    pub container_port: u16,
    pub health_path: &'a str,
    /// Seconds the app may take to answer its health path when it starts (first boot,
    /// reboots, and deploys that name no --health-timeout).
    pub app_start_timeout: u32,
    pub max_body_size: &'a str,
    pub backup_keep: u32,
    pub app: AppLimits<'a>,
    /// The DNS provider the VM registers its address with (its token is in its own file).
    pub dns: Option<DnsJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct DnsJson<'a> {
    pub provider: crate::spec::DnsProvider,
    pub zone: Option<&'a str>,
    pub api_url: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct AppLimits<'a> {
    pub memory: &'a str,
    pub pids_limit: u32,
}

/// Processes the app's container may run at once.
pub const PIDS_LIMIT: u32 = 512;

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BundleJson<'a> {
    Registry,
    Url { url: &'a str, sha256: &'a str },
    Seed { sha256: &'a str },
    File { sha256: &'a str },
    Baked,
}

impl<'a> VmConfig<'a> {
    pub fn new(spec: &'a Spec) -> Self {
        let tls = spec.tls.as_ref();
        let app = &spec.app;
        VmConfig {
            version: 1,
            domain: spec.domain.as_ref().map(|d| d.as_str()),
            tls: tls.is_some(),
            email: tls.map(|t| t.email.as_str()),
            acme_server: tls.and_then(|t| t.acme_server.as_ref()).map(|u| u.as_str()),
            acme_ca_bundle: tls.is_some_and(|t| t.ca_bundle.is_some()),
            admin_user: spec.admin_user.as_str(),
            image: app.image.as_str(),
            bundle: match &app.bundle {
                Bundle::Registry => BundleJson::Registry,
                Bundle::Url { url, sha256 } => BundleJson::Url {
                    url: url.as_str(),
                    sha256: sha256.as_str(),
                },
                Bundle::Seed { sha256 } => BundleJson::Seed {
                    sha256: sha256.as_str(),
                },
                Bundle::File { sha256 } => BundleJson::File {
                    sha256: sha256.as_str(),
                },
                Bundle::Baked => BundleJson::Baked,
            },
            docker_source: spec.docker_source,
            offline: spec.offline,
            data_dir: app.data_dir.as_str(),
            data_path: app.data_path.as_str(),
            container_port: app.port.get(),
            health_path: app.health_path.as_str(),
            app_start_timeout: app.start_timeout,
            max_body_size: app.max_body_size.as_str(),
            backup_keep: spec.backup_keep,
            app: AppLimits {
                memory: app.memory.as_str(),
                pids_limit: PIDS_LIMIT,
            },
            dns: spec.dns.as_ref().map(|d| DnsJson {
                provider: d.provider,
                zone: d.zone.as_ref().map(|z| z.as_str()),
                api_url: d.api_url.as_ref().map(|u| u.as_str()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_layout_parses_and_has_both_slots() {
        let layout = super::layout();
        assert_eq!(layout.slots.len(), 2, "{:?}", layout.slots);
        assert!(layout.program.starts_with('/'));
    }
}
