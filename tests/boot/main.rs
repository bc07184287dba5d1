//! The QEMU tier: deployments booted for real in a Debian cloud-style guest
//! (tests/guest) under TCG, and checked from outside as a user would. Minutes per boot,
//! so every test is ignored by default:
//!   cargo test --test boot -- --ignored --test-threads=2 --nocapture
//! tests/ci.sh runs them all but the slow tier (its list is there).
//! Needs images/classifier/build.sh to have run, and root (the guest image is built with
//! mmdebstrap). On failure the serial log and the guest's cloud-init lines are printed
//! and the run directory is kept. `IMGFORGE_GUEST_SUITE=trixie` boots Debian 13.

#[path = "../common/mod.rs"]
mod common;

mod baked;
mod cluster;
mod day_two;
mod deploy;
mod deployment;
mod dns;
mod faults;
mod first_boot;
mod host_postgres;
mod minimal;
mod operable;
mod provision;
mod security;
