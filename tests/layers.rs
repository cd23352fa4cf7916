//! Imports in `src/` run one way. Every `crate::…`/`super::…` path in every `src/**/*.rs` file
//! is read (comments and string literals skipped, grouped `use crate::{a, b}` expanded) and
//! checked against two rules:
//!
//! 1. Between top-level modules: a module may use only modules in a lower layer of `LAYERS`
//!    (so never one above it, never one beside it, and therefore no circle). Every top-level
//!    module must be placed in exactly one layer.
//! 2. Between the sub-modules of any one module (e.g. `provider/gcp/*.rs`): no circle.
//!
//! A failure names the file, the line and both modules. The checker itself is tested on small
//! synthetic sources below, so a checker that finds nothing cannot pass unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The declared layer order, lowest first: (what the layer is, its top-level modules).
/// A module may import only from layers listed before its own.
const LAYERS: &[(&str, &[&str])] = &[
    ("atomic file writes; the network probe (a program of its own)", &["fsutil", "netprobe"]),
    ("the per-cluster lock and its holder record", &["cluster_lock"]),
    ("pinned versions, artifact source and cache", &["artifacts"]),
    ("the profile: schema, built-ins, validation", &["profile"]),
    ("nodes, roles, addresses, pod CIDRs", &["inventory"]),
    (
        "PKI, the cluster SSH key, the state directory",
        &["pki", "sshkeys", "state"],
    ),
    ("templates → per-node bundle", &["render"]),
    (
        "SSH fan-out and file sync; the kube API client",
        &["remote", "kube"],
    ),
    ("the certificates deployed on the nodes, read over SSH", &["deployed_certs"]),
    (
        // The provider sits beside inventory in the data flow (it produces the Inventory) and
        // may call every layer below it, the remote executor included.
        "providers; add-on manifests; the air-gap mirror builder; the helpers of status, ssh, kubeconfig",
        &[
            "provider",
            "addons",
            "airgap",
            "status",
            "ssh_command",
            "kubeconfig_merge",
        ],
    ),
    ("the monitoring add-on set: scrape configuration, alert rules", &["monitoring"]),
    ("the training stack: operators, queues, teams, users", &["training"]),
    ("the phases of `up`", &["phases"]),
    (
        "certificate rotation: plan, staged rollout, resumable record",
        &["rotate"],
    ),
    (
        "Kubernetes upgrades: preflight, plan, node-by-node steps, resumable record",
        &["upgrade"],
    ),
    ("command-line definitions", &["cli"]),
    ("one module per verb", &["commands"]),
    ("programs beside k8sforge (the network probe's main)", &["bin"]),
];

#[test]
fn src_imports_follow_the_layer_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_sources(&root);
    assert!(
        files.len() > 50,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    let problems = check(&files, LAYERS);
    assert!(
        problems.is_empty(),
        "import rules broken ({}):\n{}\n\nlayer order, lowest first:\n{}",
        problems.len(),
        problems.join("\n"),
        layer_listing(LAYERS)
    );
}

fn layer_listing(layers: &[(&str, &[&str])]) -> String {
    layers
        .iter()
        .enumerate()
        .map(|(i, (what, mods))| format!("  {i:>2}. {} ({what})", mods.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `.rs` file under `root`, as (path relative to `root` with `/`, contents), sorted.
fn read_sources(root: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap();
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((rel, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Module path of a file relative to `src/`: `provider/gcp/mod.rs` → `[provider, gcp]`;
/// `lib.rs`/`main.rs` → `[]` (the crate root).
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] || parts == ["main"] {
        parts.pop();
    }
    parts
}

/// One use of a path into the crate: from the module at `from` (full module path, inline
/// modules included) to `to` (the path's segments after resolving `crate`/`super`; the last
/// ones may be items, not modules).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    file: String,
    line: usize,
    from: Vec<String>,
    to: Vec<String>,
}

/// All rule violations in `files` (paths relative to `src/`), as readable lines.
fn check(files: &[(String, String)], layers: &[(&str, &[&str])]) -> Vec<String> {
    let mut problems = Vec::new();

    // Placement: every top-level module of the tree in exactly one layer, and no stale entry.
    let mut rank: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (_, mods)) in layers.iter().enumerate() {
        for m in *mods {
            if rank.insert(m, i).is_some() {
                problems.push(format!("LAYERS lists `{m}` twice"));
            }
        }
    }
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|(rel, _)| module_path(rel).first().cloned())
        .collect();
    for t in &tops {
        if !rank.contains_key(t.as_str()) {
            problems.push(format!(
                "src/{t}: top-level module `{t}` is in no layer of LAYERS (tests/layers.rs): place it"
            ));
        }
    }
    for m in rank.keys() {
        if !tops.contains(*m) {
            problems.push(format!(
                "LAYERS lists `{m}`, which is not a module under src/"
            ));
        }
    }

    let imports: Vec<Import> = files
        .iter()
        .flat_map(|(rel, text)| imports_of(rel, text))
        .collect();

    // Rule 1: top-level imports go strictly down (one report per line and pair of modules).
    let mut reported = BTreeSet::new();
    for imp in &imports {
        let (Some(from), Some(to)) = (imp.from.first(), imp.to.first()) else {
            continue;
        };
        if from == to {
            continue;
        }
        let (Some(&rf), Some(&rt)) = (rank.get(from.as_str()), rank.get(to.as_str())) else {
            continue; // unplaced modules are reported above; unknown names are not modules
        };
        if rt >= rf && reported.insert((&imp.file, imp.line, from, to)) {
            let how = if rt == rf { "beside" } else { "above" };
            problems.push(format!(
                "src/{}:{}: `{from}` (layer {rf}) imports `{to}` (layer {rt}), which is {how} it",
                imp.file, imp.line
            ));
        }
    }

    // Rule 2: no circle between the sub-modules of one module.
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(rel, _)| module_path(rel)).collect();
    let mut edges: BTreeMap<Vec<String>, Edges> = BTreeMap::new();
    for imp in &imports {
        let common = imp
            .from
            .iter()
            .zip(&imp.to)
            .take_while(|(a, b)| a == b)
            .count();
        // Top-level edges are rule 1's; an edge needs a child on both sides.
        if common == 0 || common >= imp.from.len() || common >= imp.to.len() {
            continue;
        }
        let parent = imp.from[..common].to_vec();
        let (a, b) = (&imp.from[common], &imp.to[common]);
        let child = |c: &String| {
            let mut m = parent.clone();
            m.push(c.clone());
            modules.contains(&m)
        };
        if child(a) && child(b) {
            edges
                .entry(parent)
                .or_default()
                .entry((a.clone(), b.clone()))
                .or_insert((imp.file.clone(), imp.line));
        }
    }
    for (parent, es) in &edges {
        if let Some(cycle) = find_cycle(es) {
            let steps = cycle
                .windows(2)
                .map(|w| {
                    let (file, line) = &es[&(w[0].clone(), w[1].clone())];
                    format!("`{}` → `{}` (src/{file}:{line})", w[0], w[1])
                })
                .collect::<Vec<_>>()
                .join(", ");
            problems.push(format!(
                "import circle among the sub-modules of `{}`: {steps}",
                parent.join("::")
            ));
        }
    }
    problems
}

/// Import edges between sibling modules: (importer, imported) → first (file, line).
type Edges = BTreeMap<(String, String), (String, usize)>;

/// A circle in a directed graph, as its nodes with the first repeated at the end.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
    }
    // Depth-first search keeping the current path; a node on the path seen again closes a circle.
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut c: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            c.push(n.to_string());
            return Some(c);
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for m in next.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in next.keys() {
        if let Some(c) = visit(n, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// Rust source as identifiers, `::` and punctuation with their line numbers; comments, string,
/// byte-string, raw-string and char literals and lifetimes are dropped, so a path named in a doc
/// comment or a message does not count.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Skip a quoted literal starting at `start` (the opening quote); returns the index after it.
    let skip_quoted = |mut j: usize, quote: char, line: &mut usize| -> usize {
        j += 1;
        while j < c.len() && c[j] != quote {
            if c[j] == '\\' {
                j += 1;
            }
            if j < c.len() && c[j] == '\n' {
                *line += 1;
            }
            j += 1;
        }
        j + 1
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_quoted(i, '"', &mut line);
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a, 'static).
            if c.get(i + 1) == Some(&'\\') {
                i = skip_quoted(i, '\'', &mut line);
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // Raw strings r"…", r#"…"#, br"…" and byte literals b"…", b'…'.
            let next = c.get(i).copied();
            if (word == "r" || word == "br") && matches!(next, Some('"') | Some('#')) {
                let mut hashes = 0;
                while c.get(i) == Some(&'#') {
                    hashes += 1;
                    i += 1;
                }
                if c.get(i) == Some(&'"') {
                    i += 1;
                    loop {
                        if i >= c.len() {
                            break;
                        }
                        if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                            i += 1 + hashes;
                            break;
                        }
                        if c[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                    continue;
                }
                // `r#ident` (a raw identifier): keep the identifier.
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push((Tok::Ident(c[start..i].iter().collect()), line));
                continue;
            }
            if word == "b" && next == Some('"') {
                i = skip_quoted(i, '"', &mut line);
                continue;
            }
            if word == "b" && next == Some('\'') {
                i = skip_quoted(i, '\'', &mut line);
                continue;
            }
            out.push((Tok::Ident(word), line));
        } else if ch.is_ascii_digit() {
            // `1_000u64`, `0.5`, but not the `..` of `0..n`.
            while i < c.len()
                && (c[i].is_alphanumeric()
                    || c[i] == '_'
                    || (c[i] == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())))
            {
                i += 1;
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The crate-internal imports of one file: every path starting with `crate::` (or `$crate::`)
/// or with `super::`, resolved against the file's module path and its inline `mod x { … }`s.
fn imports_of(rel: &str, src: &str) -> Vec<Import> {
    let toks = tokens(src);
    let base = module_path(rel);
    let mut out = Vec::new();
    // Inline modules: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut pending_mod: Option<String> = None;
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let is = |k: usize, t: &Tok| toks.get(k).map(|(x, _)| x) == Some(t);
    let mut k = 0;
    while k < toks.len() {
        match &toks[k].0 {
            Tok::Punct('{') => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((name, depth));
                }
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Punct(';') => pending_mod = None,
            Tok::Ident(w) if w == "mod" => {
                if let Some(name) = ident(k + 1) {
                    pending_mod = Some(name.to_string());
                }
            }
            _ => {}
        }
        let here = || {
            let mut m = base.clone();
            m.extend(inline.iter().map(|(n, _)| n.clone()));
            m
        };
        // A path starts at `crate`/`super` not preceded by `::`.
        let starts_path = k == 0 || !is(k - 1, &Tok::PathSep);
        let word = ident(k);
        if starts_path && matches!(word, Some("crate") | Some("super")) && is(k + 1, &Tok::PathSep)
        {
            let from = here();
            let mut prefix: Vec<String> = Vec::new();
            let mut j = k;
            if word == Some("crate") {
                j += 2;
            } else {
                prefix = from.clone();
                while ident(j) == Some("super") && is(j + 1, &Tok::PathSep) {
                    prefix.pop();
                    j += 2;
                }
            }
            for (rest, line) in path_tails(&toks, j) {
                let mut to = prefix.clone();
                to.extend(rest);
                out.push(Import {
                    file: rel.to_string(),
                    line,
                    from: from.clone(),
                    to,
                });
            }
            k = j;
            continue;
        }
        k += 1;
    }
    out
}

/// The segments of a path from token `j` on, each with the line its item starts on:
/// `a::b::C` → one path; `{a::b, c, self}` → one per item (nested groups expanded, `self` and
/// `*` dropped).
fn path_tails(toks: &[(Tok, usize)], j: usize) -> Vec<(Vec<String>, usize)> {
    fn parse(
        toks: &[(Tok, usize)],
        mut j: usize,
        out: &mut Vec<(Vec<String>, usize)>,
        mut segs: Vec<String>,
        mut line: Option<usize>,
    ) {
        loop {
            let Some((tok, l)) = toks.get(j) else {
                return;
            };
            let line = *line.get_or_insert(*l);
            match tok {
                Tok::Ident(s) if s != "self" => {
                    segs.push(s.clone());
                    j += 1;
                    if toks.get(j).map(|(t, _)| t) == Some(&Tok::PathSep) {
                        j += 1;
                        continue;
                    }
                    out.push((segs, line));
                    return;
                }
                Tok::Punct('{') => {
                    // Items separated by commas at this brace level.
                    let mut level = 0;
                    let mut item_start = j + 1;
                    for (m, (tok, _)) in toks.iter().enumerate().skip(j) {
                        match tok {
                            Tok::Punct('{') => level += 1,
                            Tok::Punct('}') => {
                                level -= 1;
                                if level == 0 {
                                    parse(toks, item_start, out, segs.clone(), None);
                                    return;
                                }
                            }
                            Tok::Punct(',') if level == 1 => {
                                parse(toks, item_start, out, segs.clone(), None);
                                item_start = m + 1;
                            }
                            _ => {}
                        }
                    }
                    return;
                }
                _ => {
                    if !segs.is_empty() {
                        out.push((segs, line));
                    }
                    return;
                }
            }
        }
    }
    let mut out = Vec::new();
    parse(toks, j, &mut out, Vec::new(), None);
    out
}

// ---- the checker, on synthetic sources ----

const TOY_LAYERS: &[(&str, &[&str])] = &[("low", &["low"]), ("high", &["high", "side"])];

fn toy(files: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    check(&files, TOY_LAYERS)
}

#[test]
fn checker_accepts_downward_imports() {
    let problems = toy(&[
        ("lib.rs", "pub mod low; pub mod high; pub mod side;"),
        ("low.rs", "pub const X: u8 = 1;"),
        ("high/mod.rs", "use crate::low::X;\npub fn f() -> u8 { X }"),
        ("side.rs", "pub fn g() -> u8 { crate::low::X }"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn checker_names_file_line_and_modules_of_an_upward_import() {
    let problems = toy(&[
        ("lib.rs", "pub mod low; pub mod high; pub mod side;"),
        (
            "low.rs",
            "//! low\n\nuse std::fmt;\nuse crate::high::Thing;\npub const X: u8 = 1;",
        ),
        ("high/mod.rs", "use crate::low::X;\npub struct Thing;"),
        ("side.rs", ""),
    ]);
    assert_eq!(
        problems,
        ["src/low.rs:4: `low` (layer 0) imports `high` (layer 1), which is above it"]
    );
}

#[test]
fn checker_refuses_imports_beside_and_through_groups_and_super() {
    let problems = toy(&[
        ("lib.rs", ""),
        (
            "low.rs",
            "use crate::{\n    side as s,\n    high::{self, a::B},\n};",
        ),
        ("high/mod.rs", "mod inner;"),
        // super::super from high/inner.rs is the crate root: `side` is beside `high`.
        ("high/inner.rs", "fn f() { super::super::side::g() }"),
        ("side.rs", "pub fn g() {}"),
    ]);
    assert_eq!(
        problems,
        [
            "src/low.rs:2: `low` (layer 0) imports `side` (layer 1), which is above it",
            "src/low.rs:3: `low` (layer 0) imports `high` (layer 1), which is above it",
            "src/high/inner.rs:1: `high` (layer 1) imports `side` (layer 1), which is beside it",
        ]
    );
}

#[test]
fn checker_ignores_comments_strings_and_own_module() {
    let problems = toy(&[
        ("lib.rs", ""),
        (
            "low.rs",
            concat!(
                "/// see crate::high::Thing\n",
                "// crate::high\n",
                "/* crate::high /* nested */ crate::high */\n",
                "const A: &str = \"crate::high::x\";\n",
                "const B: &str = r#\"crate::high \"quoted\" \"#;\n",
                "const C: char = '\"'; fn l<'a>(x: &'a str) -> &'a str { x }\n",
                "pub(crate) fn own() { crate::low::own() }\n",
                "mod tests { use super::*; use super::super::low::own; }\n",
            ),
        ),
        ("high/mod.rs", ""),
        ("side.rs", ""),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn checker_finds_a_circle_between_sub_modules() {
    let problems = toy(&[
        ("lib.rs", ""),
        ("low.rs", ""),
        ("high/mod.rs", "mod a; mod b; mod c;\npub struct E;"),
        ("high/a.rs", "use super::b::f;\nuse super::E;"),
        ("high/b.rs", "pub fn f() {}\nuse crate::high::c::g;"),
        ("high/c.rs", "pub fn g() {}\n\nfn h() { super::a::x() }"),
        ("side.rs", ""),
    ]);
    assert_eq!(
        problems,
        ["import circle among the sub-modules of `high`: `a` → `b` (src/high/a.rs:1), `b` → `c` (src/high/b.rs:2), `c` → `a` (src/high/c.rs:3)"]
    );
}

#[test]
fn checker_requires_every_module_placed() {
    let problems = toy(&[
        ("lib.rs", ""),
        ("low.rs", ""),
        ("high/mod.rs", ""),
        ("side.rs", ""),
        ("stray.rs", "use crate::high::X;"),
    ]);
    assert_eq!(
        problems,
        ["src/stray: top-level module `stray` is in no layer of LAYERS (tests/layers.rs): place it"]
    );
    let problems = toy(&[("lib.rs", ""), ("low.rs", ""), ("high/mod.rs", "")]);
    assert_eq!(
        problems,
        ["LAYERS lists `side`, which is not a module under src/"]
    );
}
