//! The fast tier: every command through the real binary, checked by real tools
//! (cloud-init schema, skopeo, podman, containerd, e2fsprogs, sshd), no VM. Runs in
//! `cargo test`; the QEMU tier is `tests/boot`.

#[path = "../common/mod.rs"]
mod common;

mod boot;
mod build;
mod deploy;
mod hostile;
mod pack;
mod render;
mod seed;
mod verify;
