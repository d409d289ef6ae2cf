//! A RabbitMQ cluster of its own for a test: Debian's `rabbitmq-server`, each node with its own
//! node name, ports (AMQP, distribution, MQTT, all on 127.0.0.1 and free) and directories, the
//! MQTT plugin enabled, joined into one cluster with `rabbitmqctl`. Nodes are stopped by their
//! process id (from the node's pid file); dropping the cluster kills what is left.
//!
//! Persistent MQTT sessions use quorum queues (`mqtt.durable_queue_type = quorum`), replicated on
//! every node: with classic queues a session whose queue lived on a dead node cannot
//! subscribe anywhere until that node is back.
//!
//! The Debian server script runs the node as the `rabbitmq` user, so the directories are
//! handed to that user, and the nodes share that user's Erlang cookie.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use super::free_port;

const SERVER: &str = "/usr/sbin/rabbitmq-server";
const CTL: &str = "/usr/sbin/rabbitmqctl";
/// How long a node may take to boot.
const BOOT_LIMIT: Duration = Duration::from_secs(90);

/// Whether the server is installed.
pub fn rabbitmq_available() -> bool {
    Path::new(SERVER).exists() && Path::new(CTL).exists()
}

/// One node of the cluster.
pub struct Node {
    pub name: String,
    pub mqtt_port: u16,
    dir: PathBuf,
    script: Option<Child>,
}

impl Node {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Kills the node's Erlang VM with SIGKILL (a node crash).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let pid = self.pid().context("the node has no pid file")?;
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -9 {pid} failed");
        }
        if let Some(mut s) = self.script.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        Ok(())
    }
}

/// A running cluster.
pub struct RabbitCluster {
    pub nodes: Vec<Node>,
    _root: TempDir,
}

fn ctl(node: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(CTL)
        .arg("-n")
        .arg(node)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running rabbitmqctl {args:?}"))?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl -n {node} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The uid and gid of the `rabbitmq` user.
fn rabbitmq_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("rabbitmq:"))
        .context("no rabbitmq user (is rabbitmq-server installed?)")?;
    let f: Vec<&str> = line.split(':').collect();
    Ok((f[2].parse()?, f[3].parse()?))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

impl RabbitCluster {
    /// Starts `n` nodes and joins them into one cluster (the first is the seed).
    pub fn start(n: usize) -> anyhow::Result<RabbitCluster> {
        if !rabbitmq_available() {
            bail!("rabbitmq-server is not installed: scripts/test.sh installs Debian's rabbitmq-server");
        }
        let (uid, gid) = rabbitmq_user()?;
        let root = tempfile::Builder::new()
            .prefix("edge-agent-test-rabbitmq-")
            .tempdir()?;
        let tag = format!("ea{}x{}", std::process::id(), free_port());
        let mut nodes = Vec::new();
        for i in 1..=n {
            let dir = root.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir)?;
            let (amqp, dist, mqtt) = (free_port(), free_port(), free_port());
            std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n")?;
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.1 = 127.0.0.1:{amqp}\nmqtt.listeners.tcp.1 = 127.0.0.1:{mqtt}\nloopback_users = none\nmqtt.allow_anonymous = true\nmqtt.durable_queue_type = quorum\n"
                ),
            )?;
            nodes.push((format!("{tag}n{i}@localhost"), amqp, dist, mqtt, dir));
        }
        chown_tree(root.path(), uid, gid)?;
        let mut started = Vec::new();
        for (name, amqp, dist, mqtt, dir) in nodes {
            let log = std::fs::File::create(root.path().join(format!("{name}.out")))?;
            let script = Command::new(SERVER)
                .env("RABBITMQ_NODENAME", &name)
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", amqp.to_string())
                .env("RABBITMQ_DIST_PORT", dist.to_string())
                .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", dir.join("log"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
                .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
                .env("RABBITMQ_PID_FILE", dir.join("pid"))
                .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins"))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting rabbitmq-server")?;
            started.push(Node {
                name,
                mqtt_port: mqtt,
                dir,
                script: Some(script),
            });
        }
        let cluster = RabbitCluster {
            nodes: started,
            _root: root,
        };
        for node in &cluster.nodes {
            cluster.await_node(&node.name)?;
        }
        let seed = cluster.nodes[0].name.clone();
        for node in cluster.nodes.iter().skip(1) {
            ctl(&node.name, &["stop_app"])?;
            ctl(&node.name, &["join_cluster", &seed])?;
            ctl(&node.name, &["start_app"])?;
            cluster.await_node(&node.name)?;
        }
        let status = ctl(&seed, &["cluster_status"])?;
        for node in &cluster.nodes {
            if !status.contains(&node.name) {
                bail!("{} is not in the cluster: {status}", node.name);
            }
        }
        Ok(cluster)
    }

    fn await_node(&self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            if ctl(name, &["await_startup", "--timeout", "10"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = std::fs::read_dir(self._root.path())?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "out"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect();
                bail!("RabbitMQ node {name} did not start: {}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if node.script.is_some() {
                let _ = node.kill();
            }
        }
    }
}
