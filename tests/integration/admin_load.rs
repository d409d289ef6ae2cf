//! The admin endpoint under idle and slow clients (slowloris): hundreds of sockets that never
//! send a byte, a flood beyond the connection cap, and clients trickling their request one
//! byte at a time, while `/live` keeps answering. Each probe gets a generous limit; the
//! latencies are printed (`--nocapture`), never asserted, so a loaded machine cannot make
//! these tests flaky.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_sim::ModbusSim;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::common::*;
use crate::ops::{get, metric, parse_metrics, wait_status_code, with_admin};
use crate::support::{free_port, AgentProcess, Mosquitto, TestDir};

/// How long one probe may take before the test calls it unanswered.
const PROBE_LIMIT: Duration = Duration::from_secs(2);
/// The agent's cap on open admin connections (`MAX_CONNECTIONS` in `admin/server.rs`).
const AGENT_CAP: usize = 512;

/// An agent with an admin listener, its broker and its PLC, all on 127.0.0.1.
struct Gateway {
    agent: AgentProcess,
    admin: u16,
    _broker: Mosquitto,
    _plc: ModbusSim,
    _program: JoinHandle<()>,
    _dir: TestDir,
}

impl Gateway {
    async fn start() -> Gateway {
        let broker = Mosquitto::start().expect("mosquitto starts");
        let plc = start_plc().await;
        let program = counting(&plc, Duration::from_millis(20));
        let dir = TestDir::new();
        let admin = free_port();
        let config = with_admin(
            config_toml(
                &dir.path().join("data"),
                broker.port(),
                "per-tag",
                "",
                &[device(
                    "press",
                    plc.local_addr().port(),
                    100,
                    counter_tags(),
                )],
            ),
            admin,
        );
        let path = dir.write_config(&config);
        // Info only: a debug line per dropped connection would bury the log.
        let agent =
            AgentProcess::spawn(&bin(), &path, &[("RUST_LOG", "info")]).expect("agent starts");
        wait_status_code(admin, "/live", 200, Duration::from_secs(20)).await;
        Gateway {
            agent,
            admin,
            _broker: broker,
            _plc: plc,
            _program: program,
            _dir: dir,
        }
    }

    /// `edge_agent_admin_connections_dropped_total{reason}` now.
    async fn dropped(&self, reason: &str) -> f64 {
        let (code, text) = get(self.admin, "/metrics").await.expect("metrics answer");
        assert_eq!(code, 200, "{text}");
        metric(
            &parse_metrics(&text),
            "edge_agent_admin_connections_dropped_total",
            &format!("reason=\"{reason}\""),
        )
    }

    /// Waits (bounded) until at least `n` connections were dropped for `reason`.
    async fn wait_dropped(&self, reason: &str, n: usize, limit: Duration) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.dropped(reason).await;
            if seen >= n as f64 || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn stop(mut self) {
        let status = self.agent.terminate().expect("stops on SIGTERM");
        assert!(
            status.success(),
            "clean exit: {status:?}\n{}",
            self.agent.log()
        );
    }
}

/// Sockets that connect and never send a byte. Each is opened again when the agent closes
/// it, as an attacker would, at most `rounds` times, until [`IdleFlood::stop`].
struct IdleFlood {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Sockets connected now.
    open: Arc<AtomicUsize>,
    /// Connections the agent closed (read returned end of file or an error).
    closed_by_agent: Arc<AtomicUsize>,
}

impl IdleFlood {
    fn start(port: u16, sockets: usize, rounds: usize, reconnect_pause: Duration) -> IdleFlood {
        let (stop, stop_rx) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let closed_by_agent = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..sockets {
            let mut stop = stop_rx.clone();
            let open = open.clone();
            let closed_by_agent = closed_by_agent.clone();
            tasks.spawn(async move {
                for _ in 0..rounds {
                    if *stop.borrow() {
                        return;
                    }
                    let connect = TcpStream::connect(("127.0.0.1", port));
                    let Ok(Ok(mut s)) = tokio::time::timeout(PROBE_LIMIT, connect).await else {
                        tokio::time::sleep(reconnect_pause).await;
                        continue;
                    };
                    open.fetch_add(1, Ordering::Relaxed);
                    let mut buf = [0u8; 256];
                    // Held until the agent closes it (end of file, or a reset), the test
                    // stops, or a limit far beyond the agent's deadlines.
                    let closed = tokio::select! {
                        _ = stop.changed() => None,
                        r = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)) => {
                            Some(r.is_ok())
                        }
                    };
                    open.fetch_sub(1, Ordering::Relaxed);
                    match closed {
                        None => return,
                        Some(true) => {
                            closed_by_agent.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(false) => {}
                    }
                    drop(s);
                    tokio::time::sleep(reconnect_pause).await;
                }
            });
        }
        IdleFlood {
            stop,
            tasks,
            open,
            closed_by_agent,
        }
    }

    /// Waits (bounded) until at least `n` sockets are connected at once.
    async fn wait_open(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.open.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            self.open.load(Ordering::Relaxed) >= n,
            "only {} of {n} idle sockets connected",
            self.open.load(Ordering::Relaxed)
        );
    }

    /// Waits (bounded) until the agent has closed at least `n` of the connections.
    async fn wait_closed_by_agent(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        while self.closed_by_agent.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.closed_by_agent.load(Ordering::Relaxed)
    }

    /// Closes every socket and waits for every task.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .is_err()
        {
            self.tasks.shutdown().await;
            panic!("the idle sockets did not close within 20 s");
        }
    }
}

/// `GET /live` `n` times, `pause` apart; each must answer `200 live` within [`PROBE_LIMIT`].
/// Returns the latency of each.
async fn probe_live(port: u16, n: usize, pause: Duration) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let answer = tokio::time::timeout(PROBE_LIMIT, get(port, "/live")).await;
        let took = started.elapsed();
        let (code, body) = answer
            .unwrap_or_else(|_| panic!("probe {i}: /live gave no answer within {PROBE_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("probe {i}: /live failed: {e:#}"));
        assert_eq!(code, 200, "probe {i}: /live answers 200: {body}");
        assert_eq!(body, "live\n", "probe {i}: the body of /live");
        latencies.push(took);
        tokio::time::sleep(pause).await;
    }
    latencies
}

fn report(what: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let p50 = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = latencies.last().copied().unwrap_or_default();
    eprintln!(
        "admin_load: /live {what}: p50 {:.1} ms, max {:.1} ms over {} probes",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        latencies.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_while_three_hundred_idle_sockets_are_held_open_and_the_idle_ones_are_dropped()
{
    const IDLE: usize = 300;
    let gw = Gateway::start().await;
    let flood = IdleFlood::start(gw.admin, IDLE, 10, Duration::from_millis(10));
    flood.wait_open(IDLE).await;

    // 30 probes 100 ms apart span the agent's 2 s head deadline, so they also cross the
    // moment it closes the first 300 and the flood opens them again.
    let mut latencies = probe_live(gw.admin, 30, Duration::from_millis(100)).await;
    report(
        &format!("with {IDLE} idle sockets held open"),
        &mut latencies,
    );

    let closed = flood
        .wait_closed_by_agent(IDLE, Duration::from_secs(15))
        .await;
    assert!(
        closed >= IDLE,
        "the agent closes idle sockets at its deadline: {closed} of {IDLE}"
    );
    flood.stop().await;
    let idle = gw.wait_dropped("idle", IDLE, Duration::from_secs(10)).await;
    assert!(
        idle >= IDLE as f64,
        "idle drops are counted: {idle} of at least {IDLE}"
    );
    assert_eq!(
        gw.dropped("full").await,
        0.0,
        "no connection is refused below the cap"
    );
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_beyond_the_connection_cap_never_locks_a_prober_out() {
    const IDLE: usize = AGENT_CAP + 88;
    let gw = Gateway::start().await;
    // Every socket the agent closes comes back 100 ms later: a steady churn of evictions.
    let flood = IdleFlood::start(gw.admin, IDLE, 20, Duration::from_millis(100));
    // The agent evicts as they arrive, so they are never all connected at once.
    flood.wait_open(AGENT_CAP).await;

    let mut latencies = probe_live(gw.admin, 30, Duration::from_millis(100)).await;
    report(
        &format!("with {IDLE} idle sockets against a cap of {AGENT_CAP}"),
        &mut latencies,
    );
    let evicted = gw
        .wait_dropped("evicted", IDLE - AGENT_CAP, Duration::from_secs(10))
        .await;
    eprintln!("admin_load: {evicted} idle connections evicted to make room");
    assert!(
        evicted >= (IDLE - AGENT_CAP) as f64,
        "room is made by evicting idle sockets: {evicted}"
    );
    let (_, text) = get(gw.admin, "/metrics").await.expect("metrics answer");
    let open = metric(
        &parse_metrics(&text),
        "edge_agent_admin_connections_open",
        "",
    );
    assert!(
        (1.0..=AGENT_CAP as f64).contains(&open),
        "open connections stay within the cap: {open}"
    );
    flood.stop().await;
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_their_request_one_byte_every_half_second_never_block_live_and_are_dropped(
) {
    // The number of clients that used to hold every place of the old endpoint.
    const SLOW: usize = 16;
    let gw = Gateway::start().await;
    let port = gw.admin;
    let mut slow = JoinSet::new();
    for _ in 0..SLOW {
        slow.spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("slow client connects");
            let started = Instant::now();
            let mut buf = [0u8; 256];
            // Bounded by the length of the request: 37 bytes, 18.5 s at most.
            for byte in b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" {
                match s.try_read(&mut buf) {
                    Ok(0) => return (started.elapsed(), None),
                    Ok(n) => return (started.elapsed(), Some(buf[..n].to_vec())),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return (started.elapsed(), None),
                }
                if s.write_all(std::slice::from_ref(byte)).await.is_err() {
                    return (started.elapsed(), None);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // The whole request went out: whatever comes now is the agent's verdict.
            let rest = tokio::time::timeout(PROBE_LIMIT, s.read(&mut buf)).await;
            let answer = match rest {
                Ok(Ok(n)) if n > 0 => Some(buf[..n].to_vec()),
                _ => None,
            };
            (started.elapsed(), answer)
        });
    }

    let mut latencies = probe_live(port, 30, Duration::from_millis(100)).await;
    report(
        &format!("with {SLOW} clients trickling their request"),
        &mut latencies,
    );

    let mut closed_after = Vec::new();
    let all = async {
        while let Some(r) = slow.join_next().await {
            closed_after.push(r.expect("slow client task"));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("every slow client ends");
    for (after, answer) in &closed_after {
        assert!(
            answer.is_none(),
            "a trickling client is dropped, not answered, after {after:?}: {:?}",
            answer.as_deref().map(String::from_utf8_lossy)
        );
    }
    let longest = closed_after
        .iter()
        .map(|(d, _)| *d)
        .max()
        .unwrap_or_default();
    eprintln!("admin_load: the slowest trickling client was closed after {longest:?}");
    let idle = gw.wait_dropped("idle", SLOW, Duration::from_secs(10)).await;
    assert!(
        idle >= SLOW as f64,
        "trickling clients count as idle: {idle}"
    );
    gw.stop();
}
