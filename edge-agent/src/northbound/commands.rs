//! The MES tier of the running agent: the bridge's machine rules and the command catalog
//! built from the config, and the task that carries out commands from the MES (SPEC §5).
//!
//! Commands arrive from each northbound's publisher (which owns the MQTT connection) through
//! a bounded queue and are carried out one at a time: the envelope and the writes are
//! validated by `mes_bridge::command` and by the device's own write checks before the first
//! write, the writes go through the device tasks' write path in order, and the answer goes
//! back to the publisher that received the command. Before any of that, command safety
//! (`mes_bridge::gate`) refuses commands that are retained, expired, queued while the gateway
//! was away, or on a northbound with commands off. Answers are remembered by request id in the
//! store, written before the first write of their command, so a duplicate (after a restart
//! too) is answered with its first answer and never written twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_config::Config;
use edge_driver::{WriteError, WriteHandle};
use edge_model::DeviceId;
use edge_store::{Remembered, Store};
use mes_bridge::command::{
    request_id_of, Answer, CommandBody, CommandCatalog, DispatchParameter, DispatchSpec, Parsed,
    PlannedWrite, Request, Status, TagInfo, Target,
};
use mes_bridge::gate::{admit, expired, precheck, Arrival, CommandPolicy, Refusal};
use mes_bridge::{
    CounterSpec, CounterWidth, MachineSpec, Message, StateMapping, StateSpec, TagRef,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::northbound::safety::{clip, CommandEntry, CommandStats, LogLimiter, Outcome};

/// Commands waiting to be carried out, over all northbounds; beyond it a command is answered
/// `failed` at once.
pub const COMMAND_QUEUE: usize = 64;
/// How long one PLC write may take, queueing behind the device's current scan included.
pub const WRITE_LIMIT: Duration = Duration::from_secs(5);
/// One message received on a command topic.
#[derive(Debug)]
pub struct CommandRequest {
    /// The northbound it arrived on, and how that northbound takes commands.
    pub northbound: String,
    pub policy: CommandPolicy,
    /// How it arrived (retain flag, when, on which connection).
    pub arrival: Arrival,
    /// The topic root of the northbound it arrived on.
    pub root: String,
    pub topic: String,
    /// The payload, cut after `MAX_COMMAND_BYTES + 1` bytes (more is never read).
    pub payload: Vec<u8>,
    /// The payload's full length.
    pub len: usize,
    /// Where the answer goes: the publisher of the northbound it arrived on.
    pub reply: mpsc::Sender<Reply>,
    /// MQTT 5: the request's response topic and correlation data, when it gave them.
    pub reply_to: Option<ReplyTo>,
}

/// MQTT 5 request/response: where the sender wants the answer and what to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The response topic; `None` keeps the standard `.../_response` topic.
    pub topic: Option<String>,
    pub correlation: Option<bytes::Bytes>,
}

impl ReplyTo {
    /// The request/response properties of a received command, if it had any. A response
    /// topic that is no topic name (empty, or with `+` or `#`) is not used: the answer goes to
    /// the standard topic, with the correlation data.
    pub fn of(p: &crate::northbound::mqtt::Received, northbound: &str) -> Option<ReplyTo> {
        let topic = p.response_topic.as_ref().and_then(|t| {
            let usable = !t.is_empty() && !t.contains(['+', '#', '\0']);
            if !usable {
                warn!(northbound, topic = %p.topic, response_topic = %t,
                    "a command's response topic is not a topic name; its answer goes to the standard response topic");
            }
            usable.then(|| t.clone())
        });
        (topic.is_some() || p.correlation.is_some()).then(|| ReplyTo {
            topic,
            correlation: p.correlation.clone(),
        })
    }
}

/// An answer on its way to the publisher: the message, on the request's response topic when
/// it gave one, and the correlation data it goes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: Message,
    pub correlation: Option<bytes::Bytes>,
}

impl Reply {
    /// The answer `message` to `req`, addressed as the request asked.
    pub fn to(req: &CommandRequest, mut message: Message) -> Reply {
        let Some(to) = &req.reply_to else {
            return Reply {
                message,
                correlation: None,
            };
        };
        if let Some(topic) = &to.topic {
            message.topic = topic.clone();
        }
        Reply {
            message,
            correlation: to.correlation.clone(),
        }
    }
}

/// The bridge's view of the configured machines; their tags may come from any devices.
pub fn machine_specs(cfg: &Config) -> Vec<MachineSpec> {
    let tag_ref = |t: &edge_config::TagRef| TagRef::new(t.device.as_str(), t.tag.as_str());
    let config_tag = |t: &edge_config::TagRef| {
        cfg.devices
            .iter()
            .find(|d| d.name == t.device)?
            .tags
            .iter()
            .find(|x| x.name == t.tag)
    };
    cfg.machines
        .iter()
        .map(|m| {
            // The config checked that every tag exists and that counters have a known
            // integer type.
            let counter = |t: &Option<edge_config::TagRef>| {
                let t = t.as_ref()?;
                Some(CounterSpec {
                    tag: tag_ref(t),
                    width: CounterWidth::of(config_tag(t)?.data_type()?)?,
                    max_step: m.max_count_step,
                })
            };
            MachineSpec {
                name: m.name.clone(),
                device: DeviceId(m.device.clone()),
                work_order: m.work_order_tag.as_ref().map(tag_ref),
                product: m.product_tag.as_ref().map(tag_ref),
                good: counter(&m.good_count_tag),
                scrap: counter(&m.scrap_count_tag),
                state: m.state_tag.as_ref().map(|tag| StateSpec {
                    tag: tag_ref(tag),
                    map: m
                        .states
                        .iter()
                        .map(|s| StateMapping {
                            value: s.value,
                            state: s.state,
                            reason_code: s.reason_code,
                            reason: s.reason.clone(),
                        })
                        .collect(),
                }),
            }
        })
        .collect()
}

/// Every tag commands may name, and every machine with its dispatch targets.
pub fn command_catalog(cfg: &Config) -> CommandCatalog {
    let mut catalog = CommandCatalog::new();
    for d in &cfg.devices {
        for t in &d.tags {
            catalog.add_tag(
                &d.name,
                &t.name,
                TagInfo {
                    data_type: t.data_type(),
                    writable: t.accepts_writes(),
                    scale: t.scale,
                    offset: t.offset,
                },
            );
        }
    }
    let target = |t: &edge_config::TagRef| Target::new(&t.device, &t.tag);
    for m in &cfg.machines {
        catalog.add_machine(
            &m.name,
            m.dispatch.as_ref().map(|d| DispatchSpec {
                work_order_tag: target(&d.work_order_tag),
                product_tag: d.product_tag.as_ref().map(target),
                quantity_tag: d.quantity_tag.as_ref().map(target),
                parameters: d
                    .parameters
                    .iter()
                    .map(|p| DispatchParameter {
                        name: p.name.clone(),
                        tag: target(&p.tag),
                        required: p.required,
                    })
                    .collect(),
                handshake_tag: d.handshake_tag.as_ref().map(target),
            }),
        );
    }
    catalog
}

/// What the command task needs besides its targets: the store (answers by request id) and
/// the counters of `/metrics`.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub store: Store,
    pub stats: Arc<CommandStats>,
}

/// Starts the command task. It ends when every sender is gone (the publishers stopped).
pub fn spawn_commands(
    catalog: CommandCatalog,
    handles: Vec<WriteHandle>,
    cx: CommandContext,
) -> (mpsc::Sender<CommandRequest>, JoinHandle<()>) {
    let (tx, task, _targets) = spawn_reloadable_commands(catalog, handles, cx);
    (tx, task)
}

/// What commands may write and through which device tasks; replaced on a config reload.
#[derive(Debug)]
pub struct CommandTargets {
    pub catalog: CommandCatalog,
    pub handles: Vec<WriteHandle>,
}

/// [`spawn_commands`], plus a sender that replaces the catalog and the device handles between
/// two commands (a reload that adds, changes or removes devices). Answers remembered for
/// duplicate request ids survive the replacement.
pub fn spawn_reloadable_commands(
    catalog: CommandCatalog,
    handles: Vec<WriteHandle>,
    cx: CommandContext,
) -> (
    mpsc::Sender<CommandRequest>,
    JoinHandle<()>,
    watch::Sender<Option<CommandTargets>>,
) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (targets_tx, targets_rx) = watch::channel(None);
    let executor = Executor {
        catalog,
        handles: handles.into_iter().map(|h| (h.name.clone(), h)).collect(),
        cx,
        log: LogLimiter::default(),
        limit: WRITE_LIMIT,
        targets: targets_rx,
    };
    (tx, tokio::spawn(executor.run(rx)), targets_tx)
}

/// Carries out commands one at a time.
#[derive(Debug)]
pub struct Executor {
    catalog: CommandCatalog,
    handles: HashMap<String, WriteHandle>,
    cx: CommandContext,
    log: LogLimiter,
    limit: Duration,
    /// Replacement targets from a reload, taken before the next command.
    targets: watch::Receiver<Option<CommandTargets>>,
}

/// The metric label of a command's kind.
fn kind_of(body: &CommandBody) -> &'static str {
    match body {
        CommandBody::Set { .. } => "set",
        CommandBody::Dispatch { .. } => "dispatch",
        CommandBody::Unknown { .. } => "other",
    }
}

/// The console's log line of a command and its answer.
fn log_entry(req: &CommandRequest, answer: &Message) -> CommandEntry {
    let reply: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    let text = |key: &str| {
        reply
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let target = req
        .topic
        .strip_prefix(req.root.as_str())
        .unwrap_or(&req.topic)
        .trim_start_matches('/');
    CommandEntry {
        at_ms: edge_model::now_ms(),
        northbound: req.northbound.clone(),
        source: format!("{} (request {})", req.topic, text("request_id")),
        kind: kind_of_topic(&req.topic).to_owned(),
        target: target.to_owned(),
        value: clip(&String::from_utf8_lossy(&req.payload)),
        outcome: text("status"),
        answer: clip(&String::from_utf8_lossy(&answer.payload)),
    }
}

/// The kind of a command whose envelope could not be read, from its topic.
fn kind_of_topic(topic: &str) -> &'static str {
    if topic.ends_with("/_set") {
        "set"
    } else if topic.ends_with("/_mes/cmd/workorder/dispatch") {
        "dispatch"
    } else {
        "other"
    }
}

impl Executor {
    async fn run(mut self, mut rx: mpsc::Receiver<CommandRequest>) {
        while let Some(req) = rx.recv().await {
            if self.targets.has_changed().unwrap_or(false) {
                if let Some(t) = self.targets.borrow_and_update().as_ref() {
                    self.catalog = t.catalog.clone();
                    self.handles = t
                        .handles
                        .iter()
                        .map(|h| (h.name.clone(), h.clone()))
                        .collect();
                }
            }
            let Some(answer) = self.handle(&req).await else {
                continue;
            };
            if let Err(e) = req.reply.try_send(Reply::to(&req, answer)) {
                // The answer is remembered: a retry with the same request id gets it.
                warn!(topic = %req.topic, error = %e, "cannot hand a command's answer to its publisher");
            }
        }
        debug!("command task stopped");
    }

    /// Logs a line about a command within the per-minute budget, with a summary of what the
    /// budget held back in the previous minute.
    fn log(&mut self, line: impl FnOnce()) {
        let (ok, held_back) = self.log.admit(Instant::now());
        if let Some(n) = held_back {
            warn!(lines = n, "command log lines held back in the last minute (a flood of commands); every command was still answered and counted");
        }
        if ok {
            line();
        }
    }

    /// The answer to one message on a command topic; `None` for messages that are no command
    /// and for retained commands without a request id (nobody to answer).
    /// [`Executor::decide`], logged for the console.
    pub async fn handle(&mut self, req: &CommandRequest) -> Option<Message> {
        let answer = self.decide(req).await;
        if let Some(m) = &answer {
            self.cx.stats.note(log_entry(req, m));
        }
        answer
    }

    async fn decide(&mut self, req: &CommandRequest) -> Option<Message> {
        let (nb, topic) = (req.northbound.as_str(), req.topic.as_str());
        let parsed = self.catalog.parse(&req.root, topic, &req.payload, req.len);
        if matches!(parsed, Parsed::Ignore) {
            return None;
        }
        // Refusals that need nothing of the content come first: a retained or switched-off
        // command is refused whatever it says, even unreadable.
        if let Err(r) = precheck(&req.policy, &req.arrival) {
            let kind = match &parsed {
                Parsed::Request(r) => kind_of(&r.body),
                _ => kind_of_topic(topic),
            };
            self.cx.stats.count(nb, kind, Outcome::refused(&r));
            let id = match &parsed {
                Parsed::Request(request) => Some(request.request_id.clone()),
                _ => request_id_of(&req.payload),
            };
            self.log(|| {
                warn!(
                    northbound = nb,
                    topic,
                    request_id = id.as_deref().unwrap_or(""),
                    reason = r.reason(),
                    "command refused: {r}"
                )
            });
            if r == Refusal::Retained && id.is_none() {
                return None;
            }
            return Some(Answer::rejected(id.as_deref(), r.to_string()).message(topic));
        }
        let request = match parsed {
            Parsed::Ignore => return None,
            Parsed::Invalid(answer) => {
                self.cx
                    .stats
                    .count(nb, kind_of_topic(topic), Outcome::Rejected);
                self.log(|| {
                    warn!(
                        northbound = nb,
                        topic,
                        error = answer.error.as_deref().unwrap_or(""),
                        "command rejected"
                    )
                });
                return Some(answer.message(topic));
            }
            Parsed::Request(r) => r,
        };
        let kind = kind_of(&request.body);
        if let Err(r) = admit(&req.policy, &req.arrival, request.timestamp_ms) {
            // Not remembered: the same request id sent again, live and in time, is carried out.
            self.cx.stats.count(nb, kind, Outcome::refused(&r));
            self.log(|| warn!(northbound = nb, topic, request_id = %request.request_id, reason = r.reason(), "command refused: {r}"));
            return Some(Answer::rejected(Some(&request.request_id), r.to_string()).message(topic));
        }
        // Judged now, when the command is taken: it may have waited behind others.
        if let Err(r) = expired(&req.arrival, edge_model::now_ms()) {
            self.cx.stats.count(nb, kind, Outcome::refused(&r));
            self.log(|| warn!(northbound = nb, topic, request_id = %request.request_id, reason = r.reason(), "command refused: {r}"));
            return Some(Answer::rejected(Some(&request.request_id), r.to_string()).message(topic));
        }
        let key = request.key();
        let now = edge_model::now_ms();
        match self.cx.store.command_answer(&key, now) {
            Ok(Some(Remembered::Answered { answer, .. })) => {
                self.cx.stats.count(nb, kind, Outcome::Duplicate);
                self.log(|| info!(northbound = nb, topic, request_id = %request.request_id, "duplicate command answered again without writing (its first answer)"));
                return Some(Message {
                    topic: mes_bridge::command::response_topic(topic),
                    payload: answer,
                    retain: false,
                    keys: Default::default(),
                });
            }
            Ok(Some(Remembered::Started { .. })) => {
                let answer = Answer::failed(
                    &request.request_id,
                    "the gateway stopped while carrying out this command earlier; it is not written again: check the PLC, then send a new request_id",
                );
                self.cx.stats.count(nb, kind, Outcome::Duplicate);
                return Some(self.remember(&key, &answer, topic));
            }
            Ok(None) => {}
            Err(e) => {
                // Without the answers of earlier commands a duplicate could be written twice.
                error!(northbound = nb, error = %e, "cannot read the command answers from the store; command refused");
                self.cx.stats.count(nb, kind, Outcome::Failed);
                return Some(Answer::failed(&request.request_id, "the gateway cannot check whether this command was carried out before; nothing was written, try again").message(topic));
            }
        }
        let answer = match self.catalog.plan(&request) {
            Err(why) => Answer::rejected(Some(&request.request_id), why),
            Ok(writes) => self.carry_out(&request, &key, &writes).await,
        };
        let outcome = match answer.status {
            Status::Ok => Outcome::Written,
            Status::Rejected => Outcome::Rejected,
            Status::Failed => Outcome::Failed,
        };
        self.cx.stats.count(nb, kind, outcome);
        match answer.status {
            Status::Ok => self.log(|| info!(northbound = nb, topic, request_id = %request.request_id, "command carried out")),
            _ => self.log(|| warn!(northbound = nb, topic, request_id = %request.request_id, status = ?answer.status,
                error = answer.error.as_deref().unwrap_or(""), "command not carried out")),
        }
        Some(self.remember(&key, &answer, topic))
    }

    /// The answer's message, stored as the answer of `key`.
    fn remember(&self, key: &str, answer: &Answer, topic: &str) -> Message {
        let message = answer.message(topic);
        if let Err(e) = self
            .cx
            .store
            .command_answered(key, edge_model::now_ms(), &message.payload)
        {
            warn!(topic, error = %e, "cannot store a command's answer; a duplicate of it is answered as interrupted");
        }
        message
    }

    /// Checks every write with the device's own write checks, records that the command's
    /// writes begin (durably), then makes them in order, stopping at the first failure.
    async fn carry_out(&self, request: &Request, key: &str, writes: &[PlannedWrite]) -> Answer {
        let request_id = request.request_id.as_str();
        let mut checked = Vec::with_capacity(writes.len());
        for w in writes {
            let Some(handle) = self.handles.get(&w.device) else {
                return Answer::rejected(
                    Some(request_id),
                    format!("unknown device `{}`", w.device),
                );
            };
            if let Err(e) = handle.check(&w.tag, &w.value) {
                return Answer::rejected(Some(request_id), e.to_string());
            }
            checked.push((handle, w));
        }
        if let Err(e) = self
            .cx
            .store
            .command_started(key, edge_model::now_ms())
            .await
        {
            error!(topic = %request.topic, error = %e, "cannot record a command before writing it; nothing was written");
            return Answer::failed(
                request_id,
                "the gateway cannot record this command before writing it; nothing was written, try again",
            );
        }
        let started = Instant::now();
        let mut done: Vec<&str> = Vec::new();
        for (handle, w) in checked {
            match handle.write(&w.tag, &w.value, self.limit).await {
                Ok(()) => done.push(&w.tag),
                Err(e) => return failure(request_id, &w.device, &w.tag, &done, writes.len(), &e),
            }
        }
        self.cx.stats.observe_write(started.elapsed());
        Answer::ok(request_id)
    }
}

fn failure(
    request_id: &str,
    device: &str,
    tag: &str,
    done: &[&str],
    total: usize,
    e: &WriteError,
) -> Answer {
    if done.is_empty() {
        let text = format!("device `{device}`, tag `{tag}`: {e}");
        return if e.is_rejection() {
            Answer::rejected(Some(request_id), text)
        } else {
            Answer::failed(request_id, text)
        };
    }
    Answer::failed(
        request_id,
        format!(
            "wrote {} of {total} tags ({}) before tag `{tag}` of device `{device}` failed: {e}; the rest was not written",
            done.len(),
            done.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_before_any_write_says_so_and_a_partial_one_lists_what_was_written() {
        let a = failure("r", "filler", "next_order", &[], 3, &WriteError::Offline);
        assert_eq!(a.status, Status::Failed);
        assert_eq!(
            a.error.as_deref(),
            Some("device `filler`, tag `next_order`: the device is not connected; the write was not queued")
        );
        let a = failure(
            "r",
            "filler",
            "new_order",
            &["next_order", "target"],
            3,
            &WriteError::Timeout(Duration::from_secs(5)),
        );
        assert_eq!(a.status, Status::Failed);
        assert!(a.error.as_deref().is_some_and(
            |e| e.starts_with("wrote 2 of 3 tags (next_order, target) before tag `new_order`")
        ));
        let a = failure(
            "r",
            "filler",
            "t",
            &[],
            1,
            &WriteError::NotWritable("t".into()),
        );
        assert_eq!(a.status, Status::Rejected);
    }
}
