//! What Talos nodes push to bootplane: their events (`sink`), their kernel log (`kmsg`), and
//! which machine a pushing peer is (`peers`).

pub mod kmsg;
pub mod peers;
pub mod sink;
