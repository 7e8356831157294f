//! Test doubles that are not part of the appliance (built only with the `testkit` feature).

pub mod double;
pub mod fuzz;
