//! The documents the tool and the VM program exchange: one typed contract per boundary.
//!
//! - [`layout`]: where everything is on the VM (guest/imgforge_vm/layout.json, read by both);
//! - [`deploy`]: deploy.json, the deployment as imgforge renders it for the program;
//! - [`status`]: status.json, what the deployment did, as the program records it;
//! - [`remote`]: the program's requests and answers over SSH (`imgforge-vm status`,
//!   `deploy-version`, `rollback`, `attach`, `install-program`);
//! - [`logs`]: `imgforge-vm logs`' request and its lines.
//!
//! Each document's JSON Schema is generated from its type and committed under
//! guest/schema/: a unit test fails when a type and its committed schema differ, and the
//! VM program's unit tests validate every document they write against it.

pub mod deploy;
pub mod layout;
pub mod logs;
pub mod remote;
pub mod status;

pub use layout::{layout, Layout};

/// Where the committed schemas live, from the repository's root.
pub const SCHEMA_DIR: &str = "guest/schema";

/// Every document's schema, by its file name under [`SCHEMA_DIR`].
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    fn of<T: schemars::JsonSchema>() -> serde_json::Value {
        schemars::schema_for!(T).to_value()
    }
    vec![
        ("layout.schema.json", of::<layout::Layout>()),
        ("deploy.schema.json", of::<deploy::DeployJson>()),
        ("status.schema.json", of::<status::Status>()),
        ("status-answer.schema.json", of::<remote::StatusAnswer>()),
        ("deploy-request.schema.json", of::<remote::DeployRequest>()),
        ("deploy-answer.schema.json", of::<status::Deploy>()),
        ("backup-answer.schema.json", of::<remote::BackupRecord>()),
        ("backup-list.schema.json", of::<remote::BackupList>()),
        ("logs-request.schema.json", of::<logs::LogsRequest>()),
        ("log-line.schema.json", of::<logs::LogLine>()),
        (
            "cluster-token-answer.schema.json",
            of::<remote::ClusterToken>(),
        ),
    ]
}

/// A schema as committed: pretty JSON with a final newline.
pub fn schema_text(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// Fails when `value`, serialized, has a key (at any depth) that `fixture`'s text lacks:
/// a field of the Rust type that the other side never writes.
#[cfg(test)]
pub(crate) fn assert_every_field_present<T: serde::Serialize>(value: &T, fixture: &str) {
    fn walk(ours: &serde_json::Value, theirs: &serde_json::Value, at: &str) {
        use serde_json::Value;
        match (ours, theirs) {
            (Value::Object(o), Value::Object(t)) => {
                for (k, v) in o {
                    let at = format!("{at}.{k}");
                    let other = t
                        .get(k)
                        .unwrap_or_else(|| panic!("{at} is in the Rust type, not in the fixture"));
                    walk(v, other, &at);
                }
            }
            (Value::Array(o), Value::Array(t)) => {
                for (i, (a, b)) in o.iter().zip(t).enumerate() {
                    walk(a, b, &format!("{at}[{i}]"));
                }
            }
            _ => {}
        }
    }
    let ours = serde_json::to_value(value).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(fixture).unwrap();
    walk(&ours, &theirs, "$");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// `IMGFORGE_UPDATE_GOLDEN=1 cargo test contract` writes them anew.
    #[test]
    fn the_committed_schemas_are_the_types_schemas() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_DIR);
        let update = std::env::var_os("IMGFORGE_UPDATE_GOLDEN").is_some();
        let mut names = Vec::new();
        for (name, schema) in schemas() {
            let path = dir.join(name);
            let text = schema_text(&schema);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{} differs from the Rust type's schema: if the type's change is meant, \
                 run IMGFORGE_UPDATE_GOLDEN=1 cargo test contract, and change the VM program to match",
                path.display()
            );
            names.push(name.to_owned());
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        names.sort();
        assert_eq!(on_disk, names, "a schema in {SCHEMA_DIR} with no type");
    }
}
