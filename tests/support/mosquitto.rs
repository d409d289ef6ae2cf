//! A private Mosquitto broker per test: its own config, log and loopback port in a temporary
//! directory, so tests run in parallel and never touch the system broker on port 1883. Fault
//! tests stop, kill and restart it on the same port.

use std::env;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use super::ports::{free_port, SYSTEM_MQTT_PORT};
use super::process;

/// The message a test fails with when the broker is not installed.
pub const MOSQUITTO_MISSING: &str =
    "mosquitto not found: run scripts/test.sh, which installs it (apt-get install mosquitto)";

/// How long a broker may take to accept TCP connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports `start` tries when the chosen one was taken in the meantime.
const START_ATTEMPTS: usize = 5;
/// How long `restart` keeps retrying the same port while the old socket is released.
const RESTART_WINDOW: Duration = Duration::from_secs(5);
/// How long the broker may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Without the "running" log line (older Mosquitto), accepting connections this long counts
/// as ready: a broker that failed to bind exits well within it.
const READY_SETTLE: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(20);

const LOG_FILE: &str = "mosquitto.log";
const STDERR_FILE: &str = "stderr.log";
const CONFIG_FILE: &str = "mosquitto.conf";

/// Where the `mosquitto` binary is: on `PATH`, or in the sbin directories Debian installs to
/// (which are not on a normal user's `PATH`).
pub fn mosquitto_binary() -> Option<PathBuf> {
    let on_path = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| is_executable(candidate))
}

/// Whether a Mosquitto binary is installed.
pub fn mosquitto_available() -> bool {
    mosquitto_binary().is_some()
}

/// The Mosquitto binary, or a panic that tells the developer how to get it. Tests never skip
/// silently when the broker is missing.
pub fn require_mosquitto() -> PathBuf {
    mosquitto_binary().unwrap_or_else(|| panic!("{MOSQUITTO_MISSING}"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running Mosquitto owned by one test. Dropping it stops the broker.
pub struct Mosquitto {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    extra_config: String,
    child: Option<Child>,
    pid: u32,
}

/// How one launch attempt ended.
enum Launch {
    Ready(Child),
    PortTaken,
}

impl Mosquitto {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    ///
    /// Panics with [`MOSQUITTO_MISSING`] when Mosquitto is not installed.
    pub fn start() -> anyhow::Result<Mosquitto> {
        Mosquitto::start_with_config("")
    }

    /// Like [`Mosquitto::start`], but the broker saves its sessions and queued messages in its
    /// directory when stopped with [`Mosquitto::stop`] and loads them at [`Mosquitto::restart`]:
    /// a persistent subscriber misses nothing published while it reconnects.
    pub fn start_persistent() -> anyhow::Result<Mosquitto> {
        Mosquitto::start_with_config("persistence true\nautosave_interval 1\n")
    }

    /// Like [`Mosquitto::start`], with extra `mosquitto.conf` lines appended to the written
    /// config (for example a TLS listener's options).
    pub fn start_with_config(extra_config: &str) -> anyhow::Result<Mosquitto> {
        let bin = require_mosquitto();
        let dir = tempfile::Builder::new()
            .prefix("edge-agent-test-mosquitto-")
            .tempdir()
            .context("creating the broker's temporary directory")?;
        let mut broker = Mosquitto {
            dir,
            bin,
            port: 0,
            extra_config: extra_config.to_owned(),
            child: None,
            pid: 0,
        };
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            if let Launch::Ready(child) = broker.launch(port)? {
                broker.port = port;
                broker.pid = child.id();
                broker.child = Some(child);
                return Ok(broker);
            }
        }
        bail!(
            "mosquitto found its port taken {START_ATTEMPTS} times in a row; log:\n{}",
            process::tail(&broker.log(), 30)
        )
    }

    /// The loopback port the broker listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`, as a board config's northbound URL.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The pid of the broker process started last (it may have been stopped since).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The broker's temporary directory (config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the broker gracefully (SIGTERM), killing it if it has not exited within 5 s.
    /// Stopping a stopped broker does nothing.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            process::terminate(child, STOP_GRACE)
                .with_context(|| format!("stopping mosquitto (pid {})", self.pid))?;
            self.child = None;
        }
        Ok(())
    }

    /// Kills the broker with SIGKILL, as a crash or power cut would, and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            process::kill_and_reap(child)
                .with_context(|| format!("killing mosquitto (pid {})", self.pid))?;
            self.child = None;
        }
        Ok(())
    }

    /// Starts the broker again on the same port (stopping it first if it runs), retrying for a
    /// few seconds while the old listening socket is released. Clients see a broker with no
    /// sessions or retained messages (persistence is off), as after a crash of a fresh broker.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        let deadline = Instant::now() + RESTART_WINDOW;
        loop {
            if let Launch::Ready(child) = self.launch(self.port)? {
                self.pid = child.id();
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "port {} still taken {} s after the broker stopped; log:\n{}",
                    self.port,
                    RESTART_WINDOW.as_secs(),
                    process::tail(&self.log(), 30)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the broker logged since the first start, followed by anything it wrote to
    /// stderr (configuration errors are reported there before the log file is open).
    pub fn log(&self) -> String {
        let mut log = process::read_lossy(&self.dir.path().join(LOG_FILE));
        let stderr = process::read_lossy(&self.dir.path().join(STDERR_FILE));
        if !stderr.trim().is_empty() {
            log.push_str("--- stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    fn write_config(&self, port: u16) -> anyhow::Result<PathBuf> {
        let log_path = self.dir.path().join(LOG_FILE);
        // `user root`: started as root, Mosquitto would switch to the `mosquitto` user, which
        // cannot write its log into this private directory. As any other user the line has
        // no effect.
        // `max_inflight_messages 0` / `max_queued_messages 100000`: a subscriber must not lose
        // messages of a fast test to the broker's default per-client limits.
        let config = format!(
            "user root\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n\
             max_inflight_messages 0\n\
             max_queued_messages 100000\n\
             {extra}\n",
            log = log_path.display(),
            extra = if self.extra_config.contains("persistence true") {
                format!(
                    "{}persistence_location {}/\n",
                    self.extra_config,
                    self.dir.path().display()
                )
            } else {
                format!("persistence false\n{}", self.extra_config)
            },
        );
        let path = self.dir.path().join(CONFIG_FILE);
        fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Spawns the broker on `port` and waits until it is ready or has exited.
    fn launch(&self, port: u16) -> anyhow::Result<Launch> {
        if port == SYSTEM_MQTT_PORT {
            bail!("refusing to start a test broker on port {SYSTEM_MQTT_PORT}");
        }
        let config = self.write_config(port)?;
        let log_path = self.dir.path().join(LOG_FILE);
        let stderr_path = self.dir.path().join(STDERR_FILE);
        // Only what this launch writes counts: the log file is appended to across restarts.
        let log_offset = process::file_len(&log_path);
        let stderr_offset = process::file_len(&stderr_path);
        let stderr = append(&stderr_path)?;
        let stdout = stderr.try_clone().context("duplicating the stderr file")?;
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;

        let this_launch = || {
            let mut text = process::read_lossy_from(&log_path, log_offset);
            text.push_str(&process::read_lossy_from(&stderr_path, stderr_offset));
            text
        };
        let started = Instant::now();
        let mut accepting_since: Option<Instant> = None;
        loop {
            if let Some(status) = child.try_wait()? {
                let output = this_launch();
                if output.contains("Address already in use") {
                    return Ok(Launch::PortTaken);
                }
                bail!(
                    "mosquitto exited during start on port {port} ({status}); output:\n{}",
                    process::tail(&output, 30)
                );
            }
            if accepts_connections(port) {
                let since = *accepting_since.get_or_insert_with(Instant::now);
                // Mosquitto 2 logs "mosquitto version X running" once every listener is open;
                // without it, a connection might have reached whoever else holds the port.
                if this_launch().contains(" running") || since.elapsed() >= READY_SETTLE {
                    return Ok(Launch::Ready(child));
                }
            }
            if started.elapsed() >= START_TIMEOUT {
                let _ = process::kill_and_reap(&mut child);
                bail!(
                    "mosquitto did not accept connections on port {port} within {} s; output:\n{}",
                    START_TIMEOUT.as_secs(),
                    process::tail(&this_launch(), 30)
                );
            }
            thread::sleep(POLL);
        }
    }
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

impl fmt::Debug for Mosquitto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mosquitto")
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("running", &self.child.is_some())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- mosquitto on port {} (last lines of its log) ---\n{}",
                self.port,
                process::tail(&self.log(), 40)
            );
        }
        if let Err(e) = self.stop() {
            // A stop that failed left the process running: kill it rather than leak it.
            eprintln!("mosquitto on port {}: {e:#}", self.port);
            if let Some(mut child) = self.child.take() {
                let _ = process::kill_and_reap(&mut child);
            }
        }
    }
}
