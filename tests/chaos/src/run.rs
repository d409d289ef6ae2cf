//! One chaos run: sets up the plant, injects faults from the seed until the duration is over,
//! heals everything, lets the agent drain, and judges the ledger.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use edge_sim::opcua::OpcUaSim;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::ledger::{self, DeviceRecord, Loss, Window};
use crate::plc::{CounterPlc, Kind};
use crate::proxy::{FaultProxy, Mode};
use crate::support::{run_cli, AgentProcess, Collector, Mosquitto};
use crate::topics;
use crate::Args;

const UNS_ROOT: &str = "chaos/site/area/line";
const SP_GROUP: &str = "chaos";
const GATEWAY: &str = "chaos-gw";
const MES: &str = "mes";
const SCADA: &str = "scada";
/// Every PLC's request timeout.
const PLC_TIMEOUT_MS: u64 = 500;
/// How long an OPC UA server stays down at a restart, in ms: as long as a short broker restart.
const OPCUA_DOWN_MS: std::ops::Range<u64> = 300..6000;
/// Attempts to bring a stopped OPC UA server back on its port, 500 ms apart.
const OPCUA_RESTART_ATTEMPTS: u32 = 10;
/// Added around a fault: a read in flight when it started, and a reconnect after it ended.
const WINDOW_BEFORE: Duration = Duration::from_secs(1);
const WINDOW_AFTER: Duration = Duration::from_secs(3);
/// How long the agent may take to deliver its backlog once everything is healed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// Mosquitto keeps sessions and queues on disk across its restarts, without a limit on what
/// it queues for the ledger's subscriber: the broker must not lose what the agent delivered.
/// Sparkplug data is QoS 0: the broker queues it for the subscriber's session too.
const BROKER_CONFIG: &str =
    "persistence true\nautosave_interval 1\nmax_queued_messages 0\nqueue_qos0_messages true\n";

/// What the run did, for the report.
#[derive(Default)]
struct Tally {
    faults: BTreeMap<&'static str, u64>,
    agent_starts: u64,
    corruptions: Vec<String>,
    rss_max_kb: u64,
    rss_samples: Vec<(u64, u64)>,
}

/// The kinds of fault, drawn from a deck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Plc,
    Northbound,
    BrokerRestart,
    /// Long enough for the backlog to fill the store's quota.
    BrokerOutage,
    AgentKill,
    AgentStop,
    /// An OPC UA server stops (sessions end, the port closes) and starts again on its port.
    OpcUaRestart,
    Quiet,
}

impl Fault {
    /// One deck: the frequent kinds several times, each kind at least once.
    fn deck() -> Vec<Fault> {
        use Fault::*;
        vec![
            Plc,
            Plc,
            Plc,
            Plc,
            Northbound,
            Northbound,
            Northbound,
            BrokerRestart,
            BrokerRestart,
            BrokerOutage,
            AgentKill,
            AgentKill,
            AgentKill,
            AgentStop,
            OpcUaRestart,
            Quiet,
        ]
    }
}

struct Plant {
    args: Args,
    epoch: Instant,
    out: PathBuf,
    config: PathBuf,
    agent_bin: PathBuf,
    broker: Mosquitto,
    plcs: Vec<CounterPlc>,
    plc_proxies: Vec<FaultProxy>,
    nb_proxies: Vec<(String, FaultProxy)>,
    admin: SocketAddr,
    agent: Option<AgentProcess>,
    agent_pid: Arc<AtomicU32>,
    windows: Arc<Mutex<Vec<Window>>>,
    tally: Arc<Mutex<Tally>>,
    events: Arc<Mutex<String>>,
    agent_log: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    let epoch = Instant::now();
    let agent_bin = match &args.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("edge-agent"),
    };
    if !agent_bin.is_file() {
        bail!(
            "no edge-agent binary at {}: build it (`cargo build --release -p edge-agent`) or pass --agent",
            agent_bin.display()
        );
    }
    let keep_out = args.out.is_some();
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            std::env::temp_dir().join(format!("edge-chaos-{}-{}", args.seed, edge_model::now_ms()))
        }
    };
    if out.join("data").exists() {
        bail!(
            "{} already holds a chaos run's data; choose an empty --out",
            out.display()
        );
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let broker = tokio::task::block_in_place(|| Mosquitto::start_with_config(BROKER_CONFIG))?;
    let mut collector = Collector::start_persistent(
        broker.port(),
        "edge-chaos-ledger",
        &[&format!("{UNS_ROOT}/#"), &format!("spBv1.0/{SP_GROUP}/#")],
    )
    .await?;

    let mut plcs = Vec::new();
    let kinds = [
        ("plc", Kind::ModbusTcp, args.modbus_tcp),
        ("rtu", Kind::RtuOverTcp, args.rtu),
        ("ua", Kind::OpcUa, args.opcua),
    ];
    for (prefix, kind, count) in kinds {
        for i in 0..count {
            let name = format!("{prefix}{}", i + 1);
            let plc = CounterPlc::start(&name, kind, epoch, &out)
                .await
                .with_context(|| format!("starting the simulated PLC {name}"))?;
            plcs.push(plc);
        }
    }
    if plcs.is_empty() {
        bail!("no PLCs: give --modbus-tcp, --rtu or --opcua a number above 0");
    }
    let mut plc_proxies = Vec::new();
    for plc in &plcs {
        plc_proxies.push(FaultProxy::start(plc.addr()).await?);
    }
    let broker_addr: SocketAddr = ([127, 0, 0, 1], broker.port()).into();
    let nb_proxies = vec![
        (MES.to_owned(), FaultProxy::start(broker_addr).await?),
        (SCADA.to_owned(), FaultProxy::start(broker_addr).await?),
    ];
    let admin: SocketAddr = ([127, 0, 0, 1], crate::support::free_port()).into();
    let config = out.join("agent.toml");
    std::fs::write(
        &config,
        agent_config(
            &out.join("data"),
            &args,
            &plcs,
            &plc_proxies,
            &nb_proxies,
            admin,
        ),
    )?;

    let mut plant = Plant {
        agent_log: out.join("agent.log"),
        args,
        epoch,
        out: out.clone(),
        config,
        agent_bin,
        broker,
        plcs,
        plc_proxies,
        nb_proxies,
        admin,
        agent: None,
        agent_pid: Arc::new(AtomicU32::new(0)),
        windows: Arc::default(),
        tally: Arc::default(),
        events: Arc::default(),
    };
    println!(
        "edge-chaos: seed {}, {} s of faults, {} PLCs, 2 northbounds, quota {} MB; files in {}",
        plant.args.seed,
        plant.args.duration.as_secs(),
        plant.plcs.len(),
        plant.args.quota_mb,
        out.display()
    );
    let sampler = tokio::spawn(sample_rss(
        Arc::clone(&plant.agent_pid),
        Arc::clone(&plant.tally),
        epoch,
    ));
    plant.start_agent()?;
    let outcome = plant.chaos().await;
    let verdict = match outcome {
        Ok(()) => plant.finish(&mut collector).await,
        Err(e) => Err(e),
    };
    sampler.abort();
    collector.stop().await;
    if let Some(agent) = plant.agent.as_mut() {
        let _ = agent.kill9();
    }
    plant.save_agent_log();
    std::fs::write(out.join("events.log"), lock(&plant.events).as_str())?;
    match verdict {
        Ok(true) if !keep_out => {
            let _ = std::fs::remove_dir_all(&out);
            Ok(true)
        }
        Ok(ok) => {
            println!("files kept in {}", out.display());
            Ok(ok)
        }
        Err(e) => {
            println!("files kept in {}", out.display());
            Err(e)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn agent_config(
    data: &Path,
    args: &Args,
    plcs: &[CounterPlc],
    plc_proxies: &[FaultProxy],
    nb_proxies: &[(String, FaultProxy)],
    admin: SocketAddr,
) -> String {
    let mut s = format!(
        r#"[gateway]
id = "{GATEWAY}"
data_dir = "{}"
enterprise = "chaos"
site = "site"
area = "area"
line = "line"

[store]
max_disk_mb = {}

[admin]
listen = "{admin}"
"#,
        data.display(),
        args.quota_mb
    );
    for (name, proxy) in nb_proxies {
        let format = if name == SCADA {
            format!("format = \"sparkplug-b\"\ngroup_id = \"{SP_GROUP}\"")
        } else {
            "batching = \"per-tag\"".to_owned()
        };
        let _ = write!(
            s,
            r#"
[[northbound]]
name = "{name}"
url = "mqtt://127.0.0.1:{}"
client_id = "edge-chaos-{name}"
{format}
reconnect_min_ms = 100
reconnect_max_ms = 2000
keep_alive_s = 5
"#,
            proxy.port()
        );
    }
    for (plc, proxy) in plcs.iter().zip(plc_proxies) {
        let protocol = match plc.kind {
            Kind::ModbusTcp => "modbus-tcp",
            Kind::RtuOverTcp => "modbus-rtu-tcp",
            Kind::OpcUa => {
                let _ = write!(s, "{}", opcua_device(plc, proxy, args));
                continue;
            }
        };
        let _ = write!(
            s,
            r#"
[[device]]
name = "{}"
protocol = "{protocol}"
host = "127.0.0.1"
port = {}
unit_id = 1
poll_interval_ms = {}
timeout_ms = {PLC_TIMEOUT_MS}
backoff_min_ms = 100
backoff_max_ms = 1000
  [[device.tag]]
  name = "{}"
  address = "hr:{}"
  type = "u32"
  deadband = 0
"#,
            plc.name,
            proxy.port(),
            args.poll_ms,
            topics::TAG,
            crate::plc::COUNTER_REGISTER
        );
    }
    s
}

/// An OPC UA PLC's `[[device]]`: reached through its fault proxy, its counter polled one node
/// per Read (see `plc.rs` for why polling), with the Modbus devices' timeout and backoff. The
/// keep-alive and session timeout are the shortest the config takes, so that a dead session
/// is noticed and forgotten quickly. The tag's type is the variable's, u32, so that UNS JSON
/// carries an integer and Sparkplug a UInt32, as for the Modbus counters.
fn opcua_device(plc: &CounterPlc, proxy: &FaultProxy, args: &Args) -> String {
    format!(
        r#"
[[device]]
name = "{}"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{}/"
timeout_ms = {PLC_TIMEOUT_MS}
keep_alive_ms = 500
session_timeout_ms = 10000
backoff_min_ms = 100
backoff_max_ms = 1000
mode = "polling"
poll_interval_ms = {}
  [[device.tag]]
  name = "{}"
  address = "{}"
  type = "u32"
"#,
        plc.name,
        proxy.port(),
        args.poll_ms,
        topics::TAG,
        plc.node().unwrap_or_default(),
    )
}

/// Writes a line to the run's event list (and to stdout with `CHAOS_VERBOSE`).
fn event(events: &Mutex<String>, epoch: Instant, text: &str) {
    let line = format!("{:>8.1} s  {text}\n", epoch.elapsed().as_secs_f64());
    lock(events).push_str(&line);
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        print!("{line}");
    }
}

/// Records a fault window, widened by [`WINDOW_BEFORE`] and [`WINDOW_AFTER`].
fn window(windows: &Mutex<Vec<Window>>, device: Option<&str>, from_ms: u64, to_ms: u64) {
    lock(windows).push(Window {
        device: device.map(str::to_owned),
        from_ms: from_ms.saturating_sub(WINDOW_BEFORE.as_millis() as u64),
        to_ms: to_ms + WINDOW_AFTER.as_millis() as u64,
    });
}

/// Starts a stopped OPC UA server again on its port, retrying a few times (the port may take
/// a moment to be free again). Returns the last error when it never comes back.
async fn restart_opcua(sim: &OpcUaSim) -> std::io::Result<()> {
    let mut last = Ok(());
    for _ in 0..OPCUA_RESTART_ATTEMPTS {
        last = sim.restart().await;
        if last.is_ok() {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

/// Samples the running agent's resident memory every second.
async fn sample_rss(pid: Arc<AtomicU32>, tally: Arc<Mutex<Tally>>, epoch: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let p = pid.load(Ordering::Relaxed);
        if p == 0 {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        else {
            continue;
        };
        let mut t = lock(&tally);
        t.rss_max_kb = t.rss_max_kb.max(kb);
        t.rss_samples.push((epoch.elapsed().as_secs(), kb));
    }
}

impl Plant {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn event(&self, text: &str) {
        event(&self.events, self.epoch, text);
    }

    fn count(&self, fault: &'static str) {
        *lock(&self.tally).faults.entry(fault).or_default() += 1;
    }

    fn window(&self, device: Option<&str>, from_ms: u64, to_ms: u64) {
        window(&self.windows, device, from_ms, to_ms);
    }

    fn start_agent(&mut self) -> anyhow::Result<()> {
        let agent = AgentProcess::spawn(&self.agent_bin, &self.config, &[("RUST_LOG", "info")])?;
        self.agent_pid.store(agent.pid(), Ordering::Relaxed);
        self.agent = Some(agent);
        lock(&self.tally).agent_starts += 1;
        self.event("agent started");
        Ok(())
    }

    /// Appends the current agent process's log to the run's agent log.
    fn save_agent_log(&mut self) {
        if let Some(agent) = &self.agent {
            let mut all = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.agent_log);
            if let Ok(f) = all.as_mut() {
                let _ = writeln!(f, "===== agent pid {} =====", agent.pid());
                let _ = f.write_all(agent.log().as_bytes());
            }
        }
    }

    fn stop_agent(&mut self, graceful: bool) -> anyhow::Result<()> {
        let now = self.now_ms();
        if let Some(agent) = self.agent.as_mut() {
            if graceful {
                let status = agent.terminate()?;
                self.event(&format!("agent stopped with SIGTERM: {status}"));
            } else {
                agent.kill9()?;
                self.event("agent killed with SIGKILL");
            }
        }
        self.save_agent_log();
        self.agent = None;
        self.agent_pid.store(0, Ordering::Relaxed);
        // Reads answered just before the end are lost with the process, before their commit.
        self.window(None, now.saturating_sub(1000), now);
        Ok(())
    }

    async fn chaos(&mut self) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(self.args.seed);
        let end = self.epoch + self.args.duration;
        let mut background = Vec::new();
        // Faults are drawn from a shuffled deck, so that even a short run meets each kind.
        let mut deck: Vec<Fault> = Vec::new();
        while Instant::now() < end {
            if !self.agent.as_mut().is_some_and(AgentProcess::is_running) && self.agent.is_some() {
                bail!(
                    "the agent exited on its own (it must survive every fault); its log is in {}",
                    self.agent_log.display()
                );
            }
            if deck.is_empty() {
                deck = Fault::deck();
                deck.shuffle(&mut rng);
            }
            match deck.pop().unwrap_or(Fault::Quiet) {
                Fault::Plc => background.push(self.plc_fault(&mut rng)),
                Fault::Northbound => self.northbound_fault(&mut rng),
                Fault::BrokerRestart => self.broker_restart(&mut rng, false).await?,
                Fault::BrokerOutage => self.broker_restart(&mut rng, true).await?,
                Fault::AgentKill => self.agent_kill(&mut rng).await?,
                Fault::AgentStop => {
                    self.count("agent SIGTERM restart");
                    self.stop_agent(true)?;
                    self.start_agent()?;
                }
                Fault::OpcUaRestart => match self.opcua_restart(&mut rng) {
                    Some(task) => background.push(task),
                    None => self.count("quiet"),
                },
                Fault::Quiet => self.count("quiet"),
            }
            let pause = Duration::from_millis(rng.random_range(500..4000));
            tokio::time::sleep(pause.min(end.saturating_duration_since(Instant::now()))).await;
        }
        for task in background {
            let _ = task.await;
        }
        Ok(())
    }

    /// Breaks one PLC's link for a while, in the background.
    fn plc_fault(&self, rng: &mut StdRng) -> tokio::task::JoinHandle<()> {
        let i = rng.random_range(0..self.plcs.len());
        let name = self.plcs[i].name.clone();
        let hold = Duration::from_millis(rng.random_range(500..6000));
        let (label, mode): (&'static str, Option<Mode>) = match rng.random_range(0..5) {
            0 => ("PLC link cut", None),
            1 => ("PLC link blackhole", Some(Mode::Blackhole)),
            2 => (
                "PLC link delay",
                Some(Mode::Delay(Duration::from_millis(
                    rng.random_range(50..900),
                ))),
            ),
            3 => (
                "PLC link throttle",
                Some(Mode::Throttle(rng.random_range(20..2000))),
            ),
            _ => ("PLC silent", None),
        };
        self.count(label);
        let start = self.now_ms();
        self.event(&format!("{label} on {name} for {} ms", hold.as_millis()));
        let silent = label == "PLC silent";
        match mode {
            Some(m) => self.plc_proxies[i].set(m),
            None if silent => self.plcs[i].set_silent(true),
            None => {
                self.plc_proxies[i].cut();
                self.window(Some(&name), start, start);
                return tokio::spawn(async {});
            }
        }
        self.window(Some(&name), start, start + hold.as_millis() as u64);
        // The proxies and PLCs outlive the run's background tasks; share them by handle.
        let proxy = self.plc_proxies[i].handle();
        let plc = self.plcs[i].handle();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            if silent {
                plc.set_silent(false);
            } else {
                proxy.set(Mode::Pass);
            }
        })
    }

    /// Stops one OPC UA server and starts it again on the same port, in the background (like
    /// a PLC fault, so that the deck's pace stays that of the other faults). `None` without an
    /// OPC UA PLC.
    fn opcua_restart(&self, rng: &mut StdRng) -> Option<tokio::task::JoinHandle<()>> {
        let servers: Vec<(&str, OpcUaSim)> = self
            .plcs
            .iter()
            .filter_map(|p| p.opcua().map(|sim| (p.name.as_str(), sim)))
            .collect();
        if servers.is_empty() {
            return None;
        }
        let (name, sim) = servers[rng.random_range(0..servers.len())].clone();
        let name = name.to_owned();
        let down = Duration::from_millis(rng.random_range(OPCUA_DOWN_MS));
        self.count("OPC UA server restart");
        self.event(&format!(
            "OPC UA server of {name} stopped for {} ms",
            down.as_millis()
        ));
        let (events, windows, epoch) = (
            Arc::clone(&self.events),
            Arc::clone(&self.windows),
            self.epoch,
        );
        let start = self.now_ms();
        Some(tokio::spawn(async move {
            sim.stop().await;
            tokio::time::sleep(down).await;
            let outcome = restart_opcua(&sim).await;
            // From the stop (a Read answered as the server went down may never have reached
            // the agent) until the agent has had time to build a new session.
            let back = epoch.elapsed().as_millis() as u64;
            window(&windows, Some(&name), start, back);
            match outcome {
                Ok(()) => event(&events, epoch, &format!("OPC UA server of {name} back")),
                Err(e) => event(
                    &events,
                    epoch,
                    &format!("OPC UA server of {name} could not start again: {e}"),
                ),
            }
        }))
    }

    fn northbound_fault(&self, rng: &mut StdRng) {
        let (name, proxy) = &self.nb_proxies[rng.random_range(0..self.nb_proxies.len())];
        let hold = Duration::from_millis(rng.random_range(500..8000));
        let (label, mode) = match rng.random_range(0..4) {
            0 => {
                self.count("broker link cut");
                self.event(&format!("broker link of {name} cut"));
                proxy.cut();
                return;
            }
            1 => ("broker link blackhole", Mode::Blackhole),
            2 => (
                "broker link delay",
                Mode::Delay(Duration::from_millis(rng.random_range(20..700))),
            ),
            _ => (
                "broker link throttle",
                Mode::Throttle(rng.random_range(500..20_000)),
            ),
        };
        self.count(label);
        self.event(&format!(
            "{label} on {name} for {} ms ({mode:?})",
            hold.as_millis()
        ));
        proxy.set(mode);
        let proxy = proxy.handle();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            proxy.set(Mode::Pass);
        });
    }

    async fn broker_restart(&mut self, rng: &mut StdRng, long: bool) -> anyhow::Result<()> {
        let down = if long {
            Duration::from_secs(rng.random_range(30..60))
        } else {
            Duration::from_millis(rng.random_range(300..6000))
        };
        self.count(if long {
            "broker long outage"
        } else {
            "broker restart"
        });
        self.event(&format!("broker stopped for {} ms", down.as_millis()));
        tokio::task::block_in_place(|| self.broker.stop())?;
        tokio::time::sleep(down).await;
        tokio::task::block_in_place(|| self.broker.restart())?;
        self.event("broker back");
        Ok(())
    }

    async fn agent_kill(&mut self, rng: &mut StdRng) -> anyhow::Result<()> {
        self.count("agent SIGKILL");
        self.stop_agent(false)?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        if !self.args.no_corrupt && rng.random_range(0..3) == 0 {
            let what = corrupt_store(&self.out.join("data").join("store"), rng)?;
            self.event(&format!("store damaged: {what}"));
            lock(&self.tally).corruptions.push(what);
        }
        self.start_agent()
    }

    /// Heals everything, stops the PLCs from serving, waits until the agent has delivered all
    /// it stored, stops it, and judges.
    async fn finish(&mut self, collector: &mut Collector) -> anyhow::Result<bool> {
        self.event("healing: every link passes, the broker and the agent run");
        for p in &self.plc_proxies {
            p.set(Mode::Pass);
        }
        for plc in &self.plcs {
            plc.set_silent(false);
            if let Some(sim) = plc.opcua() {
                if !sim.is_running().await {
                    restart_opcua(&sim).await.with_context(|| {
                        format!("starting the OPC UA server of {} again", plc.name)
                    })?;
                }
            }
        }
        for (_, p) in &self.nb_proxies {
            p.set(Mode::Pass);
        }
        if !self.broker.is_running() {
            tokio::task::block_in_place(|| self.broker.restart())?;
        }
        if !self.agent.as_mut().is_some_and(AgentProcess::is_running) {
            if self.agent.is_some() {
                bail!(
                    "the agent exited on its own; its log is in {}",
                    self.agent_log.display()
                );
            }
            self.start_agent()?;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        // From here no value is served, so the served lists are final.
        let stop_serving = self.now_ms();
        for plc in &self.plcs {
            plc.set_silent(true);
        }
        self.window(None, stop_serving, u64::MAX / 2);
        self.event("PLCs silent; waiting for the agent to deliver its backlog");
        let drained = self.wait_drained().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.stop_agent(true)?;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let stats = run_cli(
            &self.agent_bin,
            &[
                "buffer",
                "stats",
                "-c",
                &self.config.display().to_string(),
                "--json",
            ],
        );
        let stats_text = String::from_utf8_lossy(&stats.stdout).into_owned();
        std::fs::write(self.out.join("buffer-stats.json"), &stats_text)?;
        let losses = parse_losses(&stats_text);

        let messages: Vec<(String, Vec<u8>)> = collector
            .messages()
            .into_iter()
            .map(|m| (m.topic, m.payload))
            .collect();
        let parsed = topics::parse(&messages, UNS_ROOT, &format!("spBv1.0/{SP_GROUP}"));
        let mut devices = BTreeMap::new();
        for plc in &self.plcs {
            let mut record = DeviceRecord {
                served: plc.served(),
                ..DeviceRecord::default()
            };
            record.deliveries.insert(
                MES.to_owned(),
                parsed.uns.get(&plc.name).cloned().unwrap_or_default(),
            );
            record.deliveries.insert(
                SCADA.to_owned(),
                parsed.sparkplug.get(&plc.name).cloned().unwrap_or_default(),
            );
            devices.insert(plc.name.clone(), record);
        }
        let windows = lock(&self.windows).clone();
        let rows = ledger::judge(
            &devices,
            &[MES.to_owned(), SCADA.to_owned()],
            MES,
            &losses,
            &windows,
        );
        let report = self.report(&rows, &parsed, &losses, drained, messages.len());
        print!("{report}");
        std::fs::write(self.out.join("ledger.txt"), &report)?;
        let violations: u64 = rows.iter().map(ledger::Row::violations).sum();
        let starved = rows.iter().any(|r| r.delivered == 0);
        Ok(violations == 0 && parsed.malformed.is_empty() && drained && !starved)
    }

    /// Waits until every northbound's pending records are zero (from the admin endpoint).
    async fn wait_drained(&self) -> bool {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut zero_since: Option<Instant> = None;
        while Instant::now() < deadline {
            match pending_records(self.admin) {
                Some(0) => {
                    let since = *zero_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(2) {
                        return true;
                    }
                }
                _ => zero_since = None,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    fn report(
        &self,
        rows: &[ledger::Row],
        parsed: &topics::Parsed,
        losses: &[Loss],
        drained: bool,
        messages: usize,
    ) -> String {
        let tally = lock(&self.tally);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== edge-chaos ledger: seed {}, {} s of faults, {} messages received ==",
            self.args.seed,
            self.args.duration.as_secs(),
            messages
        );
        let faults: Vec<String> = tally
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "faults: {}", faults.join(", "));
        let _ = writeln!(
            out,
            "agent runs: {}; store damaged between runs: {}",
            tally.agent_starts,
            tally.corruptions.len()
        );
        for c in &tally.corruptions {
            let _ = writeln!(out, "  {c}");
        }
        let _ = writeln!(
            out,
            "agent RSS: max {:.1} MB over {} samples",
            tally.rss_max_kb as f64 / 1024.0,
            tally.rss_samples.len()
        );
        let _ = writeln!(
            out,
            "loss records from the store: {}",
            if losses.is_empty() {
                "none".to_owned()
            } else {
                losses
                    .iter()
                    .map(|l| format!("{} {}..={} {}", l.device, l.first_seq, l.last_seq, l.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
        let _ = writeln!(
            out,
            "Sparkplug births seen: {}; backlog drained: {}",
            parsed.births,
            if drained { "yes" } else { "NO" }
        );
        let _ = writeln!(
            out,
            "columns: dup = arrived again, order = new sample after a later one, lost-rec = lost on the store's record, \
             na-flt / na-noflt = served but never committed during / outside a fault, missing = committed and never arrived"
        );
        out.push_str(&ledger::render(rows));
        for m in parsed.malformed.iter().take(10) {
            let _ = writeln!(out, "malformed: {m}");
        }
        let violations: u64 = rows.iter().map(ledger::Row::violations).sum();
        let starved: Vec<String> = rows
            .iter()
            .filter(|r| r.delivered == 0)
            .map(|r| format!("{}/{}", r.device, r.northbound))
            .collect();
        let pass = violations == 0 && parsed.malformed.is_empty() && drained && starved.is_empty();
        let _ = writeln!(
            out,
            "verdict: {} ({} violations, {} malformed messages{}{})",
            if pass { "PASS" } else { "FAIL" },
            violations,
            parsed.malformed.len(),
            if drained { "" } else { ", backlog not drained" },
            if starved.is_empty() {
                String::new()
            } else {
                format!(", nothing delivered for {}", starved.join(" "))
            }
        );
        out
    }
}

/// The sum of `edge_agent_northbound_pending_records` over the northbounds, or `None` when
/// the admin endpoint does not answer.
fn pending_records(admin: SocketAddr) -> Option<u64> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let mut total = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("edge_agent_northbound_pending_records{") {
            let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
            total = Some(total.unwrap_or(0) + value as u64);
        }
    }
    total
}

/// The loss records of `edge-agent buffer stats --json` (`losses`, anywhere in the document).
fn parse_losses(json: &str) -> Vec<Loss> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    find_losses(&doc, &mut found);
    found
}

fn find_losses(v: &serde_json::Value, found: &mut Vec<Loss>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                if k == "losses" {
                    if let Some(list) = child.as_array() {
                        for l in list {
                            let text = |key: &str| l.get(key).and_then(|x| x.as_str());
                            let num = |key: &str| l.get(key).and_then(serde_json::Value::as_u64);
                            if let (Some(device), Some(first_seq), Some(last_seq), Some(reason)) = (
                                text("device"),
                                num("first_seq"),
                                num("last_seq"),
                                text("reason"),
                            ) {
                                found.push(Loss {
                                    device: device.to_owned(),
                                    first_seq,
                                    last_seq,
                                    reason: reason.to_owned(),
                                });
                            }
                        }
                    }
                } else {
                    find_losses(child, found);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| find_losses(i, found)),
        _ => {}
    }
}

/// Damages the store between agent runs: flips a few bytes of one of its files, or truncates
/// one. Returns what it did.
fn corrupt_store(dir: &Path, rng: &mut StdRng) -> anyhow::Result<String> {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.retain(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0));
    files.sort();
    if files.is_empty() {
        return Ok("nothing to damage yet".to_owned());
    }
    let file = &files[rng.random_range(0..files.len())];
    let mut bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.strip_prefix(dir).unwrap_or(file).display().to_string();
    let len = bytes.len();
    let what = if rng.random_range(0..5) == 0 {
        let keep = rng.random_range(0..len);
        bytes.truncate(keep);
        format!("{name} truncated from {len} to {keep} bytes")
    } else {
        let n = rng.random_range(1..=4);
        let mut at = Vec::new();
        for _ in 0..n {
            let i = rng.random_range(0..len);
            bytes[i] ^= rng.random_range(1..=255u8);
            at.push(i);
        }
        format!("{name} ({len} bytes): {n} bytes flipped at {at:?}")
    };
    std::fs::write(file, &bytes).with_context(|| format!("writing {}", file.display()))?;
    Ok(what)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_found_in_the_stats_document() {
        let json = r#"{"store":{"records":3,"losses":[
            {"device":"plc1","first_seq":4,"last_seq":9,"samples":6,"reason":"evicted","at_ms":1},
            {"device":"plc2","first_seq":1}]}}"#;
        assert_eq!(
            parse_losses(json),
            vec![Loss {
                device: "plc1".into(),
                first_seq: 4,
                last_seq: 9,
                reason: "evicted".into()
            }]
        );
        assert!(parse_losses("not json").is_empty());
    }
}
