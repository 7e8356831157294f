//! Operator actions shared by the web UI, the JSON API and the CLI: validation with errors
//! per field, and the writes behind them. Handlers stay thin; rules live here once.
//!
//! - `input`: the operator's machine input (CLI flags, UI form, API body) and its parse.
//! - `checks`: the rules a machine keeps against the inventory, the LAN and its cluster.
//! - `machines`: saving, reinstalling and removing machines.
//! - `configs`: a machine's rendered config, shown with its secrets hidden.
//! - `lan`: the LAN rules a static address follows.
//! - `cluster`, `patches`, `images`: the cluster, its config patches, boot assets.
//! - `materials`: glue from the database to Talos config rendering.

pub mod checks;
pub mod cluster;
pub mod configs;
pub mod images;
pub mod input;
pub mod lan;
pub mod machines;
pub mod materials;
pub mod patches;

use serde::Serialize;

use crate::db::DbError;
use crate::model::Mac;

/// A problem with one input field (`field` is the form/JSON name, e.g. `ip`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{}", summary(.0))]
    Invalid(Vec<FieldError>),
    /// The change is allowed but has consequences the operator must confirm.
    #[error("{0}")]
    NeedsConfirmation(String),
    #[error("machine {0} is not in the inventory")]
    NotFound(Mac),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl OpsError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        OpsError::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// The errors of one field, for showing beside it.
    pub fn for_field(&self, field: &str) -> Option<String> {
        match self {
            OpsError::Invalid(errors) => {
                let msgs: Vec<&str> = errors
                    .iter()
                    .filter(|e| e.field == field)
                    .map(|e| e.message.as_str())
                    .collect();
                (!msgs.is_empty()).then(|| msgs.join("; "))
            }
            _ => None,
        }
    }
}

/// Collects field errors.
#[derive(Debug, Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn has(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }

    fn into_result(self) -> Result<(), OpsError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(OpsError::Invalid(self.0))
        }
    }
}

/// Whether an operator's text clears a field: empty, or "none".
fn cleared(value: &str) -> bool {
    let v = value.trim();
    v.is_empty() || v == "none"
}
