//! Compiles the eBPF C programs in `bpf/` into `$OUT_DIR/<name>.bpf.o`
//! (embedded by `ebpf::objects`). The list is explicit: a new entry
//! file is added here.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The entry files under `bpf/`, without `.bpf.c`.
const PROGRAMS: &[&str] = &["sock", "tc"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    // The uapi headers include <asm/types.h>, which lives under the multiarch directory.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args([
                "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", &multiarch, "-c", &src, "-o",
            ])
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed on {src} ({s})"),
            Err(e) => panic!("could not run {clang} for {src}: {e} (install clang and libbpf-dev)"),
        }
    }
}
