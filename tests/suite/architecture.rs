//! The shape of the library, checked from its source (the architecture issue's rules):
//!
//! - the top-level modules of `src/` form layers that point one way: a module may use only
//!   modules of its own layer or of lower ones ([`LAYERS`]), and no cycle exists among them;
//! - inside every folder, the sibling modules use each other without a cycle (a parent and
//!   its own children may refer to each other: that is how Rust splits one module into
//!   files);
//! - no allowance of clippy's `too_many_arguments` lint anywhere in the workspace.
//!
//! References are read from the code with comments removed: every `crate::a::b` path and
//! every `super::` path, resolved to the longest module path that exists as a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's layers, lowest first. The binary (`src/main.rs` and `src/cli/`) sits above
/// them all and is not part of the library.
const LAYERS: &[&[&str]] = &[
    &["sql", "failure", "cancel", "conninfo"],
    &["testing"],
    &["model"],
    &["ops"],
    &["dependents"],
    &["plan"],
    &["preflight"],
    &["phases"],
    &["run"],
    &["demo"],
];

/// A library source file and the module path it defines (`phases::apply`).
struct SourceFile {
    module: Vec<String>,
    code: String,
    path: PathBuf,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`, `src/lib.rs` → the crate root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code without `//` comments (doc comments included) and without string literals'
/// contents, so prose and SQL text cannot look like paths.
fn strip_comments_and_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_string && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_string = !in_string;
                out.push(c);
            } else if !in_string {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

fn library_files() -> Vec<SourceFile> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter(|f| {
            let rel = f.strip_prefix(&src).unwrap();
            rel != Path::new("main.rs") && !rel.starts_with("cli")
        })
        .map(|path| SourceFile {
            module: module_of(&src, &path),
            code: strip_comments_and_strings(&std::fs::read_to_string(&path).unwrap()),
            path,
        })
        .collect()
}

/// Every `crate::..` and `super::..` path in `code`, as segments resolved from `module`
/// (the module the file defines).
fn referenced_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < code.len() {
        let at_word = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        let base: Option<Vec<String>> = if !at_word {
            None
        } else if code[i..].starts_with("crate::") {
            i += "crate::".len();
            Some(Vec::new())
        } else if code[i..].starts_with("super::") {
            // `super` is the parent of the module the file defines, whether the file is
            // `a/b.rs` or `a/b/mod.rs`.
            let mut base = module.to_vec();
            while code[i..].starts_with("super::") {
                base.pop();
                i += "super::".len();
            }
            Some(base)
        } else {
            None
        };
        let Some(mut path) = base else {
            i += 1;
            continue;
        };
        loop {
            let start = i;
            while i < code.len() && is_ident(bytes[i]) {
                i += 1;
            }
            if i > start {
                path.push(code[start..i].to_string());
            }
            if code[i..].starts_with("::") && i + 2 < code.len() && is_ident(bytes[i + 2]) {
                i += 2;
            } else {
                break;
            }
        }
        out.push(path);
    }
    out
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// Edges between siblings: for a reference from module `from` to module `to`, the pair of
/// children of their lowest common ancestor that contain them (none when one contains the
/// other), with that ancestor.
fn sibling_edge(from: &[String], to: &[String]) -> Option<(Vec<String>, String, String)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((
        from[..common].to_vec(),
        from[common].clone(),
        to[common].clone(),
    ))
}

type Graphs = BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, String>>>;

/// Per folder: sibling → sibling → one file that makes the reference.
fn sibling_graphs() -> Graphs {
    let files = library_files();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut graphs: Graphs = BTreeMap::new();
    for file in &files {
        for path in referenced_paths(&file.code, &file.module) {
            let target = resolve(&path, &modules);
            if let Some((folder, a, b)) = sibling_edge(&file.module, &target) {
                graphs
                    .entry(folder)
                    .or_default()
                    .entry(a)
                    .or_default()
                    .entry(b)
                    .or_insert_with(|| file.path.display().to_string());
            }
        }
    }
    graphs
}

/// A cycle in `graph`, as the list of nodes, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node) {
            let mut stack = Vec::new();
            if let Some(c) = visit(node, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("top-level module {module} is in no layer of tests/suite/architecture.rs: add it to LAYERS"))
}

#[test]
fn top_level_modules_point_down_the_layers() {
    let graphs = sibling_graphs();
    let top = graphs.get(&Vec::new()).cloned().unwrap_or_default();
    let mut wrong = Vec::new();
    for (from, targets) in &top {
        for (to, file) in targets {
            if layer_of(to) > layer_of(from) {
                wrong.push(format!("{from} -> {to} (in {file})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules that use a higher layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_module_cycles_in_any_folder() {
    let mut cycles = Vec::new();
    for (folder, graph) in sibling_graphs() {
        if let Some(cycle) = find_cycle(&graph) {
            let evidence: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            cycles.push(format!(
                "in crate::{}: {}",
                folder.join("::"),
                evidence.join(", ")
            ));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    // The checks above must be able to fail: a cycle through three modules is reported.
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(a.into())
            .or_default()
            .insert(b.into(), "x.rs".into());
    }
    let cycle = find_cycle(&graph).expect("the planted cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
    graph.get_mut("c").unwrap().remove("a");
    assert!(find_cycle(&graph).is_none());
    // And references resolve: `super::` from a file module and from a `mod.rs`.
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let refs = referenced_paths("use super::setup::Capture;", &m("run::steps"));
    assert_eq!(refs, vec![m("run::setup::Capture")]);
    let refs = referenced_paths("use super::plan::Plan;", &m("preflight"));
    assert_eq!(refs, vec![m("plan::Plan")]);
}

#[test]
fn no_too_many_arguments_allowance_anywhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "crates"] {
        let dir = root.join(dir);
        if dir.exists() {
            rust_files(&dir, &mut files);
        }
    }
    let needle = ["clippy", "::too_many_arguments"].concat();
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "target"))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains(&needle))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "too_many_arguments allowed in: {offenders:?}"
    );
}
