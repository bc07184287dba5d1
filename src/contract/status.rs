//! status.json, the deployment's record on the VM (written by the VM program,
//! `guest/imgforge_vm/status.py`): read from the serial console line
//! (`imgforge-status: <compact JSON>`) by `imgforge boot`, and over SSH by `verify`
//! and `status`. Versioned; read leniently (unknown fields ignored, missing ones empty).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What starts a status line on the serial console.
pub const STATUS_PREFIX: &str = "imgforge-status:";

/// The document version this imgforge reads (`version` in status.json).
pub const VERSION: u32 = 1;

/// One status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Status {
    #[serde(default)]
    pub version: u32,
    pub state: State,
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub updated: String,
    #[serde(default)]
    pub steps: IndexMap<String, String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub certificate_detail: Option<String>,
    #[serde(default)]
    pub health: Option<String>,
    pub cloud_init: CloudInit,
    /// The SSH host public keys (`type base64`), as the VM's console reported them.
    #[serde(default)]
    pub host_keys: Vec<String>,
    /// What runs now.
    #[serde(default)]
    pub app: Option<AppVersion>,
    /// The last deploys, oldest first.
    #[serde(default)]
    pub deploys: Vec<Deploy>,
    /// Set by a provisioning boot when it ends: whether everything went in.
    #[serde(default)]
    pub provisioned: Option<bool>,
    /// The runs of first boot on this VM (more than one after a new instance-id).
    #[serde(default)]
    pub first_boot: Option<FirstBoot>,
    /// The DNS registration (`ok`, `pending`, `refused`) and the provider's answer.
    #[serde(default)]
    pub dns: Option<String>,
    #[serde(default)]
    pub dns_detail: Option<String>,
    /// The `apt-get upgrade` started once the app serves, and how it ended.
    #[serde(default)]
    pub upgrade: Option<String>,
    #[serde(default)]
    pub upgrade_detail: Option<String>,
    /// Set when the VM found a status.json of another version and started afresh.
    #[serde(default)]
    pub previous_version: Option<u32>,
}

/// First boot on this VM: how many times cloud-init ran it, and what a later run kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FirstBoot {
    pub runs: u32,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub started: Option<String>,
    /// The version a later run found serving and kept.
    #[serde(default)]
    pub kept: Option<String>,
}

/// The version of the app a slot runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AppVersion {
    pub slot: String,
    pub image: String,
    pub image_id: String,
    pub version: String,
    #[serde(default)]
    pub since: Option<String>,
}

/// A cluster's deploys and rollbacks are Swarm's rolling update of the service, in no
/// slot: their history entries name this instead.
pub const SWARM_SLOT: &str = "swarm";

/// One deploy (first boot, deploy or rollback) and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Deploy {
    pub kind: String,
    pub version: String,
    pub image: String,
    #[serde(default)]
    pub image_id: String,
    pub slot: String,
    pub started: String,
    #[serde(default)]
    pub finished: Option<String>,
    pub result: String,
    #[serde(default)]
    pub error: Option<String>,
    /// Seconds from start to healthy, and from healthy to traffic on it.
    #[serde(default)]
    pub healthy_s: Option<f64>,
    #[serde(default)]
    pub switch_s: Option<f64>,
}

/// The deployment's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ready,
    Failed,
    Pending,
    /// A state this version does not know; treated as not decided yet.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// cloud-init's own verdict for this boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CloudInit {
    pub status: String,
    #[serde(default)]
    pub errors: Vec<serde_json::Value>,
}

impl Status {
    /// cloud-init has finished this boot (`done` or `error`): the protocol's "finished".
    pub fn is_finished(&self) -> bool {
        matches!(self.cloud_init.status.as_str(), "done" | "error")
    }

    /// Finished, and the deployment has decided between ready and failed.
    pub fn is_settled(&self) -> bool {
        self.is_finished() && matches!(self.state, State::Ready | State::Failed)
    }

    /// Ready, with cloud-init reporting no error.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready && self.cloud_init.status == "done"
    }

    /// Names of the steps reported as failed, in report order.
    pub fn failed_steps(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|(_, v)| v.as_str() == "failed")
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// cloud-init's errors as text (they are strings in practice, but any JSON is kept).
    pub fn cloud_init_errors(&self) -> Vec<String> {
        self.cloud_init
            .errors
            .iter()
            .map(|e| match e {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }
}

impl Status {
    /// Parses status.json's text.
    pub fn parse(text: &str) -> Result<Status, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Parses a serial console line carrying a status report. The prefix may come after other
/// console output on the same line (kernel messages interleave); anything that is not a
/// well-formed report gives `None`.
pub fn parse_status_line(line: &str) -> Option<Status> {
    let start = line.find(STATUS_PREFIX)?;
    let json = line[start + STATUS_PREFIX.len()..].trim();
    serde_json::from_str(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: &str = r#"imgforge-status: {"version":1,"state":"ready","boot_id":"b1","steps":{"docker":"ok","certbot":"skipped"},"certificate":"disabled","cloud_init":{"status":"done","errors":[]}}"#;

    #[test]
    fn parses_a_ready_line() {
        let s = parse_status_line(READY).expect("status");
        assert_eq!(s.state, State::Ready);
        assert_eq!(s.boot_id, "b1");
        assert!(s.is_finished() && s.is_settled() && s.is_ready());
        assert!(s.failed_steps().is_empty());
        assert_eq!(s.certificate.as_deref(), Some("disabled"));
    }

    #[test]
    fn finds_the_prefix_after_console_noise_and_a_carriage_return() {
        let line = format!("[   12.3] random: crng init done{READY}\r");
        assert_eq!(parse_status_line(&line).expect("status").boot_id, "b1");
    }

    #[test]
    fn reports_failed_steps_and_errors() {
        let line = r#"imgforge-status: {"version":1,"state":"failed","boot_id":"b","steps":{"a":"ok","nginx":"failed","c":"failed"},"certificate":"pending","cloud_init":{"status":"error","errors":["('scripts_user', RuntimeError())"]}}"#;
        let s = parse_status_line(line).expect("status");
        assert_eq!(s.failed_steps(), ["nginx", "c"]);
        assert_eq!(s.cloud_init_errors(), ["('scripts_user', RuntimeError())"]);
        assert!(s.is_settled() && !s.is_ready());
    }

    #[test]
    fn running_or_pending_is_not_settled() {
        let running = r#"imgforge-status: {"version":1,"state":"pending","steps":{},"cloud_init":{"status":"running","errors":[]}}"#;
        let s = parse_status_line(running).expect("status");
        assert!(!s.is_finished() && !s.is_settled());
        let pending_done = running.replace("running", "done");
        let s = parse_status_line(&pending_done).expect("status");
        assert!(s.is_finished() && !s.is_settled());
    }

    #[test]
    fn the_vm_programs_fixture_parses_with_every_field() {
        // guest/tests/fixtures/status-v1.json is written by the VM program's own test
        // (guest/tests/test_status.py): both sides hold the same document.
        let text = include_str!("../../guest/tests/fixtures/status-v1.json");
        let s = Status::parse(text).unwrap();
        assert_eq!(s.version, VERSION);
        assert!(s.is_ready(), "{s:?}");
        assert_eq!(s.steps.keys().next().map(String::as_str), Some("firewall"));
        assert_eq!(s.host_keys.len(), 1);
        let app = s.app.as_ref().expect("app");
        assert_eq!((app.slot.as_str(), app.version.as_str()), ("blue", "0.1.0"));
        assert_eq!(s.deploys.last().map(|d| d.result.as_str()), Some("ok"));
        let first_boot = s.first_boot.as_ref().expect("first_boot");
        assert_eq!((first_boot.runs, first_boot.kept.as_deref()), (1, None));
        // Every field of the type is in the fixture: a field the program never writes
        // fails here, one the type lacks fails the program's schema check.
        crate::contract::assert_every_field_present(&s, text);
    }

    #[test]
    fn rejects_truncated_or_foreign_lines() {
        assert!(parse_status_line(&READY[..READY.len() - 3]).is_none());
        assert!(parse_status_line("Welcome to Debian").is_none());
        assert!(parse_status_line("imgforge-status: not json").is_none());
    }
}
