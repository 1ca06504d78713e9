//! The container images, run for real (needs root, runc and umoci: .ci/setup).
//!
//! `.ci/images` builds the OCI archives when they are missing (once; rerun it
//! after a change to test new binaries). umoci, an OCI implementation of its
//! own, unpacks each archive into a runtime bundle and turns the image config
//! into the runtime config; runc runs the bundle with the security settings
//! of the image's manifest in `config/`. Both binaries answer `--version`
//! with the version and the commit the image was built from; the agent, in a
//! network namespace of the test's own, programs nftables and iptables rules
//! that `nft list ruleset` in that namespace shows. The namespace, the
//! bundles and the container state are removed whatever the outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_lab::cleanup::child_setup;
use switchyard_lab::netns::Netns;
use tempfile::TempDir;

/// A container that has not exited by then has hung (deadlock guard).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_yaml(relative: &str) -> Value {
    let path = repo().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{relative}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Runs a command to completion; panics with its stderr when it fails.
fn checked(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (installed by .ci/setup)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `target/images/<name>.tar`, built by `.ci/images` first when an archive is missing.
fn archive(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = repo().join("target/images");
    BUILT.get_or_init(|| {
        if ["operator", "node-agent"]
            .iter()
            .all(|n| dir.join(format!("{n}.tar")).exists())
        {
            return;
        }
        // Its output goes to the test's own stdout/stderr: the release build takes minutes.
        let mut build = Command::new("bash");
        build.arg(repo().join(".ci/images"));
        // Without the variables cargo sets for this test crate: build scripts
        // that track one (ring's) would rebuild, here and again on the next
        // ordinary release build.
        for (key, _) in std::env::vars() {
            let per_crate = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_"]
                .iter()
                .any(|prefix| key.starts_with(prefix))
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&key.as_str());
            if per_crate {
                build.env_remove(key);
            }
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("run .ci/images: {e}"));
        assert!(status.success(), ".ci/images failed ({status})");
    });
    dir.join(format!("{name}.tar"))
}

/// One image unpacked by umoci into a runtime bundle of a scratch directory.
struct Bundle {
    scratch: TempDir,
    /// The image config (`Entrypoint`, `User`, `Labels`, …).
    image: Value,
    /// The runtime config umoci derived from it.
    runtime: Value,
}

impl Bundle {
    fn unpack(name: &str) -> Bundle {
        let scratch = tempfile::Builder::new()
            .prefix(&format!("syimg-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("scratch directory: {e}"));
        let layout = scratch.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        checked(
            Command::new("tar")
                .arg("-xf")
                .arg(archive(name))
                .arg("-C")
                .arg(&layout),
        );
        let image = image_config(&layout);
        let reference = read_json(&layout.join("index.json"))["manifests"][0]["annotations"]
            ["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: index.json names no reference"))
            .to_string();
        let bundle = scratch.path().join("bundle");
        checked(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:{reference}", layout.display()))
                .arg(&bundle),
        );
        let runtime = read_json(&bundle.join("config.json"));
        Bundle {
            scratch,
            image,
            runtime,
        }
    }

    fn config(&self, key: &str) -> &Value {
        &self.image["config"][key]
    }

    /// Runs the image's entrypoint with `args`, the runtime config first passed
    /// through `edit`; returns its output once it exits.
    fn run(&self, id: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> Output {
        let mut runtime = self.runtime.clone();
        let mut argv: Vec<Value> = self.config("Entrypoint").as_array().cloned().unwrap();
        argv.extend(args.iter().map(|a| json!(a)));
        runtime["process"]["args"] = json!(argv);
        runtime["process"]["terminal"] = json!(false);
        edit(&mut runtime);
        let bundle = self.scratch.path().join("bundle");
        std::fs::write(bundle.join("config.json"), runtime.to_string()).unwrap();
        Container::new(self.scratch.path().join("runc"), id).run(&bundle)
    }
}

/// The image config of the (only) manifest of an OCI layout, every media type checked.
fn image_config(layout: &Path) -> Value {
    assert_eq!(
        read_json(&layout.join("oci-layout")),
        json!({"imageLayoutVersion": "1.0.0"})
    );
    let blob = |descriptor: &Value, media_type: &str| {
        assert_eq!(descriptor["mediaType"], media_type, "{descriptor}");
        let digest = descriptor["digest"].as_str().unwrap();
        let hex = digest.strip_prefix("sha256:").unwrap();
        read_json(&layout.join("blobs/sha256").join(hex))
    };
    let index = read_json(&layout.join("index.json"));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifest = blob(
        &index["manifests"][0],
        "application/vnd.oci.image.manifest.v1+json",
    );
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
    let image = blob(
        &manifest["config"],
        "application/vnd.oci.image.config.v1+json",
    );
    assert_eq!(image["os"], "linux");
    assert_eq!(
        image["rootfs"]["diff_ids"].as_array().map(Vec::len),
        manifest["layers"].as_array().map(Vec::len)
    );
    image
}

/// A runc container with its own state directory, deleted on drop.
struct Container {
    state: PathBuf,
    id: String,
}

impl Container {
    fn new(state: PathBuf, id: &str) -> Container {
        Container {
            state,
            id: format!("syimg-{}-{id}", std::process::id()),
        }
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(&self.state);
        cmd
    }

    fn run(&self, bundle: &Path) -> Output {
        let mut cmd = self.runc();
        cmd.args(["run", "--bundle"])
            .arg(bundle)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: child_setup only calls async-signal-safe functions (sigmask, prctl).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                child_setup();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("runc: {e} (installed by .ci/setup)"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        match rx.recv_timeout(RUN_TIMEOUT) {
            Ok(out) => out.unwrap_or_else(|e| panic!("runc run {}: {e}", self.id)),
            Err(_) => {
                let _ = self.runc().args(["kill", &self.id, "KILL"]).status();
                panic!("container {} still running after {RUN_TIMEOUT:?}", self.id);
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .runc()
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

/// The first container of a workload manifest in `config/`.
fn container_of(manifest: &Value) -> &Value {
    &manifest["spec"]["template"]["spec"]["containers"][0]
}

/// Capability names by number (linux/capability.h).
const CAPABILITIES: &str = "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID \
    SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER \
    SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE \
    SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN \
    SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE";

/// The capabilities of this process's bounding set: a container cannot get
/// more (a sandboxed CI machine may lack one, e.g. SYS_RESOURCE).
fn host_capabilities() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap();
    CAPABILITIES
        .split_whitespace()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .map(|(_, name)| name.to_string())
        .collect()
}

/// The container securityContext of a manifest, as a Kubernetes node's
/// runtime applies it: privileged (every capability, /proc/sys and /sys
/// writable) or the capabilities listed (all others dropped); a read-only
/// root; no privilege escalation unless privileged.
fn secure_as(runtime: &mut Value, container: &Value) {
    let context = &container["securityContext"];
    let privileged = context["privileged"] == json!(true);
    let host = host_capabilities();
    let wanted: Vec<String> = if privileged {
        host.clone()
    } else {
        assert_eq!(context["capabilities"]["drop"], json!(["ALL"]));
        let add = context["capabilities"]["add"].as_array().cloned();
        add.into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    let (granted, missing): (Vec<String>, Vec<String>) =
        wanted.into_iter().partition(|c| host.contains(c));
    if !missing.is_empty() {
        eprintln!("left out, this machine's bounding set lacks them: {missing:?}");
    }
    let granted: Vec<String> = granted.iter().map(|c| format!("CAP_{c}")).collect();
    let process = &mut runtime["process"];
    for set in ["bounding", "effective", "permitted"] {
        process["capabilities"][set] = json!(granted);
    }
    process["capabilities"]["inheritable"] = json!([]);
    process["capabilities"]["ambient"] = json!([]);
    process["noNewPrivileges"] = json!(context["allowPrivilegeEscalation"] == json!(false));
    runtime["root"]["readonly"] = json!(context["readOnlyRootFilesystem"] == json!(true));
    if privileged {
        runtime["linux"]["readonlyPaths"] = json!([]);
        runtime["linux"]["maskedPaths"] = json!([]);
        for mount in runtime["mounts"].as_array_mut().unwrap() {
            if let Some(options) = mount["options"].as_array_mut() {
                options.retain(|o| o != "ro");
            }
        }
    }
}

/// `User`, `Entrypoint` and `Env` of a `FROM scratch AS <target>` stage of the Dockerfile.
fn dockerfile_stage(target: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let stage: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != format!("FROM scratch AS {target}"))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .collect();
    let value = |keyword: &str| {
        stage
            .iter()
            .find_map(|l| l.strip_prefix(keyword))
            .unwrap_or_else(|| panic!("Dockerfile stage {target}: no {keyword}"))
            .trim()
            .to_string()
    };
    json!({
        "User": value("USER "),
        "Entrypoint": serde_json::from_str::<Value>(&value("ENTRYPOINT ")).unwrap(),
        "Env": [value("ENV ")],
    })
}

/// The image is the one the Dockerfile's target describes.
fn assert_matches_dockerfile(bundle: &Bundle, target: &str) {
    let stage = dockerfile_stage(target);
    for key in ["User", "Entrypoint", "Env"] {
        assert_eq!(
            bundle.config(key),
            &stage[key],
            "{key}: .ci/images and the Dockerfile's {target} differ"
        );
    }
}

/// `--version` prints `<binary> <version> (commit <c>)`, `c` the commit the
/// image's revision label names.
fn assert_version(bundle: &Bundle, binary: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{binary} --version: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let revision = bundle.config("Labels")["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    let commit = printed
        .strip_prefix(&format!("{binary} {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {printed:?}"));
    assert!(
        commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "--version names no commit: {printed:?}"
    );
    assert!(
        revision.starts_with(commit),
        "{binary} says commit {commit}, the image's revision label {revision:?}"
    );
}

#[test]
fn operator_image_runs_as_its_deployment_and_names_its_commit() {
    let bundle = Bundle::unpack("operator");
    assert_matches_dockerfile(&bundle, "operator");
    let deployment = read_yaml("config/operator/deployment.yaml");
    let pod_context = &deployment["spec"]["template"]["spec"]["securityContext"];
    let uid = pod_context["runAsUser"].as_u64().unwrap();
    assert_eq!(bundle.config("User"), &json!(format!("{uid}:{uid}")));
    // runAsNonRoot: the kubelet accepts the image only with a numeric non-root User.
    assert_eq!(bundle.runtime["process"]["user"]["uid"], json!(uid));
    assert_ne!(uid, 0);

    let out = bundle.run("operator", &["--version"], |runtime| {
        secure_as(runtime, container_of(&deployment));
    });
    assert_version(&bundle, "switchyard-operator", &out);
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - {addresses: [10.0.1.5], nodeName: node-a, conditions: {ready: true}}
"#;

fn nft_ruleset(ns: &Netns) -> String {
    checked(Command::new("ip").args(["netns", "exec", ns.name(), "nft", "list", "ruleset"]))
}

#[test]
fn agent_image_programs_nftables_and_iptables_in_a_namespace_of_the_test() {
    let bundle = Bundle::unpack("node-agent");
    assert_matches_dockerfile(&bundle, "node-agent");
    let daemonset = read_yaml("config/agent/daemonset.yaml");
    let container = container_of(&daemonset);
    // The DaemonSet sets no user: the image's root is the one its capabilities apply to.
    assert_eq!(bundle.config("User"), &json!("0:0"));
    assert!(container["securityContext"]["runAsUser"].is_null());

    let version = bundle.run("agent-version", &["--version"], |_| {});
    assert_version(&bundle, "node-agent", &version);

    let state = bundle.scratch.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("web.yaml"), SERVICE).unwrap();
    // The DaemonSet mounts the host's xtables lock; this one is the test's.
    let lock = bundle.scratch.path().join("xtables.lock");
    std::fs::write(&lock, "").unwrap();
    let ns = Netns::create(&format!("syimg-{}-agent", std::process::id()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!nft_ruleset(&ns).contains("10.96.0.10"));

    for mode in ["nftables", "iptables"] {
        let args = [
            "apply",
            "--mode",
            mode,
            "--state",
            "/state",
            "--node-name",
            "node-a",
        ];
        let out = bundle.run(&format!("agent-{mode}"), &args, |runtime| {
            secure_as(runtime, container);
            for namespace in runtime["linux"]["namespaces"].as_array_mut().unwrap() {
                if namespace["type"] == "network" {
                    namespace["path"] = json!(format!("/run/netns/{}", ns.name()));
                }
            }
            let mounts = runtime["mounts"].as_array_mut().unwrap();
            for (source, destination) in [(&state, "/state"), (&lock, "/run/xtables.lock")] {
                mounts.push(json!({"destination": destination, "type": "bind",
                    "source": source, "options": ["rbind", "rw"]}));
            }
        });
        assert!(
            out.status.success(),
            "node-agent apply --mode {mode}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("applied {mode}")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let ruleset = format!("\n{}", nft_ruleset(&ns));
    // nftables mode: its own table.
    let ours = ruleset
        .split("\ntable ")
        .find(|t| t.starts_with("ip switchyard "))
        .unwrap_or_else(|| panic!("no table ip switchyard in\n{ruleset}"));
    assert!(
        ours.contains("10.96.0.10") && ours.contains("10.0.1.5"),
        "{ours}"
    );
    // iptables mode, through the image's iptables (nft flavour): kube-proxy's chains in table nat.
    let nat = ruleset
        .split("\ntable ")
        .find(|t| t.starts_with("ip nat "))
        .unwrap_or_else(|| panic!("no iptables-nft table ip nat in\n{ruleset}"));
    assert!(nat.contains("chain KUBE-SERVICES"), "{nat}");
    assert!(nat.contains("10.96.0.10"), "{nat}");
}

#[test]
fn kustomize_deploys_the_images_of_this_version() {
    let kustomization = read_yaml("config/kustomization.yaml");
    let mut names = Vec::new();
    for image in kustomization["images"].as_array().unwrap() {
        names.push(image["name"].as_str().unwrap().to_string());
        assert_eq!(image["newTag"], env!("CARGO_PKG_VERSION"), "{image:?}");
    }
    assert_eq!(names, ["switchyard/operator", "switchyard/node-agent"]);
    for (manifest, name) in [
        ("config/operator/deployment.yaml", "switchyard/operator"),
        ("config/agent/daemonset.yaml", "switchyard/node-agent"),
    ] {
        let image = container_of(&read_yaml(manifest))["image"].clone();
        let image = image.as_str().unwrap();
        assert!(
            image.split(':').next() == Some(name),
            "{manifest} runs {image}, which config/kustomization.yaml does not set"
        );
    }
}
