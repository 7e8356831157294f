//! bootplane: network boot and provisioning for Talos Linux clusters.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod api;
pub mod app;
pub mod auth;
pub mod boot;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod dhcp;
pub mod images;
pub mod inventory;
pub mod materials;
pub mod metrics;
pub mod model;
pub mod net;
pub mod ops;
pub mod orchestrator;
pub mod oui;
pub mod ra;
pub mod serve;
pub mod talos;
pub mod tftp;
pub mod tls;
pub mod ui;
