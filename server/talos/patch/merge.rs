//! Strategic merge: merging a patch document into its target with Talos's list rules
//! (replaced lists, keyed lists, zero values).

use serde_json::{Map, Value};

use super::documents::{kind_name, location, without_nulls, DocId, Seg};
use super::{PatchError, V1ALPHA1};

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
    pub(super) api_version: &'static str,
    pub(super) kind: &'static str,
    pub(super) path: &'static [&'static str],
    pub(super) rule: ListRule,
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

pub(super) fn apply_merge(
    docs: &mut Vec<Value>,
    id: &DocId,
    value: Value,
) -> Result<(), PatchError> {
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
