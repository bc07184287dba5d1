//! layout.json: where everything is on the VM, the one list both sides read (the program
//! ships it as guest/imgforge_vm/layout.json; templates and the tool take their paths from
//! it).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// guest/imgforge_vm/layout.json.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
        serde_json::from_str(include_str!("../../guest/imgforge_vm/layout.json"))
            .expect("guest/imgforge_vm/layout.json matches contract::Layout (a unit test reads it)")
    })
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
