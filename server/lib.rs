//! bootplane: network boot and provisioning for Talos Linux clusters.
//!
//! See ARCHITECTURE.md for the map of modules, the layer order their imports follow, and the
//! invariants they keep.

pub mod api;
pub mod app;
pub mod assets;
pub mod auth;
pub mod boot;
pub mod cli;
pub mod config;
pub mod db;
pub mod dhcp;
pub mod http;
pub mod inventory;
pub mod model;
pub mod net;
pub mod ops;
pub mod orchestrator;
pub mod receivers;
pub mod state;
pub mod support;
pub mod talos;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tftp;
pub mod ui;
