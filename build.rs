//! Writes the tokenizer's rank tables into `OUT_DIR`: each vocabulary's ordinary tokens in
//! rank order, as `[length: u16 LE][bytes]` records, read out of `tiktoken-rs` here, at
//! build time. The gateway embeds the tables and indexes them on first use, so it never
//! builds a `CoreBPE` (its maps and per-thread regex copies took some 15 MiB while being
//! built, for a table of 3 MiB) and carries the vocabularies it uses, not all of them.
//!
//! Also lists the web console's files (`ui/`) in `OUT_DIR/ui_files.rs` as
//! `(path, include_bytes!(…))` pairs, so the binary carries the console (src/http/ui.rs).

use std::error::Error;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?);
    // Ordinary (non-special) tokens are ranks 0..N without gaps (src/domain/tokens/bpe.rs).
    let vocabularies = [
        ("cl100k_base", tiktoken_rs::cl100k_base()?, 100_256u32),
        ("o200k_base", tiktoken_rs::o200k_base()?, 199_998u32),
    ];
    for (name, core, ordinary) in vocabularies {
        let mut table = Vec::new();
        for bytes in core._decode_native_and_split((0..ordinary).collect()) {
            table.extend_from_slice(&u16::try_from(bytes.len())?.to_le_bytes());
            table.extend_from_slice(&bytes);
        }
        std::fs::write(out.join(format!("{name}.ranks")), table)?;
    }
    ui_files(&out)
}

/// Writes `ui_files.rs`: every file under `ui/` (sorted, `/`-separated paths relative to
/// `ui/`), hidden files skipped.
fn ui_files(out: &Path) -> Result<(), Box<dyn Error>> {
    let root =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("cargo sets it")?).join("ui");
    // A directory: cargo reruns this script when anything under it changes.
    println!("cargo::rerun-if-changed=ui");
    let mut files = Vec::new();
    if root.is_dir() {
        walk(&root, &root, &mut files)?;
    }
    files.sort();
    let mut code = String::from("&[\n");
    for (rel, abs) in files {
        code.push_str(&format!("    ({rel:?}, include_bytes!({abs:?})),\n"));
    }
    code.push_str("]\n");
    std::fs::write(out.join("ui_files.rs"), code)?;
    Ok(())
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) -> Result<(), Box<dyn Error>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("a UTF-8 file name under ui/")?;
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, files)?;
        } else {
            let rel = path
                .strip_prefix(root)?
                .components()
                .map(|c| c.as_os_str().to_str().ok_or("a UTF-8 path under ui/"))
                .collect::<Result<Vec<_>, _>>()?
                .join("/");
            let abs = path.to_str().ok_or("a UTF-8 path under ui/")?.to_string();
            files.push((rel, abs));
        }
    }
    Ok(())
}
