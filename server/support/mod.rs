//! Small shared services with no domain knowledge: the injectable clock, Prometheus metrics,
//! time formatting, lock handling.

pub mod clock;
pub mod metrics;
pub mod net_error;
pub mod time;
