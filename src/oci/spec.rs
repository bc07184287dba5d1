//! The image spec (`image.yaml`): what goes into a packed image and how it runs.
//! Parsed strictly (unknown keys rejected) and validated as a whole, so one run
//! reports every problem in the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::Deserialize;

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
    /// Layers on top of the base layer, in order.
    pub layers: Vec<LayerSpec>,
}

fn default_architecture() -> String {
    "amd64".to_owned()
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

/// A reference `[domain/]path[:tag]`, following the distribution reference grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    domain: Option<String>,
    path: String,
    tag: String,
}

impl ImageRef {
    /// Parses a reference; the tag defaults to `latest`. Digests are refused:
    /// the digest is what packing produces.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > 255 {
            return Err("longer than 255 characters".into());
        }
        if s.contains('@') {
            return Err("must not carry a digest (@sha256:...); the digest is computed".into());
        }
        let (name, tag) = match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (s, "latest"),
        };
        if !valid_tag(tag) {
            return Err(format!(
                "tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
            ));
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let domain = if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            let d = parts.remove(0);
            if !valid_domain(d) {
                return Err(format!("registry {d:?} is not a valid host[:port]"));
            }
            Some(d.to_owned())
        } else {
            None
        };
        if let Some(bad) = parts.iter().find(|p| !valid_path_component(p)) {
            return Err(format!(
                "name component {bad:?} must be lowercase letters and digits, \
                 separated by '.', '_', '__' or '-'"
            ));
        }
        Ok(ImageRef {
            domain,
            path: parts.join("/"),
            tag: tag.to_owned(),
        })
    }

    /// The short form Docker prints and `RepoTags` holds (`imgforge/classifier:0.1.0`).
    pub fn familiar(&self) -> String {
        match self.domain.as_deref() {
            None | Some("docker.io") => {
                let path = self.path.strip_prefix("library/").unwrap_or(&self.path);
                format!("{path}:{}", self.tag)
            }
            Some(d) => format!("{d}/{}:{}", self.path, self.tag),
        }
    }

    /// The fully qualified form containerd stores (`docker.io/imgforge/classifier:0.1.0`).
    pub fn normalized(&self) -> String {
        let domain = self.domain.as_deref().unwrap_or("docker.io");
        if domain == "docker.io" && !self.path.contains('/') {
            format!("docker.io/library/{}:{}", self.path, self.tag)
        } else {
            format!("{domain}/{}:{}", self.path, self.tag)
        }
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.familiar())
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n != 0))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(p: &str) -> bool {
    let b = p.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
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

/// Reads and validates `<dir>/image.yaml`. Every error is the user's input (exit 2).
pub fn load(spec_file: &Path) -> Result<ValidSpec> {
    let text = std::fs::read_to_string(spec_file).map_err(|e| {
        crate::exit::usage(format!("reading image spec {}: {e}", spec_file.display()))
    })?;
    parse(&text).with_context(|| format!("image spec {}", spec_file.display()))
}

/// Parses and validates spec text.
pub fn parse(text: &str) -> Result<ValidSpec> {
    let raw: ImageSpec = serde_yaml_ng::from_str(text).map_err(crate::exit::usage)?;
    validate(raw).map_err(|problems| {
        let mut msg = format!("{} problem(s):", problems.len());
        for p in &problems {
            msg.push_str("\n  ");
            msg.push_str(p);
        }
        crate::exit::usage(msg)
    })
}

/// Paths the base layer writes itself; no layer may put a file there.
pub const BASE_FILES: &[&str] = &["/etc/passwd", "/etc/group"];

fn validate(raw: ImageSpec) -> Result<ValidSpec, Vec<String>> {
    let mut errs = Vec::new();
    let mut err = |path: &str, msg: String| errs.push(format!("{path}: {msg}"));

    let reference = match ImageRef::parse(&raw.name) {
        Ok(r) => Some(r),
        Err(e) => {
            err(
                "name",
                format!("{:?} is not an image reference: {e}", raw.name),
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
                err(&format!("{key}[{i}]"), "contains a NUL byte".into());
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
            Some(s) => err(&format!("expose[{i}]"), format!("{s} is listed twice")),
            None => err(
                &format!("expose[{i}]"),
                format!("{p:?} must be a port 1-65535, optionally /tcp, /udp or /sctp"),
            ),
        }
    }
    for (i, v) in raw.volumes.iter().enumerate() {
        if let Err(e) = check_abs_path(v) {
            err(&format!("volumes[{i}]"), format!("{v:?} {e}"));
        } else if v == "/tmp" || v.starts_with("/etc") {
            err(
                &format!("volumes[{i}]"),
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

    if raw.layers.is_empty() {
        err("layers", "at least one layer is needed".into());
    }
    let mut dests: BTreeMap<String, String> = BTreeMap::new();
    let mut layers = Vec::new();
    for (li, layer) in raw.layers.iter().enumerate() {
        let lp = format!("layers[{li}]");
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
            let fp = format!("{lp}.files[{fi}]");
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

    match reference {
        Some(reference) if errs.is_empty() => Ok(ValidSpec {
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
            layers,
        }),
        _ => Err(errs),
    }
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
        let s = parse(GOOD).expect("valid spec");
        assert_eq!(s.reference.familiar(), "imgforge/classifier:0.1.0");
        assert_eq!(s.exposed_ports, ["8000/tcp", "53/udp"]);
        assert_eq!(s.layers[0].files[0].mode, Some(0o755));
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let text = GOOD.replace("mode: \"0755\"", "mdoe: \"0755\"");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("unknown field `mdoe`"), "{err}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let text = GOOD
            .replace("uid: 10001", "uid: 0")
            .replace("dest: /app/classifier", "dest: /app/../etc/x")
            .replace("8000,", "70000,");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("user: uid and gid"), "{err}");
        assert!(err.contains("layers[0].files[0].dest"), "{err}");
        assert!(err.contains("expose[0]"), "{err}");
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
