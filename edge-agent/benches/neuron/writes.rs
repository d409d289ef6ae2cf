//! Writes under load: `_set` commands to the first device's writable setpoint, sent over MQTT
//! one after another while the agent keeps polling, each waiting for its answer. Two times per
//! command: publish → answer (the answer's arrival at the benchmark's MQTT client) and
//! publish → register changed (the simulators' process watches the register every
//! millisecond and reports the wall-clock time it saw the new value).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::json;

use crate::common;
use crate::sims::{self, SimProcess};
use crate::support::mqtt::{QoS, Received};
use crate::support::Collector;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The register changes before the answer is sent; this is only a bound for a lost report.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// The agent subscribes to commands right after connecting; until then a command goes unheard.
const PROBE_ATTEMPTS: u32 = 20;
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// min / avg / max of a set of latencies.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub n: usize,
    pub min_ms: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    fn of(ms: &[f64]) -> Option<Spread> {
        if ms.is_empty() {
            return None;
        }
        Some(Spread {
            n: ms.len(),
            min_ms: ms.iter().copied().fold(f64::INFINITY, f64::min),
            avg_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            max_ms: ms.iter().copied().fold(0.0, f64::max),
        })
    }

    /// `min / avg / max`, or `-`.
    pub fn show(s: Option<&Spread>) -> String {
        s.map_or("-".to_owned(), |s| {
            format!("{:.1} / {:.1} / {:.1}", s.min_ms, s.avg_ms, s.max_ms)
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Writes {
    pub topic: String,
    pub sent: usize,
    pub answered_ok: usize,
    /// Commands not answered `ok`, or whose register change was not seen, with the reason.
    pub problems: Vec<String>,
    pub publish_to_answer: Option<Spread>,
    pub publish_to_register: Option<Spread>,
    /// Samples the store committed per second while the commands ran (status snapshots).
    pub values_per_s_during: Option<f64>,
    pub seconds: f64,
}

/// Sends `count` commands to the setpoint of `device` through the broker on `port`.
pub async fn run(
    port: u16,
    device: &str,
    sims: &SimProcess,
    data_dir: &Path,
    count: usize,
) -> anyhow::Result<Writes> {
    let topic = format!("{}/{device}/setpoint/_set", common::ROOT);
    let response = format!("{topic}/_response");
    let c = Collector::start(port, "bench-neuron-commands", &[response.as_str()])
        .await
        .context("connecting the commands' client")?;
    let answer_of = |m: &[Received], id: &str| -> Option<(Instant, serde_json::Value)> {
        m.iter()
            .filter(|r| r.topic == response)
            .filter_map(|r| Some((r.at, r.json()?)))
            .find(|(_, j)| j["request_id"] == id)
    };
    let mut heard = false;
    for _ in 0..PROBE_ATTEMPTS {
        let probe = json!({"request_id": "probe", "value": 0.0}).to_string();
        c.publish(&topic, common::timed(probe), QoS::AtLeastOnce, false)
            .await?;
        if c.wait_for(|m| answer_of(m, "probe").is_some(), PROBE_WAIT)
            .await
            .is_ok()
        {
            heard = true;
            break;
        }
    }
    if !heard {
        bail!("the agent answered no command on {topic} within {PROBE_ATTEMPTS} attempts");
    }

    let before = common::status(data_dir);
    let started = Instant::now();
    let (mut answers, mut registers, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    let mut answered_ok = 0;
    for i in 1..=count {
        let id = format!("w{i:03}");
        // Exact in f32, and never the value before.
        let value = 100.0 + i as f32 * 0.25;
        sims.drain_writes();
        let payload = common::timed(json!({"request_id": id, "value": value}).to_string());
        let sent_unix_us = sims::unix_us();
        let sent = Instant::now();
        c.publish(&topic, payload, QoS::AtLeastOnce, false).await?;
        match c
            .wait_for(|m| answer_of(m, &id).is_some(), ANSWER_TIMEOUT)
            .await
        {
            Ok(()) => {
                if let Some((at, a)) = answer_of(&c.messages(), &id) {
                    answers.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                    if a["status"] == "ok" {
                        answered_ok += 1;
                    } else {
                        problems.push(format!("{id}: answered {a}"));
                    }
                }
            }
            Err(_) => problems.push(format!("{id}: no answer within {ANSWER_TIMEOUT:?}")),
        }
        match sims.wait_write(value.to_bits(), REGISTER_TIMEOUT).await {
            Some(w) => registers.push(w.unix_us.saturating_sub(sent_unix_us) as f64 / 1000.0),
            None => problems.push(format!("{id}: the register never showed {value}")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = common::status(data_dir);
    let mut c = c;
    c.stop().await;
    let values_per_s_during = before.zip(after).and_then(|(b, a)| {
        let n = |s: &serde_json::Value, k: &str| s["store"][k].as_u64();
        let t = |s: &serde_json::Value| s["written_ms"].as_u64();
        let samples = n(&a, "committed_samples")?.checked_sub(n(&b, "committed_samples")?)?;
        let ms = t(&a)?.checked_sub(t(&b)?)?;
        (ms > 0).then(|| samples as f64 * 1000.0 / ms as f64)
    });
    Ok(Writes {
        topic,
        sent: count,
        answered_ok,
        problems,
        publish_to_answer: Spread::of(&answers),
        publish_to_register: Spread::of(&registers),
        values_per_s_during,
        seconds,
    })
}
