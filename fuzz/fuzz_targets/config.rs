//! The board config reader on arbitrary text: it must answer a config or errors, never panic,
//! and every error must render, since that is what `edge-agent check` shows the user.
#![no_main]

use std::path::Path;

use edge_config::SecretSource;
use libfuzzer_sys::fuzz_target;

/// Secrets are outside input too, but not this target's: no variable is set, no file exists.
struct NoSecrets;

impl SecretSource for NoSecrets {
    fn env(&self, _name: &str) -> Option<String> {
        None
    }

    fn file(&self, path: &Path) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} does not exist", path.display()),
        ))
    }
}

fuzz_target!(|data: &[u8]| {
    // Invalid UTF-8 is refused before parsing by `load`; lossy conversion still lets the
    // fuzzer reach the parser with every byte sequence.
    let src = String::from_utf8_lossy(data);
    match edge_config::parse(&src, Path::new("/etc/edge-agent/fuzz.toml"), &NoSecrets) {
        Ok(cfg) => {
            // What `check` does with a valid config, through the same code: describe every
            // device with its read plan (the agent's own config translations).
            let _ = format!("{cfg:?}");
            let _ = edge_agent::cli::check::describe(&cfg);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a rejected config names no error");
            for e in errors.iter() {
                let text = e.to_string();
                assert!(!text.is_empty(), "an error renders as nothing");
            }
            let _ = errors.to_string();
        }
    }
});
