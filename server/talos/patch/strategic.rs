//! Strategic merge: planning a patch into deletes and merges per document, and running the
//! `$patch: delete` directives.

use serde_json::{Map, Value};

use super::documents::{kind_name, location, pointer, scalar_text, text_of, DocId, Seg};
use super::{PatchError, IDENTITY_KEYS, LOOKUP_FAILED, PATCH_DELETE, PATCH_KEY, V1ALPHA1_KEYS};

/// What a strategic merge patch does, in Talos's order: the deletes aimed at the v1alpha1
/// document, then its merge, then for each other document its deletes and its merge.
pub(super) enum Step {
    Delete { doc: DocId, delete: Delete },
    Merge { doc: DocId, value: Value },
}

/// One `$patch: delete`: the path of the mapping that held it, and for a list item the
/// selector that picks the config item to remove.
#[derive(Debug)]
pub(super) struct Delete {
    pub(super) path: Vec<Seg>,
    pub(super) item: Option<ItemSelector>,
}

/// A list item is selected by the first key of the patch item other than `$patch`; Talos
/// compares the config item's value as a string with the patch value's text.
#[derive(Debug)]
pub(super) struct ItemSelector {
    pub(super) key: String,
    pub(super) value: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Parent {
    Document,
    Mapping,
    Sequence,
}

pub(super) fn plan_strategic(docs: &[Value]) -> Result<Vec<Step>, PatchError> {
    let mut v1alpha1_deletes = Vec::new();
    let mut v1alpha1_merges = Vec::new();
    let mut others = Vec::new();
    let mut seen: Vec<DocId> = Vec::new();

    for (position, doc) in docs.iter().enumerate() {
        let index = position + 1;
        if !doc.is_object() {
            return Err(PatchError::NotAMapping {
                index,
                found: kind_name(doc),
            });
        }
        let invalid = |message: String| PatchError::InvalidDocument { index, message };

        let mut value = doc.clone();
        let mut deletes = Vec::new();
        let emptied = collect_deletes(&mut value, Parent::Document, &mut Vec::new(), &mut deletes)
            .map_err(invalid)?;

        let selector_doc = delete_target(doc, &deletes).map_err(invalid)?;
        for delete in deletes {
            let step = Step::Delete {
                doc: selector_doc.clone(),
                delete,
            };
            if selector_doc.is_v1alpha1() {
                v1alpha1_deletes.push(step);
            } else {
                others.push(step);
            }
        }

        if emptied || is_identity_only(&value) {
            continue;
        }
        let id = merge_target(&value).map_err(invalid)?;
        if seen.contains(&id) {
            return Err(PatchError::DuplicateDocument(id.to_string()));
        }
        seen.push(id.clone());
        let is_v1alpha1 = id.is_v1alpha1();
        let step = Step::Merge { doc: id, value };
        if is_v1alpha1 {
            v1alpha1_merges.push(step);
        } else {
            others.push(step);
        }
    }

    v1alpha1_deletes.extend(v1alpha1_merges);
    v1alpha1_deletes.extend(others);
    Ok(v1alpha1_deletes)
}

/// The document a patch document's deletes aim at: both `apiVersion` and `kind`, or neither
/// (the v1alpha1 document); deleting a whole document needs both.
fn delete_target(doc: &Value, deletes: &[Delete]) -> Result<DocId, String> {
    let api_version = text_of(doc, "apiVersion").unwrap_or_default();
    let kind = text_of(doc, "kind").unwrap_or_default();
    if deletes.iter().any(|d| d.path.is_empty()) {
        if api_version.is_empty() {
            return Err(format!(
                "missing apiVersion in document for which {PATCH_KEY}: {PATCH_DELETE} is used"
            ));
        }
        if kind.is_empty() {
            return Err(format!(
                "missing kind in document for which {PATCH_KEY}: {PATCH_DELETE} is used"
            ));
        }
    }
    match (api_version.is_empty(), kind.is_empty()) {
        (true, true) => Ok(DocId::v1alpha1()),
        (false, false) => Ok(DocId {
            api_version,
            kind,
            name: text_of(doc, "name").filter(|name| !name.is_empty()),
        }),
        _ if deletes.is_empty() => Ok(DocId::v1alpha1()),
        _ => Err(format!(
            "kind and apiVersion must be both set to use {PATCH_KEY}: {PATCH_DELETE}"
        )),
    }
}

/// The document a patch document merges into, decided as Talos decodes documents: a `kind`
/// (with its `apiVersion`), or no kind and a v1alpha1 top-level key.
fn merge_target(doc: &Value) -> Result<DocId, String> {
    let api_version = text_of(doc, "apiVersion").unwrap_or_default();
    match text_of(doc, "kind").filter(|kind| !kind.is_empty()) {
        Some(kind) if api_version.is_empty() => Err(format!("kind {kind} has no apiVersion")),
        Some(kind) => Ok(DocId {
            api_version,
            kind,
            name: text_of(doc, "name").filter(|name| !name.is_empty()),
        }),
        None if api_version.is_empty() && V1ALPHA1_KEYS.iter().any(|k| doc.get(*k).is_some()) => {
            Ok(DocId::v1alpha1())
        }
        None => Err("missing kind".to_string()),
    }
}

/// True when a document holds nothing but identity keys: Talos drops it from the patch.
fn is_identity_only(doc: &Value) -> bool {
    doc.as_object().is_some_and(|map| {
        map.iter().all(|(key, value)| {
            IDENTITY_KEYS.contains(&key.as_str()) && !value.is_array() && !value.is_object()
        })
    })
}

/// Removes the `$patch: delete` directives from a patch value, recording each in `out`.
/// Returns true when the value itself is to be removed from the patch: it held the directive,
/// or every key or item it had was removed.
fn collect_deletes(
    value: &mut Value,
    parent: Parent,
    path: &mut Vec<Seg>,
    out: &mut Vec<Delete>,
) -> Result<bool, String> {
    match value {
        Value::Object(map) => {
            let entries = std::mem::take(map);
            let selector = first_selector(&entries);
            let mut kept = Map::new();
            let mut removed = false;
            for (key, mut child) in entries {
                if key == PATCH_KEY {
                    if child.as_str() != Some(PATCH_DELETE) {
                        return Err(format!(
                            "{}: unsupported {PATCH_KEY}: {child}; only {PATCH_KEY}: \
                             {PATCH_DELETE} is supported",
                            pointer(path)
                        ));
                    }
                    let item = match parent {
                        Parent::Sequence => Some(selector.ok_or_else(|| {
                            format!(
                                "{}: a list item with {PATCH_KEY}: {PATCH_DELETE} needs a \
                                 key: value to select the item",
                                pointer(path)
                            )
                        })?),
                        Parent::Mapping => {
                            if path.iter().any(|seg| matches!(seg, Seg::Index(_))) {
                                return Err(format!(
                                    "{}: cannot delete an inner key of a list item",
                                    pointer(path)
                                ));
                            }
                            None
                        }
                        Parent::Document => None,
                    };
                    out.push(Delete {
                        path: path.clone(),
                        item,
                    });
                    return Ok(true);
                }
                path.push(Seg::Key(key.clone()));
                let remove = collect_deletes(&mut child, Parent::Mapping, path, out)?;
                path.pop();
                if remove {
                    removed = true;
                } else {
                    kept.insert(key, child);
                }
            }
            let emptied = removed && kept.is_empty();
            *map = kept;
            Ok(emptied)
        }
        Value::Array(items) => {
            let mut kept = Vec::with_capacity(items.len());
            let mut removed = false;
            for mut item in std::mem::take(items) {
                path.push(Seg::Index(kept.len()));
                let remove = collect_deletes(&mut item, Parent::Sequence, path, out)?;
                path.pop();
                if remove {
                    removed = true;
                } else {
                    kept.push(item);
                }
            }
            let emptied = removed && kept.is_empty();
            *items = kept;
            Ok(emptied)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(false),
    }
}

fn first_selector(entries: &Map<String, Value>) -> Option<ItemSelector> {
    entries
        .iter()
        .find(|(key, value)| !(key.as_str() == PATCH_KEY && value.as_str() == Some(PATCH_DELETE)))
        .map(|(key, value)| ItemSelector {
            key: key.clone(),
            value: scalar_text(value),
        })
}

pub(super) fn apply_delete(
    docs: &mut Vec<Value>,
    id: &DocId,
    delete: &Delete,
) -> Result<(), PatchError> {
    let fail = |message: String| PatchError::At {
        location: location(id, &delete.path),
        message: format!("{PATCH_KEY}: {PATCH_DELETE}: {message}"),
    };
    let Some(position) = docs.iter().position(|doc| DocId::of_config(doc) == *id) else {
        return Err(fail(format!(
            "{LOOKUP_FAILED}: the config has no document {id}"
        )));
    };
    if delete.path.is_empty() {
        if id.is_v1alpha1() {
            return Err(fail(
                "can't delete the root of the v1alpha1 document".to_string(),
            ));
        }
        docs.remove(position);
        return Ok(());
    }
    delete_at(&mut docs[position], &delete.path, delete.item.as_ref()).map_err(fail)
}

fn delete_at(root: &mut Value, path: &[Seg], item: Option<&ItemSelector>) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("path is empty".to_string());
    };
    let mut current = root;
    for seg in parents {
        current = match (seg, current) {
            (Seg::Key(key), Value::Object(map)) => {
                map.get_mut(key).ok_or_else(|| LOOKUP_FAILED.to_string())?
            }
            (_, Value::Array(_)) => {
                return Err("searching for complex paths in lists is not supported".to_string())
            }
            _ => return Err(LOOKUP_FAILED.to_string()),
        };
    }
    match (last, current) {
        (Seg::Key(key), Value::Object(map)) => map
            .shift_remove(key)
            .map(drop)
            .ok_or_else(|| LOOKUP_FAILED.to_string()),
        (Seg::Index(_), Value::Array(items)) => {
            let Some(selector) = item else {
                return Err(LOOKUP_FAILED.to_string());
            };
            let found = items.iter().position(|candidate| {
                let value = candidate.get(&selector.key).and_then(Value::as_str);
                value.is_some() && value == selector.value.as_deref()
            });
            match found {
                Some(index) => {
                    items.remove(index);
                    Ok(())
                }
                None => Err(format!(
                    "{LOOKUP_FAILED}: no item with {}: {}",
                    selector.key,
                    selector.value.as_deref().unwrap_or("(not a scalar)")
                )),
            }
        }
        (Seg::Key(_), Value::Array(_)) => {
            Err("searching for non-integer keys in lists is not supported".to_string())
        }
        _ => Err(LOOKUP_FAILED.to_string()),
    }
}
