//! OCI packing: builds a service's container image from its `image.yaml` into one
//! uncompressed tarball that is both an OCI image layout and a `docker save`
//! archive, reproducibly, with no Docker daemon and no registry.
//!
//! Reproducibility: every timestamp (tar mtimes, config `created`, history) is
//! `source_date_epoch` (default 0, the Unix epoch); owners are numeric; entries
//! are sorted; compressors and levels are pinned. The same spec, inputs, options
//! and imgforge build give the same bytes and digest.

mod archive;
pub mod bundle;
mod compress;
mod layer;
pub mod spec;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, IsTerminal};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

pub use compress::Compression;
pub use spec::ValidSpec;

use crate::input::ImageRef;

use crate::exit::usage;

/// How to pack. `Default` is gzip at the default level, epoch 0, no progress bar.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// The archive to write; `<output>.json` gets the summary.
    pub output: PathBuf,
    pub compression: Compression,
    /// Overrides the spec's `name`.
    pub reference: Option<String>,
    /// Seconds since the Unix epoch used for every timestamp (SOURCE_DATE_EPOCH).
    pub source_date_epoch: u64,
    /// Show a progress bar on stderr for large inputs when stderr is a terminal.
    pub progress: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            output: PathBuf::from("image.oci.tar"),
            compression: Compression::Gzip {
                level: Compression::DEFAULT_GZIP_LEVEL,
            },
            reference: None,
            source_date_epoch: 0,
            progress: false,
        }
    }
}

/// What was packed; also written as JSON to `<output>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PackSummary {
    /// The short reference Docker shows and `docker load` tags (`imgforge/classifier:0.1.0`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The fully qualified name (`docker.io/imgforge/classifier:0.1.0`).
    pub name: String,
    /// The image manifest digest, `sha256:<hex>`: the image's identity.
    pub digest: String,
    /// The image config digest, which `docker images` shows as the image ID.
    pub config: String,
    #[serde(skip)]
    pub output: PathBuf,
    /// Archive size in bytes.
    pub size: u64,
    pub compression: &'static str,
    pub created: String,
    pub layers: Vec<LayerSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    pub name: String,
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// Where the summary of `output` is written: `<output>.json`.
pub fn summary_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// The spec file for a spec path: a directory holding `image.yaml`, or the file itself.
pub fn spec_file(spec_path: &Path) -> PathBuf {
    if spec_path.is_dir() {
        spec_path.join(spec::SPEC_FILE)
    } else {
        spec_path.to_path_buf()
    }
}

/// Reads and validates the image spec at `spec_path` (directory or file).
pub fn load_spec(spec_path: &Path) -> Result<ValidSpec> {
    spec::load(&spec_file(spec_path))
}

/// Packs the image described at `spec_path` (a directory with `image.yaml`, or the
/// file) into `opts.output`, atomically: on failure nothing is left at the output.
pub fn pack(spec_path: &Path, opts: &PackOptions) -> Result<PackSummary> {
    let spec_file = spec_file(spec_path);
    let spec_dir = match spec_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut spec = spec::load(&spec_file)?;
    if let Some(r) = &opts.reference {
        spec.reference = match ImageRef::parse(r) {
            Ok(reference) if reference.digest().is_none() => reference,
            Ok(_) => {
                return Err(usage(format!(
                    "image reference {r:?}: must not carry a digest; the digest is what packing computes"
                )))
            }
            Err(p) => return Err(usage(format!("image reference {r:?}: {}", p.message))),
        };
    }
    let created = rfc3339(opts.source_date_epoch)?;

    let base = layer::base_layer(&spec)?;
    let (plans, missing) = layer::resolve(&spec, &spec_dir, &base)?;
    if !missing.is_empty() {
        return Err(usage(missing_message(&spec, &spec_file, &missing)));
    }
    let mut layers = vec![base];
    layers.extend(plans);

    crate::fsutil::check_output(&opts.output, "-o", &[&spec_file])?;
    let out_dir = match opts.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".imgforge-pack-")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(&out_dir)
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                usage(format!("cannot write to {}: {e}", out_dir.display()))
            }
            _ => anyhow::Error::new(e).context(format!(
                "creating a temporary file in {}",
                out_dir.display()
            )),
        })?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .with_context(|| {
            format!(
                "setting the mode of a temporary file in {}",
                out_dir.display()
            )
        })?;

    let total: u64 = layers.iter().map(layer::LayerPlan::content_size).sum();
    let bar = progress_bar(opts.progress, total);
    let epoch = opts.source_date_epoch;
    let writer = io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
    let mut ar = archive::Archive::new(writer, epoch)?;
    let mut layer_summaries = Vec::new();
    for plan in &layers {
        let bar = &bar;
        let info = ar
            .layer(opts.compression, move |w| {
                layer::write_tar(plan, epoch, w, &|n| bar.inc(n))
            })
            .with_context(|| format!("packing layer {:?}", plan.name))?;
        layer_summaries.push(LayerSummary {
            name: plan.name.clone(),
            media_type: opts.compression.media_type(),
            digest: info.digest,
            size: info.size,
            diff_id: info.diff_id,
        });
    }
    bar.finish_and_clear();

    let config = image_config(&spec, &layers, &layer_summaries, &created);
    let config = ar.blob(&to_json(&config)?)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST,
        config: Descriptor::new(CONFIG, &config.digest, config.size),
        layers: layer_summaries
            .iter()
            .map(|l| Descriptor::new(l.media_type, &l.digest, l.size))
            .collect(),
    };
    let manifest = ar.blob(&to_json(&manifest)?)?;
    let mut manifest_desc = Descriptor::new(MANIFEST, &manifest.digest, manifest.size);
    manifest_desc.annotations = BTreeMap::from([
        ("io.containerd.image.name", spec.reference.normalized()),
        (
            "org.opencontainers.image.ref.name",
            spec.reference.tag().to_owned(),
        ),
    ]);
    manifest_desc.platform = Some(Platform {
        architecture: spec.architecture.clone(),
        os: "linux",
    });
    let index = Index {
        schema_version: 2,
        media_type: INDEX,
        manifests: vec![manifest_desc],
    };
    let docker = [DockerManifest {
        config: archive::blob_path(&config.digest),
        repo_tags: Some(vec![spec.reference.familiar()]),
        layers: layer_summaries
            .iter()
            .map(|l| archive::blob_path(&l.digest))
            .collect(),
    }];
    ar.file("index.json", &to_json(&index)?)?;
    ar.file("manifest.json", &to_json(&docker)?)?;
    ar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let (writer, size) = ar.finish()?;
    let file = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .context("writing archive")?;
    // An identical layer dropped near the end can leave stale bytes past the end.
    file.set_len(size).context("writing archive")?;
    file.sync_all()
        .with_context(|| format!("syncing {}", opts.output.display()))?;
    tmp.persist(&opts.output)
        .with_context(|| format!("renaming a temporary file onto {}", opts.output.display()))?;

    let summary = PackSummary {
        reference: spec.reference.familiar(),
        name: spec.reference.normalized(),
        digest: manifest.digest,
        config: config.digest,
        output: opts.output.clone(),
        size,
        compression: opts.compression.name(),
        created,
        layers: layer_summaries,
    };
    let mut json = serde_json::to_vec_pretty(&summary).context("serializing the pack summary")?;
    json.push(b'\n');
    let summary_file = summary_path(&opts.output);
    crate::fsutil::write_file_atomic(&summary_file, &json, 0o644)
        .with_context(|| format!("writing {}", summary_file.display()))?;
    Ok(summary)
}

fn missing_message(spec: &ValidSpec, spec_file: &Path, missing: &[layer::Missing]) -> String {
    let mut msg = format!(
        "{} input file(s) named in {} do not exist:",
        missing.len(),
        spec_file.display()
    );
    for m in missing {
        msg.push_str(&format!("\n  {} ({})", m.path.display(), m.what));
    }
    match &spec.build {
        Some(cmd) => msg.push_str(&format!("\nrun `{cmd}` to build them, then pack again")),
        None => msg.push_str("\nbuild them (the spec has no `build` hint), then pack again"),
    }
    msg
}

fn progress_bar(wanted: bool, total: u64) -> indicatif::ProgressBar {
    const WORTH_A_BAR: u64 = 64 << 20;
    if !wanted || total < WORTH_A_BAR || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "packing {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).context("serializing image metadata")
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (proleptic Gregorian).
fn rfc3339(epoch: u64) -> Result<String> {
    // Year 9999 ends at 253402300799; beyond that RFC 3339 has no form.
    if epoch > 253_402_300_799 {
        return Err(usage(format!(
            "SOURCE_DATE_EPOCH {epoch} is after the year 9999"
        )));
    }
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ))
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

impl Descriptor {
    fn new(media_type: &'static str, digest: &str, size: u64) -> Self {
        Descriptor {
            media_type,
            digest: digest.to_owned(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

#[derive(Serialize)]
struct Platform {
    architecture: String,
    os: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// One entry of `docker save`'s manifest.json: written by `pack`, read back by
/// [`bundle::inspect`] (from any `docker save` archive, where RepoTags may be null).
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerManifest {
    #[serde(default)]
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(default)]
    pub layers: Vec<String>,
}

#[derive(Serialize)]
struct ImageConfig {
    created: String,
    architecture: String,
    os: &'static str,
    config: RunConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    user: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<String, Empty>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entrypoint: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cmd: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    volumes: BTreeMap<String, Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<Healthcheck>,
}

/// Docker's image health check (the OCI image spec has none; Docker and Podman read this
/// one): `Test` in exec form, times in nanoseconds, 0 or absent for the default.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Healthcheck {
    test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_period: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
}

impl From<&spec::HealthSpec> for Healthcheck {
    fn from(h: &spec::HealthSpec) -> Self {
        let ns = |s: Option<u32>| s.map(|s| u64::from(s) * 1_000_000_000);
        Healthcheck {
            test: std::iter::once("CMD".to_owned())
                .chain(h.command.iter().cloned())
                .collect(),
            interval: ns(h.interval),
            timeout: ns(h.timeout),
            start_period: ns(h.start_period),
            retries: h.retries,
        }
    }
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: String,
}

fn image_config(
    spec: &ValidSpec,
    plans: &[layer::LayerPlan],
    layers: &[LayerSummary],
    created: &str,
) -> ImageConfig {
    ImageConfig {
        created: created.to_owned(),
        architecture: spec.architecture.clone(),
        os: "linux",
        config: RunConfig {
            user: format!("{}:{}", spec.user.uid, spec.user.gid),
            exposed_ports: spec
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), Empty {}))
                .collect(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            volumes: spec.volumes.iter().map(|v| (v.clone(), Empty {})).collect(),
            working_dir: spec.workdir.clone(),
            labels: spec.labels.clone(),
            healthcheck: spec.healthcheck.as_ref().map(Healthcheck::from),
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        },
        history: plans
            .iter()
            .map(|p| History {
                created: created.to_owned(),
                created_by: format!("imgforge pack: {}", p.name),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(253_402_300_799).unwrap(), "9999-12-31T23:59:59Z");
        assert!(rfc3339(253_402_300_800).is_err());
    }

    #[test]
    fn summary_path_appends_json() {
        assert_eq!(
            summary_path(Path::new("out/c.oci.tar")),
            Path::new("out/c.oci.tar.json")
        );
    }
}
