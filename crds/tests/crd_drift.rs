//! The committed CRD YAML must be exactly what the Rust types generate.
//! Regenerate with `cargo run -p switchyard-api --bin crdgen > crds/yaml/crds.yaml`
//! and copy it to `config/crd/crds.yaml`.

use std::path::Path;

fn committed(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn committed_crd_yaml_matches_the_types() {
    let generated = switchyard_api::crds_yaml().unwrap();
    for rel in ["yaml/crds.yaml", "../config/crd/crds.yaml"] {
        assert!(
            committed(rel) == generated,
            "{rel} is stale: run `cargo run -p switchyard-api --bin crdgen > crds/yaml/crds.yaml && cp crds/yaml/crds.yaml config/crd/crds.yaml`"
        );
    }
}
