//! The real `edge-agent` binary under test: as a daemon (`run -c CONFIG`) whose combined
//! stdout and stderr go to a file the test can search, or as a one-shot command with a
//! timeout. Dropping an [`AgentProcess`] kills it, so a failed test leaves nothing running.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use super::process;

/// The log filter the daemon runs with unless `extra_env` overrides `RUST_LOG`.
pub const AGENT_LOG_FILTER: &str = "info,edge_agent=debug";
/// How long `terminate` lets the agent drain before killing it.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(15);
/// How long `run_cli` lets a command run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_POLL: Duration = Duration::from_millis(50);
const LOG_FILE: &str = "agent.log";

/// A running `edge-agent run -c CONFIG`.
pub struct AgentProcess {
    dir: TempDir,
    child: Option<Child>,
    pid: u32,
    config: PathBuf,
}

impl AgentProcess {
    /// Starts `<bin> run -c <config_path>` with `RUST_LOG=info,edge_agent=debug`, colours off,
    /// and `extra_env` applied last (so it may override both). Returns once the process exists;
    /// wait for readiness with [`AgentProcess::wait_log`].
    pub fn spawn(
        bin: &Path,
        config_path: &Path,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<AgentProcess> {
        let dir = tempfile::Builder::new()
            .prefix("edge-agent-test-agent-")
            .tempdir()
            .context("creating the agent's log directory")?;
        let log_path = dir.path().join(LOG_FILE);
        let stdout =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let stderr = stdout.try_clone().context("duplicating the log file")?;
        let mut command = Command::new(bin);
        command
            .arg("run")
            .arg("-c")
            .arg(config_path)
            .env("RUST_LOG", AGENT_LOG_FILTER)
            .env("RUST_BACKTRACE", "1")
            // Escape codes would split the words a test searches the log for.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().with_context(|| {
            format!(
                "spawning {} run -c {}",
                bin.display(),
                config_path.display()
            )
        })?;
        Ok(AgentProcess {
            dir,
            pid: child.id(),
            child: Some(child),
            config: config_path.to_owned(),
        })
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The config file it was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Its exit status if it has exited (without waiting).
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("agent pid {} was already stopped and reaped", self.pid),
        }
    }

    /// Kills it with SIGKILL, as a crash or power cut would, and reaps it.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("agent pid {} was already stopped", self.pid);
        };
        let status = process::kill_and_reap(child)
            .with_context(|| format!("killing agent pid {}", self.pid))?;
        self.child = None;
        Ok(status)
    }

    /// Sends SIGHUP (reload the config) while the agent runs.
    pub fn sighup(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("agent pid {} was already stopped", self.pid);
        };
        if child.try_wait()?.is_some() {
            bail!("agent pid {} has exited", self.pid);
        }
        let status = Command::new("sh")
            .arg("-c")
            .arg("kill -HUP \"$1\"")
            .arg("sh")
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .status()
            .context("running `sh -c kill -HUP`")?;
        if !status.success() {
            bail!("kill -HUP {} failed", self.pid);
        }
        Ok(())
    }

    /// Asks it to stop with SIGTERM and waits up to 15 s for a clean exit; if it does not exit
    /// in time it is killed and this fails with the end of its log.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("agent pid {} was already stopped", self.pid);
        };
        let (status, graceful) = process::terminate(child, TERMINATE_GRACE)
            .with_context(|| format!("stopping agent pid {}", self.pid))?;
        self.child = None;
        if !graceful {
            bail!(
                "agent pid {} ignored SIGTERM for {} s and was killed; log:\n{}",
                self.pid,
                TERMINATE_GRACE.as_secs(),
                process::tail(&self.log(), 40)
            );
        }
        Ok(status)
    }

    /// Waits (bounded) for the process to exit by itself, for example after a fatal error.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "agent pid {} still running after {:?}; log:\n{}",
                    self.pid,
                    timeout,
                    process::tail(&self.log(), 40)
                );
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }

    /// Everything it has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        process::read_lossy(&self.log_path())
    }

    /// Waits until its log contains `pattern` (plain text). Fails at `timeout`, or as soon as
    /// the agent exits without having logged it, with the end of the log.
    pub async fn wait_log(&mut self, pattern: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the exit status first: a pattern logged just before exiting still counts.
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            let log = self.log();
            if log.contains(pattern) {
                return Ok(());
            }
            if let Some(status) = exited {
                bail!(
                    "agent exited ({status}) without logging {pattern:?}; log:\n{}",
                    process::tail(&log, 60)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "agent did not log {pattern:?} within {timeout:?}; log:\n{}",
                    process::tail(&log, 60)
                );
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }
}

impl fmt::Debug for AgentProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentProcess")
            .field("pid", &self.pid)
            .field("running", &self.child.is_some())
            .field("config", &self.config)
            .field("log", &self.log_path())
            .finish()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- edge-agent pid {} (last lines of its log) ---\n{}",
                self.pid,
                process::tail(&self.log(), 200)
            );
        }
        if let Some(mut child) = self.child.take() {
            if let Err(e) = process::kill_and_reap(&mut child) {
                eprintln!("edge-agent pid {}: {e:#}", self.pid);
            }
        }
    }
}

/// Runs `<bin> <args>` to completion with [`CLI_TIMEOUT`], colours off, and returns its output.
/// Panics if it cannot be started or does not finish in time: a CLI command that hangs is a
/// failed test.
pub fn run_cli<S: AsRef<OsStr>>(bin: &Path, args: &[S]) -> Output {
    run_cli_with(bin, args, &[], CLI_TIMEOUT)
        .unwrap_or_else(|e| panic!("{} {}: {e:#}", bin.display(), display_args(args)))
}

/// [`run_cli`] with extra environment variables and a chosen timeout; the child is killed at
/// the timeout.
pub fn run_cli_with<S: AsRef<OsStr>>(
    bin: &Path,
    args: &[S],
    env: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<Output> {
    run_cli_env(bin, args, env, &[], timeout)
}

/// [`run_cli_with`], also removing the variables `remove` from the child's environment (to
/// show that a command does not need them).
pub fn run_cli_env<S: AsRef<OsStr>>(
    bin: &Path,
    args: &[S],
    env: &[(&str, &str)],
    remove: &[&str],
    timeout: Duration,
) -> anyhow::Result<Output> {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for key in remove {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    // Drain both pipes while waiting: a child that fills a pipe would otherwise block forever.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match process::wait_timeout(&mut child, timeout)? {
        Some(status) => status,
        None => {
            process::kill_and_reap(&mut child)?;
            let stderr = collect(&stderr).unwrap_or_default();
            bail!(
                "did not finish within {timeout:?} and was killed; stderr:\n{}",
                process::tail(&String::from_utf8_lossy(&stderr), 40)
            );
        }
    };
    Ok(Output {
        status,
        stdout: collect(&stdout)?,
        stderr: collect(&stderr)?,
    })
}

/// How long a pipe may stay open after the child exited (a grandchild could hold it).
const PIPE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

fn collect(rx: &mpsc::Receiver<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    rx.recv_timeout(PIPE_CLOSE_TIMEOUT).map_err(|_| {
        anyhow::anyhow!(
            "its output stayed open {PIPE_CLOSE_TIMEOUT:?} after it exited \
             (a process it started still holds it)"
        )
    })
}

fn display_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
