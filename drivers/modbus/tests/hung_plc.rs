//! A PLC whose program hangs while its TCP stack still accepts connections is one outage, not
//! a reconnect storm: each tag turns bad once, the reconnects back off to the configured
//! maximum (a connect is not an answer), good values come back when the PLC answers again, and
//! the backoff starts over after that answer. Also: a device that closes the connection
//! without answering is told in words.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use edge_driver::{ReportRule, Scaling};
use edge_modbus::link::{Link, Transport};
use edge_modbus::plan::PlanLimits;
use edge_modbus::poller::{DevicePoller, DeviceSpec, TagSpec};
use edge_modbus::rtu::Op;
use edge_modbus::{Area, ByteOrder};
use edge_model::{Batch, DataType, DeviceId, Quality, Sample, TagName, Value};
use edge_sim::{HangingFront, ModbusSim};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

const TIMEOUT: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// Scheduling noise allowed below a lower bound: the listener may see one connect a little
/// later than the next.
const SLACK: Duration = Duration::from_millis(20);
/// A safety net for loops that wait on the poller; the assertions are on what it sent.
const PATIENCE: Duration = Duration::from_secs(30);

fn localhost() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn tag(name: &str, address: &str) -> TagSpec {
    TagSpec {
        name: TagName(name.into()),
        address: address.parse().expect("address"),
        data_type: DataType::U16,
        byte_order: ByteOrder::Abcd,
        scaling: Scaling::IDENTITY,
        report: ReportRule {
            deadband: None,
            heartbeat: None,
        },
        interval: Duration::from_millis(50),
        writable: false,
    }
}

fn spec(port: u16) -> DeviceSpec {
    DeviceSpec {
        name: DeviceId("press".into()),
        transport: Transport::Tcp,
        host: "127.0.0.1".into(),
        port,
        unit_id: 1,
        timeout: TIMEOUT,
        backoff_min: BACKOFF_MIN,
        backoff_max: BACKOFF_MAX,
        limits: PlanLimits::default(),
        // Two requests per scan (the gap is too wide to merge), so a scan is more than one read.
        tags: vec![tag("a", "hr:0"), tag("b", "hr:500")],
        learned_limits: None,
    }
}

/// Everything the poller sent, in order.
struct Sent {
    rx: mpsc::Receiver<Batch>,
    samples: Vec<Sample>,
}

impl Sent {
    /// Takes batches until `done` holds for the samples taken since `from`.
    async fn until(&mut self, from: usize, what: &str, done: impl Fn(&[Sample]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.samples[from..]) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(b)) => self.samples.extend(b.samples),
                Ok(None) => panic!("the poller stopped while waiting for {what}"),
                Err(_) => panic!("no {what}; sent: {:?}", &self.samples[from..]),
            }
        }
    }

    /// Takes what was sent meanwhile, without waiting.
    fn drain(&mut self) {
        while let Ok(b) = self.rx.try_recv() {
            self.samples.extend(b.samples);
        }
    }
}

fn good(samples: &[Sample], tag: &str, value: u16) -> bool {
    samples
        .iter()
        .any(|s| s.tag.0 == tag && s.quality == Quality::Good && s.value == Some(Value::U16(value)))
}

fn bad_per_tag(samples: &[Sample]) -> HashMap<&str, usize> {
    let mut bad = HashMap::new();
    for s in samples.iter().filter(|s| s.quality == Quality::Bad) {
        *bad.entry(s.tag.0.as_str()).or_insert(0) += 1;
    }
    bad
}

/// Waits until the front has accepted `n` connections since `from` (while the poller's
/// batches are taken), and returns the times of those connections.
async fn attempts(front: &HangingFront, sent: &mut Sent, from: usize, n: usize) -> Vec<Instant> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        sent.drain();
        let accepted = front.accepted();
        if accepted.len() >= from + n {
            return accepted[from..from + n].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "only {} reconnects",
            accepted.len() - from
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn intervals(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plc_that_accepts_but_never_answers_is_one_outage_with_a_growing_backoff_and_good_values_on_return(
) {
    let sim = ModbusSim::start(localhost()).await.expect("sim");
    sim.set_registers(Area::HoldingRegister, 0, &[7]);
    sim.set_registers(Area::HoldingRegister, 500, &[8]);
    let front = HangingFront::start(localhost(), sim.local_addr())
        .await
        .expect("front");
    let poller = DevicePoller::new(spec(front.local_addr().port())).expect("plan");
    assert_eq!(poller.plan().request_count(), 2);
    let counters = poller.counters();
    let (tx, rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(poller.run(tx, stop_rx));
    let mut sent = Sent {
        rx,
        samples: Vec::new(),
    };
    sent.until(0, "good values", |s| good(s, "a", 7) && good(s, "b", 8))
        .await;

    for outage in 0..2 {
        // The PLC hangs: its connection goes silent, and every reconnect is accepted and
        // never answered.
        let start = sent.samples.len();
        let before = front.accepted().len();
        front.set_frozen(true);
        let times = attempts(&front, &mut sent, before, 7).await;
        let steps = [100, 200, 400, 400, 400, 400].map(Duration::from_millis);
        for (i, (gap, step)) in intervals(&times).into_iter().zip(steps).enumerate() {
            // Each attempt waits for the read timeout, then for at least half of its step.
            let floor = TIMEOUT + step / 2 - SLACK;
            assert!(
                gap >= floor,
                "outage {outage}: reconnect {i} came {gap:?} after the one before, under {floor:?}"
            );
        }
        // The backoff grew within the outage; in the second outage this also shows that the
        // answers between the outages started it over.
        let gaps = intervals(&times);
        let late = &gaps[gaps.len() - 3..];
        let mean_late = late.iter().sum::<Duration>() / 3;
        assert!(
            mean_late > gaps[0],
            "outage {outage}: the backoff did not grow: {gaps:?}"
        );

        // One bad sample per tag for the whole outage, however many reconnects it took.
        let during = &sent.samples[start..];
        let bad = bad_per_tag(during);
        assert_eq!(
            bad,
            HashMap::from([("a", 1), ("b", 1)]),
            "outage {outage}: {during:?}"
        );
        assert!(
            during.iter().all(|s| s.quality == Quality::Bad),
            "outage {outage}: {during:?}"
        );
        assert!(!counters
            .connected
            .load(std::sync::atomic::Ordering::Relaxed));

        // The PLC answers again, with values it took meanwhile.
        let fresh = 20 + outage as u16;
        sim.set_registers(Area::HoldingRegister, 0, &[fresh]);
        sim.set_registers(Area::HoldingRegister, 500, &[fresh + 1]);
        let back = sent.samples.len();
        front.set_frozen(false);
        sent.until(back, "good values after the outage", |s| {
            good(s, "a", fresh) && good(s, "b", fresh + 1)
        })
        .await;
        let after = &sent.samples[back..];
        assert!(
            after.iter().all(|s| s.quality == Quality::Good),
            "outage {outage}: nothing bad again after the return: {after:?}"
        );
        assert!(counters
            .connected
            .load(std::sync::atomic::Ordering::Relaxed));
    }

    // Every connection the front accepted was one of the poller's connects.
    assert_eq!(
        counters.connects.load(std::sync::atomic::Ordering::Relaxed),
        front.accepted().len() as u64
    );

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("poller stops")
        .expect("poller task");
}

#[tokio::test]
async fn a_device_that_closes_the_connection_without_answering_is_told_in_words() {
    let listener = tokio::net::TcpListener::bind(localhost())
        .await
        .expect("listener");
    let port = listener.local_addr().expect("address").port();
    let device = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        // Takes the request, then hangs up without a word.
        let mut request = [0u8; 12];
        socket.read_exact(&mut request).await.expect("request");
    });
    let mut link = Link::open(
        &Transport::Tcp,
        "127.0.0.1",
        port,
        1,
        Duration::from_secs(2),
    )
    .await
    .expect("connect");
    let read = Op::Read {
        area: Area::HoldingRegister,
        start: 0,
        count: 1,
    };
    let e = link
        .call(&read, Duration::from_secs(2))
        .await
        .expect_err("no answer");
    device.await.expect("device side");
    assert_eq!(
        e.to_string(),
        "the device closed the connection without answering"
    );
}
