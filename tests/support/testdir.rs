//! One temporary directory per test for its board config, data directory and other files;
//! removed when the test ends. Set `EDGE_AGENT_KEEP_TEST_DIRS=1` to keep the directories of
//! failed tests for inspection.

use std::env;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;

use tempfile::TempDir;

/// The name `write_config` gives the board config.
pub const CONFIG_FILE: &str = "agent.toml";
const KEEP_ENV: &str = "EDGE_AGENT_KEEP_TEST_DIRS";

/// A test's temporary directory.
pub struct TestDir {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates an empty directory under the system temporary directory.
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("edge-agent-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let path = dir.path().to_owned();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`, without creating anything.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A `data` subdirectory, created on first use: the `[gateway]` data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.subdir("data")
    }

    /// A subdirectory, created if needed.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }

    /// Writes the board config as `agent.toml` (replacing an earlier one) and returns its path.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        self.write(CONFIG_FILE, toml)
    }

    /// Writes `contents` to `path()/name`, creating parent directories, and returns the path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Default for TestDir {
    fn default() -> TestDir {
        TestDir::new()
    }
}

impl fmt::Debug for TestDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TestDir").field(&self.path).finish()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = thread::panicking() && env::var_os(KEEP_ENV).is_some_and(|v| v != "0");
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                eprintln!("kept the failed test's directory {}", path.display());
            }
        }
    }
}
