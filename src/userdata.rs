//! Packaging user-data for a provider: optional gzip and base64, checked against the
//! provider's user-data size limit.

use std::io::Write;

use anyhow::{Context, Result};
use base64::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    Generic,
    Aws,
    Azure,
    Gcp,
    Hetzner,
    Digitalocean,
    Linode,
    Openstack,
}

/// Which bytes a provider's limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The user-data as cloud-init receives it (after any decoding by the provider).
    Decoded,
    /// The base64 text submitted to the API.
    Encoded,
}

pub struct Limits {
    pub name: &'static str,
    pub max_bytes: Option<usize>,
    pub basis: Basis,
    /// The provider takes only base64 (Linode's metadata service).
    pub base64_required: bool,
    /// Binary user-data (gzip) reaches cloud-init intact, given base64 where needed.
    pub gzip_ok: bool,
}

impl Provider {
    pub fn limits(self) -> Limits {
        let l = |name, max_bytes, basis, base64_required, gzip_ok| Limits {
            name,
            max_bytes,
            basis,
            base64_required,
            gzip_ok,
        };
        match self {
            Provider::Generic => l("generic", None, Basis::Decoded, false, true),
            // 16 KB, counted before base64 encoding.
            Provider::Aws => l("AWS EC2", Some(16 * 1024), Basis::Decoded, false, true),
            // Custom data: 64 KiB of base64.
            Provider::Azure => l("Azure", Some(64 * 1024), Basis::Encoded, false, true),
            // Metadata values: 256 KiB.
            Provider::Gcp => l(
                "Google Cloud",
                Some(256 * 1024),
                Basis::Decoded,
                false,
                true,
            ),
            // A text field: no binary.
            Provider::Hetzner => l(
                "Hetzner Cloud",
                Some(32 * 1024),
                Basis::Decoded,
                false,
                false,
            ),
            Provider::Digitalocean => l(
                "DigitalOcean",
                Some(64 * 1024),
                Basis::Decoded,
                false,
                false,
            ),
            // 16 KiB decoded; the API takes base64 only.
            Provider::Linode => l(
                "Linode (Akamai)",
                Some(16 * 1024),
                Basis::Decoded,
                true,
                true,
            ),
            // Nova: 64 KiB of base64.
            Provider::Openstack => l("OpenStack", Some(64 * 1024), Basis::Encoded, false, true),
        }
    }
}

/// How to package the user-data.
#[derive(Debug, Clone, Copy)]
pub struct Encoding {
    pub gzip: bool,
    pub base64: bool,
}

/// The bytes to hand to the provider, with their sizes.
#[derive(Debug)]
pub struct Packaged {
    pub bytes: Vec<u8>,
    pub decoded_len: usize,
    pub binary: bool,
}

/// Packages `text` for `provider`, or says (exit code 2) why it cannot be.
pub fn package(text: &str, provider: Provider, enc: Encoding) -> Result<Packaged> {
    let limits = provider.limits();
    let base64 = enc.base64 || limits.base64_required;
    if enc.gzip && !limits.gzip_ok {
        return Err(crate::exit::usage(format!(
            "--gzip: {}'s user-data field takes text, so compressed user-data cannot reach cloud-init; render without --gzip",
            limits.name
        )));
    }
    let decoded = if enc.gzip {
        gzip(text.as_bytes())?
    } else {
        text.as_bytes().to_vec()
    };
    let decoded_len = decoded.len();
    let bytes = if base64 {
        let mut b = base64::engine::general_purpose::STANDARD
            .encode(&decoded)
            .into_bytes();
        b.push(b'\n');
        b
    } else {
        decoded
    };
    if let Some(max) = limits.max_bytes {
        let counted = match limits.basis {
            Basis::Decoded => decoded_len,
            Basis::Encoded => base64::engine::general_purpose::STANDARD
                .encode(vec![0; decoded_len])
                .len(),
        };
        if counted > max {
            let hint = if enc.gzip {
                "trim the config (fewer or shorter env values, no CA bundle), or use a baked image (`imgforge build`)".to_string()
            } else if limits.gzip_ok {
                let gz = gzip(text.as_bytes())?.len();
                format!("pass --gzip (cloud-init decompresses it; {gz} bytes compressed)")
            } else {
                "use a baked image (`imgforge build`), or trim the config".to_string()
            };
            return Err(crate::exit::usage(format!(
                "the user-data is {counted} bytes, over {}'s limit of {max} bytes; {hint}",
                limits.name
            )));
        }
    }
    Ok(Packaged {
        bytes,
        decoded_len,
        binary: enc.gzip && !base64,
    })
}

/// gzip at a pinned level with no timestamp or name: the same text gives the same bytes.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data).context("compressing user-data")?;
    enc.finish().context("compressing user-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Encoding = Encoding {
        gzip: false,
        base64: false,
    };

    #[test]
    fn aws_refuses_oversized_raw_and_suggests_gzip() {
        let text = "#cloud-config\n".to_string() + &"# padding line\n".repeat(1200);
        let err = package(&text, Provider::Aws, PLAIN)
            .unwrap_err()
            .to_string();
        assert!(err.contains("over AWS EC2's limit of 16384 bytes"), "{err}");
        assert!(err.contains("--gzip"), "{err}");
        let ok = package(
            &text,
            Provider::Aws,
            Encoding {
                gzip: true,
                base64: false,
            },
        )
        .unwrap();
        assert!(ok.binary && ok.decoded_len < 16 * 1024);
    }

    #[test]
    fn linode_is_always_base64() {
        let p = package("#cloud-config\n", Provider::Linode, PLAIN).unwrap();
        assert_eq!(p.bytes, b"I2Nsb3VkLWNvbmZpZwo=\n");
    }

    #[test]
    fn text_only_providers_refuse_gzip() {
        let err = package(
            "#cloud-config\n",
            Provider::Hetzner,
            Encoding {
                gzip: true,
                base64: false,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("takes text"));
    }

    #[test]
    fn gzip_is_reproducible() {
        let a = package(
            "#cloud-config\nx: 1\n",
            Provider::Generic,
            Encoding {
                gzip: true,
                base64: true,
            },
        )
        .unwrap();
        let b = package(
            "#cloud-config\nx: 1\n",
            Provider::Generic,
            Encoding {
                gzip: true,
                base64: true,
            },
        )
        .unwrap();
        assert_eq!(a.bytes, b.bytes);
    }
}
