//! The modules form layers (`src/lib.rs` lists them): a module imports only
//! from its own layer or a lower one, and an area never imports another
//! area. Checked on the source: every `crate::<module>` path outside a
//! comment, in every file under `src/<module>`.

use std::path::{Path, PathBuf};

/// Each top-level module and its layer, lowest first.
const LAYERS: [(&str, u8); 21] = [
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
    ("state", 7),
    ("auth", 8),
    ("sync", 8),
    ("audit", 8),
    ("account", 8),
    ("payments", 8),
    ("llm", 8),
    ("ops", 8),
    ("app", 9),
    ("cli", 9),
];

/// The areas: each serves routes of its own and imports none of the others.
const AREAS: [&str; 7] = ["auth", "sync", "audit", "account", "payments", "llm", "ops"];

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

/// The top-level modules `text` names as `crate::<module>`, outside comments.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &code[at + "crate::".len()..];
            // `crate::{a, b::c}` names each of its items' first segments.
            let group = rest.strip_prefix('{').map(|group| group.split('}').next().unwrap_or_default());
            let heads: Vec<&str> = group.map_or(vec![rest], |group| group.split(',').map(str::trim_start).collect());
            for head in heads {
                let name: String = head.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !name.is_empty() {
                    found.push((number + 1, name));
                }
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
        for (line, target) in imports(&text) {
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
                mycrate::auth\nuse crate::{account, sync::pull};";
    let found = imports(text);
    let found: Vec<(usize, &str)> = found.iter().map(|(line, name)| (*line, name.as_str())).collect();
    assert_eq!(found, [(1, "store"), (3, "views"), (5, "account"), (5, "sync")]);
}
