//! Log output for every service: JSON lines or human-readable (`LOG_FORMAT`), filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written to stdout (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors. The default when stdout is not a terminal
    /// (containers, CI).
    Json,
    /// Human-readable lines. The default on a terminal.
    Pretty,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("LOG_FORMAT: must be `json` or `pretty`, got `{0}`")]
    BadFormat(String),
    #[error("RUST_LOG: not a valid filter (example: `info,delivery=debug`): {0}")]
    BadFilter(String),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

impl LogFormat {
    /// Parses `LOG_FORMAT`; `None` picks by whether stdout is a terminal.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, LoggingError> {
        match value.map(str::trim) {
            None | Some("") if std::io::stdout().is_terminal() => Ok(Self::Pretty),
            None | Some("") => Ok(Self::Json),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Some(v) if v.eq_ignore_ascii_case("pretty") => Ok(Self::Pretty),
            Some(other) => Err(LoggingError::BadFormat(other.to_owned())),
        }
    }
}

/// Installs the global tracing subscriber from `LOG_FORMAT` and `RUST_LOG` (default `info`).
/// Records from the `log` crate (librdkafka's client logs through rdkafka) are captured too.
pub fn init_logging() -> Result<LogFormat, LoggingError> {
    let format = LogFormat::from_env_value(std::env::var("LOG_FORMAT").ok().as_deref())?;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| LoggingError::BadFilter(e.to_string()))?
        }
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)?;
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_values() {
        assert_eq!(
            LogFormat::from_env_value(Some("json")).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            LogFormat::from_env_value(Some("PRETTY")).unwrap(),
            LogFormat::Pretty
        );
        let error = LogFormat::from_env_value(Some("xml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("LOG_FORMAT") && error.contains("`xml`"),
            "{error}"
        );
    }
}
