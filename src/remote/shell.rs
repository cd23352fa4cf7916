//! Shell quoting for the scripts the executor runs on nodes (shared by sync and fetch).

/// One single-quoted shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
