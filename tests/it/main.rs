//! The integration tests: one test binary, a module per feature, one harness kit (`kit`).
//!
//! Every module's tests run as threads of this one process, so the kit is written for that:
//! every listener is on an ephemeral port, every data directory is a fresh temporary one, the
//! Talos doubles of each test sit on loopback addresses of their own (`kit::nets`), nothing sets
//! process-wide state (no `std::env::set_var`), and the CPU-heavy tests (QEMU, Chromium, the
//! bounds benchmarks) take the machine for themselves (`kit::turns`).
//!
//! `cargo test --test it <module>::` runs one feature's tests, e.g.
//! `BOOTPLANE_E2E=1 cargo test --test it firmware_e2e:: -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kit;

mod api;
mod architecture;
mod boot_http;
mod bounds;
mod browser;
mod crash;
mod crash_power;
mod evidence;
mod firmware_e2e;
mod fuzz;
mod images;
mod orchestrator;
mod refusals;
mod talos_api;
mod talos_config;
mod talos_events;
mod talos_secrets;
mod tftp;
