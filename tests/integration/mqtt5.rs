//! MQTT 5 northbounds (`protocol = 5`) with the real agent, a real Mosquitto and a simulated
//! PLC, seen by an MQTT 5 peer: data messages carry user properties that match their payloads
//! (device, seq, the ISA-95 levels; `event_id` and machine on MES events); a command with a
//! response topic and correlation data is answered there, with them; a command whose message
//! expiry passes while it waits behind a slow write is refused and never written.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_modbus::Area;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value as Json;

use crate::common::*;
use crate::mes::{write_config, write_config_on};
use crate::proxy::{FaultProxy, Mode};
use crate::support::{AgentProcess, Mosquitto, TestDir};

const WAIT: Duration = Duration::from_secs(20);

/// One message as an MQTT 5 subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    payload: Bytes,
    user: Vec<(String, String)>,
    correlation: Option<Bytes>,
}

impl Seen {
    fn prop(&self, key: &str) -> Option<&str> {
        self.user
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Json {
        serde_json::from_slice(&self.payload).unwrap_or(Json::Null)
    }
}

/// An MQTT 5 client on the test's broker, subscribed to `filters`, recording what it gets.
struct Peer {
    client: AsyncClient,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    async fn start(port: u16, id: &str, filters: &[&str]) -> Peer {
        let o = MqttOptions::new(id, "127.0.0.1", port);
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            // Ends with the connection (the test drops the peer) or after the test's bound.
            for _ in 0..1_000_000 {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p.properties.unwrap_or_default();
                        record.lock().expect("lock").push(Seen {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            user: props.user_properties,
                            correlation: props.correlation_data,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| Filter::new(f.to_string(), QoS::AtLeastOnce)),
            )
            .await
            .expect("subscribe queued");
        tokio::time::timeout(WAIT, subscribed)
            .await
            .expect("the broker confirms the subscription")
            .expect("suback");
        Peer { client, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until a message seen so far satisfies `pick`, and returns it.
    async fn wait_for(&self, what: &str, pick: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.seen().into_iter().find(|m| pick(m)) {
                return m;
            }
            assert!(Instant::now() < deadline, "never seen: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn command(&self, topic: &str, payload: &str, props: PublishProperties) {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, timed(payload), props)
            .await
            .expect("command published");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn speak_mqtt5(path: &std::path::Path) {
    let cfg = std::fs::read_to_string(path).expect("config");
    let five = cfg.replacen("keep_alive_s = 5\n", "keep_alive_s = 5\nprotocol = 5\n", 1);
    assert_ne!(five, cfg, "the config has a northbound");
    std::fs::write(path, five).expect("config written");
}

/// Starts the agent and waits until it answers a command on the standard response topic.
async fn agent_answering(peer: &Peer, path: &std::path::Path) -> AgentProcess {
    let mut agent = AgentProcess::spawn(&bin(), path, &[]).expect("agent starts");
    agent
        .wait_log("connected to broker", WAIT)
        .await
        .expect("agent connects");
    let topic = format!("{ROOT}/filler/nothing/_set");
    let response = format!("{topic}/_response");
    for _ in 0..40 {
        peer.command(
            &topic,
            r#"{"request_id": "hello", "value": 1}"#,
            PublishProperties::default(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if peer.seen().iter().any(|m| m.topic == response) {
            return agent;
        }
    }
    panic!("the agent never answered a command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_data_messages_carry_their_keys_and_answers_go_where_the_request_asked() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    speak_mqtt5(&path);
    let replies = "mes/replies/line1";
    let peer = Peer::start(broker.port(), "mes-v5", &[&format!("{ROOT}/#"), replies]).await;
    let mut agent = agent_answering(&peer, &path).await;

    // Telemetry: the properties say what the payload says, without reading it.
    plc.set_registers(Area::HoldingRegister, 0, &[0, 5]);
    let good = format!("{ROOT}/filler/good");
    let t = peer
        .wait_for("telemetry of filler/good", |m| m.topic == good)
        .await;
    let seq = t.json()["seq"].as_u64().expect("the payload has a seq");
    assert_eq!(t.prop("device"), Some("filler"), "{t:?}");
    assert_eq!(t.prop("seq"), Some(seq.to_string().as_str()), "{t:?}");
    for (level, value) in [
        ("enterprise", "acme"),
        ("site", "plant1"),
        ("area", "packaging"),
        ("line", "line1"),
    ] {
        assert_eq!(t.prop(level), Some(value), "{level}: {t:?}");
    }
    assert_eq!(t.prop("event_id"), None, "telemetry has no event id");

    // An MES event: its event id and machine too.
    plc.set_registers(Area::HoldingRegister, 20, &[1]);
    let mes = format!("{ROOT}/filler/_mes/");
    let e = peer
        .wait_for("an MES event", |m| {
            m.topic.starts_with(&mes) && !m.topic.contains("/cmd/")
        })
        .await;
    let event_id = e.json()["event_id"].as_str().map(str::to_owned);
    assert!(event_id.is_some(), "{e:?}");
    assert_eq!(e.prop("event_id"), event_id.as_deref(), "{e:?}");
    assert_eq!(e.prop("machine"), Some("filler"), "{e:?}");
    assert_eq!(e.prop("device"), Some("filler"), "{e:?}");

    // Request/response: the answer on the request's response topic, with its correlation data,
    // and not on the standard response topic.
    let set = format!("{ROOT}/filler/speed/_set");
    let props = PublishProperties {
        response_topic: Some(replies.to_owned()),
        correlation_data: Some(Bytes::from_static(b"order-7731")),
        ..PublishProperties::default()
    };
    peer.command(&set, r#"{"request_id": "r5-1", "value": 77}"#, props)
        .await;
    let answer = peer
        .wait_for("the answer on the response topic", |m| m.topic == replies)
        .await;
    assert_eq!(answer.json()["request_id"], "r5-1", "{answer:?}");
    assert_eq!(answer.json()["status"], "ok", "{answer:?}");
    assert_eq!(
        answer.correlation.as_deref(),
        Some(&b"order-7731"[..]),
        "{answer:?}"
    );
    assert_eq!(plc.registers(Area::HoldingRegister, 42, 1), vec![77]);
    let standard = format!("{set}/_response");
    assert!(
        !peer
            .seen()
            .iter()
            .any(|m| m.topic == standard && m.json()["request_id"] == "r5-1"),
        "answered once, where asked"
    );
    agent.terminate().expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_command_whose_message_expiry_passes_while_it_waits_is_refused_unwritten() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let proxy = FaultProxy::start(plc.local_addr())
        .await
        .expect("proxy starts");
    let dir = TestDir::new();
    // A slow PLC link, yet within the device's timeout: writes take seconds, none fails.
    let path = write_config_on(&dir, broker.port(), proxy.port(), 200, "u32", 5000);
    speak_mqtt5(&path);
    let peer = Peer::start(broker.port(), "mes-v5-expiry", &[&format!("{ROOT}/#")]).await;
    let mut agent = agent_answering(&peer, &path).await;

    proxy.set(Mode::Delay(Duration::from_millis(1200)));
    // The first command keeps the command task busy for seconds (its write waits behind a
    // scan, both delayed both ways); the second, valid for one second, waits behind it.
    let set = format!("{ROOT}/filler/speed/_set");
    let target = format!("{ROOT}/filler/target/_set");
    peer.command(
        &set,
        r#"{"request_id": "slow", "value": 11}"#,
        PublishProperties::default(),
    )
    .await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..PublishProperties::default()
    };
    peer.command(&target, r#"{"request_id": "short", "value": 4321}"#, short)
        .await;
    let answer_of = |id: &'static str, topic: String| {
        let response = format!("{topic}/_response");
        move |m: &Seen| m.topic == response && m.json()["request_id"] == id
    };
    let slow = peer
        .wait_for("the slow command's answer", answer_of("slow", set.clone()))
        .await;
    assert_eq!(slow.json()["status"], "ok", "{slow:?}");
    let short = peer
        .wait_for("the expired command's answer", answer_of("short", target))
        .await;
    assert_eq!(short.json()["status"], "rejected", "{short:?}");
    let why = short.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("message expiry"), "{why}");
    proxy.set(Mode::Pass);
    assert_eq!(plc.registers(Area::HoldingRegister, 42, 1), vec![11]);
    assert_eq!(
        plc.registers(Area::HoldingRegister, 40, 2),
        vec![0, 0],
        "the expired command wrote nothing"
    );
    agent.terminate().expect("agent stops");
}
