//! `[[northbound]]`: one MQTT destination each — broker url, identity, credentials, TLS files,
//! payload format, topic root and the publisher's flow-control settings.

use mes_bridge::gate::CommandPolicy;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::broker_url::{BrokerUrl, BrokerUrlError};
use crate::error::Diagnostics;
use crate::gateway::{resolve, Gateway};
use crate::names::{check_name, check_topic_root, Underscore, UniqueNames};
use crate::reader::{Span, TableReader, Val};
use crate::secret::{Secret, SecretSource};

/// `[[northbound]]`: one MQTT broker the samples are published to. Each northbound has its
/// own cursor in the store: a sample is released for it only when its broker acknowledged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Northbound {
    /// `name` (required): unique among the northbounds, letters, digits, `-` and `_`. Names
    /// this northbound in logs, metrics and `edge-agent buffer stats`.
    pub name: String,
    /// `url`, or `urls` (one of the two is required): `mqtt://host[:port]` (port 1883 by
    /// default) or `mqtts://host[:port]` (TLS, port 8883 by default). IPv6 addresses go in
    /// brackets: `mqtt://[fd00::5]:1883`. With `urls`, the first is the preferred broker and
    /// `url` holds it; the others are in `fallbacks`, tried in order when it is lost.
    pub url: BrokerUrl,
    /// `replay_records_per_s` and `replay_bytes_per_s` (optional; default: no cap): the most a
    /// replay after an outage sends per second, records (a device's scan) or payload bytes.
    /// Live data goes on behind the backlog, in order. Without a cap a gateway drains its
    /// backlog as fast as the broker acknowledges (bounded by `max_inflight`), so the MES is
    /// current soonest; a fleet whose gateways all return after a broker restart caps it.
    pub replay_records_per_s: Option<u32>,
    pub replay_bytes_per_s: Option<u64>,
    /// The brokers after the first of `urls` (empty with `url`): the northbound walks the
    /// list on a loss, with backoff after each full walk, and comes back to the first.
    pub fallbacks: Vec<BrokerUrl>,
    /// `return_to_preferred_s` (default 60, 0: never): while on a fallback broker, how often
    /// the preferred one is tried; once it accepts a connection the northbound moves back.
    pub return_to_preferred: Option<Duration>,
    /// `client_id` (1 to 64 characters, default `edge-{gateway id}-{name}`): the MQTT client
    /// id. It must be stable and unique on the broker, because the broker keeps the session
    /// (unacknowledged messages) under it across reconnects.
    pub client_id: String,
    /// `username`, with `password_env` (the name of an environment variable holding the
    /// password) or `password_file` (a file holding it; a trailing newline is ignored). At
    /// most one of the two, and only together with `username`. Passwords are never logged.
    pub credentials: Option<Credentials>,
    /// `ca_file` (required for `mqtts://`, refused for `mqtt://`): PEM bundle of the CA that
    /// signed the broker's certificate. `client_cert_file` and `client_key_file` (optional,
    /// together): PEM client certificate and key for brokers that authenticate clients by
    /// certificate. Relative paths are relative to the config file's directory.
    pub tls: Option<TlsFiles>,
    /// `format` (default `"uns-json"`): the payload format. `uns-json` is the JSON Unified
    /// Namespace of the MES tier; `sparkplug-b` makes the gateway a Sparkplug B 3.0 edge node
    /// for the SCADA tier, with the keys of [`SparkplugSettings`].
    pub format: Format,
    /// `topic_root` (default `enterprise/site/area/line` from [gateway]): the prefix of every
    /// topic. Levels separated by single `/`, no leading or trailing `/`, no `+` or `#`.
    /// Not for `sparkplug-b`, whose topics are `spBv1.0/{group_id}/...`.
    pub topic_root: String,
    /// `batching` (default `"per-tag"`): `"per-tag"` publishes one message per sample on
    /// `{root}/{device}/{tag}`; `"per-device"` publishes each device's samples together on
    /// `{root}/{device}/_batch`, far fewer messages for the same data. Not for `sparkplug-b`,
    /// which sends each device's samples of one scan in one DDATA.
    pub batching: Batching,
    /// `max_inflight` (1 to 65535, default 256): QoS 1 publishes that may await their PUBACK
    /// at once. Higher values help over high-latency links. For `sparkplug-b`, the Sparkplug
    /// messages (QoS 0) sent and not yet proven read by the broker.
    pub max_inflight: u16,
    /// `max_inflight_bytes` (65,536 to 1,073,741,824, default 2,097,152): the payload bytes a
    /// UNS northbound holds in memory for delivery (sent and awaiting PUBACK, or read from the
    /// store and about to be sent), whatever the backlog. A single record larger than this is
    /// still sent, alone. Memory during an outage and its replay stays within this (plus a
    /// quarter of it of read-ahead).
    pub max_inflight_bytes: usize,
    /// `keep_alive_s` (5 to 3600, default 30): the MQTT keep-alive; a silent broker connection
    /// is declared dead after about one and a half times this.
    pub keep_alive: Duration,
    /// `connect_timeout_ms` (100 to 600,000, default 5000): how long one connection attempt
    /// (TCP, TLS and CONNACK) may take.
    pub connect_timeout: Duration,
    /// `reconnect_min_ms` (default 500): the first wait before reconnecting after a failure;
    /// it doubles with each failure, with jitter, up to `reconnect_max_ms` (default 30000).
    /// Both 10 to 3,600,000, min not above max.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
    /// Command safety (see the README's "Command safety" section):
    /// - `commands` (default true): whether commands arriving on this northbound (UNS `_set`
    ///   and `_mes/cmd/...`, Sparkplug NCMD and DCMD) are carried out; when false each is
    ///   answered as refused and nothing is written.
    /// - `command_max_age_ms` (100 to 3,600,000, default 10000): the oldest a command may be
    ///   when it arrives, by its own timestamp (UNS `timestamp_ms`, the Sparkplug payload
    ///   timestamp).
    /// - `command_clock_skew_ms` (0 to 60,000, default 2000): how far a sender's clock may be
    ///   ahead of the gateway's, and how long before the gateway's connection a command may
    ///   have been sent.
    /// - `allow_untimed_commands` (default false): take commands without a timestamp; the
    ///   northbound's MQTT session is then clean, so that no command queued while the gateway
    ///   was away is ever delivered.
    pub commands: CommandPolicy,
    /// `protocol` (4 or 5, default 4): the MQTT version, by its protocol level. 4 is MQTT
    /// 3.1.1; 5 is MQTT 5, for uns-json northbounds: data messages carry user properties
    /// (`device`, `seq`, `event_id`, the ISA-95 levels), commands honour message expiry and
    /// are answered on the request's response topic with its correlation data, and the
    /// broker's reason codes and limits are logged in words.
    pub protocol: MqttVersion,
    /// `session_expiry_s` (MQTT 5 only; 0 to 604,800, default 300): how long the broker keeps
    /// the session (subscriptions, commands queued at QoS 1) after the connection is lost.
    /// The publisher sends everything unacknowledged again itself and subscribes at every
    /// connect, so a short expiry loses nothing; it bounds what a broker of a fleet keeps for
    /// gateways that are gone. 0 with `allow_untimed_commands` (a clean session each time).
    pub session_expiry: Duration,
}

/// The MQTT version of a northbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0.
    V5,
}

impl MqttVersion {
    pub fn as_str(&self) -> &'static str {
        match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        }
    }
}

/// A user name and, optionally, its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<Secret>,
    /// The `password_file` the password was read from, if any: its permissions are checked
    /// at `check` and at start.
    pub password_file: Option<PathBuf>,
}

/// The files of an `mqtts://` connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of the CA(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate and private key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Payload format of a northbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// JSON in a Unified Namespace (SPEC §5).
    UnsJson,
    /// Sparkplug B 3.0 (SPEC §7): the gateway is an edge node, its devices are Sparkplug
    /// devices.
    SparkplugB(SparkplugSettings),
}

impl Format {
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::UnsJson => "uns-json",
            Format::SparkplugB(_) => "sparkplug-b",
        }
    }
}

/// The keys of a `format = "sparkplug-b"` northbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugSettings {
    /// `group_id` (required): the Sparkplug group of this edge node, the second topic level
    /// of `spBv1.0/{group_id}/...`. UTF-8 without `+`, `/`, `#` or control characters.
    pub group_id: String,
    /// `edge_node_id` (default: the gateway id): the edge node's id within its group; the same
    /// rules as `group_id`.
    pub edge_node_id: String,
    /// `primary_host_id` (optional): the SCADA host whose `spBv1.0/STATE/{id}` must say online
    /// before the node publishes its births; when it goes offline the node publishes NDEATH,
    /// disconnects and waits for it again, with samples kept in the store meanwhile.
    pub primary_host_id: Option<String>,
    /// `delivery_topic` (default `edge-agent/{group_id}/{edge_node_id}/delivered`): Sparkplug
    /// data goes out at QoS 0, so the node proves the broker has read it with a QoS 1 publish
    /// here after it (the broker acknowledges packets in the order it reads them); only then
    /// are the samples released from the store. Nobody needs to subscribe; a broker ACL must
    /// allow the publish. Not under `spBv1.0/`, whose topics Sparkplug hosts parse.
    pub delivery_topic: String,
}

/// How telemetry is grouped into MQTT messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// One message per sample, on `{root}/{device}/{tag}`.
    PerTag,
    /// One message per device and scan, on `{root}/{device}/_batch`.
    PerDevice,
}

impl Batching {
    pub fn as_str(self) -> &'static str {
        match self {
            Batching::PerTag => "per-tag",
            Batching::PerDevice => "per-device",
        }
    }
}

impl Northbound {
    pub const DEFAULT_MAX_INFLIGHT: u16 = 256;
    pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 2 << 20;
    pub const DEFAULT_KEEP_ALIVE_S: u64 = 30;
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;
    pub const DEFAULT_RECONNECT_MIN_MS: u64 = 500;
    pub const DEFAULT_RECONNECT_MAX_MS: u64 = 30_000;
    pub const MAX_CLIENT_ID_CHARS: usize = 64;
    pub const DEFAULT_SESSION_EXPIRY_S: u32 = 300;
}

pub(crate) fn read_northbounds(
    cx: &mut Diagnostics<'_>,
    root: &mut TableReader<'_, '_>,
    gateway: Option<&Gateway>,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Option<Vec<Northbound>> {
    let tables = match root.tables(cx, "northbound", "[[northbound]]") {
        Val::Present(tables, span) if tables.is_empty() => {
            cx.error(&span, "at least one [[northbound]] is required", None);
            return None;
        }
        Val::Present(tables, _) => tables,
        Val::Invalid => return None,
        Val::Absent => {
            cx.structural(
                &root.span(),
                "no [[northbound]]: the agent needs at least one MQTT destination",
                Some(
                    "add [[northbound]] with name = \"mes\" and url = \"mqtt://broker:1883\""
                        .to_owned(),
                ),
            );
            return None;
        }
    };
    let mut names = UniqueNames::new("northbound name", "");
    let mut all = Some(Vec::with_capacity(tables.len()));
    for mut t in tables {
        let northbound = read_northbound(cx, &mut t, gateway, base_dir, secrets, &mut names);
        // A broker keeps one session per client id: two northbounds under one id on one
        // broker would throw each other off, endlessly.
        if let (Some(n), Some(all)) = (&northbound, all.as_ref()) {
            let shared = all.iter().find(|o: &&Northbound| {
                o.client_id == n.client_id && o.brokers().any(|b| n.brokers().any(|c| c == b))
            });
            if let Some(o) = shared {
                let span = t
                    .value_span("client_id")
                    .or_else(|| t.value_span("urls"))
                    .or_else(|| t.value_span("url"))
                    .unwrap_or_else(|| t.span());
                cx.error(
                    &span,
                    format!(
                        "northbounds `{}` and `{}` use client id `{}` on the same broker: the broker would drop one whenever the other connects",
                        o.name, n.name, n.client_id
                    ),
                    Some("give each northbound its own client_id".to_owned()),
                );
            }
        }
        t.finish(cx);
        match (northbound, all.as_mut()) {
            (Some(n), Some(all)) => all.push(n),
            _ => all = None,
        }
    }
    all
}

impl Northbound {
    /// `url`, then the fallbacks.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerUrl> {
        std::iter::once(&self.url).chain(&self.fallbacks)
    }
}

fn read_northbound(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    gateway: Option<&Gateway>,
    base_dir: &Path,
    secrets: &dyn SecretSource,
    names: &mut UniqueNames,
) -> Option<Northbound> {
    let name = t.string(cx, "name");
    let name = t
        .require(cx, "name", name, "name = \"mes\"")
        .filter(|(name, span)| {
            check_name(cx, span, "northbound name", name, Underscore::Allowed)
                && names.insert(cx, span, name)
        });

    let parse_url =
        |cx: &mut Diagnostics<'_>, url: &str, span: &Span| match url.parse::<BrokerUrl>() {
            Ok(url) => Some(url),
            Err(e @ BrokerUrlError::UserInfo) => {
                cx.error_masked(span, e.to_string(), None);
                None
            }
            Err(e) => {
                cx.error(span, e.to_string(), None);
                None
            }
        };
    let one = t
        .string(cx, "url")
        .and_then(|url, span| parse_url(cx, url, span));
    let list = t.strings(cx, "urls").and_then(|urls, span| {
        if urls.is_empty() {
            cx.error(
                span,
                "`urls` names no broker",
                Some("urls = [\"mqtt://broker-a:1883\", \"mqtt://broker-b:1883\"]".to_owned()),
            );
            return None;
        }
        let mut parsed = Vec::new();
        let mut ok = true;
        for (u, s) in &urls {
            match parse_url(cx, u, s) {
                Some(b) if parsed.iter().any(|(p, _): &(BrokerUrl, Span)| *p == b) => {
                    cx.error(s, format!("`{u}` is in `urls` twice"), None);
                    ok = false;
                }
                Some(b) => parsed.push((b, s.clone())),
                None => ok = false,
            }
        }
        ok.then_some(parsed)
    });
    let (url, fallbacks) = match (one, list) {
        (Val::Present(_, span), Val::Present(_, _)) => {
            cx.error(
                &span,
                "give either `url` or `urls`, not both",
                Some("keep `urls`; its first broker is the preferred one".to_owned()),
            );
            (None, Some(Vec::new()))
        }
        (Val::Invalid, _) | (_, Val::Invalid) => (None, None),
        (Val::Present(u, span), Val::Absent) => (Some((u, span)), Some(Vec::new())),
        (Val::Absent, Val::Present(mut list, _)) => {
            let first = list.remove(0);
            (
                Some(first),
                Some(list.into_iter().map(|(u, _)| u).collect::<Vec<_>>()),
            )
        }
        (Val::Absent, Val::Absent) => {
            let url = t.require(
                cx,
                "url",
                Val::<BrokerUrl>::Absent,
                "url = \"mqtt://127.0.0.1:1883\" (or urls = [...] for a broker cluster)",
            );
            (url, Some(Vec::new()))
        }
    };
    let return_s = t
        .integer::<u64>(cx, "return_to_preferred_s", 0..=86_400)
        .or(60);
    let replay_records = t
        .integer::<u32>(cx, "replay_records_per_s", 1..=10_000_000)
        .optional();
    let replay_bytes = t
        .integer::<u64>(cx, "replay_bytes_per_s", 1024..=1 << 34)
        .optional();
    // One TLS setting (ca_file, client certificate) serves every broker of the list.
    if let (Some((first, _)), Some(rest)) = (&url, &fallbacks) {
        if rest.iter().any(|b| b.tls != first.tls) {
            if let Some(span) = t.value_span("urls") {
                cx.error(&span, "`urls` mixes mqtt:// and mqtts:// brokers", Some("one TLS setting serves the whole list: make them all mqtts:// (or all mqtt://)".to_owned()));
            }
        }
    }

    let client_id = t.string(cx, "client_id").and_then(|id, span| {
        let chars = id.chars().count();
        if chars == 0 || chars > Northbound::MAX_CLIENT_ID_CHARS {
            cx.error(
                span,
                format!(
                    "`client_id` must be 1 to {} characters long, found {chars}",
                    Northbound::MAX_CLIENT_ID_CHARS
                ),
                None,
            );
            None
        } else {
            Some(id.to_owned())
        }
    });

    let credentials = read_credentials(cx, t, base_dir, secrets);
    let tls = read_tls(cx, t, url.as_ref(), base_dir);

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        UnsJson,
        SparkplugB,
    }
    let format = t.choice(
        cx,
        "format",
        &[
            ("uns-json", Kind::UnsJson),
            ("sparkplug-b", Kind::SparkplugB),
        ],
        &[],
    );
    let topic_root = t
        .string(cx, "topic_root")
        .and_then(|root, span| check_topic_root(cx, span, root).then(|| root.to_owned()));
    let batching = t.choice(
        cx,
        "batching",
        &[
            ("per-tag", Batching::PerTag),
            ("per-device", Batching::PerDevice),
        ],
        &[],
    );
    let sparkplug = SparkplugKeys::read(cx, t);
    let format = match format {
        Val::Present(Kind::SparkplugB, _) => {
            for key in ["replay_records_per_s", "replay_bytes_per_s"] {
                if let Some(span) = t.value_span(key) {
                    cx.error(
                        &span,
                        format!("`{key}` applies to uns-json northbounds"),
                        Some(
                            "a Sparkplug replay is paced by max_inflight; remove this key"
                                .to_owned(),
                        ),
                    );
                }
            }
            for (key, span) in [
                ("topic_root", topic_root.span()),
                ("batching", batching.span()),
            ] {
                if let Some(span) = span {
                    cx.error(
                        &span,
                        format!("`{key}` does not apply to format = \"sparkplug-b\""),
                        Some(
                            "Sparkplug topics are spBv1.0/{group_id}/...; remove this key"
                                .to_owned(),
                        ),
                    );
                }
            }
            sparkplug.settings(cx, t, gateway).map(Format::SparkplugB)
        }
        Val::Invalid => None,
        Val::Absent | Val::Present(Kind::UnsJson, _) => {
            sparkplug.refuse(cx).then_some(Format::UnsJson)
        }
    };
    let max_inflight: Option<u16> = t
        .integer(cx, "max_inflight", 1..=65_535)
        .or(Northbound::DEFAULT_MAX_INFLIGHT);
    let max_inflight_bytes: Option<usize> = t
        .integer(cx, "max_inflight_bytes", 65_536..=1 << 30)
        .or(Northbound::DEFAULT_MAX_INFLIGHT_BYTES);
    let keep_alive_s: Option<u64> = t
        .integer(cx, "keep_alive_s", 5..=3600)
        .or(Northbound::DEFAULT_KEEP_ALIVE_S);
    let connect_timeout_ms: Option<u64> = t
        .integer(cx, "connect_timeout_ms", 100..=600_000)
        .or(Northbound::DEFAULT_CONNECT_TIMEOUT_MS);
    let (reconnect_min, reconnect_max) = read_backoff(
        cx,
        t,
        ("reconnect_min_ms", Northbound::DEFAULT_RECONNECT_MIN_MS),
        ("reconnect_max_ms", Northbound::DEFAULT_RECONNECT_MAX_MS),
    );
    let commands_enabled = t.boolean(cx, "commands").or(true);
    let max_age_ms: Option<u64> = t
        .integer(cx, "command_max_age_ms", 100..=3_600_000)
        .or(CommandPolicy::DEFAULT_MAX_AGE_MS);
    let clock_skew_ms: Option<u64> = t
        .integer(cx, "command_clock_skew_ms", 0..=60_000)
        .or(CommandPolicy::DEFAULT_CLOCK_SKEW_MS);
    let allow_untimed = t.boolean(cx, "allow_untimed_commands").or(false);
    let protocol = t.integer::<u8>(cx, "protocol", 4..=5);
    let session_expiry_s = t.integer::<u32>(cx, "session_expiry_s", 0..=604_800);
    let protocol = match protocol {
        Val::Present(5, span) => {
            if matches!(format, Some(Format::SparkplugB(_))) {
                cx.error(
                    &span,
                    "a sparkplug-b northbound speaks MQTT 3.1.1",
                    Some("Sparkplug's STATE and bdSeq rules are written for MQTT 3.1.1 sessions; remove `protocol` here, or use a uns-json northbound for MQTT 5".to_owned()),
                );
                None
            } else {
                Some(MqttVersion::V5)
            }
        }
        Val::Present(_, _) | Val::Absent => Some(MqttVersion::V311),
        Val::Invalid => None,
    };
    if let (Some(MqttVersion::V311), Some(span)) = (protocol, session_expiry_s.span()) {
        cx.error(
            &span,
            "`session_expiry_s` applies to protocol = 5",
            Some("an MQTT 3.1.1 session lasts as long as the broker's own setting (Mosquitto: persistent_client_expiration); add protocol = 5 or remove this key".to_owned()),
        );
    }
    let session_expiry_s = session_expiry_s.or(Northbound::DEFAULT_SESSION_EXPIRY_S);

    let (name, name_span) = name?;
    let client_id = match client_id {
        Val::Present(id, _) => id,
        Val::Invalid => return None,
        Val::Absent => {
            let id = format!("edge-{}-{name}", gateway?.id);
            if id.chars().count() > Northbound::MAX_CLIENT_ID_CHARS {
                cx.error(
                    &name_span,
                    format!(
                        "the default client id `{id}` is longer than {} characters",
                        Northbound::MAX_CLIENT_ID_CHARS
                    ),
                    Some("set a shorter `client_id` for this northbound".to_owned()),
                );
                return None;
            }
            id
        }
    };
    let topic_root = match topic_root {
        Val::Present(root, _) => root,
        Val::Invalid => return None,
        Val::Absent => gateway?.uns.root(),
    };
    Some(Northbound {
        name: name.to_owned(),
        url: url?.0,
        fallbacks: fallbacks?,
        replay_records_per_s: replay_records?.map(|(v, _)| v),
        replay_bytes_per_s: replay_bytes?.map(|(v, _)| v),
        return_to_preferred: return_s.map(|s| (s > 0).then(|| Duration::from_secs(s)))?,
        client_id,
        credentials: credentials?,
        tls: tls?,
        format: format?,
        topic_root,
        batching: batching.or(Batching::PerTag)?,
        max_inflight: max_inflight?,
        max_inflight_bytes: max_inflight_bytes?,
        keep_alive: Duration::from_secs(keep_alive_s?),
        connect_timeout: Duration::from_millis(connect_timeout_ms?),
        reconnect_min: reconnect_min?,
        reconnect_max: reconnect_max?,
        commands: CommandPolicy {
            enabled: commands_enabled?,
            max_age_ms: max_age_ms?,
            clock_skew_ms: clock_skew_ms?,
            allow_untimed: allow_untimed?,
        },
        protocol: protocol?,
        session_expiry: Duration::from_secs(u64::from(session_expiry_s?)),
    })
}

/// The Sparkplug keys of one `[[northbound]]`, read whatever its format so that they are
/// known keys; they are refused unless the format is `sparkplug-b`.
struct SparkplugKeys<'t> {
    group_id: Val<&'t str>,
    edge_node_id: Val<&'t str>,
    primary_host_id: Val<&'t str>,
    delivery_topic: Val<&'t str>,
}

impl<'t> SparkplugKeys<'t> {
    fn read(cx: &mut Diagnostics<'_>, t: &mut TableReader<'t, '_>) -> Self {
        let id = |cx: &mut Diagnostics<'_>, t: &mut TableReader<'t, '_>, key: &'static str| {
            t.string(cx, key)
                .and_then(|id, span| check_sparkplug_id(cx, span, key, id).then_some(id))
        };
        SparkplugKeys {
            group_id: id(cx, t, "group_id"),
            edge_node_id: id(cx, t, "edge_node_id"),
            primary_host_id: id(cx, t, "primary_host_id"),
            delivery_topic: t
                .string(cx, "delivery_topic")
                .and_then(|topic, span| check_delivery_topic(cx, span, topic).then_some(topic)),
        }
    }

    /// For another format: reports every Sparkplug key given; true when there was none.
    fn refuse(&self, cx: &mut Diagnostics<'_>) -> bool {
        let mut ok = true;
        for (key, val) in [
            ("group_id", &self.group_id),
            ("edge_node_id", &self.edge_node_id),
            ("primary_host_id", &self.primary_host_id),
            ("delivery_topic", &self.delivery_topic),
        ] {
            if let Some(span) = val.span() {
                cx.error(
                    &span,
                    format!("`{key}` only applies to format = \"sparkplug-b\""),
                    Some("add format = \"sparkplug-b\" to make this northbound a Sparkplug B edge node, or remove this key".to_owned()),
                );
                ok = false;
            }
        }
        ok
    }

    fn settings(
        self,
        cx: &mut Diagnostics<'_>,
        t: &TableReader<'_, '_>,
        gateway: Option<&Gateway>,
    ) -> Option<SparkplugSettings> {
        let group_id = t.require(cx, "group_id", self.group_id, "group_id = \"plant1\"");
        let edge_node_id = match self.edge_node_id {
            Val::Present(id, _) => Some(id.to_owned()),
            Val::Invalid => None,
            Val::Absent => gateway.map(|g| g.id.clone()),
        };
        let primary_host_id = self.primary_host_id.optional();
        let delivery_topic = self.delivery_topic.optional();
        let (group_id, _) = group_id?;
        let edge_node_id = edge_node_id?;
        let delivery_topic = match delivery_topic? {
            Some((topic, _)) => topic.to_owned(),
            None => format!("edge-agent/{group_id}/{edge_node_id}/delivered"),
        };
        Some(SparkplugSettings {
            group_id: group_id.to_owned(),
            edge_node_id,
            primary_host_id: primary_host_id?.map(|(id, _)| id.to_owned()),
            delivery_topic,
        })
    }
}

/// A Sparkplug group, edge node or host id: one topic level, so no `+`, `/` or `#`.
fn check_sparkplug_id(cx: &mut Diagnostics<'_>, span: &Span, key: &str, id: &str) -> bool {
    if id.is_empty() {
        cx.error(span, format!("`{key}` must not be empty"), None);
        return false;
    }
    if let Some(bad) = id
        .chars()
        .find(|c| matches!(c, '+' | '/' | '#') || c.is_control())
    {
        cx.error(
            span,
            format!(
                "`{key}` contains `{}`, which a Sparkplug id must not contain",
                bad.escape_default()
            ),
            Some(
                "Sparkplug ids are single topic levels: no `+`, `/`, `#` or control characters"
                    .to_owned(),
            ),
        );
        return false;
    }
    true
}

fn check_delivery_topic(cx: &mut Diagnostics<'_>, span: &Span, topic: &str) -> bool {
    let problem = if topic.is_empty() {
        Some("`delivery_topic` must not be empty")
    } else if topic.contains(['+', '#', '\0']) {
        Some("`delivery_topic` must not contain `+`, `#` or a NUL character")
    } else if topic.starts_with("spBv1.0/") {
        Some("`delivery_topic` must not be under `spBv1.0/`, where Sparkplug hosts expect only Sparkplug messages")
    } else if topic.starts_with('$') {
        Some("`delivery_topic` must not start with `$`, which brokers reserve")
    } else {
        None
    };
    match problem {
        Some(message) => {
            cx.error(
                span,
                message,
                Some("a plain topic the node may publish to, as in `edge-agent/plant1/gw1/delivered`".to_owned()),
            );
            false
        }
        None => true,
    }
}

/// A reconnect backoff given as a minimum and a maximum in milliseconds, min not above max.
pub(crate) fn read_backoff(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    (min_key, min_default): (&'static str, u64),
    (max_key, max_default): (&'static str, u64),
) -> (Option<Duration>, Option<Duration>) {
    let min = t.integer::<u64>(cx, min_key, 10..=3_600_000);
    let max = t.integer::<u64>(cx, max_key, 10..=3_600_000);
    let at = max.span().or(min.span());
    let (min, max) = (min.or(min_default), max.or(max_default));
    if let (Some(lo), Some(hi), Some(at)) = (min, max, at) {
        if lo > hi {
            cx.error(
                &at,
                format!("`{min_key}` ({lo}) is above `{max_key}` ({hi})"),
                Some(format!("{min_key} is the first wait and {max_key} the longest; give {min_key} <= {max_key}")),
            );
            return (None, None);
        }
    }
    (
        min.map(Duration::from_millis),
        max.map(Duration::from_millis),
    )
}

/// `Some(None)`: no credentials; `None`: invalid (reported).
pub(crate) fn read_credentials(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Option<Option<Credentials>> {
    let username = t.text(cx, "username").optional();
    let password_env = t.text(cx, "password_env").optional();
    let password_file = t.text(cx, "password_file").optional();
    let (username, password_env, password_file) = (username?, password_env?, password_file?);

    let password = match (password_env, password_file) {
        (Some((_, env_span)), Some((_, file_span))) => {
            let second = if env_span.start > file_span.start {
                env_span
            } else {
                file_span
            };
            cx.error(
                &second,
                "give either `password_env` or `password_file`, not both",
                Some("keep the one that holds the password and remove the other".to_owned()),
            );
            return None;
        }
        (Some((name, span)), None) => Some((PasswordFrom::Env(name), span)),
        (None, Some((path, span))) => Some((PasswordFrom::File(resolve(base_dir, path)), span)),
        (None, None) => None,
    };
    let Some((username, _)) = username else {
        if let Some((_, span)) = password {
            cx.error(
                &span,
                "a password needs a `username`",
                Some("add `username = \"...\"` to this [[northbound]]".to_owned()),
            );
            return None;
        }
        return Some(None);
    };
    let (password, password_file) = match password {
        None => (None, None),
        Some((from, span)) => {
            let secret = from.fetch(cx, &span, secrets)?;
            let file = match from {
                PasswordFrom::File(path) => Some(path),
                PasswordFrom::Env(_) => None,
            };
            (Some(secret), file)
        }
    };
    Some(Some(Credentials {
        username: username.to_owned(),
        password,
        password_file,
    }))
}

enum PasswordFrom<'a> {
    Env(&'a str),
    File(PathBuf),
}

impl PasswordFrom<'_> {
    /// Looks the password up; errors name where it was looked for, never what was found.
    fn fetch(
        &self,
        cx: &mut Diagnostics<'_>,
        span: &Span,
        secrets: &dyn SecretSource,
    ) -> Option<Secret> {
        let value = match self {
            PasswordFrom::Env(name) => match secrets.env(name) {
                Some(value) => value,
                None => {
                    cx.error(
                        span,
                        format!("environment variable `{name}` is not set"),
                        Some("set it in the agent's environment (for systemd, `Environment=` or `EnvironmentFile=` in a drop-in), or use password_file".to_owned()),
                    );
                    return None;
                }
            },
            PasswordFrom::File(path) => match secrets.file(path) {
                Ok(content) => content.trim_end_matches(['\r', '\n']).to_owned(),
                Err(e) => {
                    cx.error(
                        span,
                        format!("cannot read password file `{}`: {e}", path.display()),
                        Some("the file must exist and be readable by the agent's user".to_owned()),
                    );
                    return None;
                }
            },
        };
        if value.is_empty() {
            let source = match self {
                PasswordFrom::Env(name) => format!("environment variable `{name}`"),
                PasswordFrom::File(path) => format!("password file `{}`", path.display()),
            };
            cx.error(span, format!("the password from {source} is empty"), None);
            return None;
        }
        Some(Secret::new(value))
    }
}

/// `Some(None)`: plain MQTT; `None`: invalid (reported).
fn read_tls(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    url: Option<&(BrokerUrl, Span)>,
    base_dir: &Path,
) -> Option<Option<TlsFiles>> {
    let ca = t.text(cx, "ca_file").optional();
    let cert = t.text(cx, "client_cert_file").optional();
    let key = t.text(cx, "client_key_file").optional();
    let (ca, cert, key) = (ca?, cert?, key?);
    let (url, url_span) = url?;

    if !url.tls {
        let mut ok = true;
        for (key, file) in [
            ("ca_file", &ca),
            ("client_cert_file", &cert),
            ("client_key_file", &key),
        ] {
            if let Some((_, span)) = file {
                cx.error(
                    span,
                    format!("`{key}` only applies to mqtts:// urls"),
                    Some("use an mqtts:// url to connect over TLS, or remove this key".to_owned()),
                );
                ok = false;
            }
        }
        return ok.then_some(None);
    }

    let client_cert = match (cert, key) {
        (Some((cert, _)), Some((key, _))) => {
            Some((resolve(base_dir, cert), resolve(base_dir, key)))
        }
        (None, None) => None,
        (Some((_, span)), None) => {
            cx.error(
                &span,
                "`client_cert_file` needs `client_key_file`",
                Some("a client certificate is used together with its private key; add client_key_file".to_owned()),
            );
            return None;
        }
        (None, Some((_, span))) => {
            cx.error(
                &span,
                "`client_key_file` needs `client_cert_file`",
                Some("a private key is used together with its client certificate; add client_cert_file".to_owned()),
            );
            return None;
        }
    };
    let Some((ca, _)) = ca else {
        cx.error(
            url_span,
            "an mqtts:// url needs `ca_file`",
            Some("ca_file is required for mqtts://: add ca_file = \"/etc/edge-agent/ca.pem\", the PEM bundle of the CA that signed the broker's certificate".to_owned()),
        );
        return None;
    };
    Some(Some(TlsFiles {
        ca_file: resolve(base_dir, ca),
        client_cert,
    }))
}
