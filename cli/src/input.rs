//! Reading cluster state for `plan` and `diff`: files, directories (their
//! `*.yaml`, `*.yml` and `*.json` files, sorted) and `-` for standard input, each
//! a (multi-document) YAML stream or a `kind: List` as `kubectl get -o yaml` prints.

use std::io::Read;
use std::path::{Path, PathBuf};

use switchyard_api::manifests::files_in;
use switchyard_compiler::{LoadError, Objects, parse_objects};

/// Why the state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Load {
        path: String,
        #[source]
        source: Box<LoadError>,
    },
    #[error("no objects in {0}")]
    Empty(String),
}

/// Read and parse every source; objects keep the order of the sources.
pub fn load_state(sources: &[PathBuf]) -> Result<Objects, InputError> {
    let mut all = Objects::default();
    for source in sources {
        for (name, text) in read_source(source)? {
            let objects = parse_objects(&text).map_err(|source| InputError::Load {
                path: name,
                source: Box::new(source),
            })?;
            all.services.extend(objects.services);
            all.endpoint_slices.extend(objects.endpoint_slices);
            all.nodes.extend(objects.nodes);
            all.proxy_configs.extend(objects.proxy_configs);
        }
    }
    if all.is_empty() {
        let names: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        return Err(InputError::Empty(names.join(", ")));
    }
    Ok(all)
}

/// The streams of one source: `(display name, text)`.
fn read_source(source: &Path) -> Result<Vec<(String, String)>, InputError> {
    let read_err = |path: &Path, source| InputError::Read {
        path: path.display().to_string(),
        source,
    };
    if source == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| read_err(source, e))?;
        return Ok(vec![("<stdin>".to_string(), text)]);
    }
    if source.is_dir() {
        return files_in(source, &["yaml", "yml", "json"])
            .map_err(|e| read_err(source, e))?
            .iter()
            .map(|f| read_file(f).map_err(|e| read_err(f, e)))
            .collect();
    }
    Ok(vec![read_file(source).map_err(|e| read_err(source, e))?])
}

fn read_file(path: &Path) -> Result<(String, String), std::io::Error> {
    Ok((path.display().to_string(), std::fs::read_to_string(path)?))
}
