//! Rhai transform scripts as stored: a name and its source. The sandbox that compiles and
//! runs them is `crate::scripts`.

use serde::Serialize;
use utoipa::ToSchema;

/// Longest script name.
pub const MAX_SCRIPT_NAME: usize = 64;

/// A stored script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ScriptRecord {
    pub name: String,
    /// The Rhai source.
    pub source: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Whether `name` may name a script: 1 to 64 letters, digits, `-`, `_` or `.`. Answers
/// why not.
pub fn check_script_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SCRIPT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a script name is 1 to {MAX_SCRIPT_NAME} letters, digits, `-`, `_` or `.`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_are_short_and_plain() {
        assert!(check_script_name("rename-model_v2.1").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_script_name(bad).is_err(), "{bad}");
        }
    }
}
