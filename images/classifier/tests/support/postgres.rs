//! A real PostgreSQL server for the tests: Debian's `postgresql` binaries (`initdb`,
//! `postgres`), one cluster per test process in a temporary directory, listening on
//! 127.0.0.1 with TLS (a certificate from a test CA made here with `openssl`) and on a
//! Unix socket for the tests' own `psql`. The role the service uses may connect only over
//! TLS, with a password. The server stops, and its directory goes, when the test process
//! ends (a shell beside it waits for the end of its stdin).
//!
//! Shared by the classifier's unit tests (`#[path]`) and its API tests (`mod support`);
//! imgforge's cluster boot test takes its helpers (`run`, `bindir`, …).

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The role the service connects as (not a superuser; it owns the test databases).
pub const ROLE: &str = "classifier";

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The test CA's certificate: what `DATABASE_CA_FILE` points at.
    pub ca_file: PathBuf,
    /// The role's password, one line: what `DATABASE_PASSWORD_FILE` points at.
    pub password_file: PathBuf,
    /// The shell that stops the server when its stdin closes; held for the process's life.
    _keeper: Mutex<Child>,
}

/// One fresh database of the cluster, owned by [`ROLE`].
pub struct Database {
    pub name: String,
    /// `postgres://classifier@localhost:PORT/NAME?sslmode=require`, no password.
    pub url: String,
    pub password_file: PathBuf,
    pub ca_file: PathBuf,
}

impl Database {
    /// The service's environment for this database.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.url.clone()),
            (
                "DATABASE_PASSWORD_FILE",
                self.password_file.display().to_string(),
            ),
            ("DATABASE_CA_FILE", self.ca_file.display().to_string()),
        ]
    }
}

pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    // /proc/self is owned by the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A command run as the cluster's owner: `postgres` when the tests run as root
/// (PostgreSQL refuses to run as root), else the current user.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// The newest installed server's binaries (`PG_BINDIR` if set).
pub fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             apt-get install postgresql, or set PG_BINDIR"
        )
    })
}

/// Runs `sql` as the superuser `admin` in database `db` of the server whose binaries are
/// in `bin` and whose socket is in `socket_dir`; returns psql's unaligned, tuples-only output.
pub fn psql(bin: &Path, socket_dir: &Path, port: u16, db: &str, sql: &str) -> String {
    run(
        Command::new(bin.join("psql"))
            .arg("-h")
            .arg(socket_dir)
            .args(["-p", &port.to_string(), "-U", "admin", "-d", db])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        "psql",
    )
    .trim()
    .to_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
        &mut buf,
    )
    .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The test CA and the server's certificate for `localhost` and 127.0.0.1.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        run(
            Command::new("openssl").args(args).current_dir(dir),
            "making the test certificates",
        )
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "3"],
            &["-subj", "/CN=classifier test CA"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "3",
        "-extfile",
        "server.ext",
    ]);
}

impl Cluster {
    fn start() -> Cluster {
        let bin = bindir();
        let dir = tempfile::Builder::new()
            .prefix("classifier-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        make_certificates(&dir);
        let password = random_hex(16);
        let password_file = dir.join("classifier.password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if is_root() {
            run(
                Command::new("chown").args(["-R", "postgres:"]).arg(&dir),
                "giving the cluster's directory to postgres",
            );
        }
        let data = dir.join("data");
        run(
            as_owner(&bin.join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-U", "admin", "--auth-local=trust", "--auth-host=reject"])
                .args(["-E", "UTF8", "--no-locale", "--no-sync"]),
            "initdb",
        );
        // The service's role over TLS with a password only; the tests' admin by socket.
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all admin trust\n\
                 hostssl all {ROLE} 127.0.0.0/8 scram-sha-256\n\
                 hostssl all {ROLE} ::1/128 scram-sha-256\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut keeper = as_owner(Path::new("/bin/sh"))
            .arg("-c")
            .arg(r#"dir=$1; shift; "$@" & pid=$!; read -r _; kill -INT "$pid"; wait "$pid"; rm -rf "$dir""#)
            .arg("pg-keeper")
            .arg(&dir)
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1,127.0.0.2", "-c", "ssl=on"])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", dir.join("server.crt").display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", dir.join("server.key").display()))
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting PostgreSQL");
        let cluster = Cluster {
            ca_file: dir.join("ca.crt"),
            password_file,
            dir,
            bin,
            port,
            _keeper: Mutex::new({
                // Leave the pipe open for the process's life: closing it stops the server.
                let _ = keeper.stdin.as_mut().map(|s| s.flush());
                keeper
            }),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(cluster.bin.join("pg_isready"))
                .arg("-h")
                .arg(&cluster.dir)
                .args(["-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start in 60 s: {}",
                std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.psql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'"),
        );
        cluster
    }

    /// Runs `sql` as the cluster's superuser in database `db`; returns psql's unaligned,
    /// tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql(&self.bin, &self.dir, self.port, db, sql)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database owned by [`ROLE`].
    pub fn database(&self) -> Database {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "history_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"));
        Database {
            url: format!(
                "postgres://{ROLE}@localhost:{}/{name}?sslmode=require",
                self.port
            ),
            name,
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}
