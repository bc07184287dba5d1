//! Deployment → user-data: the cloud-config (users, the files written onto the VM from
//! `templates/`, the VM program) and the one command that runs the deployment on first
//! boot; then packaging for a provider. [`user_data`] is the one entry point `render`,
//! `seed` and `build` share.

mod cloud_config;
mod deploy_json;
pub mod program;
mod provider;
mod templates;

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::json;

pub use cloud_config::{CloudConfig, HostKeys, User, WriteFile, HEADER};
pub use deploy_json::deploy_json;
pub use provider::{package, package_texts, Encoding, Packaged, Provider};
pub use templates::Templates;

use crate::contract::layout;
use crate::input::cluster::{Cluster, Node};
use crate::input::{Bundle, Deployment, DockerSource};
use crate::keys::KeyPair;

/// The rendered user-data, and the `known_hosts` line when a host key was generated.
pub struct UserData {
    pub text: String,
    /// The same deployment for a document that is gzipped as a whole ([`package_user_data`]):
    /// the VM program's modules travel as plain files, which the outer gzip compresses
    /// better than the program gzipped on its own, and python3's `zipapp` assembles them
    /// on the VM into the same program.
    pub gzip_text: String,
    pub known_hosts: Option<String>,
}

/// Renders `spec` as cloud-init user-data (`#cloud-config` text). With `spec.host_key`,
/// a new host key is generated and its `known_hosts` line returned.
pub fn user_data(spec: &Deployment, templates: &Templates) -> Result<UserData> {
    let (cloud_config, needs, known_hosts) = cloud_config(spec, templates)?;
    let text = cloud_config.to_user_data()?;
    check_parses_back(&text)?;
    let gzip_text = with_program_modules(cloud_config, needs).to_user_data()?;
    check_parses_back(&gzip_text)?;
    Ok(UserData {
        text,
        gzip_text,
        known_hosts,
    })
}

/// Packages the user-data for `provider`: [`UserData::text`] as it is, or
/// [`UserData::gzip_text`] when the document is gzipped.
pub fn package_user_data(ud: &UserData, provider: Provider, enc: Encoding) -> Result<Packaged> {
    provider::package_texts(&ud.text, &ud.gzip_text, provider, enc)
}

/// `config` with the program's modules written as plain files (and no zipapp), assembled
/// into the program by the first command.
fn with_program_modules(mut config: CloudConfig, needs: program::Needs) -> CloudConfig {
    let layout = layout();
    config.write_files.retain(|f| f.path != layout.program);
    for name in program::files_for(needs) {
        let text =
            String::from_utf8(program::shipped_for(&name, needs)).expect("the program is text");
        let path = format!("{}/{name}", layout.program_src);
        config.write_files.push(WriteFile::new(&path, text, "0644"));
    }
    let python = "/usr/bin/python3".to_owned();
    let assemble = [
        &python,
        "-m",
        "zipapp",
        &layout.program_src,
        "-o",
        &layout.program,
        "-p",
        &python,
    ];
    config
        .runcmd
        .insert(0, assemble.iter().map(|s| s.to_string()).collect());
    config
}

fn cloud_config(
    spec: &Deployment,
    templates: &Templates,
) -> Result<(CloudConfig, program::Needs, Option<String>)> {
    let layout = layout();
    let config = deploy_json(spec);
    // The slots' units, instances of the app unit template.
    let slot_units: Vec<String> = layout
        .slots
        .keys()
        .map(|slot| layout.units.app.replace("@.", &format!("@{slot}.")))
        .collect();
    let vars = json!({
        "config": &config,
        "layout": layout,
        "slot_units": slot_units,
        "notify_unit": layout.units.notify.replace("@.", "@%n."),
    });
    let t = |name: &str| templates.render(name, &vars);
    let unit = |name: &str| format!("{}/{name}", layout.units_dir);
    let unit_file = |name: &str, template: &str| -> Result<WriteFile> {
        Ok(WriteFile::new(&unit(name), t(template)?, "0644"))
    };
    let units = &layout.units;

    let mut files = vec![
        WriteFile::new(
            &layout.config,
            serde_json::to_string_pretty(&config)? + "\n",
            "0600",
        ),
        WriteFile::new(&layout.app_env, env_file(spec), "0600"),
        WriteFile::new(&layout.sshd_config, t("sshd-hardening.conf.hbs")?, "0644"),
        WriteFile::new(
            &layout.docker_daemon,
            docker_daemon_json(spec.cluster.as_ref())?,
            "0644",
        ),
        WriteFile::new(&layout.apt_auto_upgrades, t("20auto-upgrades.hbs")?, "0644"),
        WriteFile::new(&layout.journald_conf, t("journald.conf.hbs")?, "0644"),
        WriteFile::new(&layout.nginx_conf, t("nginx-http.conf.hbs")?, "0644"),
        // The sites go to imgforge's directory: imgforge-vm installs one of them as nginx's
        // live site, so that a run of first boot again never replaces HTTPS by HTTP.
        WriteFile::new(&layout.nginx_app, t("nginx-app.conf.hbs")?, "0600"),
        WriteFile::new(&layout.nginx_site_http, t("nginx-site.conf.hbs")?, "0600"),
        unit_file(&units.app, "imgforge-app@.service.hbs")?,
        unit_file(
            &units.docker_firewall,
            "imgforge-docker-firewall.service.hbs",
        )?,
        unit_file(&units.backup, "imgforge-backup.service.hbs")?,
        unit_file(&units.backup_timer, "imgforge-backup.timer.hbs")?,
        unit_file(&units.report, "imgforge-report.service.hbs")?,
        unit_file(&units.recover, "imgforge-recover.service.hbs")?,
    ];
    if spec.docker_source == DockerSource::DockerCe && !spec.offline {
        files.push(WriteFile::new(
            &layout.apt_docker_pin,
            t("51imgforge-docker.hbs")?,
            "0644",
        ));
    }
    if let Some(dns) = &spec.dns {
        files.push(WriteFile::new(
            &layout.dns_token,
            format!("{}\n", dns.token.expose()),
            "0600",
        ));
        files.push(unit_file(&units.dns, "imgforge-dns.service.hbs")?);
        files.push(unit_file(&units.dns_timer, "imgforge-dns.timer.hbs")?);
    }
    if let Some(borg) = &spec.borg {
        files.push(WriteFile::new(
            &layout.borg_passphrase,
            format!("{}\n", borg.passphrase.expose()),
            "0600",
        ));
        files.push(WriteFile::new(
            &layout.borg_ssh_key,
            borg.ssh_key.expose().to_owned(),
            "0600",
        ));
        if let Some(known) = &borg.known_hosts {
            files.push(WriteFile::new(
                &layout.borg_known_hosts,
                known.as_str().to_owned(),
                "0644",
            ));
        }
    }
    match spec.cluster.as_ref().map(|c| &c.node) {
        Some(Node::Join { token, .. }) => files.push(WriteFile::new(
            &layout.swarm_join_token,
            format!("{}\n", token.expose()),
            "0600",
        )),
        Some(Node::Init { .. }) => {
            files.push(unit_file(&units.registry, "imgforge-registry.service.hbs")?)
        }
        None => {}
    }
    if let Some(url) = &spec.notify {
        files.extend(notify_files(spec, url, &t)?);
    }
    if let Some(token) = &spec.metrics_token {
        // A validated token (letters, digits, -._~+/=): it means itself in nginx's quotes.
        files.push(WriteFile::new(
            &layout.nginx_metrics_auth,
            format!(
                "# Generated by imgforge: /metrics answers this bearer token only.\n\
                 map $http_authorization $imgforge_metrics_auth {{\n    default \"no\";\n    \"Bearer {}\" \"ok\";\n}}\n",
                token.expose()
            ),
            "0600",
        ));
        files.push(WriteFile::new(
            &layout.node_exporter_dropin,
            t("node-exporter.conf.hbs")?,
            "0644",
        ));
    }
    if let Some(tls) = &spec.tls {
        files.push(WriteFile::new(
            &layout.nginx_site_tls,
            t("nginx-site-tls.conf.hbs")?,
            "0600",
        ));
        files.push(unit_file(&units.cert, "imgforge-cert.service.hbs")?);
        files.push(unit_file(&units.cert_timer, "imgforge-cert.timer.hbs")?);
        if let Some(ca) = &tls.ca_bundle {
            files.push(WriteFile::new(
                &layout.acme_ca,
                ca.as_str().to_owned(),
                "0600",
            ));
            files.push(WriteFile::new(
                &unit("certbot.service.d/imgforge-ca.conf"),
                t("certbot-ca.conf.hbs")?,
                "0644",
            ));
        }
    }
    let needs = program::Needs {
        dns: spec.dns.is_some(),
        borg: spec.borg.is_some(),
        cluster: spec.cluster.is_some(),
        provision: false,
        day_two: false,
        bundle: !matches!(spec.app.bundle, Bundle::Registry | Bundle::Baked),
    };
    files.push(program_file(needs)?);

    let (ssh_keys, known_hosts) = if spec.host_key {
        let pair = KeyPair::generate("imgforge host key")?;
        let public = pair.public_openssh()?;
        let domain = spec.domain.as_ref().map_or("VM_ADDRESS", |d| d.as_str());
        let line = crate::keys::known_hosts_line(domain, &public);
        let keys = HostKeys {
            ed25519_private: pair.private_openssh()?.to_string(),
            ed25519_public: public,
        };
        (Some(keys), Some(line))
    } else {
        (None, None)
    };

    let cloud_config = CloudConfig {
        users: vec![User {
            name: spec.admin_user.as_str().to_owned(),
            groups: "sudo".into(),
            shell: "/bin/bash".into(),
            // The admin has no password (lock_passwd), so sudo cannot ask for one.
            sudo: "ALL=(ALL) NOPASSWD:ALL".into(),
            lock_passwd: true,
            ssh_authorized_keys: spec.ssh_keys.iter().map(|k| k.to_openssh()).collect(),
        }],
        disable_root: true,
        ssh_pwauth: false,
        ssh_keys,
        // sshd serves the ed25519 key only: no time spent making keys nobody uses.
        ssh_genkeytypes: vec!["ed25519"],
        manage_etc_hosts: "localhost",
        write_files: files,
        runcmd: vec![vec![layout.program.clone(), "deploy".to_owned()]],
        final_message: format!(
            "imgforge: cloud-init finished after $UPTIME seconds; deployment status in {}",
            layout.status
        ),
    };
    Ok((cloud_config, needs, known_hosts))
}

/// The webhook's files: curl's configuration with its URL (0600: the URL may be a secret;
/// validated, so it means itself in curl's quotes), the notification unit, and for each
/// unit whose failure it hears of, a drop-in (`OnFailure=`) and the message (JSON).
fn notify_files(
    spec: &Deployment,
    url: &crate::input::NotifyUrl,
    t: &dyn Fn(&str) -> Result<String>,
) -> Result<Vec<WriteFile>> {
    let layout = layout();
    let units = &layout.units;
    let host = spec.domain.as_ref().map_or("the VM", |d| d.as_str());
    let mut told = vec![(
        &units.backup,
        "backup-failed",
        format!(
            "imgforge: the backup of {host} failed; `imgforge logs --host {host} --source backup` says why"
        ),
    )];
    if spec.tls.is_some() {
        told.push((
            &units.certbot,
            "certificate-renewal-failed",
            format!(
                "imgforge: certbot failed to renew the certificate of {host}; `imgforge status --host {host}` shows when it expires"
            ),
        ));
    }
    // A DNS registration that fails is retried by its timer and shown by `status`: its
    // unit does not fail, so it is not here.
    let mut files = vec![
        WriteFile::new(&layout.notify_curlrc, format!("url = \"{url}\"\n"), "0600"),
        WriteFile::new(
            &format!("{}/{}", layout.units_dir, units.notify),
            t("imgforge-notify@.service.hbs")?,
            "0644",
        ),
    ];
    for (unit, event, text) in told {
        let message = json!({ "text": text, "content": text, "event": event, "host": host });
        files.push(WriteFile::new(
            &format!("{}/{unit}.json", layout.notify_dir),
            serde_json::to_string(&message)? + "\n",
            "0644",
        ));
        files.push(WriteFile::new(
            &format!("{}/{unit}.d/imgforge-notify.conf", layout.units_dir),
            t("notify-on-failure.conf.hbs")?,
            "0644",
        ));
    }
    Ok(files)
}

fn program_file(needs: program::Needs) -> Result<WriteFile> {
    Ok(WriteFile::gz_b64(
        &layout().program,
        gzip_base64(&program::zipapp_for(needs))?,
        "0755",
    ))
}

/// The user-data of a provisioning boot (`imgforge build --provision`): the deployment
/// and the program, and one command that installs the stack, loads the image, then
/// generalizes the disk and powers it off. No users, no keys: nobody logs in.
pub fn provisioning_user_data(spec: &Deployment) -> Result<String> {
    let layout = layout();
    let config = deploy_json(spec);
    let cloud_config = CloudConfig {
        users: Vec::new(),
        disable_root: true,
        ssh_pwauth: false,
        ssh_keys: None,
        ssh_genkeytypes: vec!["ed25519"],
        manage_etc_hosts: "localhost",
        write_files: vec![
            WriteFile::new(
                &layout.config,
                serde_json::to_string_pretty(&config)? + "\n",
                "0600",
            ),
            program_file(program::Needs {
                provision: true,
                bundle: !matches!(spec.app.bundle, Bundle::Registry | Bundle::Baked),
                ..program::Needs::CORE
            })?,
        ],
        runcmd: vec![vec![layout.program.clone(), "provision".to_owned()]],
        final_message: "imgforge: provisioning finished after $UPTIME seconds".into(),
    };
    let text = cloud_config.to_user_data()?;
    check_parses_back(&text)?;
    Ok(text)
}

/// Docker's env-file: one `NAME=VALUE` a line, the value taken literally to the end
/// of the line (validated: no line breaks, no NUL).
fn env_file(spec: &Deployment) -> String {
    let mut out = String::from(
        "# Generated by imgforge: the app container's environment (docker --env-file).\n",
    );
    for (name, value) in &spec.app.env {
        out.push_str(&format!("{name}={value}\n"));
    }
    out
}

fn docker_daemon_json(cluster: Option<&Cluster>) -> Result<String> {
    let mut daemon = json!({
        "log-driver": "json-file",
        "log-opts": { "max-size": "10m", "max-file": "5" },
        // Containers keep running while dockerd restarts (an upgrade of Docker itself).
        // Swarm mode refuses it: a cluster keeps the app up with its other nodes instead.
        "live-restore": cluster.is_none(),
        // No container process gains privileges (setuid binaries, file capabilities).
        "no-new-privileges": true,
    });
    if let Some(cluster) = cluster {
        // The manager serves the versions a deploy brings on the private network (plain
        // HTTP, content-addressed: every node pulls them by digest).
        daemon["insecure-registries"] = json!([cluster.network.to_string()]);
    }
    Ok(serde_json::to_string_pretty(&daemon).context("serializing daemon.json")? + "\n")
}

/// [`gzip`], then base64.
pub fn gzip_base64(data: &[u8]) -> Result<String> {
    Ok(base64::engine::general_purpose::STANDARD.encode(gzip(data)?))
}

/// gzip by Zopfli (smaller than zlib's best; user-data is small and limited in size),
/// with no timestamp or name: the same input gives the same bytes.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    zopfli::compress(
        zopfli::Options::default(),
        zopfli::Format::Gzip,
        data,
        &mut out,
    )
    .context("compressing")?;
    Ok(out)
}

/// Checks what imgforge generated, not what the user gave: the text starts with
/// `#cloud-config` and parses back to a document with the deployment in it.
fn check_parses_back(text: &str) -> Result<()> {
    anyhow::ensure!(
        text.starts_with("#cloud-config\n"),
        "internal error: generated user-data does not start with #cloud-config"
    );
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .context("internal error: generated user-data does not parse as YAML")?;
    anyhow::ensure!(
        value.get("runcmd").is_some() && value.get("write_files").is_some(),
        "internal error: generated user-data lost its runcmd or write_files"
    );
    Ok(())
}
