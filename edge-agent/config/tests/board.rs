//! `[board]` and the serial protocols: ports, status LED and digital inputs are read with their
//! defaults, `modbus-rtu` devices must name a declared port, and every mistake is positioned.

use std::path::Path;

use edge_config::{parse, ConfigError, ConfigErrors, ModbusLink, SecretSource, SerialParity};

const FILE: &str = "/etc/edge-agent/board.toml";

struct NoSecrets;
impl SecretSource for NoSecrets {
    fn env(&self, _: &str) -> Option<String> {
        None
    }
    fn file(&self, _: &Path) -> std::io::Result<String> {
        Err(std::io::Error::other("no files"))
    }
}

const HEAD: &str = r#"[gateway]
id = "gw-1"
data_dir = "/var/lib/edge-agent"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "mqtt://127.0.0.1"
"#;

fn errors(src: &str) -> Vec<ConfigError> {
    match parse(src, Path::new(FILE), &NoSecrets) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(ConfigErrors(e)) => e,
    }
}

const BOARD: &str = r#"
[board]
model = "Revolution Pi Connect"
input_device = "io"

[[board.serial]]
name = "rs485-1"
path = "/dev/ttyRS485"
baud = 19200
parity = "even"

[board.status_led]
chip = "/dev/gpiochip0"
line = 17
active_low = true

[[board.input]]
name = "part_present"
chip = "sim"
line = 3
"#;

const METER: &str = r#"
[[device]]
name = "meter1"
protocol = "modbus-rtu"
serial = "rs485-1"
unit_id = 7
  [[device.tag]]
  name = "power"
  address = "ir:0"
  type = "f32"
"#;

#[test]
fn a_board_with_a_serial_port_led_and_input_is_read_with_its_defaults() {
    let src = format!("{HEAD}{BOARD}{METER}");
    let c = parse(&src, Path::new(FILE), &NoSecrets).expect("valid");
    assert_eq!(c.board.model.as_deref(), Some("Revolution Pi Connect"));
    let port = &c.board.serial[0];
    assert_eq!(
        (
            port.path.as_str(),
            port.baud,
            port.parity,
            port.data_bits,
            port.stop_bits
        ),
        ("/dev/ttyRS485", 19200, SerialParity::Even, 8, 1)
    );
    let led = c.board.status_led.as_ref().expect("led");
    assert_eq!((led.line, led.active_low), (17, true));
    assert_eq!(c.board.inputs[0].name, "part_present");
    assert_eq!(c.board.inputs[0].poll_interval.as_millis(), 100);
    assert_eq!(c.board.input_device, "io");
    let modbus = c.devices[0].protocol.modbus().expect("a Modbus device");
    assert_eq!(
        modbus.link,
        ModbusLink::Rtu {
            serial: "rs485-1".into(),
        }
    );
    assert_eq!(modbus.unit_id, 7);
    assert_eq!(c.devices[0].protocol.as_str(), "modbus-rtu");
}

#[test]
fn an_rtu_device_on_an_undeclared_port_is_an_error_at_its_serial_key() {
    let src = format!("{HEAD}{}", METER);
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
    assert_eq!(e[0].message, "no [[board.serial]] named `rs485-1`");
    assert_eq!(e[0].line, HEAD.lines().count() + 5);
}

#[test]
fn serial_settings_out_of_range_are_each_reported() {
    let src = format!(
        "{HEAD}\n[board]\n[[board.serial]]\nname = \"a\"\npath = \"ttyS1\"\nbaud = 50\nparity = \"mark\"\nstop_bits = 3\n{METER}"
    );
    let e = errors(&src);
    let messages: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("not a device path")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.contains("baud")), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.contains("parity")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("stop_bits")),
        "{messages:?}"
    );
}

#[test]
fn an_rtu_over_tcp_device_needs_a_host() {
    let src = format!(
        "{HEAD}\n[[device]]\nname = \"m\"\nprotocol = \"modbus-rtu-tcp\"\nunit_id = 3\n  [[device.tag]]\n  name = \"t\"\n  address = \"hr:0\"\n  type = \"u16\"\n"
    );
    let e = errors(&src);
    assert!(
        e.iter().any(|e| e.message.contains("missing `host`")),
        "{}",
        ConfigErrors(e.clone())
    );
}

#[test]
fn a_gpio_line_must_be_on_a_character_device() {
    let src = format!(
        "{HEAD}\n[board]\n[board.status_led]\nchip = \"/sys/class/gpio\"\nline = 4\n{METER}"
    );
    let e = errors(&src);
    assert!(e
        .iter()
        .any(|e| e.message.contains("not a GPIO character device")));
}
