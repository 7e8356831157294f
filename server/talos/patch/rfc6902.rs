//! RFC 6902 JSON patches, applied to the v1alpha1 document.

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

use super::documents::kind_name;
use super::PatchError;

pub(super) fn apply_json_patch(
    docs: &mut [Value],
    patch: &json_patch::Patch,
) -> Result<(), PatchError> {
    let [doc] = docs else {
        return Err(PatchError::JsonPatchMultiDocument { count: docs.len() });
    };
    // `patch_unsafe` leaves the document half-patched on error: the caller works on a copy.
    json_patch::patch_unsafe(doc, &patch.0).map_err(|err| operation_error(patch, &err))?;
    if !doc.is_object() {
        return Err(PatchError::At {
            location: "/".to_string(),
            message: format!(
                "JSON patch leaves the document as {}, not a mapping",
                kind_name(doc)
            ),
        });
    }
    Ok(())
}

fn operation_error(patch: &json_patch::Patch, err: &json_patch::PatchError) -> PatchError {
    let index = err.operation;
    let (op, path, from) = match patch.0.get(index) {
        Some(PatchOperation::Add(o)) => ("add", o.path.to_string(), None),
        Some(PatchOperation::Remove(o)) => ("remove", o.path.to_string(), None),
        Some(PatchOperation::Replace(o)) => ("replace", o.path.to_string(), None),
        Some(PatchOperation::Move(o)) => ("move", o.path.to_string(), Some(o.from.to_string())),
        Some(PatchOperation::Copy(o)) => ("copy", o.path.to_string(), Some(o.from.to_string())),
        Some(PatchOperation::Test(o)) => ("test", o.path.to_string(), None),
        None => ("unknown", err.path.to_string(), None),
    };
    let reason = match &err.kind {
        PatchErrorKind::TestFailed => "the value differs".to_string(),
        PatchErrorKind::InvalidFromPointer => format!(
            "\"from\" path {} does not exist",
            from.as_deref().unwrap_or("")
        ),
        PatchErrorKind::InvalidPointer if op == "add" => {
            "the parent of the path does not exist, or the index is out of range".to_string()
        }
        PatchErrorKind::InvalidPointer => "the path does not exist".to_string(),
        PatchErrorKind::CannotMoveInsideItself => "cannot move a value inside itself".to_string(),
        other => other.to_string(),
    };
    PatchError::OperationFailed {
        index,
        op,
        location: if path.is_empty() {
            "/".to_string()
        } else {
            path
        },
        reason,
    }
}
