//! PostgreSQL on the host for the cluster's shared history: Debian's `postgresql`
//! binaries, a cluster of its own in a directory under /tmp, listening on
//! 127.0.0.1 (a guest reaches it as 10.0.2.2 through QEMU's user network), one role with
//! a password and one database. Plain TCP: it plays the provider's managed database on a
//! private network. Stopped (SIGINT, a fast shutdown) when dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The classifier's own test helpers for PostgreSQL (Debian's binaries, psql's runs).
#[path = "../../images/classifier/tests/support/postgres.rs"]
mod support;
use support::{bindir, free_port, random_hex, run};

pub const ROLE: &str = "classifier";
pub const DATABASE: &str = "history";

pub struct HostPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    server: Child,
}

/// `program` as the `postgres` user (PostgreSQL refuses root), exec'd in place so that
/// the child is the server itself.
fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
    ]);
    cmd.arg(program);
    cmd
}

impl HostPostgres {
    pub fn start(scratch: &Path) -> HostPostgres {
        let bin = bindir();
        // Its own directory under /tmp: the server's user must reach it.
        let dir = std::env::temp_dir().join(format!("imgforge-cluster-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("chown").arg("postgres:").arg(&dir), "chown");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let data = dir.join("data");
        run(
            as_postgres(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "admin", "--auth-local=trust", "--auth-host=reject"])
                .args(["-E", "UTF8", "--no-locale", "--no-sync"]),
            "initdb",
        );
        // The guests' connections arrive from 127.0.0.1 (QEMU's user network).
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all admin trust\nhost {DATABASE} {ROLE} 127.0.0.1/32 scram-sha-256\n"),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(scratch.join("postgres.log")).unwrap();
        let server = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting PostgreSQL");
        let password = random_hex(16);
        let pg = HostPostgres {
            dir,
            bin,
            port,
            password,
            server,
        };
        let started = Instant::now();
        while !Command::new(pg.bin.join("pg_isready"))
            .arg("-h")
            .arg(&pg.dir)
            .args(["-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(scratch.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{}'", pg.password),
        );
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"),
        );
        pg
    }

    /// The URL a guest's app connects with, written to `path` (0600) for
    /// `--database-url-file`.
    pub fn url_file(&self, path: &Path) -> PathBuf {
        let url = format!(
            "postgres://{ROLE}:{}@10.0.2.2:{}/{DATABASE}?sslmode=disable\n",
            self.password, self.port
        );
        std::fs::write(path, url).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_path_buf()
    }

    /// `sql` as the superuser in `db`: psql's unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        support::psql(&self.bin, &self.dir, self.port, db, sql)
    }
}

impl Drop for HostPostgres {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.server.id().to_string()])
            .status();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
