//! The simulated PLCs of the Neuron scenarios, in a process of their own so that the agent's
//! CPU and memory are its own: the benchmark binary started again with [`ROLE_ENV`] set runs
//! one Modbus TCP simulator per device on free ports of 127.0.0.1, prints `PORTS p1 p2 …`, and
//! serves until its stdin closes. Every value of every device changes four times per poll.
//! The first device also holds the writable setpoint, which the simulators watch every
//! millisecond: each change is printed as `WRITE <register bits> <unix µs>`.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use edge_sim::{Area, ModbusSim};

/// Set in the child process: `DEVICES,PERIOD_MS`.
pub const ROLE_ENV: &str = "EDGE_NEURON_BENCH_SIMS";
pub const TAGS_PER_DEVICE: usize = 1000;
/// The first device's writable f32 (ABCD), after its 1,000 moving values at hr:0..1999.
pub const SETPOINT_REGISTER: u16 = 2 * TAGS_PER_DEVICE as u16;
/// The child stops by itself after this long, whatever happens to the benchmark.
const LIFETIME: Duration = Duration::from_secs(3600);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);
const WATCH_PERIOD: Duration = Duration::from_millis(1);

/// The moving values' registers at `tick`: f32 `tick / 2 + j` at hr:2j, ABCD; every value
/// differs from the previous tick's.
pub fn registers_at(tick: u64) -> Vec<u16> {
    let mut regs = Vec::with_capacity(2 * TAGS_PER_DEVICE);
    for j in 0..TAGS_PER_DEVICE {
        let bits = (tick as f32 * 0.5 + j as f32).to_bits();
        regs.extend_from_slice(&[(bits >> 16) as u16, bits as u16]);
    }
    regs
}

/// The unix time now in microseconds: the benchmark and the simulators read the same clock.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The child's `main`.
pub fn serve_main(role: &str) -> ExitCode {
    let parsed = role
        .split_once(',')
        .and_then(|(d, p)| Some((d.parse::<usize>().ok()?, p.parse::<u64>().ok()?)));
    let Some((devices, period_ms)) = parsed else {
        eprintln!("{ROLE_ENV} must be DEVICES,PERIOD_MS, not `{role}`");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simulators: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(devices, Duration::from_millis(period_ms))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulators failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(devices: usize, period: Duration) -> anyhow::Result<()> {
    let mut sims = Vec::with_capacity(devices);
    let mut programs = Vec::with_capacity(devices + 1);
    for _ in 0..devices {
        let sim = ModbusSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("starting a simulated PLC")?;
        programs.push(sim.spawn_program(period, |bank, tick| {
            bank.set_registers(Area::HoldingRegister, 0, &registers_at(tick));
        }));
        sims.push(sim);
    }
    if let Some(first) = sims.first() {
        let mut last = 0u32;
        programs.push(first.spawn_program(WATCH_PERIOD, move |bank, _| {
            let r = bank.registers(Area::HoldingRegister, SETPOINT_REGISTER, 2);
            let bits = (u32::from(r[0]) << 16) | u32::from(r[1]);
            if bits != last {
                last = bits;
                println!("WRITE {bits} {}", unix_us());
            }
        }));
    }
    let ports: Vec<String> = sims
        .iter()
        .map(|s| s.local_addr().port().to_string())
        .collect();
    println!("PORTS {}", ports.join(" "));
    std::io::stdout().flush()?;
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    });
    let _ = tokio::time::timeout(LIFETIME, stdin_closed).await;
    for p in programs {
        p.abort();
    }
    for s in &sims {
        s.stop().await;
    }
    Ok(())
}

/// A change of the setpoint's registers seen by the simulator.
#[derive(Debug, Clone, Copy)]
pub struct WriteSeen {
    pub bits: u32,
    pub unix_us: u64,
}

/// The simulators' process, seen from the benchmark.
pub struct SimProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pub ports: Vec<u16>,
    writes: mpsc::Receiver<WriteSeen>,
}

impl SimProcess {
    /// Starts `devices` simulators whose values change every `period`, and waits (bounded)
    /// for their ports.
    pub fn spawn(devices: usize, period: Duration) -> anyhow::Result<SimProcess> {
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, format!("{devices},{}", period.as_millis()))
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the simulators' process")?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the simulators"))?;
        let (ports_tx, ports_rx) = mpsc::channel();
        let (writes_tx, writes) = mpsc::channel();
        std::thread::Builder::new()
            .name("bench-sims-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(p) = line.strip_prefix("PORTS ") {
                        let ports: Option<Vec<u16>> =
                            p.split_whitespace().map(|x| x.parse().ok()).collect();
                        let _ = ports_tx.send(ports);
                    } else if let Some(w) = line.strip_prefix("WRITE ") {
                        let mut f = w.split_whitespace().filter_map(|x| x.parse::<u64>().ok());
                        if let (Some(bits), Some(unix_us)) = (f.next(), f.next()) {
                            let bits = bits as u32;
                            let _ = writes_tx.send(WriteSeen { bits, unix_us });
                        }
                    }
                }
            })
            .context("spawning the simulators' reader")?;
        let mut sims = SimProcess {
            child,
            stdin,
            ports: Vec::new(),
            writes,
        };
        match ports_rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(ports)) if ports.len() == devices => sims.ports = ports,
            _ => bail!(
                "the simulators' process did not report {devices} ports within {START_TIMEOUT:?}"
            ),
        }
        Ok(sims)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Forgets the setpoint changes seen so far.
    pub fn drain_writes(&self) {
        while self.writes.try_recv().is_ok() {}
    }

    /// Waits (bounded) until the simulator has seen the setpoint's registers become `bits`.
    /// The time comes from the simulator, so polling here adds nothing to it.
    pub async fn wait_write(&self, bits: u32, timeout: Duration) -> Option<WriteSeen> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(w) = self.writes.try_recv() {
                if w.bits == bits {
                    return Some(w);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Closes its stdin, waits (bounded) for it to end, and kills it if it did not.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
