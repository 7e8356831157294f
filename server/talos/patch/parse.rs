//! Reading patch text: YAML or JSON documents, and JSON patch operations.

use json_patch::PatchOperation;
use serde_json::{Map, Number, Value};

use super::documents::kind_name;
use super::PatchError;

/// The non-empty documents of the text, each with its 1-based position in the text.
pub(super) fn parse_documents(text: &str) -> Result<Vec<(usize, Value)>, PatchError> {
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

pub(super) fn parse_operations(items: Vec<Value>) -> Result<json_patch::Patch, PatchError> {
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
