//! Reading cluster state for `switchyard plan` and `node-agent apply`: files,
//! the YAML/JSON files of a directory and standard input, up to a size cap.
//!
//! A state is held in memory whole (text, then objects), so what is read is
//! bounded: every source a [`StateReader`] reads counts against one budget
//! ([`MAX_STATE_BYTES`] by default), and a source that would pass it is
//! refused before it is read (files) or as soon as it does (streams), with
//! an error naming the source and the cap.

use std::io::{self, Read};
use std::path::Path;

use switchyard_api::manifests::files_in;

use crate::load::{LoadError, Objects, parse_objects};

/// The most state read by one command: 512 MiB of YAML or JSON, a cluster of
/// tens of thousands of Services with their EndpointSlices.
pub const MAX_STATE_BYTES: u64 = 512 * 1024 * 1024;

/// Why state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: the state is larger than {limit} bytes, the most that is read; split it or leave out what is not needed"
    )]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: {source}")]
    Load {
        path: String,
        #[source]
        source: Box<LoadError>,
    },
}

/// Reads sources against one byte budget.
#[derive(Debug)]
pub struct StateReader {
    limit: u64,
    remaining: u64,
}

impl Default for StateReader {
    fn default() -> StateReader {
        StateReader::new(MAX_STATE_BYTES)
    }
}

impl StateReader {
    /// At most `limit` bytes from all sources together.
    pub fn new(limit: u64) -> StateReader {
        StateReader {
            limit,
            remaining: limit,
        }
    }

    fn too_large(&self, path: &str) -> ReadError {
        ReadError::TooLarge {
            path: path.to_string(),
            limit: self.limit,
        }
    }

    /// All of `reader` as text, counted against the budget; `size` (a file's
    /// length) refuses it before anything is read.
    pub fn read(
        &mut self,
        path: &str,
        reader: impl Read,
        size: Option<u64>,
    ) -> Result<String, ReadError> {
        if size.is_some_and(|s| s > self.remaining) {
            return Err(self.too_large(path));
        }
        let mut text = String::new();
        // One byte past the budget tells a stream that ends there from a longer one.
        reader
            .take(self.remaining.saturating_add(1))
            .read_to_string(&mut text)
            .map_err(|source| ReadError::Read {
                path: path.to_string(),
                source,
            })?;
        let read = text.len() as u64;
        if read > self.remaining {
            return Err(self.too_large(path));
        }
        self.remaining -= read;
        Ok(text)
    }

    /// A file's text.
    pub fn read_file(&mut self, path: &Path) -> Result<String, ReadError> {
        let name = path.display().to_string();
        let read_err = |source| ReadError::Read {
            path: name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        self.read(&name, file, Some(size))
    }

    /// The texts of a file, or of the `extensions` files of a directory
    /// (sorted by name): `(name, text)`.
    pub fn read_path(
        &mut self,
        path: &Path,
        extensions: &[&str],
    ) -> Result<Vec<(String, String)>, ReadError> {
        if !path.is_dir() {
            return Ok(vec![(path.display().to_string(), self.read_file(path)?)]);
        }
        let files = files_in(path, extensions).map_err(|source| ReadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        files
            .iter()
            .map(|f| Ok((f.display().to_string(), self.read_file(f)?)))
            .collect()
    }
}

/// Parse `text` (named `path`) and add its objects to `objects`.
pub fn parse_into(objects: &mut Objects, path: &str, text: &str) -> Result<(), ReadError> {
    let parsed = parse_objects(text).map_err(|source| ReadError::Load {
        path: path.to_string(),
        source: Box::new(source),
    })?;
    objects.append(parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_past_the_budget_are_refused_and_the_budget_is_shared() {
        let mut reader = StateReader::new(10);
        assert_eq!(reader.read("a", &b"123456"[..], None).unwrap(), "123456");
        assert_eq!(reader.read("b", &b"1234"[..], None).unwrap(), "1234");
        let e = reader.read("c", &b"1"[..], None).unwrap_err().to_string();
        assert_eq!(
            e,
            "c: the state is larger than 10 bytes, the most that is read; split it or leave out what is not needed"
        );
        // A stream longer than the budget is read only one byte past it.
        let mut endless = std::io::repeat(b'a');
        let mut reader = StateReader::new(1000);
        assert!(matches!(
            reader.read("-", &mut endless, None),
            Err(ReadError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_file_larger_than_the_budget_is_refused_unread() {
        let mut reader = StateReader::new(3);
        // A declared size past the budget is enough: the stream is not touched.
        let e = reader
            .read("big.yaml", std::io::empty(), Some(4))
            .unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { .. }));
    }
}
