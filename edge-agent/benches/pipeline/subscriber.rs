//! A subscriber that only counts: messages, tag values (one `"seq":` field per value, in both
//! batching modes) and when the latest one arrived. It runs on its own thread with its
//! own single-threaded runtime, named `bench-sub`, so that its CPU time can be told apart from
//! the pipeline's: if it is the bottleneck, the report says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::oneshot;

/// The thread's name in /proc (at most 15 characters are kept).
pub const THREAD_NAME: &str = "bench-sub";
/// Batches of a thousand samples are about 100 kB; leave room.
const MAX_PACKET: usize = 16 * 1024 * 1024;
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What the subscriber has seen, readable while it runs.
#[derive(Debug)]
pub struct Counts {
    base: Instant,
    messages: AtomicU64,
    values: AtomicU64,
    /// Nanoseconds after `base` of the latest message, 0 before any.
    last_ns: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Acquire)
    }

    pub fn values(&self) -> u64 {
        self.values.load(Ordering::Acquire)
    }

    /// When the latest message arrived.
    pub fn last_at(&self) -> Option<Instant> {
        match self.last_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns)),
        }
    }

    /// Connection errors seen (each followed by a reconnect).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn record(&self, values: u64) {
        let ns = (self.base.elapsed().as_nanos() as u64).max(1);
        self.values.fetch_add(values, Ordering::Relaxed);
        self.last_ns.store(ns, Ordering::Relaxed);
        // Release: whoever reads this count also sees the values and times above.
        self.messages.fetch_add(1, Ordering::Release);
    }
}

/// A running counting subscriber; dropping it without [`CountingSubscriber::stop`] leaves the
/// thread to end when the broker goes away.
#[derive(Debug)]
pub struct CountingSubscriber {
    counts: Arc<Counts>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CountingSubscriber {
    /// Connects to 127.0.0.1:`port`, subscribes to `filter` at `qos`, and returns once the
    /// broker has confirmed the subscription.
    pub async fn start(port: u16, filter: &str, qos: QoS) -> anyhow::Result<CountingSubscriber> {
        let counts = Arc::new(Counts {
            base: Instant::now(),
            messages: AtomicU64::new(0),
            values: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let filter = filter.to_owned();
        let thread_counts = Arc::clone(&counts);
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("subscriber runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(run(port, filter, qos, thread_counts, ready_tx, stop_rx));
            })
            .context("spawning the subscriber thread")?;
        let mut sub = CountingSubscriber {
            counts,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(sub),
            Ok(Ok(Err(e))) => {
                sub.stop().await;
                Err(e)
            }
            Ok(Err(_)) => {
                sub.stop().await;
                bail!("the subscriber thread ended before subscribing")
            }
            Err(_) => {
                sub.stop().await;
                bail!("no SUBACK for the benchmark subscriber within {SUBSCRIBE_TIMEOUT:?}")
            }
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Ends the subscriber's loop and waits (bounded) for its thread.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !thread.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

async fn run(
    port: u16,
    filter: String,
    qos: QoS,
    counts: Arc<Counts>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    mut stop: oneshot::Receiver<()>,
) {
    let client_id = format!("bench-sub-{}", std::process::id());
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut ready = Some(ready);
    loop {
        let event = tokio::select! {
            biased;
            _ = &mut stop => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => counts.record(count_values(&p.payload)),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A clean session: subscribe again after every connection.
                if let Err(e) = client.try_subscribe(filter.clone(), qos) {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(anyhow!("queueing SUBSCRIBE: {e}")));
                    }
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(r) = ready.take() {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure));
                    let _ = r.send(if refused {
                        Err(anyhow!("the broker refused the subscription to {filter}"))
                    } else {
                        Ok(())
                    });
                }
            }
            Ok(_) => {}
            Err(e) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(anyhow!("subscriber cannot connect: {e}")));
                    break;
                }
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

/// Tag values in a telemetry payload: one `"seq":` field each, in a per-tag message and in
/// every sample of a per-device batch.
pub fn count_values(payload: &[u8]) -> u64 {
    const FIELD: &[u8] = b"\"seq\":";
    // Look only where the rare `q` is, then compare the field around it.
    payload
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'q' && i >= 3 && payload.get(i - 3..i + 3) == Some(FIELD))
        .count() as u64
}
