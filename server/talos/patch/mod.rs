//! Machine-config patches, applied with the semantics `talosctl` gives them.
//!
//! A patch is either a *strategic merge* patch (one or more mappings, merged into the config
//! documents) or an RFC 6902 *JSON patch* (a list of operations). [`Patch::parse`] tells them
//! apart as Talos does; [`apply`] and [`apply_all`] change the rendered documents.
//!
//! The config is a list of `serde_json::Value` documents with their key order kept: the first is
//! the v1alpha1 document (`version: v1alpha1`, `machine`, `cluster`, …), any others are the
//! multi-document kinds (`apiVersion` + `kind`, and `name` for named kinds).
//!
//! # Strategic merge
//! Talos merges typed structs; this module reproduces its rules on JSON values:
//! - documents are matched by apiVersion/kind/name; a patch document with no match is appended;
//! - mappings merge key by key, and `null` in the patch changes nothing;
//! - a scalar replaces the target unless it is a zero value (`""`, `0`), but `false` always
//!   replaces; a key the target lacks takes the patch value as it is;
//! - lists are concatenated, except the fields Talos tags `merge:"replace"` (the patch list
//!   replaces the target list, even when empty) and the keyed lists (network interfaces by
//!   `interface` or identical `deviceSelector`, VLANs by `vlanId`, admission plugins by `name`,
//!   extension service config files by `mountPath`), whose items merge into the matching item
//!   and are appended when nothing matches;
//! - `$patch: delete` in a mapping removes that key from the config; in a list item it removes
//!   the first config list item whose value for the item's first other key is the same string.
//!   A document's deletes run before its merge, and deleting something absent fails with
//!   "lookup failed".
//!
//! # JSON patch
//! All six RFC 6902 operations, applied to the v1alpha1 document. Like Talos, a JSON patch is
//! refused when the config holds more than one document. Operations are numbered from 0.
//!
//! Here: the patch type, its errors and the entry points. `parse` reads patch text,
//! `documents` identifies config documents and paths, `strategic` plans a strategic merge and
//! runs its deletes, `merge` merges values with Talos's list rules, `rfc6902` applies JSON
//! patches.

use serde_json::Value;

mod documents;
mod merge;
mod parse;
mod rfc6902;
mod strategic;
#[cfg(test)]
mod tests;

use documents::kind_name;
use merge::apply_merge;
use parse::{parse_documents, parse_operations};
use rfc6902::apply_json_patch;
use strategic::{apply_delete, plan_strategic, Step};

/// `kind` of the legacy v1alpha1 document as Talos identifies it (it has no `apiVersion`).
const V1ALPHA1: &str = "v1alpha1";
/// The key that carries a patch directive inside a mapping.
const PATCH_KEY: &str = "$patch";
/// The only patch directive Talos knows.
const PATCH_DELETE: &str = "delete";
/// Top-level keys that make a kind-less document the v1alpha1 one.
const V1ALPHA1_KEYS: [&str; 4] = ["machine", "cluster", "debug", "persist"];
/// Keys a patch document may hold without changing anything (Talos drops such documents).
const IDENTITY_KEYS: [&str; 3] = ["version", "kind", "name"];
/// Talos's word for a delete whose target is not there.
const LOOKUP_FAILED: &str = "lookup failed";

/// A machine-config patch, as `talosctl --config-patch` takes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Patch {
    /// Documents to merge, as written (including their `$patch: delete` directives).
    StrategicMerge(Vec<Value>),
    /// RFC 6902 operations on the v1alpha1 document.
    JsonPatch(json_patch::Patch),
}

/// Why a patch could not be parsed or applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("invalid {format} at line {line}, column {column}: {message}")]
    Syntax {
        format: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("patch has no documents")]
    Empty,
    #[error(
        "document {index} of the patch is {found}; a patch is a mapping (strategic merge) \
         or a list of operations (JSON patch)"
    )]
    NotAMapping { index: usize, found: &'static str },
    #[error("a JSON patch (a list of operations) must be the only document of the patch")]
    JsonPatchNotAlone,
    #[error("JSON patch operation {index}: {message}")]
    InvalidOperation { index: usize, message: String },
    #[error("document {index} of the patch: {message}")]
    InvalidDocument { index: usize, message: String },
    #[error("document {0} appears twice in the patch")]
    DuplicateDocument(String),
    #[error("JSON patches are not supported for multi-document machine configuration ({count} documents)")]
    JsonPatchMultiDocument { count: usize },
    #[error("{location}: operation {index} ({op}) failed: {reason}")]
    OperationFailed {
        index: usize,
        op: &'static str,
        location: String,
        reason: String,
    },
    #[error("{location}: {message}")]
    At { location: String, message: String },
    #[error("patch '{name}': {source}")]
    Named {
        name: String,
        #[source]
        source: Box<PatchError>,
    },
}

impl Patch {
    /// Parses YAML or JSON text. A list of operations is a JSON patch; one or more mappings
    /// (YAML documents separated by `---`) are a strategic merge patch, checked here for
    /// misplaced `$patch: delete` directives and documents without a kind.
    pub fn parse(text: &str) -> Result<Patch, PatchError> {
        let mut docs = parse_documents(text)?;
        if docs.is_empty() {
            return Err(PatchError::Empty);
        }
        if docs.iter().any(|(_, doc)| doc.is_array()) {
            if docs.len() != 1 {
                return Err(PatchError::JsonPatchNotAlone);
            }
            let Some((_, Value::Array(items))) = docs.pop() else {
                return Err(PatchError::JsonPatchNotAlone);
            };
            return parse_operations(items).map(Patch::JsonPatch);
        }
        if let Some((index, doc)) = docs.iter().find(|(_, doc)| !doc.is_object()) {
            return Err(PatchError::NotAMapping {
                index: *index,
                found: kind_name(doc),
            });
        }
        let docs: Vec<Value> = docs.into_iter().map(|(_, doc)| doc).collect();
        plan_strategic(&docs)?;
        Ok(Patch::StrategicMerge(docs))
    }
}

/// Applies one patch. On error the documents are left as they were.
pub fn apply(docs: &mut Vec<Value>, patch: &Patch) -> Result<(), PatchError> {
    let mut work = docs.clone();
    apply_in_place(&mut work, patch)?;
    *docs = work;
    Ok(())
}

/// Applies patches in order, each to the result of the ones before. The error names the
/// failing patch; on error the documents are left as they were.
pub fn apply_all(docs: &mut Vec<Value>, patches: &[(String, Patch)]) -> Result<(), PatchError> {
    let mut work = docs.clone();
    for (name, patch) in patches {
        apply_in_place(&mut work, patch).map_err(|source| PatchError::Named {
            name: name.clone(),
            source: Box::new(source),
        })?;
    }
    *docs = work;
    Ok(())
}

fn apply_in_place(docs: &mut Vec<Value>, patch: &Patch) -> Result<(), PatchError> {
    match patch {
        Patch::StrategicMerge(patch_docs) => {
            for step in plan_strategic(patch_docs)? {
                match step {
                    Step::Delete { doc, delete } => apply_delete(docs, &doc, &delete)?,
                    Step::Merge { doc, value } => apply_merge(docs, &doc, value)?,
                }
            }
            Ok(())
        }
        Patch::JsonPatch(ops) => apply_json_patch(docs, ops),
    }
}
