//! Newtypes for every value that lands on the VM. A value that has its type has
//! been validated: it is safe to place in YAML, nginx, systemd and argv.
//! Each `parse` returns a [`Problem`]: what is wrong and what to do.

use std::fmt;

use serde::Serialize;

/// What is wrong with a value and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub help: String,
}

impl Problem {
    pub fn new(message: impl Into<String>, help: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            help: help.into(),
        }
    }
}

pub type Parsed<T> = Result<T, Problem>;

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn reject_option_like(s: &str, what: &str) -> Parsed<()> {
    if s.starts_with('-') {
        return Err(Problem::new(
            format!("{what} must not start with '-'"),
            "a leading '-' would be read as a command-line option; remove it",
        ));
    }
    Ok(())
}

string_newtype!(
    /// A fully qualified DNS name: lower-case LDH labels of 1–63 characters, at least
    /// two labels, at most 253 characters, a top-level label that is not all digits.
    Domain
);

impl Domain {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "use a fully qualified name like api.example.com (letters, digits, '-' and '.')";
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err(Problem::new("the domain is empty", help));
        }
        if lower.len() > 253 {
            return Err(Problem::new(
                format!(
                    "the domain is {} characters long; the limit is 253",
                    lower.len()
                ),
                help,
            ));
        }
        let labels: Vec<&str> = lower.split('.').collect();
        if labels.len() < 2 {
            return Err(Problem::new("the domain needs at least two labels", help));
        }
        for label in &labels {
            if label.is_empty() {
                return Err(Problem::new("the domain has an empty label", help));
            }
            if label.len() > 63 {
                return Err(Problem::new(
                    format!(
                        "the label {label:?} is {} characters long; the limit is 63",
                        label.len()
                    ),
                    help,
                ));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(Problem::new(
                    format!("the character {c:?} is not allowed in a domain name"),
                    format!("{help}; write internationalized names in their xn-- form"),
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(Problem::new(
                    format!("the label {label:?} starts or ends with '-'"),
                    help,
                ));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(Problem::new(
                "the domain looks like an IP address; certificates need a DNS name",
                "point a DNS name at the VM and use it, or render with --no-tls",
            ));
        }
        Ok(Domain(lower))
    }
}

string_newtype!(
    /// A host name: one lower-case DNS label of 1–63 letters, digits and '-'.
    Hostname
);

impl Hostname {
    pub fn parse(s: &str) -> Parsed<Self> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Hostname(s.to_owned()))
        } else {
            Err(Problem::new(
                "not a host name",
                "use 1 to 63 lower-case letters, digits and '-', e.g. api",
            ))
        }
    }
}

string_newtype!(
    /// An e-mail address for the ACME account, restricted to the characters
    /// every mail system and every config format treat literally.
    Email
);

impl Email {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "use an address like ops@example.com";
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(Problem::new("the address has no '@'", help));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(Problem::new(
                "the part before '@' must be 1 to 64 characters",
                help,
            ));
        }
        if let Some(c) = local
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
        {
            return Err(Problem::new(
                format!("the character {c:?} is not allowed before '@'"),
                "use letters, digits, '.', '_', '+' and '-'",
            ));
        }
        if local.starts_with(['.', '-']) || local.ends_with('.') || local.contains("..") {
            return Err(Problem::new(
                "the part before '@' has a misplaced '.' or '-'",
                help,
            ));
        }
        let domain = Domain::parse(domain).map_err(|p| {
            Problem::new(
                format!("the part after '@' is not a domain: {}", p.message),
                help,
            )
        })?;
        Ok(Email(format!("{local}@{domain}")))
    }
}

string_newtype!(
    /// A Linux user name that useradd accepts everywhere: `[a-z_][a-z0-9_-]{0,31}`,
    /// and not one of the system's own accounts.
    Username
);

const RESERVED_USERS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "systemd-network",
    "systemd-resolve",
    "messagebus",
    "sshd",
    "syslog",
    "docker",
    "admin",
    "sudo",
    "adm",
    "_apt",
    "ubuntu",
    "debian",
    // Ubuntu's and Debian's other system users and groups: a new user of that name
    // collides with the group, or is a nologin account.
    "audio",
    "cdrom",
    "crontab",
    "dialout",
    "dip",
    "disk",
    "dnsmasq",
    "floppy",
    "fwupd-refresh",
    "input",
    "kmem",
    "kvm",
    "landscape",
    "lxd",
    "netdev",
    "nogroup",
    "operator",
    "plugdev",
    "pollinate",
    "polkitd",
    "render",
    "sasl",
    "sgx",
    "shadow",
    "src",
    "ssh",
    "staff",
    "systemd-coredump",
    "systemd-journal",
    "systemd-oom",
    "systemd-timesync",
    "tape",
    "tcpdump",
    "tss",
    "tty",
    "users",
    "usbmux",
    "utmp",
    "uuidd",
    "video",
    "voice",
    "wheel",
];

impl Username {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "use 1 to 32 characters: lower-case letters, digits, '_' and '-', starting with a letter or '_'";
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(Problem::new("the user name is empty", help)),
            Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
                return Err(Problem::new(
                    format!("the user name starts with {c:?}"),
                    help,
                ))
            }
            _ => {}
        }
        if s.len() > 32 {
            return Err(Problem::new(
                "the user name is longer than 32 characters",
                help,
            ));
        }
        if let Some(c) = chars
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
        {
            return Err(Problem::new(
                format!("the character {c:?} is not allowed in a user name"),
                help,
            ));
        }
        if RESERVED_USERS.contains(&s) {
            return Err(Problem::new(
                format!("{s:?} is a system account or the image's default user"),
                "choose another name, such as deploy",
            ));
        }
        Ok(Username(s.to_owned()))
    }
}

/// An OpenSSH public key, parsed and re-encoded: algorithm, base64 key data and a
/// comment made of printable ASCII. Private keys are refused without being echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPublicKey(ssh_key::PublicKey);

impl SshPublicKey {
    pub fn parse(s: &str) -> Parsed<Self> {
        if looks_private(s) {
            return Err(Problem::new(
                "this is a PRIVATE key; it was not read further and is not shown",
                "pass the public half (the .pub file), e.g. ~/.ssh/id_ed25519.pub",
            ));
        }
        let line = s.trim();
        if line.lines().count() > 1 {
            return Err(Problem::new(
                "expected one key on one line",
                "give each key separately (repeat --ssh-key)",
            ));
        }
        let mut key = ssh_key::PublicKey::from_openssh(line).map_err(|e| {
            Problem::new(
                format!("not an OpenSSH public key ({e})"),
                "pass a line like 'ssh-ed25519 AAAA... you@host', e.g. ~/.ssh/id_ed25519.pub",
            )
        })?;
        // The comment lands in authorized_keys; keep only what cannot change its meaning.
        let comment: String = key
            .comment()
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .collect();
        key.set_comment(comment.trim());
        Ok(SshPublicKey(key))
    }

    pub fn to_openssh(&self) -> String {
        // Encoding a key that parsed cannot fail; fall back to the algorithm alone.
        self.0
            .to_openssh()
            .unwrap_or_else(|_| self.0.algorithm().to_string())
    }

    pub fn key(&self) -> &ssh_key::PublicKey {
        &self.0
    }
}

/// True for text that holds private key material in any common armour.
pub fn looks_private(s: &str) -> bool {
    s.contains("PRIVATE KEY") || s.contains("PuTTY-User-Key-File")
}

impl Serialize for SshPublicKey {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&self.to_openssh())
    }
}

/// A container image reference: `[registry/]path[:tag][@sha256:digest]`, the grammar of
/// the distribution reference (lower-case repository). One type for what users give
/// (`--image`) and what `imgforge pack` writes and reads back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    text: String,
    domain: Option<String>,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&self.text)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl ImageRef {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help =
            "use a reference like ghcr.io/acme/classifier:1.0 or registry/name@sha256:<64 hex>";
        reject_option_like(s, "the image reference")?;
        if s.is_empty() || s.len() > 255 {
            return Err(Problem::new(
                "the image reference must be 1 to 255 characters",
                help,
            ));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(Problem::new(
                    format!("the digest {d:?} is not sha256:<64 lower-case hex>"),
                    help,
                ));
            }
        }
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            let b = tag.as_bytes();
            let ok = !b.is_empty()
                && b.len() <= 128
                && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
            if !ok {
                return Err(Problem::new(
                    format!("the tag {tag:?} is not valid"),
                    "tags are 1-128 of letters, digits, '_', '.', '-', not starting with '.' or '-'",
                ));
            }
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let first = parts[0];
        let domain = if parts.len() > 1
            && (first.contains('.') || first.contains(':') || first == "localhost")
        {
            if !valid_registry(first) {
                return Err(Problem::new(
                    format!("the registry {first:?} is not a host[:port]"),
                    help,
                ));
            }
            parts.remove(0);
            Some(first.to_owned())
        } else {
            None
        };
        if let Some(bad) = parts.iter().find(|p| !valid_path_component(p)) {
            return Err(Problem::new(
                format!("the path component {bad:?} is not valid"),
                "repository names are lower-case letters and digits, separated by '.', '_', '__' or '-'",
            ));
        }
        Ok(ImageRef {
            text: s.to_owned(),
            domain,
            path: parts.join("/"),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// The reference as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The tag, `latest` when none is given.
    pub fn tag(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The short form Docker prints and `RepoTags` holds (`imgforge/classifier:0.1.0`).
    pub fn familiar(&self) -> String {
        match self.domain.as_deref() {
            None | Some("docker.io") => {
                let path = self.path.strip_prefix("library/").unwrap_or(&self.path);
                format!("{path}:{}", self.tag())
            }
            Some(d) => format!("{d}/{}:{}", self.path, self.tag()),
        }
    }

    /// The fully qualified form containerd stores (`docker.io/imgforge/classifier:0.1.0`).
    pub fn normalized(&self) -> String {
        let domain = self.domain.as_deref().unwrap_or("docker.io");
        if domain == "docker.io" && !self.path.contains('/') {
            format!("docker.io/library/{}:{}", self.path, self.tag())
        } else {
            format!("{domain}/{}:{}", self.path, self.tag())
        }
    }
}

fn valid_registry(d: &str) -> bool {
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
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = p.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        if !(matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// A TCP port, 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    pub const fn new(n: u16) -> Option<Self> {
        if n == 0 {
            None
        } else {
            Some(Port(n))
        }
    }

    pub fn parse(s: &str) -> Parsed<Self> {
        s.trim()
            .parse::<u16>()
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| Problem::new("not a port number", "use a whole number from 1 to 65535"))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

string_newtype!(
    /// An absolute, normalized Unix path made of characters that are literal in
    /// nginx, systemd unit files, Docker's `-v` syntax and YAML: `[A-Za-z0-9._/@+-]`.
    UnixPath
);

impl UnixPath {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "use an absolute path like /srv/app/data (letters, digits, '.', '_', '-', '@', '+', '/')";
        if !s.starts_with('/') {
            return Err(Problem::new("the path is not absolute", help));
        }
        if s.len() > 1024 {
            return Err(Problem::new(
                "the path is longer than 1024 characters",
                help,
            ));
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '@' | '+' | '-'))
        }) {
            return Err(Problem::new(
                format!("the character {c:?} is not allowed in a path"),
                help,
            ));
        }
        if s == "/" {
            return Err(Problem::new("the path is the root directory", help));
        }
        let comps: Vec<&str> = s[1..].split('/').collect();
        if comps
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
        {
            return Err(Problem::new(
                "the path has an empty, '.' or '..' component",
                "write the path in its plain form, e.g. /srv/app/data",
            ));
        }
        if comps.iter().any(|c| c.starts_with('-')) {
            return Err(Problem::new("a path component starts with '-'", help));
        }
        Ok(UnixPath(s.to_owned()))
    }

    /// The app's data directory on the VM: the container gets it read-write and it is
    /// handed to the image's user, so it must not be, hold or sit inside what the system
    /// runs on (or a user's home).
    pub fn parse_data_dir(s: &str) -> Parsed<Self> {
        let path = Self::parse(s)?;
        let help = "use a directory of its own, such as /srv/app/data";
        if let Some(system) = overlaps(s, SYSTEM_DIRS) {
            return Err(Problem::new(
                format!(
                    "{s} overlaps {system}, which the system needs: the container would own it"
                ),
                help,
            ));
        }
        if s == "/home" || (s.starts_with("/home/") && s[6..].split('/').count() == 1) {
            return Err(Problem::new(
                format!("{s} is a user's home directory (or all of them)"),
                help,
            ));
        }
        Ok(path)
    }

    /// Where the data directory appears in the container: not over the kernel's own
    /// filesystems.
    pub fn parse_data_path(s: &str) -> Parsed<Self> {
        let path = Self::parse(s)?;
        if let Some(system) = overlaps(s, &["/proc", "/sys", "/dev"]) {
            return Err(Problem::new(
                format!("{s} overlaps {system}, which the container's kernel filesystems hold"),
                "use a directory of the app's, such as /app/data",
            ));
        }
        Ok(path)
    }
}

/// What the VM's system lives on: a data directory may be none of these, inside none,
/// and hold none.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/snap",
    "/sys",
    "/tmp",
    "/usr",
    "/var/backups",
    "/var/cache",
    "/var/lib/apt",
    "/var/lib/cloud",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/dpkg",
    "/var/lib/imgforge",
    "/var/lib/systemd",
    "/var/log",
    "/var/tmp",
];

/// The first of `dirs` that `path` is, is inside of, or holds.
fn overlaps<'a>(path: &str, dirs: &[&'a str]) -> Option<&'a str> {
    let within = |inner: &str, outer: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|r| r.starts_with('/'))
    };
    dirs.iter()
        .copied()
        .find(|d| within(path, d) || within(d, path))
}

string_newtype!(
    /// A URL path for the health check: starts with '/', no spaces, quotes or
    /// characters that nginx or a shell would read specially.
    UrlPath
);

impl UrlPath {
    pub fn parse(s: &str) -> Parsed<Self> {
        let ok = s.starts_with('/')
            && s.len() <= 256
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~'));
        if ok {
            Ok(UrlPath(s.to_owned()))
        } else {
            Err(Problem::new(
                "not a plain URL path",
                "use a path like /health (letters, digits, '/', '.', '_', '-', '~')",
            ))
        }
    }
}

string_newtype!(
    /// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
    EnvName
);

impl EnvName {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "use letters, digits and '_', not starting with a digit, e.g. MODEL_DIR";
        let ok = s.len() <= 256
            && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(EnvName(s.to_owned()))
        } else {
            Err(Problem::new("not a valid environment variable name", help))
        }
    }
}

string_newtype!(
    /// An environment variable value. Any text but NUL, newline and carriage return
    /// (Docker's env-file holds one variable a line); quotes, `$`, `%` and spaces
    /// arrive byte-exact in the container.
    EnvValue
);

impl EnvValue {
    pub fn parse(s: &str) -> Parsed<Self> {
        if let Some(c) = s.chars().find(|c| matches!(c, '\0' | '\n' | '\r')) {
            return Err(Problem::new(
                format!("the value contains {c:?}, which an environment file cannot carry"),
                "put multi-line content in a file under the data directory and pass its path",
            ));
        }
        if s.len() > 32 * 1024 {
            return Err(Problem::new(
                "the value is longer than 32 KiB",
                "pass large content as a file",
            ));
        }
        Ok(EnvValue(s.to_owned()))
    }
}

string_newtype!(
    /// An https URL (an ACME directory or a bundle location): scheme https, a host,
    /// an optional port and a path of URL-safe characters.
    HttpsUrl
);

impl HttpsUrl {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "use a URL like https://acme-staging-v02.api.letsencrypt.org/directory";
        let Some(rest) = s.strip_prefix("https://") else {
            return Err(Problem::new("the URL does not start with https://", help));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(Problem::new(
                "the URL carries a user name or password, which would end up in the VM's configuration",
                "use a URL without credentials",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let host_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !host_ok {
            return Err(Problem::new(
                format!("the host {host:?} is not a DNS name or IPv4 address"),
                help,
            ));
        }
        if port.is_some_and(|p| Port::parse(p).is_err()) {
            return Err(Problem::new(
                "the port is not a number from 1 to 65535",
                help,
            ));
        }
        if let Some(c) = path
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "/._-~%=&?+".contains(*c)))
        {
            return Err(Problem::new(
                format!("the character {c:?} is not allowed in the URL"),
                "percent-encode it",
            ));
        }
        Ok(HttpsUrl(s.to_owned()))
    }
}

string_newtype!(
    /// A sha256 digest as 64 lower-case hex digits.
    Sha256Hex
);

impl Sha256Hex {
    pub fn parse(s: &str) -> Parsed<Self> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase();
        if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Sha256Hex(hex))
        } else {
            Err(Problem::new(
                "not a sha256 digest",
                "give 64 hex digits, as `sha256sum FILE` prints",
            ))
        }
    }
}

string_newtype!(
    /// An nginx size for client_max_body_size: digits with an optional k/m/g.
    BodySize
);

impl BodySize {
    pub fn parse(s: &str) -> Parsed<Self> {
        let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
        let ok = !digits.is_empty()
            && digits.len() <= 6
            && digits.chars().all(|c| c.is_ascii_digit())
            && s.len() - digits.len() <= 1;
        if ok {
            Ok(BodySize(s.to_ascii_lowercase()))
        } else {
            Err(Problem::new(
                "not a size",
                "use a number with an optional k, m or g, e.g. 20m",
            ))
        }
    }
}

string_newtype!(
    /// A container memory limit as Docker takes it: a number with k, m or g, at least 6m.
    MemorySize
);

impl MemorySize {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "use a number with k, m or g, e.g. 512m or 1g (Docker's minimum is 6m)";
        let lower = s.to_ascii_lowercase();
        let (digits, shift) = match lower.chars().last() {
            Some('k') => (&lower[..lower.len() - 1], 10),
            Some('m') => (&lower[..lower.len() - 1], 20),
            Some('g') => (&lower[..lower.len() - 1], 30),
            _ => return Err(Problem::new("not a size with a unit", help)),
        };
        let n: u64 = match digits.parse() {
            Ok(n) if digits.len() <= 6 && digits.chars().all(|c| c.is_ascii_digit()) => n,
            _ => return Err(Problem::new("not a size", help)),
        };
        if n << shift < 6 << 20 {
            return Err(Problem::new("below Docker's minimum of 6m", help));
        }
        Ok(MemorySize(lower))
    }
}

string_newtype!(
    /// A provider API's base URL: https, or plain http to a loopback address (a test
    /// stand-in on the VM itself).
    ApiUrl
);

impl ApiUrl {
    pub fn parse(s: &str) -> Parsed<Self> {
        let s = s.trim_end_matches('/');
        if let Some(rest) = s.strip_prefix("http://") {
            let host = rest.split(['/', ':']).next().unwrap_or("");
            if host != "127.0.0.1" && host != "localhost" {
                return Err(Problem::new(
                    "plain http is only for a stand-in on the VM itself",
                    "use https://, or http://127.0.0.1:PORT",
                ));
            }
            let check = HttpsUrl::parse(&format!("https://{rest}"))?;
            return Ok(ApiUrl(format!(
                "http://{}",
                &check.as_str()["https://".len()..]
            )));
        }
        HttpsUrl::parse(s).map(|u| ApiUrl(u.as_str().to_owned()))
    }
}

string_newtype!(
    /// A webhook (ntfy, Slack, Discord…): https, or plain http to a loopback or private
    /// IPv4 address (a receiver on the provider's private network). It may carry a
    /// secret (Slack's and Discord's do): it is never shown and lands on the VM in a
    /// root-only file.
    NotifyUrl
);

impl NotifyUrl {
    pub fn parse(s: &str) -> Parsed<Self> {
        if let Some(rest) = s.strip_prefix("http://") {
            let host = rest.split(['/', ':']).next().unwrap_or("");
            let private = host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_private());
            if !private {
                return Err(Problem::new(
                    "plain http is only for a receiver on a loopback or private address",
                    "use https://, or http://10.x.y.z/… on a private network",
                ));
            }
            HttpsUrl::parse(&format!("https://{rest}"))?;
            return Ok(NotifyUrl(s.to_owned()));
        }
        HttpsUrl::parse(s)
            .map(|u| NotifyUrl(u.as_str().to_owned()))
            .map_err(|p| {
                Problem::new(
                    p.message,
                    "use the webhook URL your service gives, e.g. https://ntfy.sh/TOPIC",
                )
            })
    }
}

/// A DNS provider's API token: printable ASCII without spaces, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct DnsToken(String);

impl fmt::Debug for DnsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DnsToken(<hidden>)")
    }
}

impl DnsToken {
    pub fn parse(s: &str) -> Parsed<Self> {
        let t = s.trim();
        let help = "put the token alone in the file, as the provider shows it";
        if t.is_empty() {
            return Err(Problem::new("the token file is empty", help));
        }
        if t.len() > 256 || !t.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Problem::new(
                "the token file holds something other than one token (it is not shown)",
                help,
            ));
        }
        Ok(DnsToken(t.to_owned()))
    }

    /// The token itself, for the file written onto the VM (0600).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// PEM text holding one or more X.509 certificates and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PemBundle(String);

impl PemBundle {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "pass a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)";
        if looks_private(s) {
            return Err(Problem::new(
                "the file holds a PRIVATE key; it is not shown",
                help,
            ));
        }
        let mut certs = 0;
        let mut inside = false;
        for line in s.lines().map(str::trim_end) {
            match line {
                "-----BEGIN CERTIFICATE-----" if !inside => inside = true,
                "-----END CERTIFICATE-----" if inside => {
                    inside = false;
                    certs += 1;
                }
                "" if !inside => {}
                l if inside
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)) => {}
                _ => {
                    return Err(Problem::new(
                        "the file has text outside certificate blocks",
                        help,
                    ))
                }
            }
        }
        if certs == 0 || inside {
            return Err(Problem::new("no complete certificate found", help));
        }
        let mut text = s.replace("\r\n", "\n");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(PemBundle(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(
            Domain::parse("API.Example.com.").unwrap().as_str(),
            "api.example.com"
        );
        for bad in [
            "",
            "localhost",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            "a.com;",
            "1.2.3.4",
            "é.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn emails() {
        assert!(Email::parse("ops+vm@example.com").is_ok());
        for bad in [
            "ops",
            "@example.com",
            "o p@example.com",
            "ops@x",
            "a\"b@example.com",
            "-x@example.com",
            "a;b@example.com",
            "a..b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn usernames() {
        assert!(Username::parse("deploy").is_ok());
        for bad in [
            "",
            "root",
            "Deploy",
            "9x",
            "-x",
            "a b",
            "a$",
            &"a".repeat(33),
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn image_refs() {
        for good in [
            "classifier",
            "ghcr.io/acme/classifier:1.0",
            "localhost:5000/a/b",
            "imgforge/classifier:0.1.0",
            &format!("a/b@sha256:{}", "0".repeat(64)),
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good:?} should be accepted");
        }
        for bad in [
            "",
            "-x",
            "UPPER/case",
            "a b",
            "a:b:c",
            "a/b:",
            "a//b",
            "a/b@sha256:12",
            "a;b",
            "a/b:$(x)",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn paths() {
        assert!(UnixPath::parse("/srv/app/data").is_ok());
        for bad in [
            "srv", "/", "/a/../b", "/a//b", "/a b", "/a%b", "/a/-b", "/a\nb", "/a/",
        ] {
            assert!(UnixPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn env_values_keep_everything_but_line_breaks() {
        let v = r#"it's "quoted" $HOME %h `x` ; {y}"#;
        assert_eq!(EnvValue::parse(v).unwrap().as_str(), v);
        for bad in ["a\nb", "a\rb", "a\0b"] {
            assert!(EnvValue::parse(bad).is_err());
        }
    }

    #[test]
    fn private_keys_are_refused_without_echo() {
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        let p = SshPublicKey::parse(private).unwrap_err();
        assert!(p.message.contains("PRIVATE"));
        assert!(!p.message.contains("b3BlbnNz"));
    }
}

/// A secret read from a file (a passphrase, a private key): never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl Secret {
    /// The repository's passphrase: one line of printable text.
    pub fn passphrase(s: &str) -> Parsed<Self> {
        let p = s.strip_suffix('\n').unwrap_or(s);
        let help = "put the passphrase alone on one line in the file (e.g. `openssl rand -base64 32 > FILE`)";
        if p.chars().count() < 12 {
            return Err(Problem::new(
                "the passphrase is shorter than 12 characters (it is not shown)",
                help,
            ));
        }
        if p.len() > 1024 || p.chars().any(|c| c.is_control()) {
            return Err(Problem::new(
                "the passphrase file holds more than one line of text (it is not shown)",
                help,
            ));
        }
        Ok(Secret(p.to_owned()))
    }

    /// The private SSH key the VM logs in to the repository's host with: OpenSSH format,
    /// not protected by a passphrase (nobody is there to type it).
    pub fn ssh_private_key(s: &str) -> Parsed<Self> {
        let help = "pass an OpenSSH private key without a passphrase, e.g. from `imgforge keygen -o backup_key`, and add its .pub to the repository host's authorized_keys";
        let key = ssh_key::PrivateKey::from_openssh(s.trim())
            .map_err(|_| Problem::new("not an OpenSSH private key (it is not shown)", help))?;
        if key.is_encrypted() {
            return Err(Problem::new(
                "the key is protected by a passphrase, which the VM cannot type",
                help,
            ));
        }
        Ok(Secret(format!("{}\n", s.trim())))
    }

    /// A bearer token (RFC 6750's b64token characters), at least 16 of them: it lands in
    /// nginx's configuration, where every one of these characters means itself.
    pub fn bearer_token(s: &str) -> Parsed<Self> {
        let t = s.strip_suffix('\n').unwrap_or(s);
        let help = "put a random token alone in the file, e.g. `openssl rand -hex 32 > FILE`";
        let ok = (16..=256).contains(&t.len())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~+/=".contains(c));
        if !ok {
            return Err(Problem::new(
                "the token file does not hold one token of 16 to 256 letters, digits and -._~+/= (it is not shown)",
                help,
            ));
        }
        Ok(Secret(t.to_owned()))
    }

    /// The secret itself, for the file written onto the VM (0600).
    pub fn expose(&self) -> &str {
        &self.0
    }
}
