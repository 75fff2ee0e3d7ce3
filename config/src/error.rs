//! Configuration errors. Every message names the field path and the offending value,
//! e.g. `routes[2].upstream: unknown upstream "gov-servce"`.

use std::fmt;
use std::path::PathBuf;

/// One problem at one place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path into the document: `routes[2].match.host`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} error(s) in the config:\n{}", .0.len(), render(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// Every field error, or the read error as a single entry.
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            ConfigError::Read { .. } => vec![FieldError::new("", self.to_string())],
            ConfigError::Invalid(errors) => errors.clone(),
        }
    }
}

fn render(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
}
