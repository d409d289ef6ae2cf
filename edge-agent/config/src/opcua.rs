//! `[[device]]` with `protocol = "opcua"`: one OPC UA server (endpoint, security, identity,
//! session timing) and its `[[device.tag]]`s by node id, each subscribed to (monitored item with
//! sampling interval, queue size and deadband) or polled (Read on a schedule).

use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_model::DataType;
use edge_opcua::{
    security_is_consistent, Deadband, Identity, NodeAddress, Password, SecurityMode,
    SecurityPolicy, TagMode,
};

use crate::device::{Device, Protocol, Tag, TagAddress};
use crate::error::Diagnostics;
use crate::gateway::resolve;
use crate::names::{check_name, Underscore, UniqueNames};
use crate::northbound::{read_backoff, read_credentials};
use crate::reader::{Span, TableReader, Val};
use crate::secret::SecretSource;

/// `protocol = "opcua"`: how to reach and talk to an OPC UA server (its tags are the
/// device's, in [`Device::tags`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUa {
    /// `endpoint` (required): the server's URL, `opc.tcp://host[:port][/path]` (port 4840 by
    /// default), as `edge-agent opcua browse` was given it.
    pub endpoint: String,
    /// `security_policy` (default `"None"`): `None`, `Basic256Sha256`, `Aes128_Sha256_RsaOaep`
    /// or `Aes256_Sha256_RsaPss`.
    pub security_policy: SecurityPolicy,
    /// `security_mode` (default `"SignAndEncrypt"` with a policy, `"None"` without): `None`,
    /// `Sign` or `SignAndEncrypt`.
    pub security_mode: SecurityMode,
    /// Who the gateway logs in as: anonymous by default; `username` with `password_env` or
    /// `password_file`; or a user certificate, `user_cert_file` with `user_key_file` (PEM).
    pub identity: Identity,
    /// The `password_file` of a user-name identity, if the password came from a file: its
    /// permissions are checked at `check` and at start.
    pub password_file: Option<PathBuf>,
    /// `session_timeout_ms` (10,000 to 3,600,000, default 60,000): how long the server keeps
    /// the session when the gateway goes silent.
    pub session_timeout: Duration,
    /// `keep_alive_ms` (500 to 600,000, default 5000): how often the session is checked; two
    /// failed checks in a row drop the connection and its tags turn `bad`.
    pub keep_alive: Duration,
    /// `trust_on_first_use` (default false): trust the server's certificate the first time it
    /// is seen instead of rejecting it (logged as a warning). Without it an unknown certificate
    /// is rejected and `edge-agent opcua trust accept` trusts it.
    pub trust_on_first_use: bool,
    /// `max_nodes_per_read` (0 to 100,000, default 0): the most nodes in one Read besides the
    /// server's own MaxNodesPerRead; 0 leaves it to the server.
    pub max_nodes_per_read: u32,
}

/// The OPC UA part of a `[[device.tag]]` (the keys every tag has are in [`Tag`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaTag {
    /// `address` (required): the node id, as `edge-agent opcua browse` prints it:
    /// `ns=2;s=Filler.Temperature`, `ns=2;i=1001`, `ns=3;g=<guid>`, `ns=4;b=<base64>`, or with
    /// the namespace URI: `nsu=urn:acme:plant;s=Filler.Temperature`.
    pub node: NodeAddress,
    /// `type` (optional): convert values to this type (`bool`, `i16` … `f64`, `string:N`);
    /// without it a value keeps the server's type.
    pub data_type: Option<DataType>,
    /// `mode` (default: the device's `mode`, itself `"subscription"` by default):
    /// `"subscription"` takes `publishing_interval_ms` (default 1000), `sampling_interval_ms`
    /// (default: the publishing interval), `queue_size` (1 to 10,000, default 10) and a server
    /// side `deadband` (absolute) or `deadband_percent` (of the variable's EURange);
    /// `"polling"` takes `poll_interval_ms` (default 1000) and a gateway-side `deadband` with
    /// `heartbeat_s`. Each of these may be set on the device as the default of its tags.
    pub mode: TagMode,
}

impl OpcUa {
    pub const DEFAULT_PORT: u16 = 4840;
    pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
    pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 60_000;
    pub const DEFAULT_KEEP_ALIVE_MS: u64 = 5000;
    pub const DEFAULT_PUBLISHING_INTERVAL_MS: u64 = 1000;
    pub const DEFAULT_QUEUE_SIZE: u32 = 10;
    pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1000;

    /// How many of `tags` are subscribed to, and how many polled.
    pub fn split(tags: &[Tag]) -> (usize, usize) {
        let subscribed = tags
            .iter()
            .filter(|t| t.opcua().is_some_and(|o| o.mode.is_subscription()))
            .count();
        (subscribed, tags.len() - subscribed)
    }
}

const INTERVAL_RANGE: std::ops::RangeInclusive<i64> = 10..=86_400_000;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Subscription,
    Polling,
}

const MODES: [(&str, Mode); 2] = [
    ("subscription", Mode::Subscription),
    ("polling", Mode::Polling),
];

/// What a tag takes from its device unless it says otherwise (`None`: the device's own
/// setting was invalid and is reported).
struct TagDefaults {
    mode: Option<Mode>,
    publishing_ms: Option<u64>,
    sampling_ms: Option<Option<u64>>,
    queue_size: Option<u32>,
    poll_ms: Option<u64>,
    heartbeat_s: Option<u64>,
}

/// Reads the rest of a `[[device]]` whose protocol is `opcua`; `name` was read already.
pub(crate) fn read_opcua_device(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    name: Option<(&str, Span)>,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Option<Device> {
    let endpoint = t
        .text(cx, "endpoint")
        .and_then(|url, span| check_endpoint(cx, span, url));
    let endpoint = t.require(
        cx,
        "endpoint",
        endpoint,
        "endpoint = \"opc.tcp://10.0.0.5:4840\"",
    );
    let policy =
        t.string(cx, "security_policy")
            .and_then(|s, span| match s.parse::<SecurityPolicy>() {
                Ok(p) => Some(p),
                Err(e) => {
                    cx.error(span, e.to_string(), None);
                    None
                }
            });
    let mode = t
        .string(cx, "security_mode")
        .and_then(|s, span| match s.parse::<SecurityMode>() {
            Ok(m) => Some(m),
            Err(e) => {
                cx.error(span, e.to_string(), None);
                None
            }
        });
    let security = read_security(cx, policy, mode);
    let identity = read_identity(cx, t, base_dir, secrets);
    let session_timeout_ms: Option<u64> = t
        .integer(cx, "session_timeout_ms", 10_000..=3_600_000)
        .or(OpcUa::DEFAULT_SESSION_TIMEOUT_MS);
    let timeout_ms: Option<u64> = t
        .integer(cx, "timeout_ms", 100..=600_000)
        .or(OpcUa::DEFAULT_TIMEOUT_MS);
    let keep_alive_ms: Option<u64> = t
        .integer(cx, "keep_alive_ms", 500..=600_000)
        .or(OpcUa::DEFAULT_KEEP_ALIVE_MS);
    let trust_on_first_use = t.boolean(cx, "trust_on_first_use").or(false);
    let max_nodes_per_read: Option<u32> = t.integer(cx, "max_nodes_per_read", 0..=100_000).or(0);
    let (backoff_min, backoff_max) = read_backoff(
        cx,
        t,
        ("backoff_min_ms", Device::DEFAULT_BACKOFF_MIN_MS),
        ("backoff_max_ms", Device::DEFAULT_BACKOFF_MAX_MS),
    );

    let defaults = TagDefaults {
        mode: t.choice(cx, "mode", &MODES, &[]).or(Mode::Subscription),
        publishing_ms: t
            .integer(cx, "publishing_interval_ms", INTERVAL_RANGE)
            .or(OpcUa::DEFAULT_PUBLISHING_INTERVAL_MS),
        sampling_ms: t
            .integer::<u64>(cx, "sampling_interval_ms", 0..=86_400_000)
            .optional()
            .map(|v| v.map(|(ms, _)| ms)),
        queue_size: t
            .integer(cx, "queue_size", 1..=10_000)
            .or(OpcUa::DEFAULT_QUEUE_SIZE),
        poll_ms: t
            .integer(cx, "poll_interval_ms", INTERVAL_RANGE)
            .or(OpcUa::DEFAULT_POLL_INTERVAL_MS),
        heartbeat_s: t.integer(cx, "heartbeat_s", 0..=86_400).or(0),
    };
    let tags = read_tags(cx, t, &defaults, name.as_ref().map(|(n, _)| *n));

    let (security_policy, security_mode) = security?;
    let (identity, password_file) = identity?;
    let poll_ms = defaults.poll_ms?;
    let opcua = OpcUa {
        endpoint: endpoint?.0,
        security_policy,
        security_mode,
        identity,
        password_file,
        session_timeout: Duration::from_millis(session_timeout_ms?),
        keep_alive: Duration::from_millis(keep_alive_ms?),
        trust_on_first_use: trust_on_first_use?,
        max_nodes_per_read: max_nodes_per_read?,
    };
    Some(Device {
        name: name?.0.to_owned(),
        protocol: Protocol::OpcUa(Box::new(opcua)),
        poll_interval: Duration::from_millis(poll_ms),
        timeout: Duration::from_millis(timeout_ms?),
        backoff_min: backoff_min?,
        backoff_max: backoff_max?,
        tags: tags?,
    })
}

/// `opc.tcp://host[:port][/path]` with a host, a valid port, and nothing a URL cannot hold.
fn check_endpoint(cx: &mut Diagnostics<'_>, span: &Span, url: &str) -> Option<String> {
    let url = url.trim();
    let hint = Some("write it as in `opc.tcp://10.0.0.5:4840`".to_owned());
    let Some(rest) = url.strip_prefix("opc.tcp://") else {
        let scheme = url.split_once("://").map(|(s, _)| s);
        let message = match scheme {
            Some(s) => format!("the OPC UA endpoint must use opc.tcp://, not {s}://"),
            None => format!("`{url}` is not an OPC UA endpoint url"),
        };
        cx.error(span, message, hint);
        return None;
    };
    if url.chars().any(char::is_whitespace) {
        cx.error(span, "the endpoint url must not contain spaces", hint);
        return None;
    }
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => ("", None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        cx.error(span, "the endpoint url has no host", hint);
        return None;
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            cx.error(
                span,
                format!("`{p}` is not a port number (1 to 65535)"),
                hint,
            );
            return None;
        }
    }
    Some(url.to_owned())
}

fn read_security(
    cx: &mut Diagnostics<'_>,
    policy: Val<SecurityPolicy>,
    mode: Val<SecurityMode>,
) -> Option<(SecurityPolicy, SecurityMode)> {
    match (policy, mode) {
        (Val::Invalid, _) | (_, Val::Invalid) => None,
        (Val::Absent, Val::Absent) => Some((SecurityPolicy::None, SecurityMode::None)),
        (Val::Present(p, _), Val::Absent) => Some((
            p,
            if p == SecurityPolicy::None {
                SecurityMode::None
            } else {
                SecurityMode::SignAndEncrypt
            },
        )),
        (Val::Absent, Val::Present(SecurityMode::None, _)) => {
            Some((SecurityPolicy::None, SecurityMode::None))
        }
        (Val::Absent, Val::Present(m, span)) => {
            cx.error(
                &span,
                format!("security_mode `{m}` needs a `security_policy`"),
                Some("add security_policy = \"Basic256Sha256\"".to_owned()),
            );
            None
        }
        (Val::Present(p, _), Val::Present(m, span)) => {
            if security_is_consistent(p, m) {
                Some((p, m))
            } else if p == SecurityPolicy::None {
                cx.error(
                    &span,
                    format!("security_mode `{m}` needs a security policy other than None"),
                    Some(
                        "set security_policy = \"Basic256Sha256\", or security_mode = \"None\""
                            .to_owned(),
                    ),
                );
                None
            } else {
                cx.error(
                    &span,
                    format!("security_policy `{p}` needs security_mode `Sign` or `SignAndEncrypt`"),
                    Some("use security_mode = \"SignAndEncrypt\", or security_policy = \"None\" for no security".to_owned()),
                );
                None
            }
        }
    }
}

/// Anonymous, a user name with its password, or a user certificate.
/// With the password file of a user-name identity, if the password came from one.
fn read_identity(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Option<(Identity, Option<PathBuf>)> {
    let credentials = read_credentials(cx, t, base_dir, secrets);
    let cert = t.text(cx, "user_cert_file").optional();
    let key = t.text(cx, "user_key_file").optional();
    let (credentials, cert, key) = (credentials?, cert?, key?);
    match (credentials, cert, key) {
        (Some(_), Some((_, span)), _) | (Some(_), _, Some((_, span))) => {
            cx.error(
                &span,
                "give either `username` or a user certificate, not both",
                Some("OPC UA activates a session with one user identity".to_owned()),
            );
            None
        }
        (Some(c), None, None) => match c.password {
            Some(p) => Some((
                Identity::UserName {
                    user: c.username,
                    password: Password::new(p.expose()),
                },
                c.password_file,
            )),
            None => {
                let span = t.value_span("username").unwrap_or_else(|| t.span());
                cx.error(
                    &span,
                    "an OPC UA user name needs its password",
                    Some("add password_env = \"VARIABLE\" or password_file = \"/etc/edge-agent/opcua.pass\"".to_owned()),
                );
                None
            }
        },
        (None, Some((cert, _)), Some((key, _))) => Some((
            Identity::X509 {
                cert: resolve(base_dir, cert),
                key: resolve(base_dir, key),
            },
            None,
        )),
        (None, Some((_, span)), None) => {
            cx.error(
                &span,
                "`user_cert_file` needs `user_key_file`",
                Some("a user certificate is used together with its private key (PEM)".to_owned()),
            );
            None
        }
        (None, None, Some((_, span))) => {
            cx.error(
                &span,
                "`user_key_file` needs `user_cert_file`",
                Some("a private key is used together with its user certificate".to_owned()),
            );
            None
        }
        (None, None, None) => Some((Identity::Anonymous, None)),
    }
}

fn read_tags(
    cx: &mut Diagnostics<'_>,
    device: &mut TableReader<'_, '_>,
    defaults: &TagDefaults,
    device_name: Option<&str>,
) -> Option<Vec<Tag>> {
    let tables = match device.tables(cx, "tag", "[[device.tag]]") {
        Val::Present(tables, _) if !tables.is_empty() => tables,
        Val::Invalid => return None,
        Val::Present(_, span) => {
            cx.error(&span, "a device needs at least one tag", None);
            return None;
        }
        Val::Absent => {
            cx.structural(
                &device.span(),
                "this device has no [[device.tag]]",
                Some("add [[device.tag]] tables after this [[device]], with name and address (a node id such as \"ns=2;s=Filler.Temperature\"); `edge-agent opcua browse` lists them".to_owned()),
            );
            return None;
        }
    };
    let scope = match device_name {
        Some(d) => format!(" in device `{d}`"),
        None => " in this device".to_owned(),
    };
    let mut names = UniqueNames::new("tag name", scope);
    let mut all = Some(Vec::with_capacity(tables.len()));
    for mut t in tables {
        let tag = read_tag(cx, &mut t, defaults, &mut names);
        t.finish(cx);
        match (tag, all.as_mut()) {
            (Some(tag), Some(all)) => all.push(tag),
            _ => all = None,
        }
    }
    all
}

fn read_tag(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    defaults: &TagDefaults,
    names: &mut UniqueNames,
) -> Option<Tag> {
    let name = t.string(cx, "name");
    let name = t
        .require(cx, "name", name, "name = \"temperature\"")
        .filter(|(name, span)| {
            check_name(cx, span, "tag name", name, Underscore::Reserved)
                && names.insert(cx, span, name)
        });
    let node = t
        .string(cx, "address")
        .and_then(|s, span| match s.parse::<NodeAddress>() {
            Ok(n) => Some(n),
            Err(e) => {
                cx.error(
                    span,
                    e.to_string(),
                    Some(
                        "`edge-agent opcua browse ENDPOINT` prints the node ids of a server"
                            .to_owned(),
                    ),
                );
                None
            }
        });
    let node = t.require(
        cx,
        "address",
        node,
        "address = \"ns=2;s=Filler.Temperature\"",
    );
    let data_type = t
        .string(cx, "type")
        .and_then(|s, span| match s.trim().parse::<DataType>() {
            Ok(dt) => Some(dt),
            Err(e) => {
                cx.error(span, e.to_string(), None);
                None
            }
        });
    let scale = t.number(cx, "scale").and_then(|v, span| {
        if v.is_finite() && v != 0.0 {
            Some(v)
        } else {
            cx.error(span, "`scale` must be a finite number other than 0", None);
            None
        }
    });
    let offset = t.number(cx, "offset").and_then(|v, span| {
        if v.is_finite() {
            Some(v)
        } else {
            cx.error(span, "`offset` must be a finite number", None);
            None
        }
    });
    let unit = t.text(cx, "unit");
    let writable = t.boolean(cx, "writable");
    let mode = t.choice(cx, "mode", &MODES, &[]);
    let publishing_ms = t.integer::<u64>(cx, "publishing_interval_ms", INTERVAL_RANGE);
    let sampling_ms = t.integer::<u64>(cx, "sampling_interval_ms", 0..=86_400_000);
    let queue_size = t.integer::<u32>(cx, "queue_size", 1..=10_000);
    let deadband = t.number(cx, "deadband").and_then(|v, span| {
        if v.is_finite() && v >= 0.0 {
            Some(v)
        } else {
            cx.error(span, "`deadband` must be a finite number, 0 or more", None);
            None
        }
    });
    let deadband_percent = t.number(cx, "deadband_percent").and_then(|v, span| {
        if v.is_finite() && (0.0..=100.0).contains(&v) {
            Some(v)
        } else {
            cx.error(span, "`deadband_percent` must be from 0 to 100", None);
            None
        }
    });
    let poll_ms = t.integer::<u64>(cx, "poll_interval_ms", INTERVAL_RANGE);
    let heartbeat_s = t.integer::<u64>(cx, "heartbeat_s", 0..=86_400);

    let mode = match mode {
        Val::Present(m, _) => Some(m),
        Val::Invalid => None,
        Val::Absent => defaults.mode,
    };
    let mut consistent = true;
    // Keys of the other mode are mistakes: they would silently do nothing.
    if let Some(m) = mode {
        let (wrong, this, other): (Vec<(&str, Option<Span>)>, &str, &str) = match m {
            Mode::Subscription => (
                vec![
                    ("poll_interval_ms", poll_ms.span()),
                    ("heartbeat_s", heartbeat_s.span()),
                ],
                "subscription",
                "polling",
            ),
            Mode::Polling => (
                vec![
                    ("publishing_interval_ms", publishing_ms.span()),
                    ("sampling_interval_ms", sampling_ms.span()),
                    ("queue_size", queue_size.span()),
                    ("deadband_percent", deadband_percent.span()),
                ],
                "polling",
                "subscription",
            ),
        };
        for (key, span) in wrong {
            if let Some(span) = span {
                cx.error(
                    &span,
                    format!("`{key}` applies to {other} tags, and this tag's mode is {this}"),
                    Some(format!(
                        "remove `{key}`, or set mode = \"{other}\" on this tag"
                    )),
                );
                consistent = false;
            }
        }
    }
    if let (Some((_, _)), Some((_, span))) = (deadband.present(), deadband_percent.present()) {
        cx.error(
            span,
            "give either `deadband` (absolute) or `deadband_percent`, not both",
            None,
        );
        consistent = false;
    }
    if let Some(dt) = data_type.present().map(|(dt, _)| *dt) {
        if !dt.is_numeric() {
            for (key, val) in [("scale", &scale), ("offset", &offset)] {
                if let Some((_, span)) = val.present() {
                    cx.error(
                        span,
                        format!("`{key}` only applies to numeric types, not to {dt}"),
                        Some(format!("remove `{key}` from this tag")),
                    );
                    consistent = false;
                }
            }
            for val in [&deadband, &deadband_percent] {
                if let Some((&d, span)) = val.present() {
                    if d != 0.0 {
                        cx.error(
                            span,
                            format!("a deadband of {d} only applies to numeric types, not to {dt}"),
                            None,
                        );
                        consistent = false;
                    }
                }
            }
        }
    }
    let data_type = data_type.optional()?.map(|(dt, _)| dt);
    let scale = scale.or(1.0)?;
    let offset = offset.or(0.0)?;
    let unit = unit.optional()?.map(|(u, _)| u.to_owned());
    let writable = writable.or(false)?;
    let deadband = deadband.optional()?.map(|(d, _)| d);
    let deadband_percent = deadband_percent.optional()?.map(|(d, _)| d);
    let mode = match mode? {
        Mode::Subscription => {
            let publishing = match publishing_ms {
                Val::Present(ms, _) => ms,
                Val::Invalid => return None,
                Val::Absent => defaults.publishing_ms?,
            };
            let sampling = match sampling_ms {
                Val::Present(ms, _) => ms,
                Val::Invalid => return None,
                Val::Absent => defaults.sampling_ms?.unwrap_or(publishing),
            };
            let queue_size = match queue_size {
                Val::Present(n, _) => n,
                Val::Invalid => return None,
                Val::Absent => defaults.queue_size?,
            };
            TagMode::Subscription {
                publishing_interval: Duration::from_millis(publishing),
                sampling_interval: Duration::from_millis(sampling),
                queue_size,
                deadband: match (deadband, deadband_percent) {
                    (Some(d), _) => Deadband::Absolute(d),
                    (None, Some(p)) => Deadband::Percent(p),
                    (None, None) => Deadband::None,
                },
            }
        }
        Mode::Polling => {
            let interval = match poll_ms {
                Val::Present(ms, _) => ms,
                Val::Invalid => return None,
                Val::Absent => defaults.poll_ms?,
            };
            let heartbeat = match heartbeat_s {
                Val::Present(s, _) => Some(s),
                Val::Invalid => return None,
                Val::Absent if deadband.is_some() => Some(defaults.heartbeat_s?),
                Val::Absent => None,
            };
            TagMode::Polling {
                interval: Duration::from_millis(interval),
                deadband,
                heartbeat: heartbeat.filter(|&s| s > 0).map(Duration::from_secs),
            }
        }
    };
    if !consistent {
        return None;
    }
    Some(Tag {
        name: name?.0.to_owned(),
        address: TagAddress::OpcUa(OpcUaTag {
            node: node?.0,
            data_type,
            mode,
        }),
        scale,
        offset,
        unit,
        writable,
    })
}
