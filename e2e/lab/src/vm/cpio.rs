//! A minimal writer of the `newc` cpio format the kernel unpacks as an
//! initramfs. Archives may be concatenated: the kernel unpacks each in turn, so
//! a cached base image and a small per-run payload are simply appended.

use std::collections::BTreeSet;

/// One archive being built in memory. Parent directories are added on demand.
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    dirs: BTreeSet<String>,
    inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, &[]);
    }

    /// A regular file with `mode`'s permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let path = path.trim_matches('/');
        self.parents(path);
        self.entry(path, S_IFREG | (mode & 0o7777), data);
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_matches('/');
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, target.as_bytes());
    }

    /// A character device node (`/dev/console` must exist before `/init` runs).
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        let path = path.trim_matches('/');
        self.parents(path);
        self.entry_with_rdev(path, S_IFCHR | 0o600, &[], (major, minor));
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry_with_rdev(name, mode, data, (0, 0));
    }

    fn entry_with_rdev(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.inode += 1;
        let namesize = name.len() + 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            namesize as u32,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_entry_has_newc_header_parents_and_padding() {
        let mut a = Archive::new();
        a.file("bin/x", 0o755, b"hi");
        let bytes = a.finish();
        let text = String::from_utf8_lossy(&bytes);
        // The parent directory comes first, then the file, then the trailer.
        let dir = text.find("bin\0").unwrap();
        let file = text.find("bin/x\0").unwrap();
        let trailer = text.find("TRAILER!!!\0").unwrap();
        assert!(dir < file && file < trailer);
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        // The file header: mode 0100755, size 2, name size 6.
        let header = &bytes[file - 110..file];
        let field = |i: usize| std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
        assert_eq!(field(1), "000081ED");
        assert_eq!(field(6), "00000002");
        assert_eq!(field(11), "00000006");
    }

    #[test]
    fn directories_are_written_once() {
        let mut a = Archive::new();
        a.file("a/b/c", 0o644, b"");
        a.file("a/b/d", 0o644, b"");
        a.dir("a");
        let bytes = a.finish();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("a/b\0").count(), 1);
        assert_eq!(text.matches("a\0").count(), 1);
    }
}
