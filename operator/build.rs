//! Sets `SWITCHYARD_VERSION` (crate version and git commit) for `--version`.

fn main() {
    switchyard_buildinfo::emit_version();
}
