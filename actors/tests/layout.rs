//! The runtime's layering (DESIGN.md "Runtime layering") held as a test: every
//! `actors/src/**/*.rs` is read, each `crate::<part>` reference (use statements and paths)
//! is checked against the order of the parts, and the parts must not form a cycle. Fails
//! naming the file and line. Reads files only; must never depend on the code compiling a
//! certain way (it reads text).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The parts, top to bottom. A part may use the parts below it, never one above it. `error`
/// is the crate's error type: every part may name it, and it names no part.
const PARTS: [&str; 9] = [
    "entry",     // runtime.rs, cli.rs, logging.rs, lib.rs, bin/
    "mgmt",      // RPC, metrics, siproxctl
    "reload",    // DomainRegistry, the reload job, the watcher, scripts
    "cluster",   // the Cluster actor: Redis, the change stream, heartbeats; feeds state
    "transport", // listeners, connections
    "worker",    // the hot path
    "tls",       // domains, dispatch, facts, dev certificates, ffi
    "state",     // snapshot, table, counters, location: the leaf
    "error",
];

/// Top-level modules of the crate root that belong to `entry`.
const ENTRY_FILES: [&str; 4] = ["lib", "runtime", "cli", "logging"];

fn rank(part: &str) -> Option<usize> {
    PARTS.iter().position(|p| *p == part)
}

/// The part a source file (relative to `src/`) belongs to.
fn part_of(rel: &Path) -> Option<String> {
    let mut comps = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string());
    let first = comps.next()?;
    if rel.components().count() == 1 {
        let stem = first.trim_end_matches(".rs");
        if ENTRY_FILES.contains(&stem) {
            return Some("entry".to_owned());
        }
        return Some(stem.to_owned());
    }
    if first == "bin" {
        return Some("entry".to_owned());
    }
    Some(first)
}

/// The part a `crate::<name>` reference points to.
fn part_named(name: &str) -> String {
    // The crate root's re-exports count as the part they come from.
    match name {
        "RuntimeError" => "error",
        "Snapshot" | "StatsSnapshot" => "state",
        "Runtime" | "RuntimeHandle" | "RuntimeOptions" => "entry",
        n if ENTRY_FILES.contains(&n) => "entry",
        n => n,
    }
    .to_owned()
}

/// `(line, part)` of every `crate::` reference in `text`, comments left out.
fn references(text: &str) -> Vec<(usize, String)> {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with("//") {
            code.push('\n');
        } else {
            code.push_str(line);
            code.push('\n');
        }
    }
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        // `$crate::` and `siprox_actors_crate::` are not ours; `crate` must stand alone.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b}`: the first segment of each top-level item.
            let mut depth = 0usize;
            let mut item_start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        item_start = false;
                        out.push((line_of(from + 1 + k), part_named(&ident(&group[k..]))));
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((line_of(at), part_named(&name)));
            }
        }
    }
    out
}

/// Every rule broken by the files `(path relative to src/, text)`: upward imports, unknown
/// parts, and cycles between parts.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in files {
        let Some(from) = part_of(rel) else { continue };
        let Some(from_rank) = rank(&from) else {
            errors.push(format!(
                "src/{}: not in any part of the runtime ({PARTS:?}): put it in a folder",
                rel.display()
            ));
            continue;
        };
        for (line, to) in references(text) {
            if to == from {
                continue;
            }
            edges.entry(from.clone()).or_default().insert(to.clone());
            match rank(&to) {
                None => errors.push(format!(
                    "src/{}:{line}: `crate::{to}` is not a part of the runtime",
                    rel.display()
                )),
                Some(r) if r < from_rank && to != "error" => errors.push(format!(
                    "src/{}:{line}: {from} imports {to}, a part above it",
                    rel.display()
                )),
                Some(_) => {}
            }
        }
    }
    // A cycle between parts, whatever the order says (depth-first search).
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            cycles.push(format!("the parts form a cycle: {}", c.join(" -> ")));
            return;
        }
        if !done.insert(n.to_owned()) {
            return;
        }
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, stack, done, cycles);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        visit(n, &edges, &mut Vec::new(), &mut done, &mut errors);
    }
    errors
}

fn read_tree(src: &Path) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, src: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).expect("read source");
                let rel = p.strip_prefix(src).expect("under src").to_path_buf();
                out.push((rel, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(src, src, &mut out);
    out
}

#[test]
fn the_runtime_imports_flow_one_way() {
    // SIPROX_LAYOUT_SRC points the check at another tree (to see it fail on an old one).
    let src = std::env::var_os("SIPROX_LAYOUT_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let files = read_tree(&src);
    assert!(
        files.len() > 20,
        "read {} files from {}",
        files.len(),
        src.display()
    );
    let errors = violations(&files);
    assert!(
        errors.is_empty(),
        "runtime layering broken (DESIGN.md \"Runtime layering\"):\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_check_catches_an_upward_import_and_a_cycle() {
    let f = |p: &str, t: &str| (PathBuf::from(p), t.to_owned());
    let files = vec![
        f(
            "state/mod.rs",
            "// crate::mgmt in a comment is fine\nuse crate::error::E;\n",
        ),
        f(
            "state/table.rs",
            "use crate::{error::E,\n    transport::connection::Connection};\n",
        ),
        f("transport/mod.rs", "use crate::state::Shared;\n"),
        f("worker/mod.rs", "fn f() { crate::reload::go() }\n"),
        f("runtime.rs", "use crate::mgmt::rpc;\n"),
    ];
    let errors = violations(&files);
    let has = |s: &str| errors.iter().any(|e| e.contains(s));
    assert!(
        has("src/state/table.rs:2: state imports transport"),
        "{errors:#?}"
    );
    assert!(
        has("src/worker/mod.rs:1: worker imports reload"),
        "{errors:#?}"
    );
    assert!(
        has("cycle: state -> transport -> state") || has("cycle: transport -> state -> transport"),
        "{errors:#?}"
    );
    assert!(
        !has("src/state/mod.rs"),
        "a comment is not an import: {errors:#?}"
    );
    assert!(!has("runtime.rs"), "entry may import anything: {errors:#?}");
    assert_eq!(errors.len(), 3, "{errors:#?}");
}
