//! The architecture the code shows: no module of any crate depends, through `use crate::…`
//! and `super::…` paths, on a module that depends back on it (no module cycles), and the
//! binary stays a thin dispatcher.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::repo_root;

/// A module path inside a crate: `["stage", "exec"]`; the crate root is `[]`.
type Module = Vec<String>;

/// Every `.rs` file under `src`, by the module it defines.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut parts: Module = rel
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    out
}

/// Source without comments and string literals (paths in docs or messages are not uses).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push_str("\"\"");
            }
            c => out.push(c),
        }
    }
    out
}

/// The paths a file names: every `crate::a::b` and `super::a` path, `use` groups expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let starts = (rest.starts_with("crate::") || rest.starts_with("super::"))
            && (i == 0
                || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':'));
        if !starts {
            i += 1;
            continue;
        }
        // Read the path with any `{…}` group.
        let mut depth = 0;
        let mut j = i;
        while j < bytes.len() {
            let c = bytes[j];
            if c == '{' {
                depth += 1;
            } else if c == '}' {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            } else if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') {
                break;
            }
            j += 1;
        }
        let text: String = bytes[i..j].iter().collect();
        expand(&[], &text, &mut out);
        i = j.max(i + 1);
    }
    out
}

/// `a::{b, c::{d}}` → `a::b`, `a::c::d`, prefixed by `prefix`.
fn expand(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
    let text = text.trim();
    match text.find('{') {
        None => {
            let mut p = prefix.to_vec();
            let head = text.split(" as ").next().unwrap_or(text);
            p.extend(
                head.split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
            out.push(p);
        }
        Some(open) => {
            let mut p = prefix.to_vec();
            p.extend(
                text[..open]
                    .split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
            let inner = text[open + 1..].trim_end().trim_end_matches('}');
            let (mut depth, mut start) = (0, 0);
            for (k, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&p, &inner[start..k], out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            expand(&p, &inner[start..], out);
        }
    }
}

/// The module graph of the crate whose sources are in `src`.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let files = modules(src);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        let targets = edges.entry(module.clone()).or_default();
        for path in paths(&code(&text)) {
            let mut base = module.clone();
            let mut rest = path.as_slice();
            if rest.first().map(String::as_str) == Some("crate") {
                base.clear();
                rest = &rest[1..];
            } else {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            let mut target = base;
            target.extend(rest.iter().cloned());
            while !target.is_empty() && !files.contains_key(&target) {
                target.pop();
            }
            if &target != module && files.contains_key(&target) {
                targets.insert(target);
            }
        }
    }
    edges
}

/// The cycles of a graph: its strongly connected components of more than one module.
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Kosaraju: order by finish time, then collect components on the reversed graph.
    fn visit(
        v: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        seen: &mut BTreeSet<Module>,
        order: &mut Vec<Module>,
    ) {
        if !seen.insert(v.clone()) {
            return;
        }
        for w in edges.get(v).into_iter().flatten() {
            visit(w, edges, seen, order);
        }
        order.push(v.clone());
    }
    let mut seen = BTreeSet::new();
    let mut order = vec![];
    for v in edges.keys() {
        visit(v, edges, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (v, ws) in edges {
        for w in ws {
            reversed.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = vec![];
    for v in order.iter().rev() {
        let mut component = vec![];
        visit(v, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            out.push(component);
        }
    }
    out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "(root)".into()
    } else {
        m.join("::")
    }
}

/// The source folders of the workspace's crates and of the binary.
fn crate_sources() -> Vec<PathBuf> {
    let root = repo_root();
    let mut out = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates"))
        .expect("crates")
        .flatten()
    {
        let src = entry.path().join("src");
        if src.is_dir() {
            out.push(src);
        }
    }
    out
}

#[test]
fn no_crate_has_a_module_cycle() {
    let mut found = vec![];
    for src in crate_sources() {
        for cycle in cycles(&graph(&src)) {
            let names: Vec<String> = cycle.iter().map(name).collect();
            found.push(format!("{}: {}", src.display(), names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    // The check itself, on a crate made for it: a -> b -> a, c alone.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").expect("lib");
    std::fs::write(
        src.join("a.rs"),
        "use crate::b::{B, other::{X}};\n// crate::c::C in a comment\n",
    )
    .expect("a");
    std::fs::write(
        src.join("b.rs"),
        "fn f() { super::a::g(); let s = \"crate::c\"; }",
    )
    .expect("b");
    std::fs::write(src.join("c.rs"), "").expect("c");
    let found = cycles(&graph(src));
    assert_eq!(found.len(), 1, "{found:?}");
    let mut names: Vec<String> = found[0].iter().map(name).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn the_binary_is_thin() {
    let main = std::fs::read_to_string(repo_root().join("src/main.rs")).expect("main.rs");
    let lines = main.lines().count();
    assert!(
        lines <= 250,
        "src/main.rs has {lines} lines: move commands to src/commands/"
    );
    for (module, file) in modules(&repo_root().join("src")) {
        let text = std::fs::read_to_string(&file).expect("source");
        assert!(
            !code(&text).contains("process::exit"),
            "{} calls process::exit: return an Exit instead",
            name(&module)
        );
    }
    let respond = std::fs::read_to_string(repo_root().join("crates/engine/src/stages/respond.rs"))
        .expect("respond.rs");
    assert!(
        respond.lines().count() <= 45,
        "respond.rs grew past 45 lines"
    );
}
