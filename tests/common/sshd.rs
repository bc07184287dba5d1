//! OpenSSH's sshd on a free loopback port with a throwaway config, and the keys for it.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A port nothing listens on (it was free a moment ago).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub host_pub: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn keygen(path: &Path) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "imgforge-test", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Starts sshd on a free loopback port with `extra` config lines; the client key
/// in `dir/id_ed25519` is authorized.
pub fn sshd(dir: &Path, name: &str, extra: &str) -> Sshd {
    let host_key = dir.join(format!("{name}_host_ed25519"));
    let host_pub = keygen(&host_key);
    let port = closed_port();
    // sshd insists on its privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let config = dir.join(format!("{name}_sshd_config"));
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
             AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nLogLevel ERROR\n{extra}\n",
            host_key.display(),
            dir.join(format!("{name}.pid")).display(),
            dir.join("authorized_keys").display(),
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("starting /usr/sbin/sshd (apt install openssh-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start on {port}");
        thread::sleep(Duration::from_millis(50));
    }
    Sshd {
        child,
        port,
        host_pub,
    }
}
