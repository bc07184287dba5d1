//! Packaging user-data for a provider: optional gzip and base64, checked against the
//! provider's user-data size limit.

use anyhow::Result;
use base64::Engine;

pub use crate::input::Provider;

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
    /// Set when the user-data was gzipped to fit the provider's limit without being asked.
    pub note: Option<String>,
}

/// Packages `text` for `provider`, or says (exit code 2) why it cannot be. Over the
/// provider's limit and allowed to, it gzips by itself and says so in [`Packaged::note`].
pub fn package(text: &str, provider: Provider, enc: Encoding) -> Result<Packaged> {
    package_texts(text, text, provider, enc)
}

/// [`package`], gzipping `gzip_text` (the same deployment, laid out to compress well)
/// where the document is gzipped.
pub fn package_texts(
    text: &str,
    gzip_text: &str,
    provider: Provider,
    enc: Encoding,
) -> Result<Packaged> {
    let limits = provider.limits();
    if enc.gzip && !limits.gzip_ok {
        return Err(crate::exit::usage(format!(
            "--gzip: {}'s user-data field takes text, so compressed user-data cannot reach cloud-init; render without --gzip",
            limits.name
        )));
    }
    if enc.base64 && !limits.gzip_ok {
        return Err(crate::exit::usage(format!(
            "--base64: {}'s user-data field takes the text itself and decodes nothing, so cloud-init would read base64; render without --base64",
            limits.name
        )));
    }
    if enc.gzip {
        return check_fits(encode(gzip_text, &limits, enc)?, &limits, enc);
    }
    let plain = encode(text, &limits, enc)?;
    if fits(&plain, &limits) || !limits.gzip_ok {
        return check_fits(plain, &limits, enc);
    }
    let gzipped = encode(gzip_text, &limits, Encoding { gzip: true, ..enc })?;
    let mut packaged = check_fits(gzipped, &limits, Encoding { gzip: true, ..enc })?;
    packaged.note = Some(format!(
        "the user-data is {} bytes, over {}'s limit of {} bytes: gzipped it to {} bytes (cloud-init decompresses it)",
        plain.decoded_len,
        limits.name,
        limits.max_bytes.unwrap_or_default(),
        packaged.decoded_len
    ));
    Ok(packaged)
}

fn encode(text: &str, limits: &Limits, enc: Encoding) -> Result<Packaged> {
    let base64 = enc.base64 || limits.base64_required;
    let decoded = if enc.gzip {
        super::gzip(text.as_bytes())?
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
    Ok(Packaged {
        bytes,
        decoded_len,
        binary: enc.gzip && !base64,
        note: None,
    })
}

/// The size the provider counts.
fn counted(p: &Packaged, limits: &Limits) -> usize {
    match limits.basis {
        Basis::Decoded => p.decoded_len,
        Basis::Encoded => p.decoded_len.div_ceil(3) * 4,
    }
}

fn fits(p: &Packaged, limits: &Limits) -> bool {
    limits.max_bytes.is_none_or(|max| counted(p, limits) <= max)
}

fn check_fits(p: Packaged, limits: &Limits, enc: Encoding) -> Result<Packaged> {
    if fits(&p, limits) {
        return Ok(p);
    }
    let hint = if enc.gzip || limits.gzip_ok {
        "trim the config (fewer or shorter env values, no CA bundle), or use a baked image (`imgforge build`)"
    } else {
        "use a baked image (`imgforge build`), or trim the config"
    };
    Err(crate::exit::usage(format!(
        "the user-data is {} bytes, over {}'s limit of {} bytes; {hint}",
        counted(&p, limits),
        limits.name,
        limits.max_bytes.unwrap_or_default()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Encoding = Encoding {
        gzip: false,
        base64: false,
    };

    #[test]
    fn aws_gzips_oversized_user_data_by_itself_and_says_so() {
        let text = "#cloud-config\n".to_string() + &"# padding line\n".repeat(1200);
        let auto = package(&text, Provider::Aws, PLAIN).unwrap();
        assert!(auto.binary && auto.decoded_len < 16 * 1024);
        let note = auto.note.unwrap();
        assert!(
            note.contains("over AWS EC2's limit of 16384 bytes"),
            "{note}"
        );
        let ok = package(
            &text,
            Provider::Aws,
            Encoding {
                gzip: true,
                base64: false,
            },
        )
        .unwrap();
        assert!(ok.binary && ok.decoded_len < 16 * 1024 && ok.note.is_none());
    }

    #[test]
    fn too_big_even_gzipped_is_a_usage_error_naming_the_limit() {
        // Hashes do not compress: 40 KB of their base64.
        use sha2::Digest;
        let mut block = sha2::Sha256::digest(b"seed").to_vec();
        let mut bytes = Vec::new();
        while bytes.len() < 30_000 {
            block = sha2::Sha256::digest(&block).to_vec();
            bytes.extend_from_slice(&block);
        }
        let noise = base64::engine::general_purpose::STANDARD.encode(bytes);
        let text = format!("#cloud-config\n# {noise}\n");
        let err = package(&text, Provider::Aws, PLAIN).unwrap_err();
        assert_eq!(crate::exit::code_for(&err), 2);
        assert!(err.to_string().contains("limit of 16384 bytes"), "{err}");
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
        for provider in [Provider::Hetzner, Provider::Digitalocean] {
            let err = package(
                "#cloud-config\n",
                provider,
                Encoding {
                    gzip: false,
                    base64: true,
                },
            )
            .unwrap_err();
            assert!(err.to_string().contains("--base64"), "{err}");
        }
    }

    #[test]
    fn gzip_is_reproducible() {
        let gzipped = || {
            let encoding = Encoding {
                gzip: true,
                base64: true,
            };
            package("#cloud-config\nx: 1\n", Provider::Generic, encoding).unwrap()
        };
        assert_eq!(gzipped().bytes, gzipped().bytes);
    }
}
