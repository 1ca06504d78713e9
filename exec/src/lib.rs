//! Running a program: arguments and optional standard input in, its standard
//! output out, or an error naming the program with its exit status and
//! standard error. The dataplane's kernel tools (`exec::RealRunner`) and the
//! test kit's commands in a network namespace both run through [`run`].

use std::io::Write;
use std::process::{Command, Stdio};

/// A program run failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
}

/// Run `program args...`, feeding `stdin` when given; its standard output.
pub fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, ExecError> {
    let spawn_err = |source| ExecError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(ExecError::Failed {
            program: program.to_string(),
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
