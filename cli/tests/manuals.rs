//! `switchyard completion` and `switchyard man` through the binary: the bash
//! script is loaded by a real bash and completes the commands a person runs
//! (never the hidden roles), and every page renders with groff without a warning.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn switchyard(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "switchyard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What bash offers after `words` (the last one being completed).
fn bash_completes(script: &Path, words: &str) -> BTreeSet<String> {
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            r#"source "$0"; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE="{words}"; COMP_POINT=${{#COMP_LINE}}; _switchyard switchyard "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"; printf '%s\n' "${{COMPREPLY[@]}}""#
        ))
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_and_flags_but_not_the_hidden_roles() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("switchyard.bash");
    std::fs::write(&script, switchyard(&["completion", "bash"])).unwrap();

    let commands = bash_completes(&script, "switchyard ''");
    for c in ["plan", "diff", "demo", "lab", "crdgen", "completion", "man"] {
        assert!(commands.contains(c), "{c} not offered: {commands:?}");
    }
    assert!(
        commands.iter().all(|c| !c.starts_with("__")),
        "a hidden role is offered: {commands:?}"
    );
    assert_eq!(
        bash_completes(&script, "switchyard di"),
        BTreeSet::from(["diff".to_string()])
    );
    let flags = bash_completes(&script, "switchyard diff --fail");
    assert_eq!(flags, BTreeSet::from(["--fail-on-difference".to_string()]));
    let modes = bash_completes(&script, "switchyard plan --mode ''");
    assert_eq!(
        modes,
        ["ebpf", "iptables", "ipvs", "nftables"]
            .map(String::from)
            .into(),
    );
}

#[test]
fn every_shell_gets_a_script_naming_the_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = switchyard(&["completion", shell]);
        assert!(
            script.contains("fail-on-difference") && !script.contains("__operator"),
            "{shell}:\n{script}"
        );
    }
}

#[test]
fn man_writes_a_page_per_command_that_groff_renders_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    switchyard(&["man", dir.path().to_str().unwrap()]);
    let pages: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected: BTreeSet<String> = [
        "switchyard.1",
        "switchyard-plan.1",
        "switchyard-diff.1",
        "switchyard-lab.1",
        "switchyard-lab-up.1",
        "switchyard-lab-down.1",
        "switchyard-crdgen.1",
        "switchyard-completion.1",
        "switchyard-man.1",
        "switchyard-demo.1",
        "node-agent.1",
        "node-agent-run.1",
        "node-agent-apply.1",
        "node-agent-cleanup.1",
        "switchyard-operator.1",
    ]
    .map(String::from)
    .into();
    assert!(
        expected.is_subset(&pages),
        "missing: {:?}",
        expected.difference(&pages).collect::<Vec<_>>()
    );
    assert!(
        pages.iter().all(|p| !p.contains("__")),
        "a page for a hidden role: {pages:?}"
    );
    for page in &pages {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(dir.path().join(page))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{page}: {stderr}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SYNOPSIS"), "{page}:\n{text}");
    }
    let diff = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .arg(dir.path().join("switchyard-diff.1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&diff.stdout);
    assert!(text.contains("--fail-on-difference"), "{text}");
}
