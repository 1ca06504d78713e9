//! Every sample in `config/samples/` validates against the committed CRD schema,
//! and every manifest in `tests/invalid/` (ProxyConfigs, ProxyRulesets,
//! ProxyNodes) is rejected with the message its `# expect:` line names. Structural rules are checked with a JSON-Schema
//! validator (`jsonschema`), CEL rules with kube's client-side CEL evaluator —
//! the same two layers the API server applies at `kubectl apply`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The openAPIV3Schema of every version of every committed CRD, by kind.
fn schemas() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(root().join("yaml/crds.yaml")).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let crd: Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
            (
                kind,
                crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone(),
            )
        })
        .collect()
}

/// All problems with `object`, as `path: message` lines (empty when valid).
fn problems(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let schema = schemas()
        .into_iter()
        .find(|(k, _)| k == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind:?}"))
        .1;
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut out: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if out.is_empty()
        && let Err(errors) = kube::core::cel::Validator::new().validate(&schema, object, None)
    {
        out.extend(
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    out
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| {
            ["ProxyConfig", "ProxyRuleset", "ProxyNode"].contains(&v["kind"].as_str().unwrap_or(""))
        })
        .collect()
}

/// The manifests of a kustomize directory, without its `kustomization.yaml`.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = switchyard_api::manifests::files_in(dir, &["yaml"]).unwrap();
    files.retain(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"));
    files
}

#[test]
fn every_sample_validates() {
    let files = yaml_files(&root().join("../config/samples"));
    assert!(files.len() >= 6, "samples missing: {files:?}");
    for file in files {
        let docs = documents(&file);
        assert!(!docs.is_empty(), "{} has no ProxyConfig", file.display());
        for doc in docs {
            let found = problems(&doc);
            assert!(
                found.is_empty(),
                "{} is invalid: {found:#?}",
                file.display()
            );
        }
    }
}

#[test]
fn every_invalid_manifest_is_rejected_with_its_message() {
    let files = yaml_files(&root().join("tests/invalid"));
    assert!(files.len() >= 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()));
        let found = problems(&documents(&file)[0]);
        assert!(
            found.iter().any(|p| p.contains(expect)),
            "{}: expected a problem containing {expect:?}, got {found:#?}",
            file.display()
        );
    }
}

#[test]
fn a_valid_manifest_turns_invalid_when_a_rule_is_broken() {
    // Guards the validators themselves: the same object passes, then fails on one edit.
    let mut doc = documents(&root().join("../config/samples/ipvs.yaml")).remove(0);
    assert!(problems(&doc).is_empty());
    doc["spec"]["mode"] = "nftables".into();
    assert!(
        problems(&doc)
            .iter()
            .any(|p| p.contains("spec.ipvs is set"))
    );
}
