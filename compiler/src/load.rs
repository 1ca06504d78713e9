//! Reading Kubernetes objects from YAML (scenario files, `switchyard plan`):
//! multi-document streams and `kind: List`, with errors that name the
//! document, the object and the path of the bad field.

use std::fmt;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_norway::Value;
use switchyard_api::ProxyConfig;

/// The objects of a YAML stream, by kind, in stream order.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    pub proxy_configs: Vec<ProxyConfig>,
}

/// Where an object is in a stream: documents count from 1, as do items of a `kind: List`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// Why a YAML stream could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{location}: not valid YAML: {source}")]
    Yaml {
        location: Location,
        source: serde_norway::Error,
    },
    #[error("{location}: the object has no kind")]
    MissingKind { location: Location },
    #[error(
        "{location}: kind {kind:?} is not supported (Service, EndpointSlice, Node, ProxyConfig or a List)"
    )]
    UnsupportedKind { location: Location, kind: String },
    #[error("{location}: {kind} {name:?}: field `{path}`: {source}")]
    InvalidObject {
        location: Location,
        kind: String,
        name: String,
        /// The serde path of the bad field, e.g. `spec.ports[0].port`.
        path: String,
        source: serde_norway::Error,
    },
}

impl Objects {
    /// Add `more`'s objects after these.
    pub fn append(&mut self, more: Objects) {
        self.services.extend(more.services);
        self.endpoint_slices.extend(more.endpoint_slices);
        self.nodes.extend(more.nodes);
        self.proxy_configs.extend(more.proxy_configs);
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.endpoint_slices.is_empty()
            && self.nodes.is_empty()
            && self.proxy_configs.is_empty()
    }
}

/// Parse a (multi-document) YAML stream of Services, EndpointSlices, Nodes,
/// ProxyConfigs and lists of them (`kind: List`, `ServiceList`, …, as
/// `kubectl get -o yaml` writes them). Empty documents are skipped.
pub fn parse_objects(yaml: &str) -> Result<Objects, LoadError> {
    let mut objects = Objects::default();
    for (index, document) in serde_norway::Deserializer::from_str(yaml).enumerate() {
        let location = Location {
            document: index + 1,
            item: None,
        };
        let value =
            Value::deserialize(document).map_err(|source| LoadError::Yaml { location, source })?;
        if value.is_null() {
            continue;
        }
        if kind_of(&value).is_some_and(|k| k.ends_with("List")) {
            let items = value.get("items").and_then(Value::as_sequence).cloned();
            for (i, item) in items.into_iter().flatten().enumerate() {
                let location = Location {
                    document: index + 1,
                    item: Some(i + 1),
                };
                add_object(&mut objects, item, location)?;
            }
        } else {
            add_object(&mut objects, value, location)?;
        }
    }
    Ok(objects)
}

fn kind_of(value: &Value) -> Option<&str> {
    value.get("kind").and_then(Value::as_str)
}

fn add_object(objects: &mut Objects, value: Value, location: Location) -> Result<(), LoadError> {
    match kind_of(&value) {
        None => return Err(LoadError::MissingKind { location }),
        Some("Service") => objects.services.push(typed(value, location)?),
        Some("EndpointSlice") => objects.endpoint_slices.push(typed(value, location)?),
        Some("Node") => objects.nodes.push(typed(value, location)?),
        Some("ProxyConfig") => objects.proxy_configs.push(typed(value, location)?),
        Some(kind) => {
            return Err(LoadError::UnsupportedKind {
                location,
                kind: kind.to_string(),
            });
        }
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(value: Value, location: Location) -> Result<T, LoadError> {
    let kind = kind_of(&value).unwrap_or_default().to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    serde_path_to_error::deserialize(value).map_err(|e| LoadError::InvalidObject {
        location,
        kind,
        name,
        path: e.path().to_string(),
        source: e.into_inner(),
    })
}
