//! The VM runner boots Debian's stock kernel with IPVS available.

use switchyard_lab::vm::VmRunner;

#[test]
fn stock_kernel_boots_with_ipvs_and_runs_the_command() {
    let vm = VmRunner::new().unwrap();
    let out = vm
        .run(
            "/bin/busybox".as_ref(),
            &[
                "sh",
                "-c",
                "uname -r; cat /proc/net/ip_vs; echo $SWITCHYARD_IN_VM; exit 7",
            ],
            &[],
        )
        .unwrap();
    assert_eq!(out.exit_code, 7, "console:\n{}", out.console);
    let lines: Vec<&str> = out.output.lines().collect();
    assert_eq!(lines[0], vm.kernel_version(), "console:\n{}", out.console);
    assert!(
        out.output.contains("IP Virtual Server version"),
        "{}",
        out.console
    );
    assert_eq!(lines.last(), Some(&"1"));
}
