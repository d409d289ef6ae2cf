//! `[[device]]` (one PLC: protocol, connection, polling, read-merging limits) and its
//! `[[device.tag]]`s, with the checks that keep a tag readable: its type fits its area, its
//! registers fit in the address space and in one request.

use std::path::Path;
use std::time::Duration;

use edge_modbus::{Address, Area, ByteOrder};
use edge_model::DataType;

use crate::broker_url::is_host_name;
use crate::error::Diagnostics;
use crate::names::{check_name, Underscore, UniqueNames};
use crate::northbound::read_backoff;
use crate::opcua::{OpcUa, OpcUaTag};
use crate::reader::{Span, TableReader, Val};
use crate::secret::SecretSource;

/// `[[device]]`: one PLC, whatever its protocol: how to reach it, and its one list of tags.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// `name` (required): unique among the devices, letters, digits, `-` and `_`, not
    /// starting with `_`. It is a topic level: `{root}/{device}/{tag}`.
    pub name: String,
    /// `protocol` (required) and its connection settings: `"modbus-tcp"`, `"modbus-rtu"` and
    /// `"modbus-rtu-tcp"` take the keys of [`Modbus`], `"opcua"` those of [`OpcUa`].
    pub protocol: Protocol,
    /// `poll_interval_ms` (10 to 86,400,000, default 1000): how often the device's polled
    /// tags are read; a tag may set its own.
    pub poll_interval: Duration,
    /// `timeout_ms` (Modbus 10 to 60,000, default 1000; OPC UA 100 to 600,000, default
    /// 5000): how long one request may wait for its answer. After a Modbus timeout the
    /// connection is re-established.
    pub timeout: Duration,
    /// `backoff_min_ms` (default 500): the first wait before reconnecting to an unreachable
    /// device; it doubles with each failure, with jitter, up to `backoff_max_ms` (default
    /// 30000). Both 10 to 3,600,000, min not above max. Meanwhile its tags read `bad`.
    pub backoff_min: Duration,
    /// See `backoff_min`.
    pub backoff_max: Duration,
    /// The device's `[[device.tag]]`s, at least one, in file order, whatever the protocol.
    pub tags: Vec<Tag>,
}

/// How to reach a device: the part of a `[[device]]` that depends on its protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    /// `protocol = "modbus-tcp"`, `"modbus-rtu"` or `"modbus-rtu-tcp"`.
    Modbus(Modbus),
    /// `protocol = "opcua"`: an OPC UA server.
    OpcUa(Box<OpcUa>),
}

/// A Modbus device: its link, its unit, and how its reads are merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Modbus {
    /// How frames reach the device.
    pub link: ModbusLink,
    /// `unit_id` (TCP 0 to 255, RTU 1 to 247, default 1): the Modbus unit (slave) id; behind
    /// a TCP-to-RTU gateway it selects the serial device.
    pub unit_id: u8,
    /// `byte_order` (default `"ABCD"`): the default order of the bytes of multi-register
    /// values: `ABCD` big-endian, `CDAB` word-swapped, `BADC` byte-swapped, `DCBA`
    /// little-endian. A tag may set its own.
    pub byte_order: ByteOrder,
    /// `max_gap` (default 0, below `max_registers`): how many unused registers may be read
    /// and discarded to merge two reads into one request. Raise it to save requests, as long
    /// as the PLC allows reading the registers in between.
    pub max_gap_registers: u16,
    /// `max_gap_bits` (default 0, below `max_bits`): the same for coils and discrete inputs.
    pub max_gap_bits: u16,
    /// `max_registers` (1 to 125, default 125): the largest register read the device accepts
    /// in one request. Some PLCs accept fewer than the protocol's 125.
    pub max_registers: u16,
    /// `max_bits` (1 to 2000, default 2000): the largest coil or discrete-input read.
    pub max_bits: u16,
}

/// The transport of a Modbus device.
#[derive(Debug, Clone, PartialEq)]
pub enum ModbusLink {
    /// `protocol = "modbus-tcp"`: `host` (required, IP address or host name of the PLC or
    /// Modbus gateway) and `port` (default 502).
    Tcp { host: String, port: u16 },
    /// `protocol = "modbus-rtu"`: a slave on a serial bus of the board; `serial` (required)
    /// is the `name` of a `[[board.serial]]` port.
    Rtu { serial: String },
    /// `protocol = "modbus-rtu-tcp"`: RTU frames over TCP to a serial device server at
    /// `host` (required) and `port` (default 502).
    RtuOverTcp { host: String, port: u16 },
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Modbus(m) => match m.link {
                ModbusLink::Tcp { .. } => "modbus-tcp",
                ModbusLink::Rtu { .. } => "modbus-rtu",
                ModbusLink::RtuOverTcp { .. } => "modbus-rtu-tcp",
            },
            Protocol::OpcUa(_) => "opcua",
        }
    }

    /// The Modbus settings; `None` for OPC UA.
    pub fn modbus(&self) -> Option<&Modbus> {
        match self {
            Protocol::Modbus(m) => Some(m),
            Protocol::OpcUa(_) => None,
        }
    }

    /// The OPC UA settings; `None` for Modbus.
    pub fn opcua(&self) -> Option<&OpcUa> {
        match self {
            Protocol::OpcUa(o) => Some(o),
            Protocol::Modbus(_) => None,
        }
    }

    /// The Modbus unit id on whatever transport; 0 for OPC UA, which has none.
    pub fn unit_id(&self) -> u8 {
        self.modbus().map_or(0, |m| m.unit_id)
    }

    /// Where the device is, for logs and `check`.
    pub fn endpoint(&self) -> String {
        match self {
            Protocol::Modbus(m) => match &m.link {
                ModbusLink::Tcp { host, port } | ModbusLink::RtuOverTcp { host, port } => {
                    if host.contains(':') {
                        format!("[{host}]:{port}")
                    } else {
                        format!("{host}:{port}")
                    }
                }
                ModbusLink::Rtu { serial } => format!("serial {serial}"),
            },
            Protocol::OpcUa(o) => o.endpoint.clone(),
        }
    }
}

/// `[[device.tag]]`: one value of a device. What every tag has, whatever its device's
/// protocol, is here; where and how it is read is in its [`TagAddress`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    /// `name` (required): unique within its device, letters, digits, `-` and `_`, not
    /// starting with `_`. The last topic level: `{root}/{device}/{tag}`.
    pub name: String,
    /// `address` (required) and the keys that only apply to the device's protocol.
    pub address: TagAddress,
    /// `scale` (default 1.0; finite, not 0) and `offset` (default 0.0): numeric values are
    /// published as `raw * scale + offset`. Numeric types only.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
    /// `unit` (optional): the engineering unit published with the value, as in `"degC"`.
    pub unit: Option<String>,
    /// `writable` (default false): whether MQTT commands may write this tag. Modbus: only
    /// coils and holding registers can be written. OPC UA: the value is converted to the
    /// variable's own data type, and refused when it does not fit.
    pub writable: bool,
}

/// Where a tag is read: a Modbus register or bit, or an OPC UA node.
#[derive(Debug, Clone, PartialEq)]
pub enum TagAddress {
    Modbus(ModbusTag),
    OpcUa(OpcUaTag),
}

/// The Modbus part of a tag, always polled by the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusTag {
    /// `address`: area and zero-based protocol address, as in `hr:100` (holding register),
    /// `ir:7` (input register), `coil:3`, `di:0` (discrete input) or `hr:100.3` (bit 3 of a
    /// register, type bool).
    pub address: Address,
    /// `type` (required): `bool`, `i16`, `u16`, `i32`, `u32`, `i64`, `u64`, `f32`, `f64` or
    /// `string:N` (N bytes, two per register). Coils and discrete inputs hold only `bool`.
    pub data_type: DataType,
    /// `byte_order` (default: the device's `byte_order`).
    pub byte_order: ByteOrder,
    /// `deadband` (optional, 0 or more): a new value is published only when it differs from
    /// the last published one by more than this (after scaling); 0 publishes every change and
    /// nothing else. Bool and string tags take only 0. Without a deadband every read is
    /// published.
    pub deadband: Option<f64>,
    /// `heartbeat_s` (optional, 0 to 86,400; for tags with a deadband the default is the
    /// device's `heartbeat_s`, itself 0 by default): publish the value at least this often
    /// even when the deadband holds it back. 0 means never.
    pub heartbeat: Option<Duration>,
    /// `poll_interval_ms` (10 to 86,400,000, default: the device's `poll_interval_ms`).
    pub poll_interval: Duration,
}

impl Tag {
    /// The tag's configured type: always known for Modbus; for OPC UA only when the tag sets
    /// `type` (otherwise values keep the server's type).
    pub fn data_type(&self) -> Option<DataType> {
        match &self.address {
            TagAddress::Modbus(m) => Some(m.data_type),
            TagAddress::OpcUa(o) => o.data_type,
        }
    }

    /// The Modbus part; `None` for an OPC UA tag.
    pub fn modbus(&self) -> Option<&ModbusTag> {
        match &self.address {
            TagAddress::Modbus(m) => Some(m),
            TagAddress::OpcUa(_) => None,
        }
    }

    /// The OPC UA part; `None` for a Modbus tag.
    pub fn opcua(&self) -> Option<&OpcUaTag> {
        match &self.address {
            TagAddress::OpcUa(o) => Some(o),
            TagAddress::Modbus(_) => None,
        }
    }

    /// Whether commands may write the tag: `writable`, on an address that can be written.
    pub fn accepts_writes(&self) -> bool {
        self.writable
            && match &self.address {
                TagAddress::Modbus(m) => m.address.area.is_writable(),
                TagAddress::OpcUa(_) => true,
            }
    }

    /// The address as the config writes it: `hr:100` or a node id.
    pub fn address_text(&self) -> String {
        match &self.address {
            TagAddress::Modbus(m) => m.address.to_string(),
            TagAddress::OpcUa(o) => o.node.to_string(),
        }
    }
}

impl Device {
    pub const DEFAULT_PORT: u16 = 502;
    pub const DEFAULT_UNIT_ID: u8 = 1;
    pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
    /// The Modbus protocol's limit for one register read (function codes 0x03 and 0x04).
    pub const MAX_REGISTERS: u16 = 125;
    /// The Modbus protocol's limit for one coil or discrete-input read (0x01, 0x02).
    pub const MAX_BITS: u16 = 2000;
    pub const DEFAULT_BACKOFF_MIN_MS: u64 = 500;
    pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
}

/// How many registers (or bits, in a bit area) a value of `data_type` occupies.
pub(crate) fn register_count(data_type: DataType) -> u32 {
    match data_type {
        DataType::Bool | DataType::I16 | DataType::U16 => 1,
        DataType::I32 | DataType::U32 | DataType::F32 => 2,
        DataType::I64 | DataType::U64 | DataType::F64 => 4,
        DataType::String(n) => u32::from(n).div_ceil(2),
    }
}

const POLL_RANGE: std::ops::RangeInclusive<i64> = 10..=86_400_000;

pub(crate) fn read_devices(
    cx: &mut Diagnostics<'_>,
    root: &mut TableReader<'_, '_>,
    serial_ports: Option<&[String]>,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Option<Vec<Device>> {
    let tables = match root.tables(cx, "device", "[[device]]") {
        Val::Present(tables, span) if tables.is_empty() => {
            cx.error(&span, "at least one [[device]] is required", None);
            return None;
        }
        Val::Present(tables, _) => tables,
        Val::Invalid => return None,
        Val::Absent => {
            cx.structural(
                &root.span(),
                "no [[device]]: the agent has nothing to poll",
                Some("add [[device]] with name, protocol = \"modbus-tcp\" and host, and its [[device.tag]]s".to_owned()),
            );
            return None;
        }
    };
    let mut names = UniqueNames::new("device name", "");
    let mut all = Some(Vec::with_capacity(tables.len()));
    for mut t in tables {
        let device = read_device(cx, &mut t, &mut names, serial_ports, base_dir, secrets);
        t.finish(cx);
        match (device, all.as_mut()) {
            (Some(d), Some(all)) => all.push(d),
            _ => all = None,
        }
    }
    all
}

fn read_device(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    names: &mut UniqueNames,
    serial_ports: Option<&[String]>,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Option<Device> {
    let name = t.string(cx, "name");
    let name = t
        .require(cx, "name", name, "name = \"filler\"")
        .filter(|(name, span)| {
            check_name(cx, span, "device name", name, Underscore::Reserved)
                && names.insert(cx, span, name)
        });

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Tcp,
        Rtu,
        RtuOverTcp,
        OpcUa,
    }
    let protocol = t.choice(
        cx,
        "protocol",
        &[
            ("modbus-tcp", Kind::Tcp),
            ("modbus-rtu", Kind::Rtu),
            ("modbus-rtu-tcp", Kind::RtuOverTcp),
            ("opcua", Kind::OpcUa),
        ],
        &[],
    );
    let protocol = t.require(cx, "protocol", protocol, "protocol = \"modbus-tcp\"");
    // An OPC UA server has keys of its own; the Modbus keys below would be unknown there.
    if let Some((Kind::OpcUa, _)) = protocol {
        return crate::opcua::read_opcua_device(cx, t, name, base_dir, secrets);
    }
    let host = t
        .text(cx, "host")
        .and_then(|host, span| check_device_host(cx, span, host));
    let port: Option<u16> = t.integer(cx, "port", 1..=65_535).or(Device::DEFAULT_PORT);
    let unit_id: Option<u8> = t
        .integer(cx, "unit_id", 0..=255)
        .or(Device::DEFAULT_UNIT_ID);
    let serial = t.string(cx, "serial");
    let link = match protocol {
        Some((Kind::Rtu, _)) => {
            if let Some((_, span)) = host.present() {
                cx.error(span, "`host` does not apply to a modbus-rtu device", Some("a serial slave is reached through `serial`; use protocol = \"modbus-rtu-tcp\" for a device server".to_owned()));
            }
            let serial = t
                .require(cx, "serial", serial, "serial = \"rs485-1\"")
                .and_then(|(name, span)| {
                    let known = serial_ports.unwrap_or(&[]);
                    if known.iter().any(|k| k == name) {
                        Some(name.to_owned())
                    } else {
                        let hint = if known.is_empty() {
                            "declare the port in [[board.serial]] with name and path".to_owned()
                        } else {
                            format!(
                                "the board's serial ports are {}",
                                known
                                    .iter()
                                    .map(|k| format!("`{k}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        };
                        cx.error(
                            &span,
                            format!("no [[board.serial]] named `{name}`"),
                            Some(hint),
                        );
                        None
                    }
                });
            serial.map(|serial| ModbusLink::Rtu { serial })
        }
        Some((Kind::RtuOverTcp, _)) => {
            let host = t.require(cx, "host", host, "host = \"10.0.0.20\"");
            match (host, port) {
                (Some((host, _)), Some(port)) => Some(ModbusLink::RtuOverTcp { host, port }),
                _ => None,
            }
        }
        Some((Kind::Tcp, _)) => {
            let host = t.require(cx, "host", host, "host = \"10.0.0.5\"");
            match (host, port) {
                (Some((host, _)), Some(port)) => Some(ModbusLink::Tcp { host, port }),
                _ => None,
            }
        }
        Some((Kind::OpcUa, _)) | None => None,
    };

    let poll_ms: Option<u64> = t
        .integer(cx, "poll_interval_ms", POLL_RANGE)
        .or(Device::DEFAULT_POLL_INTERVAL_MS);
    let timeout_ms: Option<u64> = t
        .integer(cx, "timeout_ms", 10..=60_000)
        .or(Device::DEFAULT_TIMEOUT_MS);
    let byte_order = read_byte_order(cx, t).or(ByteOrder::Abcd);
    let max_gap = t.integer::<u16>(cx, "max_gap", 0..=65_535);
    let max_gap_bits = t.integer::<u16>(cx, "max_gap_bits", 0..=65_535);
    let max_registers: Option<u16> = t
        .integer(cx, "max_registers", 1..=i64::from(Device::MAX_REGISTERS))
        .or(Device::MAX_REGISTERS);
    let max_bits: Option<u16> = t
        .integer(cx, "max_bits", 1..=i64::from(Device::MAX_BITS))
        .or(Device::MAX_BITS);
    let max_gap = below(cx, max_gap, "max_gap", max_registers, "max_registers");
    let max_gap_bits = below(cx, max_gap_bits, "max_gap_bits", max_bits, "max_bits");
    let (backoff_min, backoff_max) = read_backoff(
        cx,
        t,
        ("backoff_min_ms", Device::DEFAULT_BACKOFF_MIN_MS),
        ("backoff_max_ms", Device::DEFAULT_BACKOFF_MAX_MS),
    );
    let heartbeat_s: Option<u64> = t.integer(cx, "heartbeat_s", 0..=86_400).or(0);

    let defaults = TagDefaults {
        byte_order,
        poll_ms,
        heartbeat_s,
        max_registers,
        device: name.as_ref().map(|(n, _)| *n),
    };
    let tags = read_tags(cx, t, &defaults);

    Some(Device {
        name: name?.0.to_owned(),
        protocol: Protocol::Modbus(Modbus {
            link: link?,
            unit_id: unit_id?,
            byte_order: byte_order?,
            max_gap_registers: max_gap?,
            max_gap_bits: max_gap_bits?,
            max_registers: max_registers?,
            max_bits: max_bits?,
        }),
        poll_interval: Duration::from_millis(poll_ms?),
        timeout: Duration::from_millis(timeout_ms?),
        backoff_min: backoff_min?,
        backoff_max: backoff_max?,
        tags: tags?,
    })
}

/// A gap must be smaller than the block it sits in, or no merge could ever use it.
fn below(
    cx: &mut Diagnostics<'_>,
    gap: Val<u16>,
    gap_key: &str,
    limit: Option<u16>,
    limit_key: &str,
) -> Option<u16> {
    match (&gap, limit) {
        (Val::Present(g, span), Some(limit)) if *g >= limit => {
            cx.error(
                span,
                format!("`{gap_key}` ({g}) must be smaller than `{limit_key}` ({limit})"),
                Some(format!(
                    "a gap is read inside one request of at most {limit_key}"
                )),
            );
            None
        }
        _ => gap.or(0),
    }
}

fn check_device_host(cx: &mut Diagnostics<'_>, span: &Span, host: &str) -> Option<String> {
    let host = host.trim();
    if let Some((scheme, _)) = host.split_once("://") {
        cx.error(
            span,
            format!("`host` is an address, not a url (`{scheme}://`)"),
            Some("write only the IP address or host name; the port goes in `port`".to_owned()),
        );
        return None;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(bare.to_owned());
    }
    if let Some((h, p)) = host.rsplit_once(':') {
        if p.parse::<u16>().is_ok() {
            cx.error(
                span,
                format!("`host` contains a port (`:{p}`)"),
                Some(format!("write host = \"{h}\" and port = {p}")),
            );
            return None;
        }
    }
    if !is_host_name(host) {
        cx.error(
            span,
            format!("`{host}` is not a valid IP address or host name"),
            None,
        );
        return None;
    }
    Some(host.to_owned())
}

fn read_byte_order(cx: &mut Diagnostics<'_>, t: &mut TableReader<'_, '_>) -> Val<ByteOrder> {
    t.string(cx, "byte_order")
        .and_then(|s, span| match s.parse::<ByteOrder>() {
            Ok(order) => Some(order),
            Err(e) => {
                cx.error(span, e.to_string(), None);
                None
            }
        })
}

/// What a tag takes from its device unless it says otherwise. `None`: the device's own
/// setting was invalid (reported), so tags relying on it cannot be built.
struct TagDefaults<'a> {
    byte_order: Option<ByteOrder>,
    poll_ms: Option<u64>,
    heartbeat_s: Option<u64>,
    max_registers: Option<u16>,
    device: Option<&'a str>,
}

fn read_tags(
    cx: &mut Diagnostics<'_>,
    device: &mut TableReader<'_, '_>,
    defaults: &TagDefaults<'_>,
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
                Some(
                    "add [[device.tag]] tables after this [[device]], with name, address and type"
                        .to_owned(),
                ),
            );
            return None;
        }
    };
    let scope = match defaults.device {
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
    defaults: &TagDefaults<'_>,
    names: &mut UniqueNames,
) -> Option<Tag> {
    let name = t.string(cx, "name");
    let name = t
        .require(cx, "name", name, "name = \"temperature\"")
        .filter(|(name, span)| {
            check_name(cx, span, "tag name", name, Underscore::Reserved)
                && names.insert(cx, span, name)
        });
    let address = t
        .string(cx, "address")
        .and_then(|s, span| match s.parse::<Address>() {
            Ok(a) => Some(a),
            Err(e) => {
                cx.error(span, e.to_string(), None);
                None
            }
        });
    let address = t.require(cx, "address", address, "address = \"hr:100\"");
    let data_type = t
        .string(cx, "type")
        .and_then(|s, span| match s.trim().parse::<DataType>() {
            Ok(dt) => Some(dt),
            Err(e) => {
                cx.error(span, e.to_string(), None);
                None
            }
        });
    let data_type = t.require(cx, "type", data_type, "type = \"f32\"");
    let byte_order = read_byte_order(cx, t);
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
    let deadband = t.number(cx, "deadband").and_then(|v, span| {
        if v.is_finite() && v >= 0.0 {
            Some(v)
        } else {
            cx.error(span, "`deadband` must be a finite number, 0 or more", None);
            None
        }
    });
    let heartbeat_s = t.integer::<u64>(cx, "heartbeat_s", 0..=86_400);
    let writable = t.boolean(cx, "writable");
    let poll_ms = t.integer::<u64>(cx, "poll_interval_ms", POLL_RANGE);

    // Cross-checks between the tag's own keys and its device; each runs only when the values
    // it compares are valid, so a mistake is reported once.
    let mut consistent = true;
    if let (Some((address, address_span)), Some((data_type, type_span))) = (&address, &data_type) {
        consistent &= check_type_fits_address(
            cx,
            address,
            address_span,
            *data_type,
            type_span,
            defaults.max_registers,
        );
    }
    if let Some((data_type, _)) = &data_type {
        if !data_type.is_numeric() {
            for (key, val) in [("scale", &scale), ("offset", &offset)] {
                if let Some((_, span)) = val.present() {
                    cx.error(
                        span,
                        format!("`{key}` only applies to numeric types, not to {data_type}"),
                        Some(format!("remove `{key}` from this tag")),
                    );
                    consistent = false;
                }
            }
            if let Some((&d, span)) = deadband.present() {
                if d != 0.0 {
                    cx.error(
                        span,
                        format!(
                            "a deadband of {d} only applies to numeric types, not to {data_type}"
                        ),
                        Some(
                            "for bool and string tags use deadband = 0: publish on every change"
                                .to_owned(),
                        ),
                    );
                    consistent = false;
                }
            }
        }
    }
    if let (Some((address, _)), Val::Present(true, span)) = (&address, &writable) {
        if !address.area.is_writable() {
            let area = match address.area {
                Area::InputRegister => "input registers",
                _ => "discrete inputs",
            };
            cx.error(
                span,
                format!("`{address}` cannot be written: {area} are read-only"),
                Some("only coils (coil:) and holding registers (hr:) can be writable".to_owned()),
            );
            consistent = false;
        }
    }

    let deadband = deadband.optional()?.map(|(d, _)| d);
    let heartbeat_s = match heartbeat_s.optional()? {
        Some((s, _)) => Some(s),
        None if deadband.is_some() => Some(defaults.heartbeat_s?),
        None => None,
    };
    let byte_order = match byte_order {
        Val::Present(order, _) => order,
        Val::Invalid => return None,
        Val::Absent => defaults.byte_order?,
    };
    let poll_ms = match poll_ms {
        Val::Present(ms, _) => ms,
        Val::Invalid => return None,
        Val::Absent => defaults.poll_ms?,
    };
    if !consistent {
        return None;
    }
    Some(Tag {
        name: name?.0.to_owned(),
        address: TagAddress::Modbus(ModbusTag {
            address: address?.0,
            data_type: data_type?.0,
            byte_order,
            deadband,
            heartbeat: heartbeat_s.filter(|&s| s > 0).map(Duration::from_secs),
            poll_interval: Duration::from_millis(poll_ms),
        }),
        scale: scale.or(1.0)?,
        offset: offset.or(0.0)?,
        unit: unit.optional()?.map(|(u, _)| u.to_owned()),
        writable: writable.or(false)?,
    })
}

/// The type must be one the area can hold, and its registers must exist and fit in one read.
fn check_type_fits_address(
    cx: &mut Diagnostics<'_>,
    address: &Address,
    address_span: &Span,
    data_type: DataType,
    type_span: &Span,
    max_registers: Option<u16>,
) -> bool {
    if address.area.is_bits() {
        if data_type != DataType::Bool {
            let area = match address.area {
                Area::Coil => "a coil",
                _ => "a discrete input",
            };
            cx.error(
                type_span,
                format!("type {data_type} cannot be read from {area}, which holds one bit"),
                Some(format!(
                    "use type = \"bool\", or a register address (hr:{0} or ir:{0}) for a {data_type}",
                    address.offset
                )),
            );
            return false;
        }
        return true;
    }
    if address.bit.is_some() && data_type != DataType::Bool {
        cx.error(
            address_span,
            format!("`{address}` names one bit, but the type is {data_type}"),
            Some(format!(
                "use type = \"bool\" for one bit, or the whole register `{}:{}`",
                address.area, address.offset
            )),
        );
        return false;
    }
    let count = register_count(data_type);
    let last = u32::from(address.offset) + count - 1;
    if last > u32::from(u16::MAX) {
        cx.error(
            address_span,
            format!(
                "a {data_type} at `{address}` needs {count} registers and would end at {}:{last}, past the last address {}:65535",
                address.area, address.area
            ),
            Some(format!(
                "a {data_type} starts at {}:{} at the latest",
                address.area,
                65_536 - count
            )),
        );
        return false;
    }
    if let Some(max) = max_registers {
        if count > u32::from(max) {
            let hint = if max < Device::MAX_REGISTERS {
                format!(
                    "a value is read in one request; raise the device's max_registers (up to {}) or shorten the value",
                    Device::MAX_REGISTERS
                )
            } else {
                format!(
                    "a value is read in one request of at most {} registers, so strings hold at most {} bytes",
                    Device::MAX_REGISTERS,
                    2 * Device::MAX_REGISTERS
                )
            };
            cx.error(
                type_span,
                format!("type {data_type} needs {count} registers, more than this device's max_registers ({max})"),
                Some(hint),
            );
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_counts_follow_the_type_width() {
        assert_eq!(register_count(DataType::Bool), 1);
        assert_eq!(register_count(DataType::U16), 1);
        assert_eq!(register_count(DataType::F32), 2);
        assert_eq!(register_count(DataType::I64), 4);
        assert_eq!(register_count(DataType::String(1)), 1);
        assert_eq!(register_count(DataType::String(2)), 1);
        assert_eq!(register_count(DataType::String(251)), 126);
    }
}
