//! The apps the tests deploy besides the classifier's bundle (common::classifier_bundle):
//! a busybox web app, optionally slow to start.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

const WEBAPP_SPEC: &str = r#"name: imgforge/webapp:test
architecture: amd64
user: { name: app, uid: 10001, gid: 10001 }
workdir: /www
entrypoint: [/bin/busybox, httpd, -f, -v, -p, "8000", -h, /www]
expose: [8000]
volumes: [/app/data]
layers:
  - name: app
    files:
      - { src: busybox, dest: /bin/busybox, mode: "0755" }
      - { src: www/health, dest: /www/health, mode: "0644" }
      - { src: www/index.html, dest: /www/index.html, mode: "0644" }
"#;
pub const WEBAPP_INDEX: &str = "{\"service\":\"webapp\",\"baked\":true}\n";

/// The busybox web app packed; with `start_delay`, it waits that many seconds before it
/// serves anything.
pub fn webapp_bundle(dir: &Path, start_delay: Option<u64>) -> PathBuf {
    let app = dir.join("webapp");
    fs::create_dir_all(app.join("www")).unwrap();
    let mut spec: serde_yaml_ng::Value = serde_yaml_ng::from_str(WEBAPP_SPEC).unwrap();
    if let Some(delay) = start_delay {
        let script = format!("sleep {delay} && exec /bin/busybox httpd -f -v -p 8000 -h /www");
        spec["entrypoint"] =
            serde_yaml_ng::to_value(["/bin/busybox", "sh", "-c", &script]).unwrap();
    }
    fs::write(
        app.join("image.yaml"),
        serde_yaml_ng::to_string(&spec).unwrap(),
    )
    .unwrap();
    // busybox-static: one binary with no libraries to bring along.
    fs::copy("/bin/busybox", app.join("busybox"))
        .expect("/bin/busybox (apt-get install busybox-static)");
    fs::write(app.join("www/health"), "ok\n").unwrap();
    fs::write(app.join("www/index.html"), WEBAPP_INDEX).unwrap();
    let out = dir.join("webapp.oci.tar");
    ok(imgforge(&[
        "pack",
        app.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    out
}
