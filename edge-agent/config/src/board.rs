//! `[board]`: the gateway hardware. Its serial ports (the RS-485 buses `modbus-rtu` devices
//! sit on), the status LED and the digital inputs published as tags, with GPIO lines named by
//! character device and line offset.

use std::time::Duration;

use crate::error::Diagnostics;
use crate::names::{check_name, Underscore, UniqueNames};
use crate::reader::{Span, TableReader, Val};

/// `[board]`: optional; without it the gateway has no serial ports and no board I/O.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Board {
    /// `model` (optional): free text naming the board, shown by `check`.
    pub model: Option<String>,
    /// `[[board.serial]]`: the serial ports, each one bus.
    pub serial: Vec<SerialPort>,
    /// `[board.status_led]` (optional): the LED that shows connected / buffering / fault.
    pub status_led: Option<GpioLine>,
    /// `input_device` (default `"board"`): the device name the digital inputs are published
    /// under, `{root}/{input_device}/{input}`; must not be a `[[device]]` name.
    pub input_device: String,
    /// `[[board.input]]`: digital inputs read as `bool` tags.
    pub inputs: Vec<DigitalInput>,
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialParity {
    None,
    Even,
    Odd,
}

/// `[[board.serial]]`: one serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// `name` (required): how devices refer to the port (`serial = "rs485-1"`).
    pub name: String,
    /// `path` (required): the device file, e.g. `/dev/ttyAMA0`.
    pub path: String,
    /// `baud` (default 9600): 1200 to 921600.
    pub baud: u32,
    /// `parity` (default `"none"`): `none`, `even` or `odd`. The Modbus standard asks for
    /// even parity; many meters ship with none and two stop bits.
    pub parity: SerialParity,
    /// `data_bits` (default 8): 7 or 8.
    pub data_bits: u8,
    /// `stop_bits` (default 1): 1 or 2.
    pub stop_bits: u8,
}

/// A GPIO line on a character device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioLine {
    /// `chip` (required): the GPIO character device, e.g. `/dev/gpiochip0`; `"sim"` for a
    /// simulated line (tests, machines without GPIO).
    pub chip: String,
    /// `line` (required): the line offset on that chip.
    pub line: u32,
    /// `active_low` (default false): the line reads or drives low for "on".
    pub active_low: bool,
}

/// `[[board.input]]`: one digital input, published as a `bool` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigitalInput {
    /// `name` (required): the tag name.
    pub name: String,
    /// `chip`, `line`, `active_low`: see [`GpioLine`].
    pub line: GpioLine,
    /// `poll_interval_ms` (default 100, 10 to 60000).
    pub poll_interval: Duration,
}

pub(crate) fn read_board(
    cx: &mut Diagnostics<'_>,
    root: &mut TableReader<'_, '_>,
) -> Option<Board> {
    let mut t = match root.table(cx, "board") {
        Val::Present(t, _) => t,
        Val::Absent => {
            return Some(Board {
                input_device: "board".to_owned(),
                ..Board::default()
            })
        }
        Val::Invalid => return None,
    };
    let model = t.text(cx, "model").optional();
    let input_device = t.string(cx, "input_device").and_then(|n, span| {
        check_name(cx, span, "input device name", n, Underscore::Reserved).then(|| n.to_owned())
    });
    let serial = match t.tables(cx, "serial", "[[board.serial]]") {
        Val::Present(tables, _) => {
            let mut names = UniqueNames::new("serial port name", "");
            let mut out = Some(Vec::new());
            for mut s in tables {
                let port = read_serial(cx, &mut s, &mut names);
                s.finish(cx);
                match (port, out.as_mut()) {
                    (Some(p), Some(o)) => o.push(p),
                    _ => out = None,
                }
            }
            out
        }
        Val::Absent => Some(Vec::new()),
        Val::Invalid => None,
    };
    let status_led = match t.table_named(cx, "status_led", "[board.status_led]") {
        Val::Present(mut l, _) => {
            let line = read_line(cx, &mut l);
            l.finish(cx);
            line.map(Some)
        }
        Val::Absent => Some(None),
        Val::Invalid => None,
    };
    let inputs = match t.tables(cx, "input", "[[board.input]]") {
        Val::Present(tables, _) => {
            let mut names = UniqueNames::new("input name", "");
            let mut out = Some(Vec::new());
            for mut i in tables {
                let input = read_input(cx, &mut i, &mut names);
                i.finish(cx);
                match (input, out.as_mut()) {
                    (Some(p), Some(o)) => o.push(p),
                    _ => out = None,
                }
            }
            out
        }
        Val::Absent => Some(Vec::new()),
        Val::Invalid => None,
    };
    t.finish(cx);
    Some(Board {
        model: model?.map(|(m, _)| m.to_owned()),
        serial: serial?,
        status_led: status_led?,
        input_device: input_device.or("board".to_owned())?,
        inputs: inputs?,
    })
}

fn read_serial(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    names: &mut UniqueNames,
) -> Option<SerialPort> {
    let name = t.string(cx, "name");
    let name = t
        .require(cx, "name", name, "name = \"rs485-1\"")
        .filter(|(n, span)| {
            check_name(cx, span, "serial port name", n, Underscore::Reserved)
                && names.insert(cx, span, n)
        });
    let path = t
        .text(cx, "path")
        .and_then(|p, span| check_path(cx, span, p));
    let path = t.require(cx, "path", path, "path = \"/dev/ttyAMA0\"");
    let baud: Option<u32> = t.integer(cx, "baud", 1200..=921_600).or(9600);
    let parity = t
        .choice(
            cx,
            "parity",
            &[
                ("none", SerialParity::None),
                ("even", SerialParity::Even),
                ("odd", SerialParity::Odd),
            ],
            &[],
        )
        .or(SerialParity::None);
    let data_bits: Option<u8> = t.integer(cx, "data_bits", 7..=8).or(8);
    let stop_bits: Option<u8> = t.integer(cx, "stop_bits", 1..=2).or(1);
    Some(SerialPort {
        name: name?.0.to_owned(),
        path: path?.0,
        baud: baud?,
        parity: parity?,
        data_bits: data_bits?,
        stop_bits: stop_bits?,
    })
}

fn check_path(cx: &mut Diagnostics<'_>, span: &Span, path: &str) -> Option<String> {
    if !path.starts_with("/dev/") {
        cx.error(
            span,
            format!("`{path}` is not a device path"),
            Some("serial ports are device files such as /dev/ttyS1 or /dev/ttyAMA0".to_owned()),
        );
        return None;
    }
    Some(path.to_owned())
}

fn read_line(cx: &mut Diagnostics<'_>, t: &mut TableReader<'_, '_>) -> Option<GpioLine> {
    let chip = t.text(cx, "chip").and_then(|c, span| {
        if c == "sim" || c.starts_with("/dev/gpiochip") {
            Some(c.to_owned())
        } else {
            cx.error(
                span,
                format!("`{c}` is not a GPIO character device"),
                Some(
                    "use /dev/gpiochipN (see `gpiodetect`), or \"sim\" for a simulated line"
                        .to_owned(),
                ),
            );
            None
        }
    });
    let chip = t.require(cx, "chip", chip, "chip = \"/dev/gpiochip0\"");
    let line: Val<u32> = t.integer(cx, "line", 0..=1023);
    let line = t.require(cx, "line", line, "line = 17");
    let active_low = t.boolean(cx, "active_low").or(false);
    Some(GpioLine {
        chip: chip?.0,
        line: line?.0,
        active_low: active_low?,
    })
}

fn read_input(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    names: &mut UniqueNames,
) -> Option<DigitalInput> {
    let name = t.string(cx, "name");
    let name = t
        .require(cx, "name", name, "name = \"part_present\"")
        .filter(|(n, span)| {
            check_name(cx, span, "input name", n, Underscore::Reserved) && names.insert(cx, span, n)
        });
    let line = read_line(cx, t);
    let poll: Option<u64> = t.integer(cx, "poll_interval_ms", 10..=60_000).or(100);
    Some(DigitalInput {
        name: name?.0.to_owned(),
        line: line?,
        poll_interval: Duration::from_millis(poll?),
    })
}
