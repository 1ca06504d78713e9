//! The API server's audit log: who did what, as the server saw it. The
//! policy records, at the Metadata level (user, verb, object, answer code;
//! no bodies), every request of Switchyard's own ServiceAccounts and every
//! write by anyone. Tests read it back ([`read`]) to prove what no process
//! log can: that Switchyard's identities were never refused (403), and which
//! operator replica wrote what (a token bound to a Pod carries the Pod's name
//! in the user's extra fields).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ControlPlaneError;
use super::certs;
use super::identity::NAMESPACE;

/// The policy file and the log, in the control plane's directory.
pub const POLICY_FILE: &str = "audit-policy.yaml";
pub const LOG_FILE: &str = "audit.log";

/// The user-info extra field that names the Pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Verbs that change something.
const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

fn policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts:{NAMESPACE}\"]
  - level: Metadata
    verbs: [{}]
  - level: None
",
        WRITES.join(", ")
    )
}

/// Write the policy into `dir`; its path.
pub fn write_policy(dir: &Path) -> Result<PathBuf, ControlPlaneError> {
    let path = dir.join(POLICY_FILE);
    certs::write(&path, policy().as_bytes(), false)?;
    Ok(path)
}

/// The user a request was authenticated as.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct User {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The object a request was about.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
struct ResponseStatus {
    #[serde(default)]
    code: u16,
}

/// One audit event (the fields the tests read).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub stage: String,
    pub verb: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub user: User,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
    pub stage_timestamp: String,
}

impl AuditEvent {
    /// The HTTP status the server answered with (0 when it did not say).
    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    /// The request changed (or tried to change) something.
    pub fn is_write(&self) -> bool {
        WRITES.contains(&self.verb.as_str())
    }

    /// The Pod the caller's token is bound to, if it is.
    pub fn pod(&self) -> Option<&str> {
        self.user
            .extra
            .get(POD_NAME_EXTRA)
            .and_then(|p| p.first())
            .map(String::as_str)
    }

    /// `verb resource[/subresource] [namespace/]name -> code`, for messages.
    pub fn describe(&self) -> String {
        let object = self.object_ref.clone().unwrap_or_default();
        let resource = match &object.subresource {
            Some(sub) => format!("{}/{sub}", object.resource),
            None => object.resource.clone(),
        };
        let name = match (&object.namespace, &object.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.clone(),
            (_, None) => String::new(),
        };
        format!(
            "{} {} {resource} {name} by {} -> {}",
            self.stage_timestamp,
            self.verb,
            self.pod().unwrap_or(&self.user.username),
            self.code()
        )
    }
}

/// Every complete event of the log at `path`, in the order the server wrote them.
pub fn read(path: &Path) -> Result<Vec<AuditEvent>, ControlPlaneError> {
    let text = std::fs::read_to_string(path).map_err(|source| ControlPlaneError::Io {
        what: "read the audit log",
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|message| ControlPlaneError::Audit {
        path: path.to_path_buf(),
        message,
    })
}

/// The events of a log's text; a last line being written is skipped.
fn parse(text: &str) -> Result<Vec<AuditEvent>, String> {
    let mut events = Vec::new();
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    for (n, line) in complete.lines().enumerate() {
        let event: AuditEvent =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if event.stage != "ResponseStarted" {
            events.push(event);
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/apis/switchyard.dev/v1alpha1/proxynodes/node-0?fieldManager=switchyard-operator\u0026force=true","verb":"patch","user":{"username":"system:serviceaccount:switchyard-system:switchyard-operator","uid":"u","groups":["system:serviceaccounts"],"extra":{"authentication.kubernetes.io/pod-name":["switchyard-operator-1"],"authentication.kubernetes.io/pod-uid":["p"]}},"sourceIPs":["127.0.0.1"],"objectRef":{"resource":"proxynodes","name":"node-0","apiGroup":"switchyard.dev","apiVersion":"v1alpha1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2025-01-01T00:00:00.000000Z","stageTimestamp":"2025-01-01T00:00:00.010000Z"}"#;

    #[test]
    fn events_name_the_replica_and_the_answer() {
        let events = parse(&format!("{LINE}\n{{\"partial")).unwrap();
        assert_eq!(events.len(), 1, "the line being written is skipped");
        let e = &events[0];
        assert!(e.is_write());
        assert_eq!(e.code(), 200);
        assert_eq!(e.pod(), Some("switchyard-operator-1"));
        assert_eq!(
            e.describe(),
            "2025-01-01T00:00:00.010000Z patch proxynodes node-0 by switchyard-operator-1 -> 200"
        );
    }
}
