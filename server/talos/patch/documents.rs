//! Config documents and paths inside them: which document a patch document targets, and how
//! a path is written in errors.

use serde_json::Value;

use super::V1ALPHA1;

/// Identity of a config document: Talos matches patch documents to config documents by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DocId {
    pub(super) api_version: String,
    pub(super) kind: String,
    pub(super) name: Option<String>,
}

impl DocId {
    pub(super) fn v1alpha1() -> DocId {
        DocId {
            api_version: String::new(),
            kind: V1ALPHA1.to_string(),
            name: None,
        }
    }

    pub(super) fn is_v1alpha1(&self) -> bool {
        self.api_version.is_empty() && self.kind == V1ALPHA1
    }

    /// The identity of a document of the config: kind-less documents are the v1alpha1 one.
    pub(super) fn of_config(doc: &Value) -> DocId {
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
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// RFC 6901 pointer of a path ("/" for the document itself).
pub(super) fn pointer(path: &[Seg]) -> String {
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
pub(super) fn location(doc: &DocId, path: &[Seg]) -> String {
    if doc.is_v1alpha1() {
        pointer(path)
    } else {
        format!("document {doc}: {}", pointer(path))
    }
}

/// The text of a scalar, as a YAML node holds it; `None` for absent, null and collections.
pub(super) fn text_of(doc: &Value, key: &str) -> Option<String> {
    doc.get(key).and_then(scalar_text)
}

pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

pub(super) fn kind_name(value: &Value) -> &'static str {
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
pub(super) fn without_nulls(value: &Value) -> Value {
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
