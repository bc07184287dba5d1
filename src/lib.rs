//! imgforge: one deployment description in; cloud-init user-data, an OCI bundle,
//! a NoCloud seed disk or a baked disk image out, and a local QEMU boot that proves it.

pub mod cli;
pub mod contract;
pub mod disk;
pub mod exit;
pub mod fsutil;
pub mod input;
pub mod keys;
pub mod oci;
pub mod provision;
pub mod qemu;
pub mod qemu_img;
pub mod remote;
pub mod render;
pub mod seed;
pub mod verify;
