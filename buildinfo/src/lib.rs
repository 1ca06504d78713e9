//! The version string Switchyard's binaries print for `--version`: the crate
//! version and the git commit they were built from, e.g. `0.1.0 (commit 1a2b3c4)`.
//!
//! Used from build scripts: `build.rs` calls [`emit_version`], and the binary
//! reads the result with `#[command(version = env!("SWITCHYARD_VERSION"))]`.
//! The commit is `git rev-parse --short HEAD`, or [`COMMIT_ENV`] when set (a
//! container build has no `.git`), or `unknown` when neither is there.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Overrides the commit (hex, 4 to 40 digits), as the Dockerfile's `GIT_COMMIT` does.
pub const COMMIT_ENV: &str = "SWITCHYARD_GIT_COMMIT";

/// The commit printed when there is neither git nor [`COMMIT_ENV`].
pub const UNKNOWN: &str = "unknown";

/// Prints the cargo directives of a build script: `SWITCHYARD_VERSION` for the
/// crate being built, and reruns when HEAD, the branch it names or
/// [`COMMIT_ENV`] changes.
pub fn emit_version() {
    println!("cargo:rerun-if-env-changed={COMMIT_ENV}");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var(COMMIT_ENV) {
        Ok(value) if is_commit(&value) => value,
        other => {
            if let Ok(value) = other {
                println!("cargo:warning={COMMIT_ENV}={value:?} is not a hex commit id; asking git");
            }
            for path in git_files(&manifest_dir) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            git_commit(&manifest_dir)
        }
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!(
        "cargo:rustc-env=SWITCHYARD_VERSION={}",
        version_string(&version, &commit)
    );
}

/// `<version> (commit <commit>)`.
pub fn version_string(version: &str, commit: &str) -> String {
    format!("{version} (commit {commit})")
}

/// The short hash of HEAD of the checkout `dir` is in, or [`UNKNOWN`].
pub fn git_commit(dir: &Path) -> String {
    git(dir, &["rev-parse", "--short", "HEAD"])
        .filter(|c| is_commit(c))
        .unwrap_or_else(|| UNKNOWN.to_string())
}

fn is_commit(text: &str) -> bool {
    (4..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The files whose change moves HEAD: `HEAD` itself, the branch it points to
/// (loose, and `packed-refs`). Resolved by git, so a worktree's are right too.
fn git_files(dir: &Path) -> Vec<PathBuf> {
    let mut names = vec!["HEAD".to_string(), "packed-refs".to_string()];
    names.extend(git(dir, &["symbolic-ref", "-q", "HEAD"]));
    names
        .iter()
        .filter_map(|name| git(dir, &["rev-parse", "--git-path", name]))
        .map(|path| dir.join(path))
        .filter(|path| path.exists())
        .collect()
}

/// A git command's trimmed output, if it ran and succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_commit() {
        assert_eq!(version_string("0.1.0", "1a2b3c4"), "0.1.0 (commit 1a2b3c4)");
    }

    #[test]
    fn a_checkout_gives_its_head() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let commit = git_commit(dir);
        if git(dir, &["rev-parse", "HEAD"]).is_some() {
            assert!(is_commit(&commit), "{commit}");
            let full = git(dir, &["rev-parse", "HEAD"]).unwrap();
            assert!(full.starts_with(&commit));
            assert!(git_files(dir).iter().any(|p| p.ends_with("HEAD")));
        } else {
            assert_eq!(commit, UNKNOWN);
        }
    }

    #[test]
    fn no_checkout_gives_unknown() {
        let dir = std::env::temp_dir().join(format!("buildinfo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let commit = git_commit(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(commit, UNKNOWN);
    }

    #[test]
    fn commit_ids_are_hex() {
        assert!(is_commit("1a2b3c4"));
        assert!(!is_commit("1a2"));
        assert!(!is_commit("1a2b3c4; rm"));
        assert!(!is_commit(&"a".repeat(41)));
    }
}
