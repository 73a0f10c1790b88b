//! Writes the tokenizer's rank tables into `OUT_DIR`: each vocabulary's ordinary tokens in
//! rank order, as `[length: u16 LE][bytes]` records, read out of `tiktoken-rs` here, at
//! build time. The gateway embeds the tables and indexes them on first use, so it never
//! builds a `CoreBPE` (its maps and per-thread regex copies took some 15 MiB while being
//! built, for a table of 3 MiB) and carries the vocabularies it uses, not all of them.

use std::error::Error;
use std::path::PathBuf;

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
    Ok(())
}
