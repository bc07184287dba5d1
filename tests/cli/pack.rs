//! `imgforge pack`, run as a user would: the real binary on fixture directories,
//! its archive checked by real readers (skopeo, podman) and by unpacking it here.
//! Needs skopeo, podman and containerd (for ctr) installed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use crate::common::{pseudo_random, sha256_file};
use assert_cmd::Command;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn imgforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgforge"));
    cmd.env_remove("SOURCE_DATE_EPOCH");
    cmd
}

const SPEC: &str = "\
name: imgforge/packtest:1.0
build: ./make-dist.sh
user: { name: svc, uid: 10001, gid: 10002 }
workdir: /app
entrypoint: [/app/bin/server]
cmd: [--port, \"8000\"]
env: { MODEL_DIR: /app/model, DATA_DIR: /app/data }
expose: [8000]
volumes: [/app/data]
labels: { org.opencontainers.image.title: packtest }
layers:
  - name: model
    files:
      - { src: dist/model, dest: /app/model }
  - name: app
    files:
      - { src: dist/server, dest: /app/bin/server, mode: \"0755\" }
";

/// A spec directory: a spec, a "binary", and a model directory with weights
/// (incompressible) and labels (text).
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("dist/model")).unwrap();
    fs::write(root.join("image.yaml"), SPEC).unwrap();
    fs::write(root.join("dist/server"), pseudo_random(300_000, 1)).unwrap();
    fs::write(
        root.join("dist/model/weights.onnx"),
        pseudo_random(2_500_000, 2),
    )
    .unwrap();
    let labels: String = (0..1000).map(|i| format!("class number {i}\n")).collect();
    fs::write(root.join("dist/model/labels.txt"), labels).unwrap();
    dir
}

/// Runs a successful pack and returns the digest it printed.
fn pack_ok(spec_dir: &Path, out: &Path, extra: &[&str]) -> String {
    let output = imgforge()
        .arg("pack")
        .arg(spec_dir)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pack failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Every file in the outer tar, by path.
fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut ar = tar::Archive::new(fs::File::open(path).unwrap());
    let mut files = BTreeMap::new();
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(name, bytes);
    }
    files
}

fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
    let path = format!("blobs/{}", digest.replacen(':', "/", 1));
    let bytes = files
        .get(&path)
        .unwrap_or_else(|| panic!("{path} missing from the archive"));
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        digest,
        "{path} content"
    );
    bytes
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// One entry of a layer tar, as read back.
#[derive(Clone)]
struct LayerEntry {
    path: String,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
}

fn layer_entries(gz: &[u8]) -> Vec<LayerEntry> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            LayerEntry {
                path: e
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_owned(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                data,
            }
        })
        .collect()
}

fn find(entries: &[LayerEntry], path: &str) -> LayerEntry {
    entries
        .iter()
        .find(|e| e.path == path)
        .cloned()
        .unwrap_or_else(|| panic!("{path} missing"))
}

fn skopeo(args: &[&str]) -> String {
    let out = StdCommand::new("skopeo")
        .args(args)
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn archive_is_an_oci_layout_and_a_docker_save_archive() {
    let fx = fixture();
    let out = fx.path().join("out.tar");
    let digest = pack_ok(fx.path(), &out, &[]);
    let files = read_archive(&out);

    assert_eq!(json(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
    let index = json(&files["index.json"]);
    let desc = &index["manifests"][0];
    assert_eq!(desc["digest"], digest.as_str());
    assert_eq!(
        desc["annotations"]["io.containerd.image.name"],
        "docker.io/imgforge/packtest:1.0"
    );
    assert_eq!(
        desc["annotations"]["org.opencontainers.image.ref.name"],
        "1.0"
    );

    let manifest = json(blob(&files, &digest));
    assert_eq!(desc["size"], manifest_size(&files, &digest));
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = json(blob(&files, config_digest));
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(
                l["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            l["digest"].as_str().unwrap()
        })
        .collect();
    assert_eq!(layers.len(), 3, "base + model + app");

    // docker save's manifest.json points at the same blobs.
    let docker = json(&files["manifest.json"]);
    assert_eq!(docker[0]["RepoTags"][0], "imgforge/packtest:1.0");
    assert_eq!(
        docker[0]["Config"],
        format!("blobs/sha256/{}", &config_digest[7..])
    );
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(docker[0]["Layers"][i], format!("blobs/sha256/{}", &l[7..]));
    }

    // diff_ids are the sha256 of the uncompressed layers.
    for (i, l) in layers.iter().enumerate() {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(blob(&files, l))
            .read_to_end(&mut tar)
            .unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        assert_eq!(config["rootfs"]["diff_ids"][i], diff_id.as_str());
    }
    let c = &config["config"];
    assert_eq!(c["User"], "10001:10002");
    assert_eq!(c["Entrypoint"][0], "/app/bin/server");
    assert_eq!(c["Cmd"][1], "8000");
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["ExposedPorts"]["8000/tcp"], serde_json::json!({}));
    assert_eq!(c["Volumes"]["/app/data"], serde_json::json!({}));
    assert_eq!(c["Env"][0], "MODEL_DIR=/app/model");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(config["history"].as_array().unwrap().len(), 3);

    // Base layer: the user in passwd/group, /tmp sticky, the volume owned by the user.
    let base = layer_entries(blob(&files, layers[0]));
    let passwd = String::from_utf8(find(&base, "etc/passwd").data).unwrap();
    assert!(passwd.contains("svc:x:10001:10002:"), "{passwd}");
    assert!(String::from_utf8(find(&base, "etc/group").data)
        .unwrap()
        .contains("svc:x:10002:"));
    assert_eq!(find(&base, "tmp").mode, 0o1777);
    let data = find(&base, "app/data");
    assert_eq!((data.uid, data.gid), (10001, 10002));

    // Model layer: a directory copied recursively, sorted, root-owned, epoch mtimes.
    let model = layer_entries(blob(&files, layers[1]));
    let paths: Vec<&str> = model.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "app",
            "app/model",
            "app/model/labels.txt",
            "app/model/weights.onnx"
        ]
    );
    for e in &model {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{} owner/mtime", e.path);
    }
    assert_eq!(
        find(&model, "app/model/weights.onnx").data,
        fs::read(fx.path().join("dist/model/weights.onnx")).unwrap()
    );
    assert_eq!(find(&model, "app/model/labels.txt").mode, 0o644);
    let app = layer_entries(blob(&files, layers[2]));
    assert_eq!(find(&app, "app/bin/server").mode, 0o755);

    // The summary next to the archive agrees.
    let summary = json(&fs::read(fx.path().join("out.tar.json")).unwrap());
    assert_eq!(summary["digest"], digest.as_str());
    assert_eq!(summary["ref"], "imgforge/packtest:1.0");
    assert_eq!(summary["size"], fs::metadata(&out).unwrap().len());
    assert_eq!(summary["layers"][1]["digest"], layers[1]);
}

fn manifest_size(files: &BTreeMap<String, Vec<u8>>, digest: &str) -> u64 {
    blob(files, digest).len() as u64
}

#[test]
fn skopeo_reads_it_as_oci_archive_and_docker_archive() {
    let fx = fixture();
    let out = fx.path().join("out.tar");
    let digest = pack_ok(fx.path(), &out, &[]);
    let out = out.to_str().unwrap();

    let oci = json(skopeo(&["inspect", &format!("oci-archive:{out}")]).as_bytes());
    assert_eq!(oci["Digest"], digest.as_str());
    assert_eq!(oci["Architecture"], "amd64");
    assert_eq!(oci["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(oci["Labels"]["org.opencontainers.image.title"], "packtest");
    // The tag selects the image by its ref.name annotation.
    let tagged = json(skopeo(&["inspect", &format!("oci-archive:{out}:1.0")]).as_bytes());
    assert_eq!(tagged["Digest"], digest.as_str());

    let docker = json(skopeo(&["inspect", &format!("docker-archive:{out}")]).as_bytes());
    assert_eq!(docker["Os"], "linux");
    assert_eq!(docker["Layers"].as_array().unwrap().len(), 3);

    for (transport, name) in [("oci-archive", "oci"), ("docker-archive", "docker")] {
        let dest = fx.path().join(name);
        skopeo(&[
            "copy",
            "--quiet",
            &format!("{transport}:{out}"),
            &format!("dir:{}", dest.display()),
        ]);
        let manifest = json(&fs::read(dest.join("manifest.json")).unwrap());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3, "{transport}");
        for l in layers {
            // skopeo verified each blob against its digest while copying; check it kept them.
            let d = l["digest"].as_str().unwrap();
            assert_eq!(
                format!("sha256:{}", sha256_file(&dest.join(&d[7..]))),
                d,
                "{transport} blob"
            );
        }
    }
}

#[test]
fn podman_loads_it() {
    let fx = fixture();
    let out = fx.path().join("out.tar");
    let digest = pack_ok(fx.path(), &out, &[]);
    let store = tempfile::tempdir().unwrap();
    let podman = |args: &[&str]| {
        let out = StdCommand::new("podman")
            .arg("--root")
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("running podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let loaded = podman(&["load", "-i", out.to_str().unwrap()]);
    assert!(
        loaded.contains("Loaded image: docker.io/imgforge/packtest:1.0"),
        "{loaded}"
    );
    let inspect = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}} {{.Config.User}}",
        "imgforge/packtest:1.0",
    ]);
    assert_eq!(inspect.trim(), format!("{digest} 10001:10002"));
}

#[test]
fn packing_twice_gives_identical_bytes() {
    let fx = fixture();
    let a = fx.path().join("a.tar");
    let b = fx.path().join("b.tar");
    for compression in ["gzip", "zstd", "none"] {
        let da = pack_ok(fx.path(), &a, &["--compression", compression]);
        // Source mtimes and atimes must not leak into the image.
        let f = fs::File::options()
            .write(true)
            .open(fx.path().join("dist/server"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
        let db = pack_ok(fx.path(), &b, &["--compression", compression]);
        assert_eq!(da, db, "{compression}: digests differ");
        assert_eq!(
            sha256_file(&a),
            sha256_file(&b),
            "{compression}: archives differ"
        );
    }
    // zstd layers are what the manifest says they are.
    pack_ok(fx.path(), &a, &["--compression", "zstd"]);
    let files = read_archive(&a);
    let docker = json(&files["manifest.json"]);
    let first = &files[docker[0]["Layers"][1].as_str().unwrap()];
    assert_eq!(&first[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");

    // SOURCE_DATE_EPOCH changes the timestamps, and so the digest.
    let plain = pack_ok(fx.path(), &a, &[]);
    let out = imgforge()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("pack")
        .arg(fx.path())
        .arg("-o")
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), plain);
    let summary = json(&fs::read(fx.path().join("b.tar.json")).unwrap());
    assert_eq!(summary["created"], "2023-11-14T22:13:20Z");
}

/// Packs `spec` in a fresh fixture, expecting exit 2 and no archive; returns stderr.
fn pack_refused(spec: &str) -> String {
    let fx = fixture();
    fs::write(fx.path().join("image.yaml"), spec).unwrap();
    let out = imgforge()
        .arg("pack")
        .arg(fx.path())
        .arg("-o")
        .arg(fx.path().join("o.tar"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!fx.path().join("o.tar").exists());
    err
}

#[test]
fn unknown_key_is_exit_2_naming_the_key() {
    let fx = fixture();
    let spec = SPEC.replace("mode: \"0755\"", "mdoe: \"0755\"");
    fs::write(fx.path().join("image.yaml"), spec).unwrap();
    imgforge()
        .arg("pack")
        .arg(fx.path())
        .arg("-o")
        .arg(fx.path().join("out.tar"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown field `mdoe`"));
    assert!(!fx.path().join("out.tar").exists());
}

/// A health check in exec form reaches the image's config (Docker's `Healthcheck`, which
/// the OCI spec lacks), so the image needs no shell for it; without one, none is written.
#[test]
fn a_healthcheck_reaches_the_config_in_exec_form() {
    let config_of = |spec: &str| {
        let fx = fixture();
        fs::write(fx.path().join("image.yaml"), spec).unwrap();
        let out = fx.path().join("out.tar");
        let digest = pack_ok(fx.path(), &out, &[]);
        let files = read_archive(&out);
        let manifest = json(blob(&files, &digest));
        json(blob(&files, manifest["config"]["digest"].as_str().unwrap()))
    };
    let with = SPEC.replace(
        "layers:\n",
        "healthcheck:\n  command: [/app/bin/server, healthcheck]\n  interval: 5\n  start-period: 90\n  retries: 3\nlayers:\n",
    );
    let config = config_of(&with);
    let check = &config["config"]["Healthcheck"];
    assert_eq!(
        check["Test"],
        serde_json::json!(["CMD", "/app/bin/server", "healthcheck"])
    );
    assert_eq!(check["Interval"], 5_000_000_000u64);
    assert_eq!(check["StartPeriod"], 90_000_000_000u64);
    assert_eq!(check["Retries"], 3);
    assert!(check.get("Timeout").is_none(), "{check}");
    assert!(config_of(SPEC)["config"].get("Healthcheck").is_none());

    // A relative program, an empty command, a zero interval: exit 2, each named.
    for (bad, key) in [
        ("command: [server, healthcheck]", "healthcheck.command"),
        ("command: []", "healthcheck.command"),
        (
            "command: [/app/bin/server]\n  interval: 0",
            "healthcheck.interval",
        ),
    ] {
        let err =
            pack_refused(&SPEC.replace("layers:\n", &format!("healthcheck:\n  {bad}\nlayers:\n")));
        assert!(err.contains(&format!("error[{key}]")), "{bad}: {err}");
    }
}

#[test]
fn invalid_values_are_all_reported_with_exit_2() {
    let err = pack_refused(
        &SPEC
            .replace("imgforge/packtest:1.0", "Bad/Name:1.0")
            .replace("dest: /app/bin/server", "dest: /app/../server")
            .replace("uid: 10001", "uid: 0"),
    );
    for want in [
        "error[name]: \"Bad/Name:1.0\"",
        "error[layers.1.files.0.dest]",
        "error[user]: uid and gid",
        "--> ",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
}

#[test]
fn missing_file_is_exit_2_naming_it_and_the_build_command() {
    let fx = fixture();
    fs::remove_file(fx.path().join("dist/server")).unwrap();
    let out = imgforge()
        .arg("pack")
        .arg(fx.path())
        .arg("-o")
        .arg(fx.path().join("out.tar"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}", fx.path().join("dist/server").display())),
        "{err}"
    );
    assert!(err.contains("layers[1].files[0].src"), "{err}");
    assert!(err.contains("run `./make-dist.sh`"), "{err}");
    assert!(!fx.path().join("out.tar").exists());
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn output_in_a_missing_directory_is_exit_2() {
    let fx = fixture();
    imgforge()
        .arg("pack")
        .arg(fx.path())
        .arg("-o")
        .arg(fx.path().join("no/such/dir/out.tar"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("does not exist"));
}

#[test]
fn failed_write_leaves_no_partial_file() {
    let fx = fixture();
    let out_dir = fx.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    // A file-size limit makes the write fail part-way, as a full disk would.
    // SIGXFSZ is ignored so the write returns EFBIG and imgforge cleans up.
    let script = format!(
        "trap '' XFSZ; ulimit -f 256; exec {} pack {} -o {}",
        env!("CARGO_BIN_EXE_imgforge"),
        fx.path().display(),
        out_dir.join("out.tar").display()
    );
    let out = StdCommand::new("sh")
        .args(["-c", &script])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: "));
    assert_eq!(
        dir_names(&out_dir),
        Vec::<String>::new(),
        "leftovers in the output directory"
    );
}

#[test]
fn a_failed_pack_keeps_the_previous_archive() {
    let fx = fixture();
    let out = fx.path().join("out.tar");
    pack_ok(fx.path(), &out, &[]);
    let before = sha256_file(&out);
    fs::remove_dir_all(fx.path().join("dist/model")).unwrap();
    imgforge()
        .arg("pack")
        .arg(fx.path())
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2);
    assert_eq!(sha256_file(&out), before);
}

#[test]
fn spec_file_path_and_tag_override() {
    let fx = fixture();
    let out = fx.path().join("out.tar");
    let spec: PathBuf = fx.path().join("image.yaml");
    pack_ok(
        &spec,
        &out,
        &["--tag", "registry.example.com:5000/team/svc:2"],
    );
    let files = read_archive(&out);
    assert_eq!(
        json(&files["manifest.json"])[0]["RepoTags"][0],
        "registry.example.com:5000/team/svc:2"
    );
    let index = json(&files["index.json"]);
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "registry.example.com:5000/team/svc:2"
    );
}

/// Stops the private containerd when the test ends, pass or fail.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn containerd_imports_and_unpacks_it() {
    let fx = fixture();
    let out = fx.path().join("out.tar");
    let digest = pack_ok(fx.path(), &out, &[]);
    // A private containerd: its own root, state and socket, no system config.
    let run = tempfile::tempdir().unwrap();
    let sock = run.path().join("c.sock");
    let log = fs::File::create(run.path().join("containerd.log")).unwrap();
    let _daemon = Daemon(
        StdCommand::new("containerd")
            .args(["--config", "/dev/null", "--root"])
            .arg(run.path().join("root"))
            .arg("--state")
            .arg(run.path().join("state"))
            .arg("--address")
            .arg(&sock)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not start: {}",
            fs::read_to_string(run.path().join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ctr = |args: &[&str]| {
        let o = StdCommand::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(args)
            .output()
            .expect("running ctr");
        assert!(
            o.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    // Unpacking applies every layer and checks it against the config's diff_ids.
    let imported = ctr(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        out.to_str().unwrap(),
    ]);
    assert!(
        imported.contains("docker.io/imgforge/packtest:1.0"),
        "{imported}"
    );
    let list = ctr(&["images", "ls"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("docker.io/imgforge/packtest:1.0"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains(&digest), "{line}");
    assert!(line.contains("linux/amd64"), "{line}");
}

#[test]
fn a_layer_writing_into_a_volume_keeps_its_owner_and_tmp_its_mode() {
    let fx = fixture();
    fs::write(fx.path().join("seed.txt"), "seed\n").unwrap();
    let spec = SPEC.replace(
        "      - { src: dist/server, dest: /app/bin/server, mode: \"0755\" }\n",
        "      - { src: dist/server, dest: /app/bin/server, mode: \"0755\" }\n      \
         - { src: seed.txt, dest: /app/data/seed.txt }\n      \
         - { src: seed.txt, dest: /tmp/seed.txt }\n",
    );
    fs::write(fx.path().join("image.yaml"), spec).unwrap();
    let out = fx.path().join("out.tar");
    let digest = pack_ok(fx.path(), &out, &[]);
    let files = read_archive(&out);
    let manifest = json(blob(&files, &digest));
    let app = layer_entries(blob(
        &files,
        manifest["layers"][2]["digest"].as_str().unwrap(),
    ));
    let data = find(&app, "app/data");
    assert_eq!((data.uid, data.gid, data.mode), (10001, 10002, 0o755));
    assert_eq!(find(&app, "tmp").mode, 0o1777);
    assert_eq!(find(&app, "app/data/seed.txt").data, b"seed\n");
}

#[test]
fn overlapping_sources_in_one_layer_are_exit_2() {
    let fx = fixture();
    // dist/model is copied to /app/model; a second file also claims labels.txt.
    let spec = SPEC.replace(
        "      - { src: dist/model, dest: /app/model }\n",
        "      - { src: dist/model, dest: /app/model }\n      \
         - { src: dist/server, dest: /app/model/labels.txt }\n",
    );
    fs::write(fx.path().join("image.yaml"), spec).unwrap();
    imgforge()
        .arg("pack")
        .arg(fx.path())
        .arg("-o")
        .arg(fx.path().join("out.tar"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "/app/model/labels.txt is listed twice",
        ));
}
