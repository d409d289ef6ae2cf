//! Passwords: where they come from (environment or file, through `SecretSource` so parsing
//! stays testable) and a wrapper that never prints them.

use std::fmt;
use std::path::Path;

/// A password or other secret from the config. Debug and Display print `<redacted>`, so a
/// secret cannot end up in a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (the MQTT CONNECT packet).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where secrets named in the config are looked up.
pub trait SecretSource {
    /// The value of environment variable `name`, if it is set (and valid Unicode).
    fn env(&self, name: &str) -> Option<String>;
    /// The whole content of the file at `path`.
    fn file(&self, path: &Path) -> std::io::Result<String>;
}

/// The process environment and the file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemSecrets;

impl SecretSource for SystemSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Answers every secret with a placeholder, for the tools that open the store and never a
/// connection (`buffer stats|export|purge`): they must run where the broker's password is not
/// in the environment. The placeholder is non-empty so that the config's other checks stay the
/// same; a config read this way must never be used to connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnresolvedSecrets;

impl UnresolvedSecrets {
    /// What every secret reads as.
    pub const PLACEHOLDER: &'static str = "<not resolved: read for the store tools>";
}

impl SecretSource for UnresolvedSecrets {
    fn env(&self, _name: &str) -> Option<String> {
        Some(Self::PLACEHOLDER.to_owned())
    }

    fn file(&self, _path: &Path) -> std::io::Result<String> {
        Ok(Self::PLACEHOLDER.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }
}
