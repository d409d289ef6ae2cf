//! `edge-agent modbus read|write`: the commissioning probe. Reads or writes one address of one
//! device over Modbus TCP, RTU over TCP or a serial port, before any config exists, and shows
//! the raw registers decoded as a chosen type and byte order, or in every byte order side by
//! side, which is how a technician finds the order a meter really uses.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use edge_driver::{ReportRule, Scaling};
use edge_modbus::bus::{spawn_serial_bus, Parity, SerialSettings};
use edge_modbus::codec::{decode_registers, register_count};
use edge_modbus::link::{Link, Transport};
use edge_modbus::poller::TagSpec;
use edge_modbus::rtu::{Op, Reply};
use edge_modbus::write::{prepare_write, WriteOp};
use edge_modbus::{Address, ByteOrder};
use edge_model::{DataType, TagName, Value};
use tokio::sync::watch;

/// Where the device is: exactly one of `--tcp`, `--rtu-tcp`, `--serial`.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Modbus TCP device, HOST:PORT.
    #[arg(long, group = "target")]
    pub tcp: Option<String>,
    /// RTU device behind a serial device server, HOST:PORT.
    #[arg(long, group = "target")]
    pub rtu_tcp: Option<String>,
    /// RTU device on a serial port, e.g. /dev/ttyUSB0.
    #[arg(long, group = "target")]
    pub serial: Option<String>,
    /// Serial speed.
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Serial parity: none, even or odd.
    #[arg(long, default_value = "none")]
    pub parity: String,
    /// Serial data bits (7 or 8).
    #[arg(long, default_value_t = 8)]
    pub data_bits: u8,
    /// Serial stop bits (1 or 2).
    #[arg(long, default_value_t = 1)]
    pub stop_bits: u8,
    /// Unit (slave) id.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// How long to wait for the answer.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ReadArgs {
    #[command(flatten)]
    pub target: Target,
    /// Area and address, as in the config: hr:100, ir:7, coil:3, di:0.
    #[arg(long)]
    pub address: String,
    /// Registers or bits to read; by default as many as the type needs, else 1.
    #[arg(long)]
    pub count: Option<u16>,
    /// Decode as this type (bool, i16, u16, i32, u32, i64, u64, f32, f64, string:N).
    #[arg(long = "type")]
    pub data_type: Option<String>,
    /// Byte order for the decoded value: ABCD, CDAB, BADC, DCBA.
    #[arg(long, default_value = "ABCD")]
    pub byte_order: String,
    /// Show 32- and 64-bit values in every byte order side by side.
    #[arg(long)]
    pub all_orders: bool,
}

#[derive(Args, Debug, Clone)]
pub struct WriteArgs {
    #[command(flatten)]
    pub target: Target,
    /// Area and address: hr:100, coil:3 (only coils and holding registers are writable).
    #[arg(long)]
    pub address: String,
    /// The value's type.
    #[arg(long = "type", default_value = "u16")]
    pub data_type: String,
    /// Byte order of a multi-register value.
    #[arg(long, default_value = "ABCD")]
    pub byte_order: String,
    /// The value to write.
    #[arg(long)]
    pub value: String,
}

/// Runs `modbus read`, returning the text to print.
pub async fn read(args: &ReadArgs) -> anyhow::Result<String> {
    let address: Address = args.address.parse().context("--address")?;
    let order: ByteOrder = args
        .byte_order
        .parse()
        .map_err(|e| anyhow::anyhow!("--byte-order: {e}"))?;
    let data_type: Option<DataType> = args
        .data_type
        .as_deref()
        .map(|t| t.parse().map_err(|e| anyhow::anyhow!("--type: {e}")))
        .transpose()?;
    let count = args
        .count
        .unwrap_or_else(|| match (address.area.is_bits(), data_type) {
            (false, Some(dt)) => register_count(dt),
            (false, None) if args.all_orders => 2,
            _ => 1,
        });
    let op = Op::Read {
        area: address.area,
        start: address.offset,
        count,
    };
    let reply = call(&args.target, &op).await?;
    let mut out = String::new();
    match reply {
        Reply::Bits(bits) => {
            for (i, b) in bits.iter().take(count as usize).enumerate() {
                writeln!(
                    out,
                    "{}:{}  {}",
                    address.area.prefix(),
                    address.offset as usize + i,
                    u8::from(*b)
                )?;
            }
        }
        Reply::Registers(regs) => {
            let regs: Vec<u16> = regs.into_iter().take(count as usize).collect();
            for (i, r) in regs.iter().enumerate() {
                writeln!(
                    out,
                    "{}:{}  0x{r:04X}  {r:>5}  {:>6}",
                    address.area.prefix(),
                    address.offset as usize + i,
                    *r as i16
                )?;
            }
            if args.all_orders {
                out.push_str(&all_orders(&regs, data_type));
            } else if let Some(dt) = data_type {
                let need = register_count(dt) as usize;
                let v = regs
                    .get(..need)
                    .context("fewer registers than the type needs")
                    .and_then(|s| {
                        decode_registers(dt, order, address.bit, s)
                            .map_err(|e| anyhow::anyhow!("{e}"))
                    })?;
                writeln!(out, "{dt} {order:?}: {}", show(&v))?;
            }
        }
        Reply::Written => bail!("the device answered a read without data"),
    }
    Ok(out)
}

/// The value of `regs` in every byte order, for the 32- or 64-bit types their length fits.
pub fn all_orders(regs: &[u16], data_type: Option<DataType>) -> String {
    let types: Vec<DataType> = match data_type {
        Some(t) => vec![t],
        None if regs.len() >= 4 => vec![DataType::U64, DataType::I64, DataType::F64],
        None => vec![DataType::U32, DataType::I32, DataType::F32],
    };
    let orders = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>24} {:>24} {:>24} {:>24}",
        "type", "ABCD", "CDAB", "BADC", "DCBA"
    );
    for dt in types {
        let need = register_count(dt) as usize;
        let _ = write!(out, "{:<6}", dt.to_string());
        for order in orders {
            let cell = match regs.get(..need) {
                Some(s) => match decode_registers(dt, order, None, s) {
                    Ok(v) => show(&v),
                    Err(e) => format!("({e})"),
                },
                None => "(too few registers)".to_owned(),
            };
            let _ = write!(out, " {cell:>24}");
        }
        out.push('\n');
    }
    out
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::F32(f) => format!("{f}"),
        Value::F64(f) => format!("{f}"),
        other => other
            .as_f64()
            .map(|f| format!("{f}"))
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

/// Runs `modbus write`, returning the text to print.
pub async fn write(args: &WriteArgs) -> anyhow::Result<String> {
    let address: Address = args.address.parse().context("--address")?;
    let order: ByteOrder = args
        .byte_order
        .parse()
        .map_err(|e| anyhow::anyhow!("--byte-order: {e}"))?;
    let dt: DataType = args
        .data_type
        .parse()
        .map_err(|e| anyhow::anyhow!("--type: {e}"))?;
    let value = parse_value(dt, &args.value)?;
    let tag = TagSpec {
        name: TagName("probe".into()),
        address,
        data_type: dt,
        byte_order: order,
        scaling: Scaling::IDENTITY,
        report: ReportRule {
            deadband: None,
            heartbeat: None,
        },
        interval: Duration::from_secs(1),
        writable: true,
    };
    let ops = match prepare_write(&tag, &value).map_err(|e| anyhow::anyhow!("{e}"))? {
        WriteOp::Coil { address, on } => vec![Op::WriteCoil { address, on }],
        WriteOp::Registers { address, words } if words.len() == 1 => vec![Op::WriteRegister {
            address,
            value: words[0],
        }],
        WriteOp::Registers { address, words } => vec![Op::WriteRegisters { address, words }],
        WriteOp::RegisterBit { .. } => {
            bail!("writing one bit of a register is done by the agent for a configured tag; write the whole register here")
        }
    };
    let mut out = String::new();
    for op in &ops {
        call(&args.target, op).await?;
        writeln!(out, "ok: {}", op.describe())?;
    }
    Ok(out)
}

fn parse_value(dt: DataType, s: &str) -> anyhow::Result<Value> {
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("--value `{s}` is not a {dt}: {e}");
    Ok(match dt {
        DataType::Bool => match s {
            "true" | "1" | "on" => Value::Bool(true),
            "false" | "0" | "off" => Value::Bool(false),
            _ => bail!("--value `{s}` is not a bool (true/false, 1/0, on/off)"),
        },
        DataType::I16 => Value::I16(s.parse().map_err(|e| bad(&e))?),
        DataType::U16 => Value::U16(s.parse().map_err(|e| bad(&e))?),
        DataType::I32 => Value::I32(s.parse().map_err(|e| bad(&e))?),
        DataType::U32 => Value::U32(s.parse().map_err(|e| bad(&e))?),
        DataType::I64 => Value::I64(s.parse().map_err(|e| bad(&e))?),
        DataType::U64 => Value::U64(s.parse().map_err(|e| bad(&e))?),
        DataType::F32 => Value::F32(s.parse().map_err(|e| bad(&e))?),
        DataType::F64 => Value::F64(s.parse().map_err(|e| bad(&e))?),
        DataType::String(_) => Value::String(s.to_owned()),
    })
}

/// Runs one request against the target.
async fn call(target: &Target, op: &Op) -> anyhow::Result<Reply> {
    let limit = Duration::from_millis(target.timeout_ms.max(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (transport, host, port, bus_task) = match (&target.tcp, &target.rtu_tcp, &target.serial) {
        (Some(hp), None, None) => {
            let (h, p) = split_host_port(hp)?;
            (Transport::Tcp, h, p, None)
        }
        (None, Some(hp), None) => {
            let (h, p) = split_host_port(hp)?;
            (Transport::RtuOverTcp, h, p, None)
        }
        (None, None, Some(path)) => {
            let parity = match target.parity.as_str() {
                "none" => Parity::None,
                "even" => Parity::Even,
                "odd" => Parity::Odd,
                other => bail!("--parity `{other}`: use none, even or odd"),
            };
            let settings = SerialSettings {
                path: path.clone(),
                baud: target.baud,
                parity,
                data_bits: target.data_bits,
                stop_bits: target.stop_bits,
            };
            // Opened here so a wrong path is reported as such, not as a timeout.
            drop(
                settings
                    .open()
                    .with_context(|| format!("cannot open {path}"))?,
            );
            let (bus, task) = spawn_serial_bus(settings, stop_rx);
            (Transport::Serial(bus), String::new(), 0, Some(task))
        }
        _ => bail!("name the device with exactly one of --tcp, --rtu-tcp or --serial"),
    };
    let result = async {
        let mut link = Link::open(&transport, &host, port, target.unit, limit).await?;
        let r = link.call(op, limit).await;
        link.close(limit).await;
        r
    }
    .await;
    let _ = stop_tx.send(true);
    drop(transport);
    if let Some(t) = bus_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    result.with_context(|| format!("{} to unit {}", op.describe(), target.unit))
}

fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("`{s}`: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("`{s}`: the port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_orders_shows_a_float_in_each_byte_order() {
        // 12.5 as f32 is 0x4148_0000; stored word-swapped (CDAB) by the device.
        let out = all_orders(&[0x0000, 0x4148], Some(DataType::F32));
        let row = out.lines().nth(1).expect("a row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], "f32");
        assert_eq!(cells[2], "12.5", "{out}");
    }

    #[test]
    fn without_a_type_all_orders_shows_the_32_bit_types() {
        let out = all_orders(&[0x0001, 0x0000], None);
        let rows: Vec<&str> = out
            .lines()
            .map(|l| l.split_whitespace().next().unwrap_or(""))
            .collect();
        assert_eq!(rows, vec!["type", "u32", "i32", "f32"]);
        assert!(out
            .lines()
            .nth(1)
            .is_some_and(|r| r.contains("65536") && r.contains(" 1")));
    }

    #[test]
    fn host_and_port_are_split_also_for_ipv6() {
        assert_eq!(
            split_host_port("10.0.0.5:502").ok(),
            Some(("10.0.0.5".into(), 502))
        );
        assert_eq!(
            split_host_port("[fd00::5]:502").ok(),
            Some(("fd00::5".into(), 502))
        );
        assert!(split_host_port("10.0.0.5").is_err());
    }

    #[test]
    fn values_are_parsed_by_type() {
        assert_eq!(
            parse_value(DataType::F32, "12.5").ok(),
            Some(Value::F32(12.5))
        );
        assert_eq!(
            parse_value(DataType::Bool, "on").ok(),
            Some(Value::Bool(true))
        );
        assert!(parse_value(DataType::U16, "-1").is_err());
    }
}
