//! ed25519 key pairs in OpenSSH format: the admin's key for users without one, and
//! pre-generated host keys so the first SSH connection can be pinned.

use std::path::Path;

use anyhow::{Context, Result};
use ssh_key::{LineEnding, PrivateKey};
use zeroize::Zeroizing;

use crate::fsutil::write_file_atomic;

/// A freshly generated ed25519 key pair.
pub struct KeyPair {
    private: PrivateKey,
}

impl KeyPair {
    pub fn generate(comment: &str) -> Result<Self> {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let keypair = ssh_key::private::Ed25519Keypair::from(&signing);
        let private = PrivateKey::new(ssh_key::private::KeypairData::Ed25519(keypair), comment)
            .context("building the OpenSSH private key")?;
        Ok(KeyPair { private })
    }

    /// The private key in OpenSSH armour.
    pub fn private_openssh(&self) -> Result<Zeroizing<String>> {
        self.private
            .to_openssh(LineEnding::LF)
            .context("encoding the private key")
    }

    /// `ssh-ed25519 AAAA… comment`
    pub fn public_openssh(&self) -> Result<String> {
        self.private
            .public_key()
            .to_openssh()
            .context("encoding the public key")
    }

    /// Writes `path` (0600) and `path.pub` (0644), each atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let private = self.private_openssh()?;
        write_file_atomic(path, private.as_bytes(), 0o600)?;
        let mut public = self.public_openssh()?;
        public.push('\n');
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        write_file_atomic(Path::new(&pub_path), public.as_bytes(), 0o644)
    }
}

/// The `known_hosts` line that pins `host` to a host key.
pub fn known_hosts_line(host: &str, public_openssh: &str) -> String {
    // Drop the comment: known_hosts lines are `host algorithm key`.
    let mut parts = public_openssh.split_whitespace();
    let algo = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default();
    format!("{host} {algo} {key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_openssh_parsing() {
        let kp = KeyPair::generate("test@imgforge").unwrap();
        let private = kp.private_openssh().unwrap();
        let parsed = PrivateKey::from_openssh(private.as_str()).unwrap();
        assert_eq!(
            parsed.public_key().to_openssh().unwrap(),
            kp.public_openssh().unwrap()
        );
        assert!(kp.public_openssh().unwrap().starts_with("ssh-ed25519 AAAA"));
    }

    #[test]
    fn two_keys_differ() {
        let a = KeyPair::generate("").unwrap().public_openssh().unwrap();
        let b = KeyPair::generate("").unwrap().public_openssh().unwrap();
        assert_ne!(a, b);
    }
}
