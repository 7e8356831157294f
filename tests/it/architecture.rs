//! The shape of the code, measured from its source: the layer order ARCHITECTURE.md writes
//! down is the one the imports follow, no production file outgrows its job, and the rules that
//! have one home keep it (the lifecycle's one writer, the event log's one insert).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Rust file under `server/`, with its path relative to `server/`.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let base = root().join("server");
    let mut out = Vec::new();
    walk(&base, &base, &mut out);
    out
}

/// A test-only file: a module's `tests.rs`, or test fixtures.
fn is_test_file(rel: &str) -> bool {
    rel.ends_with("/tests.rs") || rel.ends_with("/fixtures.rs")
}

/// The source without its `#[cfg(test)] mod … { … }` blocks (braces counted, strings and
/// comments are not special: good enough for this codebase, checked by the counts below).
fn without_test_modules(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        let Some(open) = trimmed.find(['{', ';']).filter(|_| is_mod) else {
            out.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        };
        out.push_str(&rest[..at]);
        let body = &trimmed[open..];
        if let Some(after_decl) = body.strip_prefix(';') {
            rest = after_decl;
            continue;
        }
        let mut depth = 0usize;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &body[end..];
    }
    out.push_str(rest);
    out
}

/// The top-level module a file belongs to (`None` for the crate root and the binaries).
fn top_module(rel: &str) -> Option<String> {
    let first = rel.split('/').next()?;
    if rel.starts_with("bin/") || rel == "main.rs" || rel == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// The top-level modules a source names through `crate::…` paths, `use crate::{a, b::c}`
/// groups included.
fn crate_references(src: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = src;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1usize;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else if depth == 1 {
                    item.push(c);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// The layer order as ARCHITECTURE.md writes it: under "## Layers", numbered lines naming
/// modules in backticks, highest layer first.
fn layers() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = doc
        .split("\n## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a '## Layers' section");
    let section = section.split("\n## ").next().unwrap();
    let mut layers = Vec::new();
    for line in section.lines() {
        let line = line.trim();
        let numbered = line
            .split_once(". ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if !numbered {
            continue;
        }
        // Module names are the backticked words before the first dash.
        let names = line.split(" — ").next().unwrap_or(line);
        let modules: Vec<String> = names
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        if !modules.is_empty() {
            layers.push(modules);
        }
    }
    layers
}

fn import_graph() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (rel, src) in sources() {
        let Some(from) = top_module(&rel) else {
            continue;
        };
        if is_test_file(&rel) {
            continue;
        }
        graph.entry(from.clone()).or_default();
        for to in crate_references(&without_test_modules(&src)) {
            if to != from {
                graph
                    .get_mut(&from)
                    .unwrap()
                    .entry(to)
                    .or_default()
                    .insert(rel.clone());
            }
        }
    }
    graph
}

#[test]
fn every_module_has_a_layer_and_imports_only_downward() {
    let layers = layers();
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (n.as_str(), i)))
        .collect();
    let lib = std::fs::read_to_string(root().join("server/lib.rs")).unwrap();
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    assert!(declared.len() > 10, "lib.rs declares {declared:?}");
    let unplaced: Vec<_> = declared
        .iter()
        .filter(|m| !rank.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from ARCHITECTURE.md's layer order: {unplaced:?}"
    );
    let graph = import_graph();
    let arrows: usize = graph.values().map(BTreeMap::len).sum();
    assert!(
        arrows > 50,
        "the import graph looks unread: {arrows} arrows"
    );
    let mut upward = Vec::new();
    for (from, targets) in &graph {
        for (to, files) in targets {
            let (Some(a), Some(b)) = (rank.get(from.as_str()), rank.get(to.as_str())) else {
                panic!("{from} -> {to}: a module outside the layer order ({files:?})");
            };
            // Same layer: one direction only (checked by the loop test); lower to higher: no.
            if a > b {
                upward.push(format!("{from} -> {to} in {files:?}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports running up the layer order:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let graph = import_graph();
    let mut loops = Vec::new();
    for (from, targets) in &graph {
        for to in targets.keys() {
            if from < to && graph.get(to).is_some_and(|t| t.contains_key(from)) {
                loops.push(format!("{from} <-> {to}"));
            }
        }
    }
    assert!(loops.is_empty(), "import loops: {loops:?}");
    // Longer loops are caught by the layer order: every arrow runs down or within a layer,
    // and within a layer only one way (above), so a loop would need an arrow up.
}

#[test]
fn no_production_source_file_outgrows_its_job() {
    let mut long = Vec::new();
    let mut counted = 0;
    for (rel, src) in sources() {
        if is_test_file(&rel) || rel.starts_with("testkit/") {
            continue;
        }
        counted += 1;
        let lines = without_test_modules(&src).lines().count();
        if lines > MAX_LINES {
            long.push(format!("{rel}: {lines} lines"));
        }
    }
    assert!(counted > 50, "only {counted} files read");
    assert!(
        long.is_empty(),
        "production files over {MAX_LINES} lines (split them by job):\n{}",
        long.join("\n")
    );
}

/// Where a piece of SQL appears in production code.
fn sql_sites(needle: &str) -> Vec<String> {
    let mut sites = Vec::new();
    for (rel, src) in sources() {
        if is_test_file(&rel) {
            continue;
        }
        let src = without_test_modules(&src);
        for (i, line) in src.lines().enumerate() {
            if line.contains(needle) {
                sites.push(format!("{rel}:{}", i + 1));
            }
        }
    }
    sites
}

#[test]
fn a_machines_lifecycle_state_has_one_writer_and_the_event_log_one_insert() {
    // The one UPDATE that sets `state` on machines is in db's `apply_step`, which asks the
    // transition table (`model::lifecycle::transition`) first.
    let writes: Vec<String> = sources()
        .into_iter()
        .filter(|(rel, _)| !is_test_file(rel))
        .flat_map(|(rel, src)| {
            let src = without_test_modules(&src);
            src.split("UPDATE machines SET")
                .skip(1)
                .filter(|sql| {
                    let statement = sql.split('"').next().unwrap_or("");
                    statement.split([',', ' ', '\n']).any(|w| w == "state")
                })
                .map(|_| rel.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(writes, vec!["db/machines.rs".to_string()], "state writes");
    let db = std::fs::read_to_string(root().join("server/db/machines.rs")).unwrap();
    let writer = db
        .split("async fn apply_step(")
        .nth(1)
        .expect("db has apply_step");
    let writer = writer.split("\n}\n").next().unwrap();
    assert!(
        writer.contains("transition(") && writer.contains("UPDATE machines SET state"),
        "apply_step asks the transition table and writes the state"
    );
    assert_eq!(sql_sites("INSERT INTO events").len(), 1, "event inserts");
    assert_eq!(
        sql_sites("INSERT INTO machines").len(),
        2,
        "machine inserts: discovery and add"
    );
}
