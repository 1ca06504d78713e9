//! Golden files: output compared with a committed file. With
//! `UPDATE_GOLDEN=1` in the environment the file is rewritten instead;
//! review the diff before committing it.

use std::path::Path;

/// The environment variable that rewrites golden files.
pub const UPDATE_ENV: &str = "UPDATE_GOLDEN";

/// Compare `actual` with the file at `path`, or rewrite the file when
/// `UPDATE_GOLDEN` is set. The error says what differs.
pub fn compare(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os(UPDATE_ENV).is_some() {
        return std::fs::write(path, actual)
            .map_err(|e| format!("writing {}: {e}", path.display()));
    }
    let expected = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e} ({UPDATE_ENV}=1 writes it)", path.display()))?;
    if expected == actual {
        return Ok(());
    }
    let line = expected
        .lines()
        .zip(actual.lines())
        .take_while(|(e, a)| e == a)
        .count()
        + 1;
    Err(format!(
        "{} differs from the output from line {line} on ({UPDATE_ENV}=1 rewrites it; review the diff)\n\
         --- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    ))
}

/// Panic, saying what differs, when `actual` is not the golden file at `path`.
pub fn assert_golden(path: &Path, actual: &str) {
    if let Err(difference) = compare(path, actual) {
        panic!("{difference}");
    }
}
