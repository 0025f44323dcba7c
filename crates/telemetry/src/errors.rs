//! How a service reports what stops it: a config file's problems, all at once, and the
//! error that ends a binary.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Every problem found in a config file, each naming the key and the fix.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// What the file holds, for the first line: "configuration", "definitions".
    pub what: &'static str,
    pub problems: Vec<String>,
}

impl ConfigError {
    pub fn new(file: &std::path::Path, what: &'static str, problems: Vec<String>) -> Self {
        Self {
            file: file.to_owned(),
            what,
            problems,
        }
    }

    /// Reads a config file, or says why not.
    pub fn read(file: &std::path::Path, what: &'static str) -> Result<String, Self> {
        std::fs::read_to_string(file)
            .map_err(|e| Self::new(file, what, vec![format!("cannot read the file: {e}")]))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: invalid {}", self.file.display(), self.what)?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// The exit code of a binary's run; an error is printed on stderr as plain text, whatever the
/// log format, with its causes (`{:#}`): it is for the operator.
pub fn exit_code<E: fmt::Display>(binary: &str, result: Result<ExitCode, E>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{binary}: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}
