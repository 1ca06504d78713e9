//! Reading cluster state for `plan` and `diff`: files, directories (their
//! `*.yaml`, `*.yml` and `*.json` files, sorted) and `-` for standard input, each
//! a (multi-document) YAML stream or a `kind: List` as `kubectl get -o yaml`
//! prints, at most [`MAX_STATE_BYTES`] in all.

use std::path::{Path, PathBuf};

use switchyard_compiler::{MAX_STATE_BYTES, Objects, ReadError, StateReader, parse_into};

/// Why the state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("no objects in {0}")]
    Empty(String),
}

/// Read and parse every source; objects keep the order of the sources.
pub fn load_state(sources: &[PathBuf]) -> Result<Objects, InputError> {
    let mut reader = StateReader::new(MAX_STATE_BYTES);
    let mut all = Objects::default();
    for source in sources {
        let texts = if source == Path::new("-") {
            vec![(
                "<stdin>".to_string(),
                reader.read("<stdin>", std::io::stdin().lock(), None)?,
            )]
        } else {
            reader.read_path(source, &["yaml", "yml", "json"])?
        };
        for (name, text) in texts {
            parse_into(&mut all, &name, &text)?;
        }
    }
    if all.is_empty() {
        let names: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        return Err(InputError::Empty(names.join(", ")));
    }
    Ok(all)
}
