//! Manifest files on disk: what `switchyard plan -f DIR`, the scenario runner
//! and the sample tests read from a directory.

use std::io;
use std::path::{Path, PathBuf};

/// The regular files directly in `dir` whose extension is one of
/// `extensions`, sorted by path. An error when `dir` cannot be read (it is
/// not a directory, or is missing).
pub fn files_in(dir: &Path, extensions: &[&str]) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| extensions.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_matching_files_sorted_and_fails_on_a_file() {
        let dir = std::env::temp_dir().join(format!("sy-manifests-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub.yaml")).unwrap();
        for f in ["b.yaml", "a.yml", "c.json", "d.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let names = |exts: &[&str]| -> Vec<String> {
            files_in(&dir, exts)
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&["yaml", "yml"]), ["a.yml", "b.yaml"]);
        assert_eq!(names(&["json"]), ["c.json"]);
        assert!(files_in(&dir.join("b.yaml"), &["yaml"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
