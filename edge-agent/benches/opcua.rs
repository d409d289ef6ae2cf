//! OPC UA subscription throughput and memory: N variables on the simulated server, each
//! changing every 100 ms, all subscribed by one OPC UA device task; counts the values the task
//! hands to the core per second and the benchmark process's resident memory (the server runs
//! in a child process, so its memory is not counted).
//!
//! ```text
//! cargo bench -p edge-agent --bench opcua -- [--variables 2000] [--seconds 20] [--publishing-ms 100]
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_model::{Batch, DeviceId, Quality, TagName};
use edge_opcua::pki::Pki;
use edge_opcua::{
    Deadband, DeviceSpec, Identity, OpcUaDevice, PkiSettings, SecurityMode, SecurityPolicy,
    TagMode, TagSpec,
};
use edge_sim::opcua::{OpcUaSim, OpcUaSimOptions};
use tokio::sync::{mpsc, watch};

/// Set in the child process that runs the simulated server.
const ROLE_ENV: &str = "EDGE_OPCUA_BENCH_SERVER";
/// The server child stops by itself after this long, whatever happens to the parent.
const SERVER_LIFETIME: Duration = Duration::from_secs(900);
const WARM_UP: Duration = Duration::from_secs(5);

struct Args {
    variables: usize,
    seconds: u64,
    publishing_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        variables: 2000,
        seconds: 20,
        publishing_ms: 100,
    };
    let argv: Vec<String> = std::env::args().collect();
    let value = |name: &str| -> Option<u64> {
        argv.iter()
            .position(|x| x == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    if let Some(v) = value("--variables") {
        a.variables = v.max(1) as usize;
    }
    if let Some(v) = value("--seconds") {
        a.seconds = v.clamp(1, 600);
    }
    if let Some(v) = value("--publishing-ms") {
        a.publishing_ms = v.clamp(10, 60_000);
    }
    a
}

/// Resident and peak resident memory of this process, KiB (Linux).
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if std::env::var_os(ROLE_ENV).is_some() {
        return rt.block_on(serve(a.variables));
    }
    rt.block_on(measure(a))
}

/// The child: the simulated server with the load variables, until stdin closes.
async fn serve(variables: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut options = OpcUaSimOptions::new(dir.path().join("pki"));
    options.extra_variables = variables;
    options.tick = Duration::from_millis(100);
    let sim = OpcUaSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), options).await?;
    println!("PORT {}", sim.local_addr().port());
    std::io::stdout().flush()?;
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            line.clear();
        }
    });
    let _ = tokio::time::timeout(SERVER_LIFETIME, stdin_closed).await;
    sim.stop().await;
    Ok(())
}

async fn measure(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--variables", &a.variables.to_string()])
        .env(ROLE_ENV, "1")
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout from the server")?;
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("PORT ") {
                let _ = port_tx.send(p.trim().parse::<u16>().ok());
                return;
            }
        }
        let _ = port_tx.send(None);
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(120))
        .ok()
        .flatten()
        .ok_or("the simulated server did not start")?;

    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    Pki::new(&pki).ensure_own_certificate("urn:edge-agent:bench", "edge-agent bench")?;
    let publishing = Duration::from_millis(a.publishing_ms);
    let tags = (0..a.variables)
        .map(|i| TagSpec {
            name: TagName(format!("v{i:04}")),
            node: format!("ns=2;s=Load.V{i:04}")
                .parse()
                .expect("a load variable's node id parses"),
            data_type: None,
            scale: 1.0,
            offset: 0.0,
            mode: TagMode::Subscription {
                publishing_interval: publishing,
                sampling_interval: Duration::from_millis(100),
                queue_size: 10,
                deadband: Deadband::None,
            },
            writable: false,
        })
        .collect();
    let spec = DeviceSpec {
        name: DeviceId("load".into()),
        endpoint: format!("opc.tcp://127.0.0.1:{port}/"),
        security_policy: SecurityPolicy::None,
        security_mode: SecurityMode::None,
        identity: Identity::Anonymous,
        session_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        keep_alive: Duration::from_secs(5),
        backoff_min: Duration::from_millis(500),
        backoff_max: Duration::from_secs(5),
        max_nodes_per_read: 0,
        pki: PkiSettings {
            dir: pki,
            application_uri: "urn:edge-agent:bench".into(),
            application_name: "edge-agent bench".into(),
            trust_on_first_use: false,
            config_path: None,
        },
        tags,
    };
    let (rss_before, _) = memory_kib();
    let device = OpcUaDevice::new(spec);
    let dropped = device.dropped_notifications();
    let (tx, mut rx) = mpsc::channel::<Batch>(4096);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(device.run(tx, stop_rx));

    let good = Arc::new(AtomicU64::new(0));
    let counter = good.clone();
    let consumer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            let n = b
                .samples
                .iter()
                .filter(|s| s.quality == Quality::Good && s.source_ts_ms.is_some())
                .count();
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    });

    // Warm up: the session and the monitored items are created, the first values arrive.
    let deadline = Instant::now() + Duration::from_secs(120);
    while good.load(Ordering::Relaxed) < a.variables as u64 {
        if Instant::now() > deadline {
            return Err("no values arrived within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(WARM_UP).await;
    let start_count = good.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut peak_rss = 0;
    for _ in 0..a.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_rss = peak_rss.max(memory_kib().0);
    }
    let values = good.load(Ordering::Relaxed) - start_count;
    let elapsed = started.elapsed().as_secs_f64();
    let (rss_after, hwm) = memory_kib();
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer).await;
    drop(child.stdin.take());
    let _ = child.wait();

    let expected = a.variables as f64 * 10.0;
    println!("OPC UA subscriptions: {} variables changing every 100 ms, publishing every {} ms, {} s measured", a.variables, a.publishing_ms, a.seconds);
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| values/s through subscriptions (good, with source timestamp) | {:.0} |",
        values as f64 / elapsed
    );
    println!("| values/s the server produces | {expected:.0} |");
    println!(
        "| notifications dropped (device task behind) | {} |",
        dropped.load(Ordering::Relaxed)
    );
    println!(
        "| resident memory before the device task | {:.1} MiB |",
        rss_before as f64 / 1024.0
    );
    println!(
        "| resident memory while subscribed (peak over the run) | {:.1} MiB |",
        peak_rss.max(rss_after) as f64 / 1024.0
    );
    println!(
        "| peak resident memory (VmHWM) | {:.1} MiB |",
        hwm as f64 / 1024.0
    );
    Ok(())
}
