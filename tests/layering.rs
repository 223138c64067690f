//! The floors between the parts of the code, checked on the source tree: `actors/` has no I/O,
//! `src/sinks` and `src/sources` import nothing from `src/pipelines`, `src/config` names no
//! pipeline, and the admin port and the runtime do not import each other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What `actors/` may depend on: nothing that talks to a network or a disk.
const ACTORS_DEPENDENCIES: &[&str] = &[
    "chrono",
    "chrono-tz",
    "croner",
    "futures",
    "metrics",
    "ractor",
    "serde",
    "serde_json",
    "thiserror",
    "tokio",
    "tracing",
];

/// Standard and tokio modules that do I/O; `actors/` uses none of them.
const IO_MODULES: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "tokio::fs",
    "tokio::net",
    "tokio::process",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the package root, sorted.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            (rel, code(&text))
        })
        .collect()
}

/// The text without comments (line comments and doc comments), so prose may name anything.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| {
            // A `//` inside a string literal (a URL) is not a comment.
            let comment = line
                .match_indices("//")
                .map(|(i, _)| i)
                .find(|&i| line[..i].matches('"').count() % 2 == 0);
            comment.map_or(line, |i| &line[..i])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code reaches through `crate::` (and `actord::`), with `use` groups
/// flattened: `crate::{a::b, c}` gives `a::b` and `c`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["crate::", "actord::"] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            tree("", rest, &mut out);
        }
    }
    out
}

/// Reads one use tree at the start of `s` below `base`, adding its paths to `out`.
fn tree(base: &str, s: &str, out: &mut BTreeSet<String>) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 1 => {
                    tree(base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
            if depth == 0 {
                tree(base, &inner[start..i], out);
                return;
            }
        }
        return;
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let segment = &s[..end];
    if segment.is_empty() || segment == "self" {
        if !base.is_empty() {
            out.insert(base.to_owned());
        }
        return;
    }
    let path = if base.is_empty() {
        segment.to_owned()
    } else {
        format!("{base}::{segment}")
    };
    match s[end..].strip_prefix("::") {
        Some(next) => tree(&path, next, out),
        None => {
            out.insert(path);
        }
    }
}

fn imports_module(code: &str, module: &str) -> Vec<String> {
    crate_paths(code)
        .into_iter()
        .filter(|p| p == module || p.starts_with(&format!("{module}::")))
        .collect()
}

/// Whether `word` occurs in `text` on its own (not inside a longer name).
fn names_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

#[test]
fn actors_have_no_io() {
    let manifest = std::fs::read_to_string(root().join("actors/Cargo.toml")).unwrap();
    let mut section = "";
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[dependencies]" {
            // `name = "1"`, `name = { ... }` or `name.workspace = true`.
            if let Some((key, _)) = line.split_once('=') {
                let name = key.split('.').next().unwrap_or(key);
                found.push(name.trim().to_owned());
            }
        }
    }
    assert!(
        !found.is_empty(),
        "no [dependencies] read from actors/Cargo.toml"
    );
    let extra: Vec<&String> = found
        .iter()
        .filter(|d| !ACTORS_DEPENDENCIES.contains(&d.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "actors/ depends on {extra:?}: it must stay free of I/O crates (extend the list in \
         tests/layering.rs only for a crate that does no I/O)"
    );
    let mut uses = Vec::new();
    for (file, code) in sources("actors/src") {
        for module in IO_MODULES {
            if names_word(&code, module) {
                uses.push(format!("{file}: {module}"));
            }
        }
    }
    assert!(uses.is_empty(), "actors/ does I/O: {uses:#?}");
}

#[test]
fn sinks_and_sources_import_no_pipeline() {
    let mut offending = Vec::new();
    for dir in ["src/sinks", "src/sources"] {
        for (file, code) in sources(dir) {
            let paths = imports_module(&code, "pipelines");
            if !paths.is_empty() {
                offending.push(format!("{file}: {paths:?}"));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "sinks and sources are generic over the record type and import nothing from \
         src/pipelines: {offending:#?}"
    );
}

#[test]
fn config_names_no_pipeline() {
    let mut pipelines: Vec<String> = std::fs::read_dir(root().join("src/pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    pipelines.sort();
    assert!(!pipelines.is_empty(), "no pipeline folders found");
    let mut offending = Vec::new();
    for (file, code) in sources("src/config") {
        for name in &pipelines {
            for form in [name.clone(), name.replace('_', "-")] {
                if names_word(&code, &form) {
                    offending.push(format!("{file}: {form}"));
                }
            }
        }
    }
    assert!(
        offending.is_empty(),
        "src/config knows no pipeline (each registers its section in src/pipelines): \
         {offending:#?}"
    );
}

#[test]
fn admin_and_runtime_do_not_import_each_other() {
    let mut offending = Vec::new();
    for (dir, other) in [("src/admin", "runtime"), ("src/runtime", "admin")] {
        for (file, code) in sources(dir) {
            let paths = imports_module(&code, other);
            if !paths.is_empty() {
                offending.push(format!("{file}: {paths:?}"));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "the admin port takes its Handle from whoever runs the tree (src/app.rs): \
         {offending:#?}"
    );
}

#[test]
fn the_import_reader_sees_grouped_and_nested_paths() {
    let paths = crate_paths(
        "use crate::{admin, config::{self, Check}};\nuse crate::pipelines::recorder::model::Market;\nlet x = actord::runtime::run;\nlet y = my_crate::runtime;",
    );
    let expected: BTreeSet<String> = [
        "admin",
        "config",
        "config::Check",
        "pipelines::recorder::model::Market",
        "runtime::run",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(paths, expected);
    assert!(names_word(
        "let k = \"pipelines.ftp-sync.topics\";",
        "ftp-sync"
    ));
    assert!(!names_word("ftp-syncer", "ftp-sync"));
    assert_eq!(
        code("let u = \"ftp://x\"; // heartbeat"),
        "let u = \"ftp://x\"; "
    );
}
