//! The image spec (`image.yaml`): what goes into a packed image and how it runs.
//! Parsed strictly (unknown keys rejected) and validated as a whole, so one run
//! reports every problem in the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use indexmap::IndexMap;
use serde::Deserialize;

use crate::input::{Entry, ImageRef, Origin, Problems, Severity};

/// The file name looked up in a spec directory.
pub const SPEC_FILE: &str = "image.yaml";

/// `image.yaml` as written by the user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSpec {
    /// Default reference, `repo:tag` (e.g. `imgforge/classifier:0.1.0`).
    pub name: String,
    /// Command that produces the files the layers name, shown when one is missing.
    #[serde(default)]
    pub build: Option<String>,
    /// CPU architecture in OCI terms (`amd64`, `arm64`, ...).
    #[serde(default = "default_architecture")]
    pub architecture: String,
    /// The non-root account the service runs as.
    pub user: UserSpec,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: IndexMap<String, String>,
    /// Ports the service listens on: `8000` or `8000/tcp`, `53/udp`.
    #[serde(default)]
    pub expose: Vec<PortSpec>,
    /// Data directories; each is created in the base layer, owned by `user`.
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the runtime runs in the container to tell whether it is healthy.
    #[serde(default)]
    pub healthcheck: Option<HealthSpec>,
    /// Layers on top of the base layer, in order.
    pub layers: Vec<LayerSpec>,
}

fn default_architecture() -> String {
    "amd64".to_owned()
}

/// A container health check, in exec form: the image needs no shell to run it (Docker's
/// `--health-cmd` flag, by contrast, always goes through `/bin/sh -c`). Times in seconds;
/// left out, the runtime's defaults apply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthSpec {
    /// The program (an absolute path) and its arguments.
    pub command: Vec<String>,
    #[serde(default)]
    pub interval: Option<u32>,
    #[serde(default)]
    pub timeout: Option<u32>,
    #[serde(default)]
    pub start_period: Option<u32>,
    #[serde(default)]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LayerSpec {
    /// What the layer holds; recorded in the image history.
    pub name: String,
    pub files: Vec<FileSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSpec {
    /// Path relative to the spec directory: a file, or a directory copied recursively.
    pub src: String,
    /// Absolute path in the image.
    pub dest: String,
    /// Octal mode as a string (`"0755"`). Default: 0755 if the source has an
    /// execute bit, else 0644 (git keeps exactly that bit, so checkouts agree).
    #[serde(default)]
    pub mode: Option<String>,
}

/// A port as written: a bare number or `number/proto`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u64),
    Text(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Text(s) => f.write_str(s),
        }
    }
}

impl PortSpec {
    /// The port in image-config form, `8000/tcp`.
    fn parse(&self) -> Option<String> {
        let (num, proto) = match self {
            PortSpec::Number(n) => (n.to_string(), "tcp"),
            PortSpec::Text(s) => match s.split_once('/') {
                Some((n, p)) => (n.to_owned(), p),
                None => (s.clone(), "tcp"),
            },
        };
        let port: u16 = num.parse().ok()?;
        (port != 0 && matches!(proto, "tcp" | "udp" | "sctp")).then(|| format!("{port}/{proto}"))
    }
}

/// A spec after validation: every value checked, ready to pack.
#[derive(Debug, Clone)]
pub struct ValidSpec {
    pub reference: ImageRef,
    pub build: Option<String>,
    pub architecture: String,
    pub user: UserSpec,
    pub workdir: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: IndexMap<String, String>,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Option<HealthSpec>,
    pub layers: Vec<ValidLayer>,
}

#[derive(Debug, Clone)]
pub struct ValidLayer {
    pub name: String,
    pub files: Vec<ValidFile>,
}

#[derive(Debug, Clone)]
pub struct ValidFile {
    /// `src` as written, for messages.
    pub src_text: String,
    /// Relative to the spec directory.
    pub src: PathBuf,
    /// Absolute, normalized, e.g. `/app/classifier`.
    pub dest: String,
    pub mode: Option<u32>,
}

/// Reads and validates `<dir>/image.yaml`. Every problem is the user's input (exit 2),
/// reported all at once with its key and position, as imgforge.yaml's are.
pub fn load(spec_file: &Path) -> Result<ValidSpec> {
    let text = crate::fsutil::read_small(spec_file).map_err(|e| {
        crate::exit::usage(format!("reading image spec {}: {e}", spec_file.display()))
    })?;
    Ok(parse(&text, spec_file)?)
}

/// Parses and validates spec text; `file` names it in the report.
pub fn parse(text: &str, file: &Path) -> Result<ValidSpec, Problems> {
    let raw: ImageSpec = serde_yaml_ng::from_str(text).map_err(|e| {
        let loc = e.location();
        let msg = e.to_string();
        Problems::single(Entry {
            severity: Severity::Error,
            origin: Origin::File {
                file: file.to_owned(),
                path: "$".into(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.map(|l| l.column()),
            },
            value: None,
            message: crate::input::parse_message(&msg),
            help: String::new(),
        })
    })?;
    let positions = crate::input::positions(text);
    let mut report = Problems::default();
    let mut err = |path: &str, msg: String| {
        let pos = positions.get(path).copied();
        report.error(
            Origin::File {
                file: file.to_owned(),
                path: path.to_owned(),
                line: pos.map(|p| p.0),
                column: pos.map(|p| p.1),
            },
            None,
            msg,
            "",
        );
    };
    let spec = validate(raw, &mut err);
    match spec {
        Some(spec) if !report.has_errors() => Ok(spec),
        _ => Err(report),
    }
}

/// Paths the base layer writes itself; no layer may put a file there.
pub const BASE_FILES: &[&str] = &["/etc/passwd", "/etc/group"];

fn validate(raw: ImageSpec, err: &mut dyn FnMut(&str, String)) -> Option<ValidSpec> {
    let reference = match ImageRef::parse(&raw.name) {
        Ok(r) if r.digest().is_some() => {
            err(
                "name",
                format!(
                    "{:?} carries a digest: the digest is what packing computes",
                    raw.name
                ),
            );
            None
        }
        Ok(r) => Some(r),
        Err(e) => {
            err(
                "name",
                format!("{:?} is not an image reference: {}", raw.name, e.message),
            );
            None
        }
    };
    if let Some(b) = &raw.build {
        if b.trim().is_empty() {
            err("build", "must not be empty".into());
        }
    }
    const ARCHES: &[&str] = &[
        "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64",
    ];
    if !ARCHES.contains(&raw.architecture.as_str()) {
        err(
            "architecture",
            format!("{:?} is not one of {}", raw.architecture, ARCHES.join(", ")),
        );
    }

    let u = &raw.user;
    if u.uid == 0 || u.gid == 0 {
        err(
            "user",
            "uid and gid must be non-zero: the service does not run as root".into(),
        );
    }
    let name_ok = u.name.len() <= 32
        && u.name
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && u.name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !name_ok || u.name == "root" {
        err(
            "user.name",
            format!(
                "{:?} must match [a-z_][a-z0-9_-]{{0,31}} and not be root",
                u.name
            ),
        );
    }

    if let Some(w) = &raw.workdir {
        if let Err(e) = check_abs_path(w) {
            err("workdir", format!("{w:?} {e}"));
        }
    }
    if raw.entrypoint.is_empty() && raw.cmd.is_empty() {
        err(
            "entrypoint",
            "entrypoint or cmd must name the program to run".into(),
        );
    }
    for (key, list) in [("entrypoint", &raw.entrypoint), ("cmd", &raw.cmd)] {
        for (i, a) in list.iter().enumerate() {
            if a.contains('\0') {
                err(&format!("{key}.{i}"), "contains a NUL byte".into());
            }
        }
    }
    for (k, v) in &raw.env {
        let key_ok = k
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        if !key_ok {
            err(
                &format!("env.{k}"),
                "name must match [A-Za-z_][A-Za-z0-9_]*".into(),
            );
        }
        if v.contains('\0') {
            err(&format!("env.{k}"), "value contains a NUL byte".into());
        }
    }
    let mut exposed_ports = Vec::new();
    for (i, p) in raw.expose.iter().enumerate() {
        match p.parse() {
            Some(s) if !exposed_ports.contains(&s) => exposed_ports.push(s),
            Some(s) => err(&format!("expose.{i}"), format!("{s} is listed twice")),
            None => err(
                &format!("expose.{i}"),
                format!("{p:?} must be a port 1-65535, optionally /tcp, /udp or /sctp"),
            ),
        }
    }
    for (i, v) in raw.volumes.iter().enumerate() {
        if let Err(e) = check_abs_path(v) {
            err(&format!("volumes.{i}"), format!("{v:?} {e}"));
        } else if v == "/tmp" || v.starts_with("/etc") {
            err(
                &format!("volumes.{i}"),
                format!("{v:?} is managed by the base layer"),
            );
        }
    }
    for (k, v) in &raw.labels {
        if k.is_empty() || k.contains(['\0', ' ']) || v.contains('\0') {
            err(
                &format!("labels.{k}"),
                "keys must be non-empty without spaces; no NUL bytes".into(),
            );
        }
    }

    if let Some(h) = &raw.healthcheck {
        match h.command.first() {
            None => err("healthcheck.command", "name the program to run".into()),
            Some(program) => {
                if let Err(e) = check_abs_path(program) {
                    err("healthcheck.command", format!("{program:?} {e}"));
                }
            }
        }
        if h.command.iter().any(|a| a.contains('\0')) {
            err(
                "healthcheck.command",
                "an argument contains a NUL byte".into(),
            );
        }
        for (key, value, max) in [
            ("interval", h.interval, 3600),
            ("timeout", h.timeout, 3600),
            ("start-period", h.start_period, 3600),
            ("retries", h.retries, 100),
        ] {
            if let Some(v) = value.filter(|v| !(1..=max).contains(v)) {
                err(
                    &format!("healthcheck.{key}"),
                    format!("{v} must be from 1 to {max}"),
                );
            }
        }
    }
    if raw.layers.is_empty() {
        err("layers", "at least one layer is needed".into());
    }
    let mut dests: BTreeMap<String, String> = BTreeMap::new();
    let mut layers = Vec::new();
    for (li, layer) in raw.layers.iter().enumerate() {
        let lp = format!("layers.{li}");
        if layer.name.trim().is_empty() || layer.name.contains('\n') {
            err(
                &format!("{lp}.name"),
                "must be a non-empty single line".into(),
            );
        }
        if layer.files.is_empty() {
            err(
                &format!("{lp}.files"),
                "a layer needs at least one file".into(),
            );
        }
        let mut files = Vec::new();
        for (fi, f) in layer.files.iter().enumerate() {
            let fp = format!("{lp}.files.{fi}");
            let src = match check_rel_path(&f.src) {
                Ok(p) => p,
                Err(e) => {
                    err(&format!("{fp}.src"), format!("{:?} {e}", f.src));
                    PathBuf::new()
                }
            };
            if let Err(e) = check_abs_path(&f.dest) {
                err(&format!("{fp}.dest"), format!("{:?} {e}", f.dest));
            } else if BASE_FILES.contains(&f.dest.as_str()) || f.dest == "/tmp" || f.dest == "/etc"
            {
                err(
                    &format!("{fp}.dest"),
                    format!("{:?} is written by the base layer", f.dest),
                );
            } else if let Some(prev) = dests.insert(f.dest.clone(), fp.clone()) {
                err(
                    &format!("{fp}.dest"),
                    format!("{:?} is already the dest of {prev}", f.dest),
                );
            }
            let mode = match f.mode.as_deref().map(parse_mode) {
                None => None,
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    err(&format!("{fp}.mode"), e);
                    None
                }
            };
            files.push(ValidFile {
                src_text: f.src.clone(),
                src,
                dest: f.dest.clone(),
                mode,
            });
        }
        layers.push(ValidLayer {
            name: layer.name.clone(),
            files,
        });
    }

    reference.map(|reference| ValidSpec {
        reference,
        build: raw.build,
        architecture: raw.architecture,
        user: raw.user,
        workdir: raw.workdir,
        entrypoint: raw.entrypoint,
        cmd: raw.cmd,
        env: raw.env,
        exposed_ports,
        volumes: raw.volumes,
        labels: raw.labels,
        healthcheck: raw.healthcheck,
        layers,
    })
}

/// An octal permission string such as `"0755"` or `"644"`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "{s:?} must be an octal mode such as \"0755\" (quote it in YAML)"
        )),
    }
}

/// An absolute path in the image, already in normal form.
pub fn check_abs_path(p: &str) -> Result<(), &'static str> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err("must be an absolute path");
    };
    if rest.is_empty() {
        return Err("must not be /");
    }
    if p.contains('\0') {
        return Err("contains a NUL byte");
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must be normalized: no '.', '..', '//' or trailing '/'");
    }
    Ok(())
}

/// A path relative to the spec directory that stays inside it.
fn check_rel_path(p: &str) -> Result<PathBuf, &'static str> {
    let path = Path::new(p);
    if p.is_empty() {
        return Err("must not be empty");
    }
    if path.is_absolute() {
        return Err("must be relative to the spec directory");
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err("must stay inside the spec directory (no '..')");
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
name: imgforge/classifier:0.1.0
user: { name: classifier, uid: 10001, gid: 10001 }
entrypoint: [/app/classifier]
expose: [8000, 53/udp]
volumes: [/app/data]
layers:
  - name: app
    files:
      - { src: dist/classifier, dest: /app/classifier, mode: \"0755\" }
";

    #[test]
    fn good_spec_parses() {
        let s = parse(GOOD, Path::new("image.yaml")).expect("valid spec");
        assert_eq!(s.reference.familiar(), "imgforge/classifier:0.1.0");
        assert_eq!(s.exposed_ports, ["8000/tcp", "53/udp"]);
        assert_eq!(s.layers[0].files[0].mode, Some(0o755));
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let text = GOOD.replace("mode: \"0755\"", "mdoe: \"0755\"");
        let err = format!("{:#}", parse(&text, Path::new("image.yaml")).unwrap_err());
        assert!(err.contains("unknown field `mdoe`"), "{err}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let text = GOOD
            .replace("uid: 10001", "uid: 0")
            .replace("dest: /app/classifier", "dest: /app/../etc/x")
            .replace("8000,", "70000,");
        let err = format!("{:#}", parse(&text, Path::new("image.yaml")).unwrap_err());
        assert!(err.contains("error[user]: uid and gid"), "{err}");
        assert!(err.contains("error[layers.0.files.0.dest]"), "{err}");
        assert!(err.contains("--> image.yaml:"), "{err}");
        assert!(err.contains("error[expose.0]"), "{err}");
    }

    #[test]
    fn references() {
        let r = ImageRef::parse("classifier").unwrap();
        assert_eq!(r.familiar(), "classifier:latest");
        assert_eq!(r.normalized(), "docker.io/library/classifier:latest");
        let r = ImageRef::parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(r.familiar(), "localhost:5000/a/b:v1");
        assert_eq!(r.normalized(), "localhost:5000/a/b:v1");
        let r = ImageRef::parse("docker.io/library/x:1").unwrap();
        assert_eq!(r.familiar(), "x:1");
        for bad in ["Upper/case:1", "a//b", "a:b@sha256:00", "a:-x", "a-:1", ""] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn paths() {
        assert!(check_abs_path("/app/x").is_ok());
        for bad in ["app", "/", "/a/../b", "/a//b", "/a/", "/./a"] {
            assert!(check_abs_path(bad).is_err(), "{bad} accepted");
        }
        assert!(check_rel_path("../x").is_err());
        assert!(check_rel_path("/x").is_err());
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert!(parse_mode("0855").is_err());
        assert!(parse_mode("17777").is_err());
    }
}
