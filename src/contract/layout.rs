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
    pub app_env_dir: String,
    pub acme_ca: String,
    pub dns_token: String,
    /// The swarm's join token a joining node is given (0600).
    pub swarm_join_token: String,
    /// Docker's Engine API, which the cluster's calls go to (their secrets in a body, not argv).
    pub docker_socket: String,
    pub state_dir: String,
    pub status: String,
    pub status_lock: String,
    /// The versions the slots run, which one is active, and the deploy history.
    pub app_state: String,
    pub deploy_lock: String,
    pub backup_lock: String,
    /// The last backup and the last good one (`imgforge status`, `backup list`).
    pub backup_state: String,
    /// A backup's copy of the data directory, before it is archived.
    pub backup_staging: String,
    /// The BorgBackup repository's passphrase and the SSH key the VM logs in with (0600).
    pub borg_passphrase: String,
    pub borg_ssh_key: String,
    /// The repository host's key: the user's, or the one seen at the first backup.
    pub borg_known_hosts: String,
    /// Borg's own files: its cache and the repository's security records.
    pub borg_base: String,
    pub cert_state: String,
    pub cert_lock: String,
    pub dns_state: String,
    pub bundle_download: String,
    pub switch_intent: String,
    pub jobs_dir: String,
    pub log_dir: String,
    /// journald's native socket: the program's progress, by source, in the journal.
    pub journal_socket: String,
    /// journald's drop-in: a persistent journal of bounded size.
    pub journald_conf: String,
    /// nginx's access log for the app, one JSON object a line (`imgforge logs`, `status`).
    pub nginx_access_log: String,
    pub nginx_error_log: String,
    pub hold: String,
    pub baked_bundle: String,
    pub probe_token: String,
    pub acme_webroot: String,
    pub backup_dir: String,
    pub docker_keyring: String,
    pub docker_apt_source: String,
    pub docker_daemon: String,
    pub docker_bin: String,
    pub apt_auto_upgrades: String,
    pub apt_docker_pin: String,
    pub letsencrypt_live: String,
    pub sshd_config: String,
    pub ssh_host_key: String,
    /// A glob: the host public keys reported on the console.
    pub ssh_host_public_keys: String,
    pub nginx_site: String,
    pub nginx_site_http: String,
    pub nginx_site_tls: String,
    pub nginx_app: String,
    pub nginx_upstream: String,
    pub nginx_conf: String,
    /// curl's configuration naming the webhook (0600: the URL may be a secret), and the
    /// messages, one per unit whose failure it is told (`UNIT.json`).
    pub notify_curlrc: String,
    pub notify_dir: String,
    pub curl_bin: String,
    /// The map from the Authorization header to whether /metrics answers (0600: the token).
    pub nginx_metrics_auth: String,
    /// node_exporter's port, on loopback, and the drop-in that keeps it there.
    pub node_exporter_port: u16,
    pub node_exporter_bin: String,
    pub node_exporter_dropin: String,
    pub nginx_site_enabled: String,
    pub nginx_default_site: String,
    /// nginx's name for the app's upstream block.
    pub upstream: String,
    /// The loopback server nginx answers the program's checks on.
    pub nginx_check_port: u16,
    pub system_cloud_config: String,
    pub cloud_init_result: String,
    pub instance_id: String,
    /// Where the NoCloud seed disk appears.
    pub seed_devices: Vec<String>,
    pub os_release: String,
    /// The bundle's file name on a seed disk.
    pub seed_bundle: String,
    /// The app's containers are `CONTAINER-SLOT`.
    pub container: String,
    pub deploy_unit: String,
    pub units_dir: String,
    pub units: Units,
    /// A cluster's app: the Swarm service, and the port every node publishes it on (the
    /// firewall keeps it from outside; nginx proxies to it on loopback).
    pub service: String,
    pub service_port: u16,
    /// The manager's registry: the versions deploys bring, served read-only to the
    /// cluster's private network on this port.
    pub registry_dir: String,
    pub registry_port: u16,
    /// Each slot and the loopback port its container is published on.
    pub slots: BTreeMap<String, u16>,
    /// The ports the firewall opens.
    pub public_ports: PublicPorts,
    pub console: String,
    pub boot_id: String,
    /// `imgforge status`: the VM's CPU use and memory.
    pub cpu_stat: String,
    pub meminfo: String,
    pub app_env: String,
    pub generalize: Generalize,
}

/// The systemd units imgforge installs or starts (`app` is the slots' template).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Units {
    pub app: String,
    pub docker_firewall: String,
    /// A cluster manager's registry (`imgforge-vm registry`).
    pub registry: String,
    pub backup: String,
    pub backup_timer: String,
    pub report: String,
    pub recover: String,
    pub dns: String,
    pub dns_timer: String,
    pub cert: String,
    pub cert_timer: String,
    /// Tells the webhook that the unit its instance names failed (`OnFailure=`).
    pub notify: String,
    /// certbot's own renewal unit (the distribution's).
    pub certbot: String,
    pub upgrade: String,
    pub generalize: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicPorts {
    pub ssh: u16,
    pub http: u16,
    pub https: u16,
}

/// What a provisioning boot removes or empties before the disk becomes a template: what
/// makes one machine unlike another, or tells what it did.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Generalize {
    /// Emptied: machine-id (systemd makes a new one at first boot) and the hostname.
    pub empty: Vec<String>,
    /// Removed (globs).
    pub remove: Vec<String>,
    pub apt_lists: String,
    /// Every file under it is truncated.
    pub logs: String,
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
