//! Prints the Switchyard CRDs as YAML (`cargo run -p switchyard-api --bin crdgen > crds/yaml/crds.yaml`).

fn main() -> Result<(), serde_norway::Error> {
    print!("{}", switchyard_api::crds_yaml()?);
    Ok(())
}
