//! Shell completions and manual pages, generated from the commands' clap
//! definitions (clap_complete, clap_mangen) so they never drift from `--help`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Command;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap_complete::Shell;
use switchyard_api::Mode;

/// An error writing the manual pages.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("manual pages: create directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("manual pages: write the pages of {command} into {dir}: {source}")]
    Write {
        command: String,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The parser of a mode argument (`--mode`, `--from`, `--to`): its four
/// values are listed, so completions offer them and `--help` shows them.
pub fn mode_parser() -> impl TypedValueParser<Value = Mode> {
    PossibleValuesParser::new(Mode::ALL.map(Mode::as_str)).try_map(|s| s.parse::<Mode>())
}

/// The completion script of `command` for `shell`.
pub fn completion(mut command: Command, shell: Shell, out: &mut dyn Write) {
    let name = command.get_name().to_string();
    clap_complete::generate(shell, &mut command, name, out);
}

/// Writes one page per command and per visible subcommand (`NAME.1`,
/// `NAME-SUB.1`, …) into `dir`.
pub fn write_man_pages(commands: Vec<Command>, dir: &Path) -> Result<(), ManualError> {
    std::fs::create_dir_all(dir).map_err(|source| ManualError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    for command in commands {
        let name = command.get_name().to_string();
        clap_mangen::generate_to(command, dir).map_err(|source| ManualError::Write {
            command: name,
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}
