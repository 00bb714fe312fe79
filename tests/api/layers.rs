//! The modules form layers (`src/lib.rs` lists them): a module imports only
//! from its own layer or a lower one, and an area never imports another
//! area. Checked on the source: every `crate::<module>` path outside a
//! comment, in every file under `src/<module>`.

use std::path::{Path, PathBuf};

/// Each top-level module and its layer, lowest first.
const LAYERS: [(&str, u8); 25] = [
    ("clock", 1),
    ("config", 1),
    ("store", 2),
    ("error", 3),
    ("events", 3),
    ("projection", 4),
    ("views", 5),
    ("replay", 6),
    ("identity", 6),
    ("http", 6),
    ("entitlements", 6),
    ("inference", 6),
    ("embedder", 6),
    ("backup", 6),
    ("state", 7),
    ("auth", 8),
    ("sync", 8),
    ("audit", 8),
    ("account", 8),
    ("payments", 8),
    ("llm", 8),
    ("embeddings", 8),
    ("ops", 8),
    ("app", 9),
    ("cli", 9),
];

/// The areas: each serves routes of its own and imports none of the others.
const AREAS: [&str; 8] = ["auth", "sync", "audit", "account", "payments", "llm", "embeddings", "ops"];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(name, _)| *name == module).map(|(_, layer)| *layer)
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// `text` without its `//` comments (a `//` inside a string literal stays).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut in_string = false;
            let mut previous = ' ';
            for (at, c) in line.char_indices() {
                match c {
                    '"' if previous != '\\' => in_string = !in_string,
                    '/' if !in_string && previous == '/' => return &line[..at - 1],
                    _ => {}
                }
                previous = c;
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment of each item of a `{…}` group starting at `group[0]`,
/// nested groups and lines included: `{a::{b, c}, d}` names `a` and `d`.
fn group_heads(group: &str) -> Vec<String> {
    let (mut heads, mut depth, mut item_start) = (Vec::new(), 0, true);
    for c in group.chars() {
        match c {
            '{' => {
                depth += 1;
                item_start = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => item_start = true,
            c if item_start && depth == 1 && (c.is_ascii_lowercase() || c == '_') => {
                heads.push(c.to_string());
                item_start = false;
            }
            c if depth == 1 && !item_start && (c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()) => {
                if let Some(head) = heads.last_mut().filter(|head| !head.contains(':')) {
                    head.push(c);
                }
            }
            ':' if depth == 1 => {
                if let Some(head) = heads.last_mut() {
                    head.push(':');
                }
            }
            c if !c.is_whitespace() && depth == 1 => item_start = false,
            _ => {}
        }
    }
    heads.into_iter().map(|head| head.trim_end_matches(':').split(':').next().unwrap_or_default().to_owned()).collect()
}

/// The top-level modules `text` names, outside comments: `crate::<module>`
/// paths (groups over several lines and nested groups included), and
/// `super::` chains of at least `depth` steps (which climb to the crate root
/// from a file `depth` levels below `src/`).
fn imports(text: &str, depth: usize) -> Vec<(usize, String)> {
    let code = without_comments(text);
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let names = if rest.starts_with('{') {
            group_heads(rest)
        } else {
            vec![rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect()]
        };
        found.extend(names.into_iter().filter(|name| !name.is_empty()).map(|name| (line_of(at), name)));
    }
    for (at, _) in code.match_indices("super::") {
        if at >= 7 && code[..at].ends_with("super::") {
            continue; // counted from the first `super::` of its chain
        }
        let path = code[at..].split(|c: char| !(c.is_ascii_alphanumeric() || c == ':' || c == '_')).next();
        let chain = path.unwrap_or_default().matches("super::").count();
        if chain >= depth {
            let after = code[at..].trim_start_matches("super::");
            let name: String = after.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if layer(&name).is_some() {
                found.push((line_of(at), name));
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_from_its_layer_or_below_and_no_area_from_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offences = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let module = module.trim_end_matches(".rs");
        if ["lib", "main"].contains(&module) {
            continue;
        }
        let own = layer(module).unwrap_or_else(|| panic!("src/{module} has no layer: add it to LAYERS and lib.rs"));
        let text = std::fs::read_to_string(&file).unwrap();
        // `src/m.rs` and `src/m/mod.rs` are one level below the crate root, `src/m/a.rs` two.
        let depth = relative.components().count() - usize::from(relative.ends_with("mod.rs"));
        for (line, target) in imports(&text, depth) {
            checked += 1;
            let Some(theirs) = layer(&target) else { continue };
            let cross_area = target != module && AREAS.contains(&module) && AREAS.contains(&target.as_str());
            if theirs > own || cross_area {
                offences.push(format!(
                    "src/{}:{line}: {module} (layer {own}) imports {target} (layer {theirs})",
                    relative.display()
                ));
            }
        }
    }
    assert!(checked > 100, "the scan found only {checked} imports: is it still reading src/?");
    assert!(offences.is_empty(), "imports that point up or across areas:\n{}", offences.join("\n"));
}

#[test]
fn the_scan_sees_imports_and_skips_comments() {
    let text = "use crate::store::UserDb;\n// crate::app in a comment\nlet x = crate::views::write::apply_batch; // crate::ops\n\
                mycrate::auth\nuse crate::{account, sync::pull};\nlet url = \"http://x\"; crate::http::ClientIp;\n\
                use crate::{\n    events::{LogTx, log},\n    state::AppState,\n};\nuse super::super::store::x;";
    let found = imports(text, 2);
    let found: Vec<(usize, &str)> = found.iter().map(|(line, name)| (*line, name.as_str())).collect();
    assert_eq!(
        found,
        [
            (1, "store"),
            (3, "views"),
            (5, "account"),
            (5, "sync"),
            (6, "http"),
            (7, "events"),
            (7, "state"),
            (11, "store")
        ]
    );
    assert!(imports("use super::store::x;", 2).is_empty(), "one step up from src/m/a.rs stays in m");
    assert_eq!(imports("use super::store::x;", 1), [(1, "store".to_owned())]);
}
