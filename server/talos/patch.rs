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

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::{Map, Number, Value};

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

// ---------------------------------------------------------------------------------------------
// Parsing

/// The non-empty documents of the text, each with its 1-based position in the text.
fn parse_documents(text: &str) -> Result<Vec<(usize, Value)>, PatchError> {
    let trimmed = text.trim_start();
    let looks_like_json = trimmed.starts_with('[') || trimmed.starts_with('{');
    let json_error = if looks_like_json {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Null) => return Ok(Vec::new()),
            Ok(doc) => return Ok(vec![(1, doc)]),
            Err(err) => Some(err),
        }
    } else {
        None
    };
    match parse_yaml(text) {
        Ok(docs) => Ok(docs),
        // Like Talos, text that starts as a JSON list is reported as (broken) JSON.
        Err(yaml_error) => match json_error {
            Some(err) if trimmed.starts_with('[') => Err(PatchError::Syntax {
                format: "JSON",
                line: err.line(),
                column: err.column(),
                message: strip_location(&err.to_string(), err.line(), err.column()),
            }),
            _ => Err(yaml_error),
        },
    }
}

fn parse_yaml(text: &str) -> Result<Vec<(usize, Value)>, PatchError> {
    use serde::Deserialize;

    let mut docs = Vec::new();
    for (position, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = position + 1;
        let mut doc = serde_yaml_ng::Value::deserialize(de).map_err(yaml_syntax)?;
        doc.apply_merge().map_err(yaml_syntax)?;
        let doc =
            yaml_to_json(doc).map_err(|message| PatchError::InvalidDocument { index, message })?;
        if !doc.is_null() {
            docs.push((index, doc));
        }
    }
    Ok(docs)
}

fn yaml_syntax(err: serde_yaml_ng::Error) -> PatchError {
    let (line, column) = err.location().map_or((0, 0), |at| (at.line(), at.column()));
    PatchError::Syntax {
        format: "YAML",
        line,
        column,
        message: strip_location(&err.to_string(), line, column),
    }
}

/// Drops the " at line L column C" both parsers add, since the error states it once already.
fn strip_location(message: &str, line: usize, column: usize) -> String {
    message.replacen(&format!(" at line {line} column {column}"), "", 1)
}

fn yaml_to_json(value: serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Yaml;

    Ok(match value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => yaml_number(&n)?,
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(mapping) => {
            let mut map = Map::new();
            for (key, value) in mapping {
                let key = yaml_key(key)?;
                if map.contains_key(&key) {
                    return Err(format!("duplicate key '{key}'"));
                }
                map.insert(key, yaml_to_json(value)?);
            }
            Value::Object(map)
        }
        Yaml::Tagged(tagged) => yaml_to_json(tagged.value)?,
    })
}

/// Mapping keys become strings, as when Go decodes YAML into a string-keyed map.
fn yaml_key(key: serde_yaml_ng::Value) -> Result<String, String> {
    use serde_yaml_ng::Value as Yaml;

    match key {
        Yaml::String(s) => Ok(s),
        Yaml::Bool(b) => Ok(b.to_string()),
        Yaml::Number(n) => Ok(n.to_string()),
        Yaml::Tagged(tagged) => yaml_key(tagged.value),
        Yaml::Null | Yaml::Sequence(_) | Yaml::Mapping(_) => {
            Err("mapping keys must be strings".to_string())
        }
    }
}

fn yaml_number(n: &serde_yaml_ng::Number) -> Result<Value, String> {
    if let Some(i) = n.as_i64() {
        Ok(Value::from(i))
    } else if let Some(u) = n.as_u64() {
        Ok(Value::from(u))
    } else {
        n.as_f64()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("number {n} cannot be represented"))
    }
}

fn parse_operations(items: Vec<Value>) -> Result<json_patch::Patch, PatchError> {
    let mut ops = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        if !item.is_object() {
            return Err(PatchError::InvalidOperation {
                index,
                message: format!(
                    "expected a mapping with 'op' and 'path', found {}",
                    kind_name(&item)
                ),
            });
        }
        let op = serde_json::from_value::<PatchOperation>(item).map_err(|err| {
            PatchError::InvalidOperation {
                index,
                message: err.to_string(),
            }
        })?;
        ops.push(op);
    }
    Ok(json_patch::Patch(ops))
}

// ---------------------------------------------------------------------------------------------
// Documents and paths

/// Identity of a config document: Talos matches patch documents to config documents by it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DocId {
    api_version: String,
    kind: String,
    name: Option<String>,
}

impl DocId {
    fn v1alpha1() -> DocId {
        DocId {
            api_version: String::new(),
            kind: V1ALPHA1.to_string(),
            name: None,
        }
    }

    fn is_v1alpha1(&self) -> bool {
        self.api_version.is_empty() && self.kind == V1ALPHA1
    }

    /// The identity of a document of the config: kind-less documents are the v1alpha1 one.
    fn of_config(doc: &Value) -> DocId {
        match text_of(doc, "kind") {
            Some(kind) if !kind.is_empty() => DocId {
                api_version: text_of(doc, "apiVersion").unwrap_or_default(),
                kind,
                name: text_of(doc, "name").filter(|name| !name.is_empty()),
            },
            _ => DocId::v1alpha1(),
        }
    }
}

impl std::fmt::Display for DocId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_v1alpha1() {
            return f.write_str(V1ALPHA1);
        }
        write!(f, "{}/{}", self.api_version, self.kind)?;
        if let Some(name) = &self.name {
            write!(f, "/{name}")?;
        }
        Ok(())
    }
}

/// One step of a path into a document.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// RFC 6901 pointer of a path ("/" for the document itself).
fn pointer(path: &[Seg]) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    let mut out = String::new();
    for seg in path {
        out.push('/');
        match seg {
            Seg::Key(key) => out.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Seg::Index(index) => out.push_str(&index.to_string()),
        }
    }
    out
}

/// Where in the config something happened: the pointer, prefixed by the document for
/// documents other than v1alpha1.
fn location(doc: &DocId, path: &[Seg]) -> String {
    if doc.is_v1alpha1() {
        pointer(path)
    } else {
        format!("document {doc}: {}", pointer(path))
    }
}

/// The text of a scalar, as a YAML node holds it; `None` for absent, null and collections.
fn text_of(doc: &Value, key: &str) -> Option<String> {
    doc.get(key).and_then(scalar_text)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A copy without the nulls of mappings: a null in a patch never sets anything.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Strategic merge: planning

/// What a strategic merge patch does, in Talos's order: the deletes aimed at the v1alpha1
/// document, then its merge, then for each other document its deletes and its merge.
enum Step {
    Delete { doc: DocId, delete: Delete },
    Merge { doc: DocId, value: Value },
}

/// One `$patch: delete`: the path of the mapping that held it, and for a list item the
/// selector that picks the config item to remove.
#[derive(Debug)]
struct Delete {
    path: Vec<Seg>,
    item: Option<ItemSelector>,
}

/// A list item is selected by the first key of the patch item other than `$patch`; Talos
/// compares the config item's value as a string with the patch value's text.
#[derive(Debug)]
struct ItemSelector {
    key: String,
    value: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Parent {
    Document,
    Mapping,
    Sequence,
}

fn plan_strategic(docs: &[Value]) -> Result<Vec<Step>, PatchError> {
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

// ---------------------------------------------------------------------------------------------
// Strategic merge: deletes

fn apply_delete(docs: &mut Vec<Value>, id: &DocId, delete: &Delete) -> Result<(), PatchError> {
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

// ---------------------------------------------------------------------------------------------
// Strategic merge: merging

/// How a list is merged when it is not simply concatenated.
#[derive(Clone, Copy)]
enum ListRule {
    /// `merge:"replace"`: the patch value replaces the config value.
    Replace,
    /// A keyed list: a patch item merges into the first config item it matches.
    Keyed(fn(&Value, &Value) -> bool),
}

/// A field with its own merge rule; `*` in the path stands for any list index.
struct FieldRule {
    api_version: &'static str,
    kind: &'static str,
    path: &'static [&'static str],
    rule: ListRule,
}

/// The fields of Talos config types that are not merged by the default rules.
const FIELD_RULES: &[FieldRule] = &[
    FieldRule {
        api_version: "",
        kind: V1ALPHA1,
        path: &["cluster", "network", "podSubnets"],
        rule: ListRule::Replace,
    },
    FieldRule {
        api_version: "",
        kind: V1ALPHA1,
        path: &["cluster", "network", "serviceSubnets"],
        rule: ListRule::Replace,
    },
    FieldRule {
        api_version: "",
        kind: V1ALPHA1,
        path: &["cluster", "apiServer", "auditPolicy"],
        rule: ListRule::Replace,
    },
    FieldRule {
        api_version: "",
        kind: V1ALPHA1,
        path: &["machine", "network", "interfaces"],
        rule: ListRule::Keyed(same_device),
    },
    FieldRule {
        api_version: "",
        kind: V1ALPHA1,
        path: &["machine", "network", "interfaces", "*", "vlans"],
        rule: ListRule::Keyed(same_vlan),
    },
    FieldRule {
        api_version: "",
        kind: V1ALPHA1,
        path: &["cluster", "apiServer", "admissionControl"],
        rule: ListRule::Keyed(same_admission_plugin),
    },
    FieldRule {
        api_version: "v1alpha1",
        kind: "ExtensionServiceConfig",
        path: &["configFiles"],
        rule: ListRule::Keyed(same_config_file),
    },
    FieldRule {
        api_version: "v1alpha1",
        kind: "NetworkRuleConfig",
        path: &["portSelector", "ports"],
        rule: ListRule::Replace,
    },
    FieldRule {
        api_version: "v1alpha1",
        kind: "NetworkRuleConfig",
        path: &["ingress"],
        rule: ListRule::Replace,
    },
];

fn rule_for(doc: &DocId, path: &[Seg]) -> Option<ListRule> {
    FIELD_RULES
        .iter()
        .find(|rule| {
            rule.api_version == doc.api_version
                && rule.kind == doc.kind
                && rule.path.len() == path.len()
                && rule.path.iter().zip(path).all(|(want, seg)| match seg {
                    Seg::Key(key) => want == key,
                    Seg::Index(_) => *want == "*",
                })
        })
        .map(|rule| rule.rule)
}

/// Network devices match by `interface` name; a device without one matches an identical
/// `deviceSelector`. Talos compares selectors with `==`, where `physical` is a pointer, so
/// selectors that set it never match.
fn same_device(existing: &Value, new: &Value) -> bool {
    if let Some(name) = new.get("interface").and_then(Value::as_str) {
        if !name.is_empty() {
            return existing.get("interface").and_then(Value::as_str) == Some(name);
        }
    }
    match (existing.get("deviceSelector"), new.get("deviceSelector")) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let sets_physical =
                |m: &Map<String, Value>| m.get("physical").is_some_and(|v| !v.is_null());
            !sets_physical(a) && !sets_physical(b) && non_zero_fields(a) == non_zero_fields(b)
        }
        _ => false,
    }
}

/// The fields of a typed struct that differ from their zero value.
fn non_zero_fields(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(_, v)| !v.is_null() && !is_zero_scalar(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn same_vlan(existing: &Value, new: &Value) -> bool {
    let id = |v: &Value| v.get("vlanId").and_then(Value::as_u64).unwrap_or(0);
    id(existing) == id(new)
}

fn same_admission_plugin(existing: &Value, new: &Value) -> bool {
    same_string_field(existing, new, "name")
}

fn same_config_file(existing: &Value, new: &Value) -> bool {
    same_string_field(existing, new, "mountPath")
}

fn same_string_field(existing: &Value, new: &Value, key: &str) -> bool {
    let field = |v: &Value| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    field(existing) == field(new)
}

fn is_zero_scalar(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Null | Value::Bool(_) | Value::Array(_) | Value::Object(_) => false,
    }
}

fn apply_merge(docs: &mut Vec<Value>, id: &DocId, value: Value) -> Result<(), PatchError> {
    match docs.iter().position(|doc| DocId::of_config(doc) == *id) {
        Some(position) => {
            let mut path = Vec::new();
            merge_value(&mut docs[position], &value, id, &mut path)
        }
        // Talos keeps the v1alpha1 document first.
        None if id.is_v1alpha1() => {
            docs.insert(0, without_nulls(&value));
            Ok(())
        }
        None => {
            docs.push(without_nulls(&value));
            Ok(())
        }
    }
}

fn merge_value(
    left: &mut Value,
    right: &Value,
    doc: &DocId,
    path: &mut Vec<Seg>,
) -> Result<(), PatchError> {
    if right.is_null() {
        return Ok(());
    }
    let left_kind = kind_name(left);
    let mismatch = |path: &[Seg]| PatchError::At {
        location: location(doc, path),
        message: format!("cannot merge {} into {left_kind}", kind_name(right)),
    };

    match rule_for(doc, path) {
        Some(ListRule::Keyed(matches)) => {
            let Value::Array(items) = right else {
                return Err(mismatch(path));
            };
            return match left {
                Value::Null => {
                    let mut list = Vec::new();
                    merge_keyed(&mut list, items, matches, doc, path)?;
                    if !list.is_empty() {
                        *left = Value::Array(list);
                    }
                    Ok(())
                }
                Value::Array(list) => merge_keyed(list, items, matches, doc, path),
                _ => Err(mismatch(path)),
            };
        }
        Some(ListRule::Replace) => {
            return match (&*left, right) {
                (Value::Null | Value::Array(_), Value::Array(_)) => {
                    *left = without_nulls(right);
                    Ok(())
                }
                // An empty mapping decodes to a zero struct, which Talos does not merge.
                (Value::Null | Value::Object(_), Value::Object(map)) => {
                    if !map.is_empty() {
                        *left = without_nulls(right);
                    }
                    Ok(())
                }
                _ => Err(mismatch(path)),
            };
        }
        None => {}
    }

    match left {
        Value::Null => *left = without_nulls(right),
        Value::Object(left_map) => {
            let Value::Object(right_map) = right else {
                return Err(mismatch(path));
            };
            for (key, value) in right_map {
                if value.is_null() {
                    continue;
                }
                path.push(Seg::Key(key.clone()));
                let existed = left_map.contains_key(key);
                let slot = left_map.entry(key.clone()).or_insert(Value::Null);
                let result = merge_value(slot, value, doc, path);
                if !existed && slot.is_null() {
                    left_map.shift_remove(key);
                }
                path.pop();
                result?;
            }
        }
        Value::Array(list) => {
            let Value::Array(items) = right else {
                return Err(mismatch(path));
            };
            list.extend(items.iter().map(without_nulls));
        }
        Value::String(s) => match right {
            Value::String(new) if new.is_empty() => {}
            Value::String(new) => s.clone_from(new),
            // A Go string field takes a number or boolean as its text.
            Value::Number(n) => *s = n.to_string(),
            Value::Bool(b) => *s = b.to_string(),
            Value::Null | Value::Array(_) | Value::Object(_) => return Err(mismatch(path)),
        },
        Value::Number(_) => match right {
            Value::Number(_) if is_zero_scalar(right) => {}
            Value::Number(_) => *left = right.clone(),
            _ => return Err(mismatch(path)),
        },
        Value::Bool(_) => match right {
            Value::Bool(_) => *left = right.clone(),
            // A Go bool field also takes YAML 1.1 words.
            Value::String(word) => match yaml11_bool(word) {
                Some(b) => *left = Value::Bool(b),
                None => return Err(mismatch(path)),
            },
            _ => return Err(mismatch(path)),
        },
    }
    Ok(())
}

fn merge_keyed(
    list: &mut Vec<Value>,
    items: &[Value],
    matches: fn(&Value, &Value) -> bool,
    doc: &DocId,
    path: &mut Vec<Seg>,
) -> Result<(), PatchError> {
    for item in items.iter().filter(|item| !item.is_null()) {
        match list.iter().position(|existing| matches(existing, item)) {
            Some(index) => {
                path.push(Seg::Index(index));
                let result = merge_value(&mut list[index], item, doc, path);
                path.pop();
                result?;
            }
            None => list.push(without_nulls(item)),
        }
    }
    Ok(())
}

fn yaml11_bool(word: &str) -> Option<bool> {
    match word {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            Some(false)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON patch

fn apply_json_patch(docs: &mut [Value], patch: &json_patch::Patch) -> Result<(), PatchError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1alpha1 config with something for every rule to act on.
    const BASE: &str = r#"
version: v1alpha1
machine:
  type: controlplane
  certSANs: [10.0.0.10]
  install:
    disk: /dev/sda
    wipe: true
  nodeLabels:
    node.kubernetes.io/exclude-from-external-load-balancers: ""
  network:
    hostname: cp-1
    interfaces:
      - interface: eth0
        addresses: [10.0.0.2/24]
        mtu: 1500
        vlans:
          - vlanId: 100
            addresses: [10.100.0.2/24]
      - deviceSelector:
          hardwareAddr: "52:54:00:00:00:01"
        addresses: [10.1.0.2/24]
cluster:
  controlPlane:
    endpoint: https://10.0.0.10:6443
  network:
    podSubnets: [10.244.0.0/16]
    serviceSubnets: [10.96.0.0/12]
  apiServer:
    certSANs: [10.0.0.10]
    admissionControl:
      - name: PodSecurity
        configuration:
          apiVersion: pod-security.admission.config.k8s.io/v1alpha1
          kind: PodSecurityConfiguration
          defaults:
            enforce: baseline
          exemptions:
            namespaces: [kube-system]
"#;

    /// BASE plus two multi-document kinds.
    const MULTI: &str = r#"
version: v1alpha1
machine:
  network:
    hostname: cp-1
---
apiVersion: v1alpha1
kind: SideroLinkConfig
apiUrl: https://siderolink.example/join
---
apiVersion: v1alpha1
kind: ExtensionServiceConfig
name: nut-client
configFiles:
  - content: MONITOR ups
    mountPath: /usr/local/etc/nut/upsmon.conf
environment:
  - UPS_NAME=ups
"#;

    /// Marks a pointer that must not resolve.
    const ABSENT: &str = "<absent>";

    struct Case {
        name: &'static str,
        /// The config as YAML documents; empty for BASE.
        config: &'static str,
        patches: &'static [&'static str],
        /// Pointers into the list of documents (`/0/machine/...`) with their expected JSON
        /// value, or a substring of the error.
        want: Result<&'static [(&'static str, &'static str)], &'static str>,
    }

    fn config_docs(text: &str) -> Vec<Value> {
        let text = if text.is_empty() { BASE } else { text };
        parse_documents(text)
            .expect("config parses")
            .into_iter()
            .map(|(_, doc)| doc)
            .collect()
    }

    fn run(case: &Case) -> Result<Vec<Value>, PatchError> {
        let mut docs = config_docs(case.config);
        let mut patches = Vec::new();
        for (i, text) in case.patches.iter().enumerate() {
            patches.push((format!("p{}", i + 1), Patch::parse(text)?));
        }
        apply_all(&mut docs, &patches)?;
        Ok(docs)
    }

    fn check(cases: &[Case]) {
        let mut failures = Vec::new();
        for case in cases {
            match (run(case), &case.want) {
                (Ok(docs), Ok(expect)) => {
                    let all = Value::Array(docs);
                    for (ptr, want) in *expect {
                        let got = all.pointer(ptr);
                        let ok = if *want == ABSENT {
                            got.is_none()
                        } else {
                            let want: Value = serde_json::from_str(want).expect("want is JSON");
                            got == Some(&want)
                        };
                        if !ok {
                            failures.push(format!(
                                "{}: {ptr} is {}, want {want}",
                                case.name,
                                got.map_or(ABSENT.to_string(), Value::to_string)
                            ));
                        }
                    }
                }
                (Err(err), Err(want)) => {
                    if !err.to_string().contains(want) {
                        failures.push(format!("{}: error '{err}', want '{want}'", case.name));
                    }
                }
                (Ok(docs), Err(want)) => failures.push(format!(
                    "{}: succeeded with {}, want error '{want}'",
                    case.name,
                    Value::Array(docs)
                )),
                (Err(err), Ok(_)) => failures.push(format!("{}: error '{err}'", case.name)),
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn strategic_merge_follows_talos_rules() {
        check(&[
            Case {
                name: "maps merge recursively, new keys are added",
                config: "",
                patches: &["machine:\n  install:\n    image: installer:v1\n  kubelet:\n    extraArgs:\n      rotate-server-certificates: true\n"],
                want: Ok(&[
                    ("/0/machine/install/disk", r#""/dev/sda""#),
                    ("/0/machine/install/image", r#""installer:v1""#),
                    ("/0/machine/kubelet/extraArgs/rotate-server-certificates", "true"),
                    ("/0/machine/type", r#""controlplane""#),
                ]),
            },
            Case {
                name: "a non-zero scalar replaces",
                config: "",
                patches: &["cluster:\n  controlPlane:\n    endpoint: https://cp.example:6443\n"],
                want: Ok(&[("/0/cluster/controlPlane/endpoint", r#""https://cp.example:6443""#)]),
            },
            Case {
                name: "empty string and zero leave the target alone",
                config: "",
                patches: &["machine:\n  install:\n    disk: \"\"\n  network:\n    interfaces:\n      - interface: eth0\n        mtu: 0\n"],
                want: Ok(&[
                    ("/0/machine/install/disk", r#""/dev/sda""#),
                    ("/0/machine/network/interfaces/0/mtu", "1500"),
                ]),
            },
            Case {
                name: "false always replaces",
                config: "",
                patches: &["machine:\n  install:\n    wipe: false\n"],
                want: Ok(&[("/0/machine/install/wipe", "false")]),
            },
            Case {
                name: "true replaces false",
                config: "version: v1alpha1\nmachine:\n  install:\n    wipe: false\n",
                patches: &["machine:\n  install:\n    wipe: true\n"],
                want: Ok(&[("/0/machine/install/wipe", "true")]),
            },
            Case {
                name: "null in the patch changes nothing",
                config: "",
                patches: &["machine:\n  install: null\n  network:\n    hostname: ~\n"],
                want: Ok(&[
                    ("/0/machine/install/disk", r#""/dev/sda""#),
                    ("/0/machine/network/hostname", r#""cp-1""#),
                ]),
            },
            Case {
                name: "lists are appended",
                config: "",
                patches: &["machine:\n  certSANs: [cp.example, 10.0.0.11]\n"],
                want: Ok(&[("/0/machine/certSANs", r#"["10.0.0.10","cp.example","10.0.0.11"]"#)]),
            },
            Case {
                name: "podSubnets and serviceSubnets are replaced",
                config: "",
                patches: &["cluster:\n  network:\n    podSubnets: [10.32.0.0/12]\n    serviceSubnets: [10.112.0.0/12, fd00:10:96::/112]\n"],
                want: Ok(&[
                    ("/0/cluster/network/podSubnets", r#"["10.32.0.0/12"]"#),
                    ("/0/cluster/network/serviceSubnets", r#"["10.112.0.0/12","fd00:10:96::/112"]"#),
                ]),
            },
            Case {
                name: "an empty replace list empties the target, as in Talos",
                config: "",
                patches: &["cluster:\n  network:\n    podSubnets: []\n"],
                want: Ok(&[("/0/cluster/network/podSubnets", "[]")]),
            },
            Case {
                name: "auditPolicy is replaced, not merged",
                config: "version: v1alpha1\ncluster:\n  apiServer:\n    auditPolicy:\n      kind: Policy\n      rules:\n        - level: Metadata\n",
                patches: &["cluster:\n  apiServer:\n    auditPolicy:\n      apiVersion: audit.k8s.io/v1\n      rules:\n        - level: None\n"],
                want: Ok(&[
                    ("/0/cluster/apiServer/auditPolicy", r#"{"apiVersion":"audit.k8s.io/v1","rules":[{"level":"None"}]}"#),
                ]),
            },
            Case {
                name: "interfaces merge by interface name, new ones are appended",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [10.0.0.3/24]\n        dhcp: false\n      - interface: eth2\n        dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/0/addresses", r#"["10.0.0.2/24","10.0.0.3/24"]"#),
                    ("/0/machine/network/interfaces/0/dhcp", "false"),
                    ("/0/machine/network/interfaces/0/mtu", "1500"),
                    ("/0/machine/network/interfaces/2", r#"{"interface":"eth2","dhcp":true}"#),
                    ("/0/machine/network/interfaces/3", ABSENT),
                ]),
            },
            Case {
                name: "interfaces merge by identical deviceSelector",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - deviceSelector:\n          hardwareAddr: \"52:54:00:00:00:01\"\n        addresses: [10.1.0.3/24]\n      - deviceSelector:\n          hardwareAddr: \"52:54:00:00:00:02\"\n        dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/1/addresses", r#"["10.1.0.2/24","10.1.0.3/24"]"#),
                    ("/0/machine/network/interfaces/2/deviceSelector/hardwareAddr", r#""52:54:00:00:00:02""#),
                    ("/0/machine/network/interfaces/3", ABSENT),
                ]),
            },
            Case {
                name: "a deviceSelector that differs in another field is a new device",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - deviceSelector:\n          hardwareAddr: \"52:54:00:00:00:01\"\n          driver: virtio_net\n        dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/1/addresses", r#"["10.1.0.2/24"]"#),
                    ("/0/machine/network/interfaces/2/dhcp", "true"),
                ]),
            },
            Case {
                name: "vlans merge by vlanId inside the matched interface",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        vlans:\n          - vlanId: 100\n            addresses: [10.100.0.3/24]\n          - vlanId: 200\n            dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/0/vlans/0/addresses", r#"["10.100.0.2/24","10.100.0.3/24"]"#),
                    ("/0/machine/network/interfaces/0/vlans/1", r#"{"vlanId":200,"dhcp":true}"#),
                ]),
            },
            Case {
                name: "admission plugins merge by name",
                config: "",
                patches: &["cluster:\n  apiServer:\n    admissionControl:\n      - name: PodSecurity\n        configuration:\n          defaults:\n            enforce: restricted\n          exemptions:\n            namespaces: [rook-ceph]\n      - name: EventRateLimit\n        configuration:\n          kind: Configuration\n"],
                want: Ok(&[
                    ("/0/cluster/apiServer/admissionControl/0/configuration/defaults/enforce", r#""restricted""#),
                    ("/0/cluster/apiServer/admissionControl/0/configuration/exemptions/namespaces", r#"["kube-system","rook-ceph"]"#),
                    ("/0/cluster/apiServer/admissionControl/0/configuration/kind", r#""PodSecurityConfiguration""#),
                    ("/0/cluster/apiServer/admissionControl/1/name", r#""EventRateLimit""#),
                ]),
            },
            Case {
                name: "a number into a string field becomes its text",
                config: "",
                patches: &["machine:\n  install:\n    disk: 7\n"],
                want: Ok(&[("/0/machine/install/disk", r#""7""#)]),
            },
            Case {
                name: "a scalar onto a mapping is an error",
                config: "",
                patches: &["machine:\n  install: /dev/sdb\n"],
                want: Err("patch 'p1': /machine/install: cannot merge a string into a mapping"),
            },
        ]);
    }

    #[test]
    fn patch_delete_follows_talos_rules() {
        check(&[
            Case {
                name: "a key is deleted",
                config: "",
                patches: &["machine:\n  network:\n    hostname:\n      $patch: delete\n"],
                want: Ok(&[
                    ("/0/machine/network/hostname", ABSENT),
                    ("/0/machine/network/interfaces/0/interface", r#""eth0""#),
                ]),
            },
            Case {
                name: "a map key with a slash is deleted",
                config: "",
                patches: &["machine:\n  nodeLabels:\n    node.kubernetes.io/exclude-from-external-load-balancers:\n      $patch: delete\n"],
                want: Ok(&[("/0/machine/nodeLabels", "{}")]),
            },
            Case {
                name: "a list item is deleted by its selector, before the merge re-adds one",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        $patch: delete\n      - interface: eth0\n        dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/0/deviceSelector/hardwareAddr", r#""52:54:00:00:00:01""#),
                    ("/0/machine/network/interfaces/1", r#"{"interface":"eth0","dhcp":true}"#),
                    ("/0/machine/network/interfaces/2", ABSENT),
                ]),
            },
            Case {
                name: "an admission plugin is deleted by name",
                config: "",
                patches: &["cluster:\n  apiServer:\n    admissionControl:\n      - name: PodSecurity\n        $patch: delete\n"],
                want: Ok(&[("/0/cluster/apiServer/admissionControl", "[]")]),
            },
            Case {
                name: "deletes and merges combine in one patch",
                config: "",
                patches: &["machine:\n  network:\n    hostname:\n      $patch: delete\n  install:\n    image: installer:v2\n"],
                want: Ok(&[
                    ("/0/machine/network/hostname", ABSENT),
                    ("/0/machine/install/image", r#""installer:v2""#),
                ]),
            },
            Case {
                name: "deleting an absent key fails",
                config: "",
                patches: &["machine:\n  install:\n    extraKernelArgs:\n      $patch: delete\n"],
                want: Err("patch 'p1': /machine/install/extraKernelArgs: $patch: delete: lookup failed"),
            },
            Case {
                name: "deleting under an absent parent fails",
                config: "",
                patches: &["machine:\n  kubelet:\n    extraArgs:\n      $patch: delete\n"],
                want: Err("/machine/kubelet/extraArgs: $patch: delete: lookup failed"),
            },
            Case {
                name: "deleting an absent list item fails",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth9\n        $patch: delete\n"],
                want: Err("lookup failed: no item with interface: eth9"),
            },
            Case {
                name: "an inner key of a list item cannot be deleted",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        mtu:\n          $patch: delete\n"],
                want: Err("/machine/network/interfaces/0/mtu: cannot delete an inner key of a list item"),
            },
            Case {
                name: "a list item in a nested list cannot be deleted",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        vlans:\n          - vlanId: \"100\"\n            $patch: delete\n"],
                want: Err("searching for complex paths in lists is not supported"),
            },
            Case {
                name: "a list item needs a selector key",
                config: "",
                patches: &["machine:\n  certSANs:\n    - $patch: delete\n"],
                want: Err("needs a key: value to select the item"),
            },
            Case {
                name: "only the delete directive is known",
                config: "",
                patches: &["machine:\n  certSANs:\n    $patch: replace\n"],
                want: Err("unsupported $patch: \"replace\""),
            },
            Case {
                name: "the v1alpha1 root cannot be deleted",
                config: "",
                patches: &["$patch: delete\n"],
                want: Err("missing apiVersion in document for which $patch: delete is used"),
            },
            Case {
                name: "a whole document is deleted by apiVersion and kind",
                config: MULTI,
                patches: &["apiVersion: v1alpha1\nkind: SideroLinkConfig\n$patch: delete\n"],
                want: Ok(&[
                    ("/1/kind", r#""ExtensionServiceConfig""#),
                    ("/2", ABSENT),
                ]),
            },
            Case {
                name: "an item of a named document is deleted",
                config: MULTI,
                patches: &["apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: nut-client\nconfigFiles:\n  - content: MONITOR ups\n    $patch: delete\n"],
                want: Ok(&[("/2/configFiles", "[]"), ("/2/environment", r#"["UPS_NAME=ups"]"#)]),
            },
            Case {
                name: "deleting in a document the config lacks fails",
                config: "",
                patches: &["apiVersion: v1alpha1\nkind: SideroLinkConfig\n$patch: delete\n"],
                want: Err("lookup failed: the config has no document v1alpha1/SideroLinkConfig"),
            },
        ]);
    }

    #[test]
    fn json_patch_operations_apply_to_the_v1alpha1_document() {
        check(&[
            Case {
                name: "add",
                config: "",
                patches: &["- op: add\n  path: /machine/certSANs/-\n  value: cp.example\n- op: add\n  path: /machine/kubelet\n  value: {extraArgs: {v: \"2\"}}\n"],
                want: Ok(&[
                    ("/0/machine/certSANs", r#"["10.0.0.10","cp.example"]"#),
                    ("/0/machine/kubelet/extraArgs/v", r#""2""#),
                ]),
            },
            Case {
                name: "remove",
                config: "",
                patches: &[r#"[{"op": "remove", "path": "/machine/network/hostname"}]"#],
                want: Ok(&[("/0/machine/network/hostname", ABSENT)]),
            },
            Case {
                name: "replace, which does not follow the replace-only-if-non-zero rule",
                config: "",
                patches: &["- op: replace\n  path: /machine/install/disk\n  value: \"\"\n"],
                want: Ok(&[("/0/machine/install/disk", r#""""#)]),
            },
            Case {
                name: "move",
                config: "",
                patches: &["- op: move\n  from: /machine/network/hostname\n  path: /machine/nodeLabels/hostname\n"],
                want: Ok(&[
                    ("/0/machine/network/hostname", ABSENT),
                    ("/0/machine/nodeLabels/hostname", r#""cp-1""#),
                ]),
            },
            Case {
                name: "copy",
                config: "",
                patches: &["- op: copy\n  from: /machine/certSANs\n  path: /cluster/apiServer/certSANs\n"],
                want: Ok(&[("/0/cluster/apiServer/certSANs", r#"["10.0.0.10"]"#)]),
            },
            Case {
                name: "a passing test lets the next operations run",
                config: "",
                patches: &["- op: test\n  path: /machine/type\n  value: controlplane\n- op: replace\n  path: /machine/type\n  value: worker\n"],
                want: Ok(&[("/0/machine/type", r#""worker""#)]),
            },
            Case {
                name: "a failing test fails the patch and names the operation",
                config: "",
                patches: &["- op: replace\n  path: /machine/type\n  value: worker\n- op: test\n  path: /machine/install/disk\n  value: /dev/nvme0n1\n"],
                want: Err("patch 'p1': /machine/install/disk: operation 1 (test) failed: the value differs"),
            },
            Case {
                name: "removing a missing path fails",
                config: "",
                patches: &["- op: remove\n  path: /machine/install/foo\n"],
                want: Err("patch 'p1': /machine/install/foo: operation 0 (remove) failed: the path does not exist"),
            },
            Case {
                name: "adding under a missing parent fails",
                config: "",
                patches: &["- op: add\n  path: /machine/kubelet/extraArgs/v\n  value: \"2\"\n"],
                want: Err("/machine/kubelet/extraArgs/v: operation 0 (add) failed: the parent of the path does not exist"),
            },
            Case {
                name: "moving from a missing path fails",
                config: "",
                patches: &["- op: move\n  from: /machine/nope\n  path: /machine/yes\n"],
                want: Err("operation 0 (move) failed: \"from\" path /machine/nope does not exist"),
            },
            Case {
                name: "a multi-document config refuses JSON patches, as in Talos",
                config: MULTI,
                patches: &["- op: add\n  path: /machine/certSANs\n  value: [a]\n"],
                want: Err("JSON patches are not supported for multi-document machine configuration"),
            },
        ]);
    }

    #[test]
    fn multi_document_patches_merge_by_kind_and_name() {
        check(&[
            Case {
                name: "a new document kind is appended, the v1alpha1 part merged",
                config: "",
                patches: &["machine:\n  network:\n    hostname: cp-2\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://siderolink.example/join\n"],
                want: Ok(&[
                    ("/0/machine/network/hostname", r#""cp-2""#),
                    ("/1", r#"{"apiVersion":"v1alpha1","kind":"SideroLinkConfig","apiUrl":"https://siderolink.example/join"}"#),
                ]),
            },
            Case {
                name: "a document of the same kind and name is merged",
                config: MULTI,
                patches: &["apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: nut-client\nconfigFiles:\n  - content: MONITOR ups2\n    mountPath: /usr/local/etc/nut/upsmon.conf\n  - content: extra\n    mountPath: /usr/local/etc/nut/extra.conf\nenvironment:\n  - UPS_HOST=10.0.0.5\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://other.example/join\n"],
                want: Ok(&[
                    ("/1/apiUrl", r#""https://other.example/join""#),
                    ("/2/configFiles/0/content", r#""MONITOR ups2""#),
                    ("/2/configFiles/1/mountPath", r#""/usr/local/etc/nut/extra.conf""#),
                    ("/2/environment", r#"["UPS_NAME=ups","UPS_HOST=10.0.0.5"]"#),
                    ("/3", ABSENT),
                ]),
            },
            Case {
                name: "another name is another document",
                config: MULTI,
                patches: &["apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: tailscale\nenvironment: [TS_AUTHKEY=x]\n"],
                want: Ok(&[("/3/name", r#""tailscale""#), ("/2/name", r#""nut-client""#)]),
            },
            Case {
                name: "a patch that only names the version changes nothing",
                config: "",
                patches: &["version: v1alpha1\n"],
                want: Ok(&[("/0/machine/network/hostname", r#""cp-1""#), ("/1", ABSENT)]),
            },
        ]);
    }

    #[test]
    fn later_patches_see_the_result_of_earlier_ones() {
        check(&[
            Case {
                name: "a JSON patch tests what a strategic patch added",
                config: "",
                patches: &[
                    "machine:\n  certSANs: [cp.example]\n",
                    "- op: test\n  path: /machine/certSANs/1\n  value: cp.example\n- op: replace\n  path: /machine/certSANs/1\n  value: cp2.example\n",
                    "machine:\n  network:\n    hostname:\n      $patch: delete\n",
                ],
                want: Ok(&[
                    ("/0/machine/certSANs", r#"["10.0.0.10","cp2.example"]"#),
                    ("/0/machine/network/hostname", ABSENT),
                ]),
            },
            Case {
                name: "a delete fails when an earlier patch removed the key",
                config: "",
                patches: &[
                    "- op: remove\n  path: /machine/network/hostname\n",
                    "machine:\n  network:\n    hostname:\n      $patch: delete\n",
                ],
                want: Err("patch 'p2': /machine/network/hostname: $patch: delete: lookup failed"),
            },
        ]);
    }

    #[test]
    fn a_failing_patch_leaves_the_config_unchanged() {
        let mut docs = config_docs("");
        let before = docs.clone();
        let patches = vec![
            (
                "ok".to_string(),
                Patch::parse("machine:\n  certSANs: [a]\n").unwrap(),
            ),
            (
                "bad".to_string(),
                Patch::parse("- op: remove\n  path: /nope\n").unwrap(),
            ),
        ];
        let err = apply_all(&mut docs, &patches).unwrap_err();
        assert_eq!(
            err.to_string(),
            "patch 'bad': /nope: operation 0 (remove) failed: the path does not exist"
        );
        assert_eq!(docs, before);

        let err = apply(&mut docs, &Patch::parse("machine:\n  type: [x]\n").unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/machine/type: cannot merge a list into a string"
        );
        assert_eq!(docs, before);
    }

    #[test]
    fn merging_keeps_key_order_and_appends_new_keys() {
        let mut docs = config_docs(
            "version: v1alpha1\nmachine:\n  type: worker\n  install:\n    disk: /dev/sda\n",
        );
        let patch =
            Patch::parse("machine:\n  kubelet: {image: k}\n  install:\n    wipe: true\n").unwrap();
        apply(&mut docs, &patch).unwrap();
        assert_eq!(
            serde_json::to_string(&docs[0]).unwrap(),
            r#"{"version":"v1alpha1","machine":{"type":"worker","install":{"disk":"/dev/sda","wipe":true},"kubelet":{"image":"k"}}}"#
        );
    }

    #[test]
    fn parse_tells_json_patches_from_strategic_patches() {
        let cases: &[(&str, &str, usize)] = &[
            (
                "YAML list of operations",
                "- op: add\n  path: /a\n  value: 1\n",
                1,
            ),
            (
                "JSON list of operations",
                r#"[{"op":"remove","path":"/a"},{"op":"test","path":"/b","value":null}]"#,
                2,
            ),
            ("empty JSON list", "[]", 0),
        ];
        for (name, text, ops) in cases {
            match Patch::parse(text) {
                Ok(Patch::JsonPatch(patch)) => assert_eq!(patch.0.len(), *ops, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        let cases: &[(&str, &str, usize)] = &[
            ("YAML mapping", "machine:\n  network:\n    hostname: a\n", 1),
            (
                "JSON object",
                r#"{"machine": {"network": {"hostname": "a"}}}"#,
                1,
            ),
            (
                "two documents",
                "machine: {}\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\n",
                2,
            ),
            ("empty documents are skipped", "---\nmachine: {}\n---\n", 1),
            (
                "merge keys resolve",
                "x: &n {hostname: a}\nmachine:\n  network:\n    <<: *n\n",
                1,
            ),
        ];
        for (name, text, count) in cases {
            match Patch::parse(text) {
                Ok(Patch::StrategicMerge(docs)) => assert_eq!(docs.len(), *count, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases: &[(&str, &str, &str)] = &[
            ("invalid YAML", "machine:\n  network:\n    hostname: a\n   bad: [\n", "invalid YAML at line 4, column"),
            ("tab indentation", "machine:\n\tnetwork: {}\n", "invalid YAML at line 2, column 1"),
            ("broken JSON list", "[{\"op\": \"add\",\n \"path\": \"/a\"", "invalid JSON at line 2, column 13"),
            ("JSON-looking YAML is read as YAML", "[{\"op\": \"add\", \"path\": }]", "JSON patch operation 0: invalid type: null"),
            ("duplicate key", "machine: {}\nmachine: {}\n", "duplicate entry with key \"machine\""),
            ("a scalar document", "just some text\n", "document 1 of the patch is a string"),
            ("a scalar second document", "machine: {}\n---\n42\n", "document 2 of the patch is a number"),
            ("a list that is not operations", "- hostname: a\n", "JSON patch operation 0: missing field `op`"),
            ("a list of scalars", "- a\n- b\n", "JSON patch operation 0: expected a mapping with 'op' and 'path', found a string"),
            ("an unknown operation", "- op: add\n  path: /a\n  value: 1\n- op: frobnicate\n  path: /a\n", "JSON patch operation 1: unknown variant `frobnicate`"),
            ("an operation without its value", "- op: add\n  path: /a\n", "JSON patch operation 0: missing field `value`"),
            ("a JSON patch beside a mapping", "- op: remove\n  path: /a\n---\nmachine: {}\n", "must be the only document"),
            ("nothing", "# only a comment\n", "patch has no documents"),
            ("no kind and no v1alpha1 key", "hostname: a\n", "document 1 of the patch: missing kind"),
            ("a kind without apiVersion", "kind: SideroLinkConfig\napiUrl: x\n", "kind SideroLinkConfig has no apiVersion"),
            ("the same document twice", "apiVersion: v1alpha1\nkind: SideroLinkConfig\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\n", "document v1alpha1/SideroLinkConfig appears twice"),
            ("a delete with only a kind", "kind: SideroLinkConfig\napiUrl:\n  $patch: delete\n", "kind and apiVersion must be both set"),
        ];
        for (name, text, want) in cases {
            match Patch::parse(text) {
                Err(err) => assert!(
                    err.to_string().contains(want),
                    "{name}: '{err}' lacks '{want}'"
                ),
                Ok(patch) => panic!("{name}: parsed as {patch:?}"),
            }
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = Patch::parse("machine:\n  network: {hostname: a\n").unwrap_err();
        match err {
            PatchError::Syntax {
                format,
                line,
                column,
                message,
            } => {
                assert_eq!(format, "YAML");
                assert!(line >= 2, "line {line}");
                assert!(column > 0, "column {column}");
                let repeated = format!(" at line {line} column {column}");
                assert!(
                    !message.contains(&repeated),
                    "location repeated in '{message}'"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
