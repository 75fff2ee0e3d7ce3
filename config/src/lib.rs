//! edgegate's configuration: the YAML schema (`raw`), the validated runtime types
//! (`model`), and the conversion between them (`validate`) that reports every error
//! with its field path. Pure data: this crate knows nothing of Pingora or the
//! request path.

mod error;
pub mod files;
mod model;
mod parts;
pub mod raw;
mod validate;

use std::path::Path;

pub use error::{ConfigError, FieldError};
pub use model::*;
pub use parts::{Dependency, StartTimeField, START_TIME_FIELDS};
pub use validate::url_for_message;

impl Config {
    /// Parses and validates YAML text. Structural errors (unknown fields, wrong types)
    /// and semantic ones (unknown upstream, duplicate names, …) are reported together.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let (raw, mut errors) = raw::RawConfig::parse(text).map_err(ConfigError::Invalid)?;
        match Config::try_from(raw) {
            Ok(config) if errors.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError::Invalid(errors)),
            Err(more) => {
                errors.extend(more);
                Err(ConfigError::Invalid(errors))
            }
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = files::read_text(path, files::CONFIG_FILE)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::from_yaml(&text)
    }
}

#[cfg(test)]
mod tests;
