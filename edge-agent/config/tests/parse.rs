//! Board configs as technicians write them, right and wrong: typed values with their defaults,
//! and every mistake reported at once at its exact line and column.

use mes_bridge::gate::CommandPolicy;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_config::{
    load, parse, Batching, BrokerUrl, Config, ConfigError, ConfigErrors, Credentials, Device,
    Format, Gateway, Modbus, ModbusLink, ModbusTag, MqttVersion, Northbound, Protocol, Secret,
    SecretSource, SparkplugSettings, StoreSettings, Tag, TagAddress, TlsFiles, UnsPath,
};
use edge_modbus::{Address, Area, ByteOrder};
use edge_model::DataType;

/// Secrets from a fixed table instead of the process environment and disk.
#[derive(Default)]
struct FakeSecrets {
    env: HashMap<String, String>,
    files: HashMap<PathBuf, String>,
}

impl FakeSecrets {
    fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    fn with_file(mut self, path: &str, content: &str) -> Self {
        self.files.insert(path.into(), content.into());
        self
    }
}

impl SecretSource for FakeSecrets {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn file(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
    }
}

const FILE: &str = "/etc/edge-agent/board.toml";

fn parse_ok(src: &str) -> Config {
    match parse(src, Path::new(FILE), &FakeSecrets::default()) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn parse_err_with(src: &str, secrets: &dyn SecretSource) -> Vec<ConfigError> {
    match parse(src, Path::new(FILE), secrets) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(ConfigErrors(errors)) => errors,
    }
}

fn parse_err(src: &str) -> Vec<ConfigError> {
    parse_err_with(src, &FakeSecrets::default())
}

/// (line, column, message) of each error, for assertions that read like the output.
fn positions(errors: &[ConfigError]) -> Vec<(usize, usize, &str)> {
    errors
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect()
}

fn only_error(errors: &[ConfigError]) -> &ConfigError {
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}",
        ConfigErrors(errors.to_vec())
    );
    &errors[0]
}

const HEAD: &str = r#"[gateway]
id = "gw-line1"
data_dir = "/var/lib/edge-agent"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "mqtt://127.0.0.1"
"#;

/// A valid config with one device; `tags` is appended inside that device.
fn with_device(device_keys: &str, tags: &str) -> String {
    format!(
        "{HEAD}\n[[device]]\nname = \"filler\"\nprotocol = \"modbus-tcp\"\nhost = \"10.0.0.5\"\n{device_keys}\n{tags}"
    )
}

fn with_tag(tag: &str) -> String {
    with_device("", &format!("[[device.tag]]\n{tag}"))
}

/// The Modbus part of a tag of a Modbus device.
fn modbus_tag(tag: &Tag) -> &ModbusTag {
    tag.modbus().expect("a Modbus tag")
}

#[test]
fn a_full_config_reads_into_typed_values_with_defaults_filled_in() {
    let src = r#"
[gateway]
id = "gw-line1"
data_dir = "/var/lib/edge-agent"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[store]
max_disk_mb = 1024
when_full = "drop-oldest"
commit_interval_ms = 5

[[northbound]]
name = "mes"
url = "mqtts://broker.acme.example"
username = "edge"
password_env = "MES_PW"
ca_file = "certs/ca.pem"
client_cert_file = "/etc/edge-agent/gw.crt"
client_key_file = "/etc/edge-agent/gw.key"
batching = "per-device"
max_inflight = 64
reconnect_max_ms = 10000

[[northbound]]
name = "historian"
url = "mqtt://[fd00::7]:1884"
client_id = "historian-gw1"
topic_root = "acme/historian"

[[device]]
name = "filler"
protocol = "modbus-tcp"
host = "10.0.0.5"
poll_interval_ms = 500
byte_order = "CDAB"
max_gap = 10
heartbeat_s = 120

  [[device.tag]]
  name = "temperature"
  address = "hr:100"
  type = "f32"
  scale = 2
  offset = -1.5
  unit = "degC"
  deadband = 0.5

  [[device.tag]]
  name = "energy"
  address = "ir:7"
  type = "u64"
  byte_order = "DCBA"
  heartbeat_s = 0
  deadband = 1
  poll_interval_ms = 5000

  [[device.tag]]
  name = "running"
  address = "coil:3"
  type = "bool"
  writable = true

  [[device.tag]]
  name = "door_open"
  address = "hr:20.3"
  type = "bool"

  [[device.tag]]
  name = "order"
  address = "hr:30"
  type = "string:16"
  deadband = 0
"#;
    let secrets = FakeSecrets::default().with_env("MES_PW", "s3cret");
    let config = parse(src, Path::new(FILE), &secrets).expect("valid config");

    let ms = Duration::from_millis;
    let expected = Config {
        source: PathBuf::from(FILE),
        gateway: Gateway {
            id: "gw-line1".into(),
            data_dir: "/var/lib/edge-agent".into(),
            uns: UnsPath {
                enterprise: "acme".into(),
                site: "plant1".into(),
                area: "packaging".into(),
                line: "line1".into(),
            },
        },
        store: StoreSettings {
            max_disk_bytes: 1024 * 1024 * 1024,
            commit_interval: ms(5),
            cache_capacity_bytes: 8 * 1024 * 1024,
        },
        northbounds: vec![
            Northbound {
                name: "mes".into(),
                url: BrokerUrl {
                    tls: true,
                    host: "broker.acme.example".into(),
                    port: 8883,
                },
                fallbacks: Vec::new(),
                return_to_preferred: Some(Duration::from_secs(60)),
                replay_records_per_s: None,
                replay_bytes_per_s: None,
                client_id: "edge-gw-line1-mes".into(),
                credentials: Some(Credentials {
                    username: "edge".into(),
                    password: Some(Secret::new("s3cret")),
                    password_file: None,
                }),
                tls: Some(TlsFiles {
                    ca_file: "/etc/edge-agent/certs/ca.pem".into(),
                    client_cert: Some((
                        "/etc/edge-agent/gw.crt".into(),
                        "/etc/edge-agent/gw.key".into(),
                    )),
                }),
                format: Format::UnsJson,
                topic_root: "acme/plant1/packaging/line1".into(),
                batching: Batching::PerDevice,
                max_inflight: 64,
                max_inflight_bytes: 2 << 20,
                keep_alive: Duration::from_secs(30),
                connect_timeout: ms(5000),
                reconnect_min: ms(500),
                reconnect_max: ms(10_000),
                commands: CommandPolicy::default(),
                protocol: MqttVersion::V311,
                session_expiry: Duration::from_secs(300),
            },
            Northbound {
                name: "historian".into(),
                url: BrokerUrl {
                    tls: false,
                    host: "fd00::7".into(),
                    port: 1884,
                },
                fallbacks: Vec::new(),
                return_to_preferred: Some(Duration::from_secs(60)),
                replay_records_per_s: None,
                replay_bytes_per_s: None,
                client_id: "historian-gw1".into(),
                credentials: None,
                tls: None,
                format: Format::UnsJson,
                topic_root: "acme/historian".into(),
                batching: Batching::PerTag,
                max_inflight: 256,
                max_inflight_bytes: 2 << 20,
                keep_alive: Duration::from_secs(30),
                connect_timeout: ms(5000),
                reconnect_min: ms(500),
                reconnect_max: ms(30_000),
                commands: CommandPolicy::default(),
                protocol: MqttVersion::V311,
                session_expiry: Duration::from_secs(300),
            },
        ],
        devices: vec![Device {
            name: "filler".into(),
            protocol: Protocol::Modbus(Modbus {
                link: ModbusLink::Tcp {
                    host: "10.0.0.5".into(),
                    port: 502,
                },
                unit_id: 1,
                byte_order: ByteOrder::Cdab,
                max_gap_registers: 10,
                max_gap_bits: 0,
                max_registers: 125,
                max_bits: 2000,
            }),
            poll_interval: ms(500),
            timeout: ms(1000),
            backoff_min: ms(500),
            backoff_max: ms(30_000),
            tags: vec![
                Tag {
                    name: "temperature".into(),
                    address: TagAddress::Modbus(ModbusTag {
                        address: Address {
                            area: Area::HoldingRegister,
                            offset: 100,
                            bit: None,
                        },
                        data_type: DataType::F32,
                        byte_order: ByteOrder::Cdab,
                        deadband: Some(0.5),
                        heartbeat: Some(Duration::from_secs(120)),
                        poll_interval: ms(500),
                    }),
                    scale: 2.0,
                    offset: -1.5,
                    unit: Some("degC".into()),
                    writable: false,
                },
                Tag {
                    name: "energy".into(),
                    address: TagAddress::Modbus(ModbusTag {
                        address: Address {
                            area: Area::InputRegister,
                            offset: 7,
                            bit: None,
                        },
                        data_type: DataType::U64,
                        byte_order: ByteOrder::Dcba,
                        deadband: Some(1.0),
                        heartbeat: None,
                        poll_interval: ms(5000),
                    }),
                    scale: 1.0,
                    offset: 0.0,
                    unit: None,
                    writable: false,
                },
                Tag {
                    name: "running".into(),
                    address: TagAddress::Modbus(ModbusTag {
                        address: Address {
                            area: Area::Coil,
                            offset: 3,
                            bit: None,
                        },
                        data_type: DataType::Bool,
                        byte_order: ByteOrder::Cdab,
                        deadband: None,
                        heartbeat: None,
                        poll_interval: ms(500),
                    }),
                    scale: 1.0,
                    offset: 0.0,
                    unit: None,
                    writable: true,
                },
                Tag {
                    name: "door_open".into(),
                    address: TagAddress::Modbus(ModbusTag {
                        address: Address {
                            area: Area::HoldingRegister,
                            offset: 20,
                            bit: Some(3),
                        },
                        data_type: DataType::Bool,
                        byte_order: ByteOrder::Cdab,
                        deadband: None,
                        heartbeat: None,
                        poll_interval: ms(500),
                    }),
                    scale: 1.0,
                    offset: 0.0,
                    unit: None,
                    writable: false,
                },
                Tag {
                    name: "order".into(),
                    address: TagAddress::Modbus(ModbusTag {
                        address: Address {
                            area: Area::HoldingRegister,
                            offset: 30,
                            bit: None,
                        },
                        data_type: DataType::String(16),
                        byte_order: ByteOrder::Cdab,
                        deadband: Some(0.0),
                        heartbeat: Some(Duration::from_secs(120)),
                        poll_interval: ms(500),
                    }),
                    scale: 1.0,
                    offset: 0.0,
                    unit: None,
                    writable: false,
                },
            ],
        }],
        machines: vec![],
        admin: None,
        board: edge_config::Board {
            input_device: "board".into(),
            ..Default::default()
        },
    };
    assert_eq!(config, expected);
    assert_eq!(
        config.northbounds[1].url.to_string(),
        "mqtt://[fd00::7]:1884"
    );
    assert_eq!(config.gateway.uns.root(), "acme/plant1/packaging/line1");
}

#[test]
fn a_minimal_config_takes_every_default() {
    let config = parse_ok(&with_tag(
        "name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"",
    ));
    assert_eq!(config.store, StoreSettings::default());
    assert_eq!(config.store.max_disk_bytes, 512 * 1024 * 1024);
    let nb = &config.northbounds[0];
    assert_eq!(nb.url.port, 1883);
    assert_eq!(nb.client_id, "edge-gw-line1-mes");
    assert_eq!(nb.format, Format::UnsJson);
    assert_eq!(nb.batching, Batching::PerTag);
    assert_eq!(nb.keep_alive, Duration::from_secs(30));
    let device = &config.devices[0];
    assert_eq!(
        device.protocol,
        Protocol::Modbus(Modbus {
            link: ModbusLink::Tcp {
                host: "10.0.0.5".into(),
                port: 502,
            },
            unit_id: 1,
            byte_order: ByteOrder::Abcd,
            max_gap_registers: 0,
            max_gap_bits: 0,
            max_registers: 125,
            max_bits: 2000,
        })
    );
    assert_eq!(device.poll_interval, Duration::from_millis(1000));
    assert_eq!(device.timeout, Duration::from_millis(1000));
    let tag = &device.tags[0];
    let modbus = modbus_tag(tag);
    assert_eq!(
        (tag.scale, tag.offset, modbus.deadband, modbus.heartbeat),
        (1.0, 0.0, None, None)
    );
    assert_eq!(modbus.byte_order, ByteOrder::Abcd);
    assert_eq!(modbus.poll_interval, Duration::from_millis(1000));
}

#[test]
fn every_mistake_in_a_config_is_reported_at_once_at_its_exact_line_and_column() {
    let src = [
        r#"[gateway]"#,                        // 1
        r#"id = "gw line1""#,                  // 2  space in the id
        r#"data_dir = "/var/lib/edge-agent""#, // 3
        r#"enterprise = "acme""#,              // 4
        r#"site = "plant/1""#,                 // 5  slash in a topic level
        r#"area = "packaging""#,               // 6
        r#"line = "line1""#,                   // 7
        r#""#,                                 // 8
        r#"[store]"#,                          // 9
        r#"max_disk_mb = 0"#,                  // 10 out of range
        r#""#,                                 // 11
        r#"[[northbound]]"#,                   // 12
        r#"name = "mes""#,                     // 13
        r#"url = "mqtts://broker:8883""#,      // 14 mqtts without ca_file
        r#"keep_alive_s = "30""#,              // 15 string for an integer
        r#""#,                                 // 16
        r#"[[device]]"#,                       // 17
        r#"name = "filler""#,                  // 18
        r#"protocol = "modbus-tcp""#,          // 19
        r#"host = "10.0.0.5""#,                // 20
        r#"poll_intervall_ms = 1000"#,         // 21 unknown key
        r#""#,                                 // 22
        r#"  [[device.tag]]"#,                 // 23
        r#"  name = "temperature""#,           // 24
        r#"  address = "hr:65535""#,           // 25 f32 runs past the last register
        r#"  type = "f32""#,                   // 26
        r#""#,                                 // 27
        r#"  [[device.tag]]"#,                 // 28
        r#"  name = "running""#,               // 29
        r#"  address = "coil:1""#,             // 30
        r#"  type = "u16""#,                   // 31 u16 on a coil
        r#""#,                                 // 32
        r#"  [[device.tag]]"#,                 // 33
        r#"  name = "temperature""#,           // 34 duplicate tag name
        r#"  address = "hr:0""#,               // 35
        r#"  type = "f32""#,                   // 36
        r#""#,                                 // 37
        r#"[board]"#,                          // 38
        r#"led = "gpio17""#,                   // 39 not a key of [board]
    ]
    .join("\n");
    let errors = parse_err(&src);
    assert_eq!(
        positions(&errors),
        vec![
            (2, 6, "the gateway id `gw line1` contains ` `; use only letters, digits, `-` and `_`"),
            (5, 8, "`site` contains `/`, which cannot appear in one MQTT topic level"),
            (10, 15, "`max_disk_mb` must be from 1 to 1000000, found 0"),
            (14, 7, "an mqtts:// url needs `ca_file`"),
            (15, 16, "expected an integer, found a string"),
            (21, 1, "unknown key `poll_intervall_ms` in [[device]]"),
            (25, 13, "a f32 at `hr:65535` needs 2 registers and would end at hr:65536, past the last address hr:65535"),
            (31, 10, "type u16 cannot be read from a coil, which holds one bit"),
            (34, 10, "duplicate tag name `temperature` in device `filler`: already used on line 24"),
            (39, 1, "unknown key `led` in [board]"),
        ],
        "{}",
        ConfigErrors(errors.clone())
    );
    assert!(errors.iter().all(|e| e.file == FILE));
    assert_eq!(errors[4].hint.as_deref(), Some("remove the quotes: 30"));
    assert_eq!(
        errors[5].hint.as_deref(),
        Some("did you mean `poll_interval_ms`?")
    );
    assert!(errors[3]
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("ca_file is required for mqtts://")));
}

#[test]
fn an_unknown_key_suggests_the_known_key_it_is_closest_to() {
    let errors = parse_err(&with_tag(
        "name = \"t\"\nadress = \"hr:0\"\naddress = \"hr:0\"\ntype = \"u16\"",
    ));
    let error = only_error(&errors);
    assert_eq!(error.message, "unknown key `adress` in [[device.tag]]");
    assert_eq!(error.hint.as_deref(), Some("did you mean `address`?"));
    assert_eq!(error.column, 1);
    assert_eq!(error.source_line, "adress = \"hr:0\"");
    assert_eq!(error.width, 6);
}

#[test]
fn an_unknown_key_far_from_any_known_one_lists_the_known_keys() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"")
        .replace("line = \"line1\"", "line = \"line1\"\ncolour = \"blue\"");
    let errors = parse_err(&src);
    let error = only_error(&errors);
    assert_eq!(error.message, "unknown key `colour` in [gateway]");
    assert_eq!(
        error.hint.as_deref(),
        Some("the keys of [gateway] are `area`, `data_dir`, `enterprise`, `id`, `line` or `site`")
    );
}

#[test]
fn wrong_toml_types_say_what_was_expected_and_what_was_found() {
    let src = with_device(
        "port = \"502\"\nunit_id = 1.0\nbyte_order = 3\ntimeout_ms = [1000]",
        "[[device.tag]]\nname = \"t\"\naddress = \"hr:0\"\ntype = \"f32\"\nwritable = \"true\"\nscale = \"x\"\nunit = { a = 1 }",
    );
    let errors = parse_err(&src);
    let messages: Vec<(&str, Option<&str>)> = errors
        .iter()
        .map(|e| (e.message.as_str(), e.hint.as_deref()))
        .collect();
    assert_eq!(
        messages,
        vec![
            (
                "expected an integer, found a string",
                Some("remove the quotes: 502")
            ),
            ("expected an integer, found a float", None),
            (
                "expected a string, found an integer",
                Some("put the value in quotes: \"3\"")
            ),
            ("expected an integer, found an array", None),
            (
                "expected a boolean, found a string",
                Some("remove the quotes: true")
            ),
            ("expected a number, found a string", None),
            ("expected a string, found a table", None),
        ]
    );
}

#[test]
fn integers_are_accepted_where_numbers_with_a_fraction_are_expected() {
    let config = parse_ok(&with_tag(
        "name = \"t\"\naddress = \"hr:0\"\ntype = \"i16\"\nscale = 2\noffset = -3\ndeadband = 1",
    ));
    let tag = &config.devices[0].tags[0];
    assert_eq!(
        (tag.scale, tag.offset, modbus_tag(tag).deadband),
        (2.0, -3.0, Some(1.0))
    );
}

#[test]
fn a_toml_syntax_error_is_positioned_and_other_mistakes_are_still_reported() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"\nunit = \"degC").replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\nmax_inflight = 0",
    );
    let errors = parse_err(&src);
    let lines: Vec<&str> = src.lines().collect();
    let unit_line = lines
        .iter()
        .position(|l| l.starts_with("unit ="))
        .expect("unit line")
        + 1;
    let inflight_line = lines
        .iter()
        .position(|l| l.starts_with("max_inflight"))
        .expect("line")
        + 1;
    assert_eq!(
        positions(&errors),
        vec![
            (
                inflight_line,
                16,
                "`max_inflight` must be from 1 to 65535, found 0"
            ),
            (unit_line, 13, "invalid basic string, expected `\"`"),
        ]
    );
}

#[test]
fn several_syntax_errors_are_all_reported() {
    let src = format!("{HEAD}\nkeep_alive_s = \nbatching = per-tag\n[[device]\nname = \"x\"\n");
    let errors = parse_err(&src);
    let syntax: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(syntax, vec![13, 14, 15], "{}", ConfigErrors(errors.clone()));
}

#[test]
fn duplicate_device_and_northbound_names_point_at_the_second_and_name_the_first_line() {
    let tag = "[[device.tag]]\nname = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"\n";
    let src = format!(
        "{HEAD}\n[[northbound]]\nname = \"mes\"\nurl = \"mqtt://other\"\n\n[[device]]\nname = \"filler\"\nprotocol = \"modbus-tcp\"\nhost = \"10.0.0.5\"\n{tag}\n[[device]]\nname = \"filler\"\nprotocol = \"modbus-tcp\"\nhost = \"10.0.0.6\"\n{tag}"
    );
    let errors = parse_err(&src);
    assert_eq!(
        positions(&errors),
        vec![
            (
                14,
                8,
                "duplicate northbound name `mes`: already used on line 10"
            ),
            (
                27,
                8,
                "duplicate device name `filler`: already used on line 18"
            ),
        ]
    );
}

#[test]
fn bools_live_on_coils_and_discrete_inputs_or_in_register_bits() {
    for address in ["coil:0", "di:9", "hr:4", "ir:4", "hr:4.15", "ir:0.0"] {
        let config = parse_ok(&with_tag(&format!(
            "name = \"b\"\naddress = \"{address}\"\ntype = \"bool\""
        )));
        assert_eq!(config.devices[0].tags[0].data_type(), Some(DataType::Bool));
    }
}

#[test]
fn numbers_and_strings_are_refused_on_coils_and_discrete_inputs() {
    for (address, data_type, area) in [
        ("coil:1", "f32", "a coil"),
        ("di:1", "string:4", "a discrete input"),
    ] {
        let errors = parse_err(&with_tag(&format!(
            "name = \"x\"\naddress = \"{address}\"\ntype = \"{data_type}\""
        )));
        let error = only_error(&errors);
        assert_eq!(
            error.message,
            format!("type {data_type} cannot be read from {area}, which holds one bit")
        );
        assert!(error.source_line.starts_with("type ="));
    }
}

#[test]
fn a_register_bit_is_refused_for_anything_but_bool() {
    let errors = parse_err(&with_tag(
        "name = \"x\"\naddress = \"hr:100.3\"\ntype = \"u16\"",
    ));
    let error = only_error(&errors);
    assert_eq!(
        error.message,
        "`hr:100.3` names one bit, but the type is u16"
    );
    assert!(error.source_line.starts_with("address ="));
}

#[test]
fn a_string_longer_than_the_devices_largest_read_is_refused() {
    let errors = parse_err(&with_tag(
        "name = \"s\"\naddress = \"hr:0\"\ntype = \"string:252\"",
    ));
    assert_eq!(
        only_error(&errors).message,
        "type string:252 needs 126 registers, more than this device's max_registers (125)"
    );
    let errors = parse_err(&with_device(
        "max_registers = 10",
        "[[device.tag]]\nname = \"s\"\naddress = \"hr:0\"\ntype = \"string:21\"",
    ));
    let error = only_error(&errors);
    assert_eq!(
        error.message,
        "type string:21 needs 11 registers, more than this device's max_registers (10)"
    );
    assert!(error
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("raise the device's max_registers")));
    parse_ok(&with_tag(
        "name = \"s\"\naddress = \"hr:0\"\ntype = \"string:250\"",
    ));
}

#[test]
fn a_value_running_past_the_last_register_is_refused() {
    let errors = parse_err(&with_tag(
        "name = \"x\"\naddress = \"hr:65535\"\ntype = \"f32\"",
    ));
    let error = only_error(&errors);
    assert_eq!(
        error.message,
        "a f32 at `hr:65535` needs 2 registers and would end at hr:65536, past the last address hr:65535"
    );
    assert_eq!(
        error.hint.as_deref(),
        Some("a f32 starts at hr:65534 at the latest")
    );
    parse_ok(&with_tag(
        "name = \"x\"\naddress = \"ir:65532\"\ntype = \"f64\"",
    ));
    parse_ok(&with_tag(
        "name = \"x\"\naddress = \"hr:65535\"\ntype = \"u16\"",
    ));
}

#[test]
fn an_unparsable_address_or_type_reports_the_parsers_own_words() {
    let errors = parse_err(&with_tag(
        "name = \"x\"\naddress = \"40001\"\ntype = \"float\"",
    ));
    assert_eq!(
        positions(&errors).iter().map(|p| p.2).collect::<Vec<_>>(),
        vec![
            "`40001` is not a Modbus address; write AREA:OFFSET, as in `hr:100`, `ir:7`, `coil:3`, `di:0` or `hr:100.3` for one bit of a register",
            "unknown type `float`; expected one of bool, i16, u16, i32, u32, i64, u64, f32, f64, string:N",
        ]
    );
}

#[test]
fn scale_and_offset_apply_only_to_numbers_and_a_bool_deadband_only_to_changes() {
    let errors = parse_err(&with_tag(
        "name = \"x\"\naddress = \"coil:0\"\ntype = \"bool\"\nscale = 2\ndeadband = 1",
    ));
    assert_eq!(
        positions(&errors).iter().map(|p| p.2).collect::<Vec<_>>(),
        vec![
            "`scale` only applies to numeric types, not to bool",
            "a deadband of 1 only applies to numeric types, not to bool",
        ]
    );
    let config = parse_ok(&with_tag(
        "name = \"x\"\naddress = \"coil:0\"\ntype = \"bool\"\ndeadband = 0",
    ));
    assert_eq!(modbus_tag(&config.devices[0].tags[0]).deadband, Some(0.0));
}

#[test]
fn scale_must_be_a_finite_number_other_than_zero() {
    for scale in ["0", "0.0", "inf", "nan"] {
        let errors = parse_err(&with_tag(&format!(
            "name = \"x\"\naddress = \"hr:0\"\ntype = \"f32\"\nscale = {scale}"
        )));
        assert_eq!(
            only_error(&errors).message,
            "`scale` must be a finite number other than 0",
            "{scale}"
        );
    }
}

#[test]
fn only_coils_and_holding_registers_can_be_writable() {
    for (address, data_type) in [("ir:7", "u16"), ("di:0", "bool")] {
        let errors = parse_err(&with_tag(&format!(
            "name = \"x\"\naddress = \"{address}\"\ntype = \"{data_type}\"\nwritable = true"
        )));
        let error = only_error(&errors);
        assert!(
            error
                .message
                .starts_with(&format!("`{address}` cannot be written")),
            "{}",
            error.message
        );
        assert!(error.source_line.starts_with("writable"));
    }
}

#[test]
fn a_tag_without_a_deadband_gets_no_heartbeat_from_its_device() {
    let tags = "[[device.tag]]\nname = \"a\"\naddress = \"hr:0\"\ntype = \"u16\"\n\
                [[device.tag]]\nname = \"b\"\naddress = \"hr:1\"\ntype = \"u16\"\ndeadband = 2\n\
                [[device.tag]]\nname = \"c\"\naddress = \"hr:2\"\ntype = \"u16\"\nheartbeat_s = 5\n";
    let config = parse_ok(&with_device("heartbeat_s = 60", tags));
    let heartbeats: Vec<_> = config.devices[0]
        .tags
        .iter()
        .map(|t| modbus_tag(t).heartbeat)
        .collect();
    assert_eq!(
        heartbeats,
        vec![
            None,
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(5))
        ]
    );
}

#[test]
fn mqtts_without_ca_file_is_refused_with_a_hint_that_it_is_required() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"")
        .replace("mqtt://127.0.0.1", "mqtts://broker.acme.example");
    let errors = parse_err(&src);
    let error = only_error(&errors);
    assert_eq!((error.line, error.column), (11, 7));
    assert_eq!(error.message, "an mqtts:// url needs `ca_file`");
    assert!(error
        .hint
        .as_deref()
        .is_some_and(|h| h.starts_with("ca_file is required for mqtts://")));
}

#[test]
fn tls_files_are_refused_on_plain_mqtt_and_client_cert_needs_its_key() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"").replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\nca_file = \"ca.pem\"",
    );
    assert_eq!(
        only_error(&parse_err(&src)).message,
        "`ca_file` only applies to mqtts:// urls"
    );

    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"").replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtts://b\"\nca_file = \"ca.pem\"\nclient_cert_file = \"gw.crt\"",
    );
    assert_eq!(
        only_error(&parse_err(&src)).message,
        "`client_cert_file` needs `client_key_file`"
    );
}

#[test]
fn a_missing_password_environment_variable_is_an_error_at_its_name() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"").replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\nusername = \"edge\"\npassword_env = \"MES_PW\"",
    );
    let errors = parse_err_with(&src, &FakeSecrets::default().with_env("OTHER", "x"));
    let error = only_error(&errors);
    assert_eq!((error.line, error.column), (13, 16));
    assert_eq!(error.message, "environment variable `MES_PW` is not set");

    let config = parse(
        &src,
        Path::new(FILE),
        &FakeSecrets::default().with_env("MES_PW", "pw"),
    )
    .expect("variable set");
    let password = config.northbounds[0]
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref());
    assert_eq!(password.map(Secret::expose), Some("pw"));
}

#[test]
fn a_password_file_is_read_relative_to_the_config_and_its_trailing_newline_dropped() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"").replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\nusername = \"edge\"\npassword_file = \"mes.pw\"",
    );
    let secrets = FakeSecrets::default().with_file("/etc/edge-agent/mes.pw", "top secret\n");
    let config = parse(&src, Path::new(FILE), &secrets).expect("file readable");
    let password = config.northbounds[0]
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref());
    assert_eq!(password.map(Secret::expose), Some("top secret"));
    // Kept for the permission check at `check` and at start.
    let file = config.northbounds[0]
        .credentials
        .as_ref()
        .and_then(|c| c.password_file.as_deref());
    assert_eq!(file, Some(Path::new("/etc/edge-agent/mes.pw")));

    let errors = parse_err(&src);
    assert_eq!(
        only_error(&errors).message,
        "cannot read password file `/etc/edge-agent/mes.pw`: No such file or directory"
    );
}

#[test]
fn passwords_need_a_username_and_exactly_one_source() {
    let tag = "name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"";
    let src = with_tag(tag).replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\npassword_env = \"PW\"",
    );
    assert_eq!(
        only_error(&parse_err(&src)).message,
        "a password needs a `username`"
    );
    let src = with_tag(tag).replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_env = \"PW\"\npassword_file = \"pw\"",
    );
    let errors = parse_err(&src);
    let error = only_error(&errors);
    assert_eq!(
        error.message,
        "give either `password_env` or `password_file`, not both"
    );
    assert_eq!(error.line, 14);
}

#[test]
fn the_store_tools_read_a_config_whose_passwords_are_nowhere_and_keep_every_other_check() {
    let tag = "name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("board.toml");
    let with_env = with_tag(tag).replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\nusername = \"edge\"\npassword_env = \"EDGE_CONFIG_TEST_NEVER_SET_PW\"",
    );
    std::fs::write(&path, &with_env).expect("write");
    assert!(
        edge_config::load(&path).is_err(),
        "load resolves the secret"
    );
    let config = edge_config::load_for_store(&path).expect("no secret needed");
    let password = config.northbounds[0]
        .credentials
        .as_ref()
        .and_then(|c| c.password.as_ref());
    assert_eq!(
        password.map(Secret::expose),
        Some(edge_config::UnresolvedSecrets::PLACEHOLDER)
    );

    let with_file = with_env.replace(
        "password_env = \"EDGE_CONFIG_TEST_NEVER_SET_PW\"",
        "password_file = \"missing.pw\"",
    );
    std::fs::write(&path, &with_file).expect("write");
    assert!(edge_config::load_for_store(&path).is_ok());

    // Everything else is still checked.
    std::fs::write(&path, with_file.replace("username = \"edge\"\n", "")).expect("write");
    let errors = edge_config::load_for_store(&path).expect_err("no username");
    assert_eq!(
        only_error(&errors.0).message,
        "a password needs a `username`"
    );
    std::fs::write(&path, with_env.replace("type = \"u16\"", "type = \"u17\"")).expect("write");
    assert!(edge_config::load_for_store(&path).is_err());
}

#[test]
fn a_secret_never_appears_in_debug_output_or_errors() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"").replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\nusername = \"edge\"\npassword_env = \"MES_PW\"",
    );
    let secrets = FakeSecrets::default().with_env("MES_PW", "hunter2");
    let config = parse(&src, Path::new(FILE), &secrets).expect("valid");
    let debug = format!("{config:?} {config:#?}");
    assert!(!debug.contains("hunter2"));
    assert!(debug.contains("<redacted>"));

    let bad = src
        .replace("max_registers", "x")
        .replace("type = \"u16\"", "type = \"u17\"");
    let errors = parse(&bad, Path::new(FILE), &secrets).expect_err("bad type");
    assert!(!format!("{errors} {errors:?}").contains("hunter2"));

    let in_url = src.replace("mqtt://127.0.0.1", "mqtt://edge:hunter2@127.0.0.1");
    let errors = parse(&in_url, Path::new(FILE), &secrets).expect_err("user info in url");
    assert!(!format!("{errors} {errors:?}").contains("hunter2"));
}

#[test]
fn an_unknown_key_in_board_is_refused_where_it_stands() {
    let src = format!(
        "{}\n[board]\nled = \"gpio17\"\n",
        with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"")
    );
    let errors = parse_err(&src);
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, vec!["unknown key `led` in [board]"]);
    assert_eq!(errors[0].column, 1);
}

#[test]
fn misspelt_protocols_and_formats_get_a_did_you_mean() {
    let tag = "[[device.tag]]\nname = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"";
    let src = with_device("", tag).replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\nformat = \"sparkplug\"",
    );
    let errors = parse_err(&src);
    let error = only_error(&errors);
    assert_eq!(error.message, "unknown format `sparkplug`");
    assert_eq!(error.hint.as_deref(), Some("did you mean `sparkplug-b`?"));

    let src = with_device("", tag).replace("\"modbus-tcp\"", "\"modbus_tcp\"");
    let errors = parse_err(&src);
    let error = only_error(&errors);
    assert_eq!(error.message, "unknown protocol `modbus_tcp`");
    assert_eq!(error.hint.as_deref(), Some("did you mean `modbus-tcp`?"));
}

#[test]
fn a_single_bracket_northbound_is_refused_with_a_hint_about_double_brackets() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"")
        .replace("[[northbound]]", "[northbound]");
    let errors = parse_err(&src);
    let error = only_error(&errors);
    assert_eq!(
        error.message,
        "expected [[northbound]] (an array of tables), found a single table"
    );
    assert_eq!((error.line, error.column), (9, 2));
}

#[test]
fn missing_sections_and_keys_are_reported_where_they_belong() {
    let errors = parse_err("[gateway]\nid = \"gw\"\n");
    assert_eq!(
        positions(&errors),
        vec![
            (1, 1, "missing `data_dir` in [gateway]"),
            (1, 1, "missing `enterprise` in [gateway]"),
            (1, 1, "missing `site` in [gateway]"),
            (1, 1, "missing `area` in [gateway]"),
            (1, 1, "missing `line` in [gateway]"),
            (
                1,
                1,
                "no [[northbound]]: the agent needs at least one MQTT destination"
            ),
            (1, 1, "no [[device]]: the agent has nothing to poll"),
        ]
    );
    assert_eq!(
        errors[0].hint.as_deref(),
        Some("add a line like `data_dir = \"/var/lib/edge-agent\"`")
    );

    let errors = parse_err(&with_device("", ""));
    let error = only_error(&errors);
    assert_eq!(error.message, "this device has no [[device.tag]]");
    assert_eq!(error.line, 13);
}

#[test]
fn device_limits_and_backoff_are_checked_against_each_other() {
    let tag = "[[device.tag]]\nname = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"";
    let errors = parse_err(&with_device(
        "max_registers = 60\nmax_gap = 60\nmax_bits = 2001\nbackoff_min_ms = 5000\nbackoff_max_ms = 1000",
        tag,
    ));
    assert_eq!(
        positions(&errors).iter().map(|p| p.2).collect::<Vec<_>>(),
        vec![
            "`max_gap` (60) must be smaller than `max_registers` (60)",
            "`max_bits` must be from 1 to 2000, found 2001",
            "`backoff_min_ms` (5000) is above `backoff_max_ms` (1000)",
        ]
    );
}

#[test]
fn a_device_host_is_an_address_without_scheme_or_port() {
    let tag = "[[device.tag]]\nname = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"";
    let errors = parse_err(&with_device("", tag).replace("\"10.0.0.5\"", "\"10.0.0.5:5020\""));
    let error = only_error(&errors);
    assert_eq!(error.message, "`host` contains a port (`:5020`)");
    assert_eq!(
        error.hint.as_deref(),
        Some("write host = \"10.0.0.5\" and port = 5020")
    );
    let errors = parse_err(&with_device("", tag).replace("\"10.0.0.5\"", "\"tcp://10.0.0.5\""));
    assert_eq!(
        only_error(&errors).message,
        "`host` is an address, not a url (`tcp://`)"
    );
    let config = parse_ok(&with_device("", tag).replace("\"10.0.0.5\"", "\"fd00::5\""));
    assert!(
        matches!(&config.devices[0].protocol, Protocol::Modbus(Modbus { link: ModbusLink::Tcp { host, .. }, .. }) if host == "fd00::5")
    );
}

#[test]
fn names_that_become_topic_levels_are_checked() {
    let errors = parse_err(&with_tag(
        "name = \"_batch\"\naddress = \"hr:0\"\ntype = \"u16\"",
    ));
    assert_eq!(
        only_error(&errors).message,
        "the tag name `_batch` must not start with `_`"
    );
    let errors = parse_err(
        &with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"").replace(
            "url = \"mqtt://127.0.0.1\"",
            "url = \"mqtt://127.0.0.1\"\ntopic_root = \"/acme/+/x\"",
        ),
    );
    assert_eq!(
        only_error(&errors).message,
        "`topic_root` must not contain the MQTT wildcards `+` or `#`"
    );
}

#[test]
fn relative_paths_are_resolved_against_the_config_files_directory() {
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"")
        .replace("/var/lib/edge-agent", "data");
    let config = parse(
        &src,
        Path::new("/opt/line1/board.toml"),
        &FakeSecrets::default(),
    )
    .expect("valid");
    assert_eq!(config.gateway.data_dir, PathBuf::from("/opt/line1/data"));
    let absolute = parse_ok(&with_tag(
        "name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"",
    ));
    assert_eq!(
        absolute.gateway.data_dir,
        PathBuf::from("/var/lib/edge-agent")
    );
}

#[test]
fn load_reads_a_file_and_resolves_its_relative_paths_next_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("board.toml");
    let src = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"")
        .replace("/var/lib/edge-agent", "store");
    std::fs::write(&path, src).expect("write config");
    let config = load(&path).expect("valid config");
    assert_eq!(config.gateway.data_dir, dir.path().join("store"));
    assert_eq!(config.source, path);
}

#[test]
fn an_unreadable_config_file_is_one_error_at_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.toml");
    let errors = load(&path).expect_err("no such file");
    let error = only_error(&errors.0);
    assert_eq!((error.line, error.column), (1, 1));
    assert!(
        error.message.starts_with("cannot read the config file: "),
        "{}",
        error.message
    );
    assert_eq!(error.file, path.display().to_string());
}

#[test]
fn a_config_file_that_is_not_utf8_is_refused_at_the_first_bad_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"[gateway]\nsite = \"K\xf6ln\"\n").expect("write");
    let errors = load(&path).expect_err("not UTF-8");
    let error = only_error(&errors.0);
    assert_eq!((error.line, error.column), (2, 10));
    assert_eq!(error.message, "the config file is not valid UTF-8");
}

#[test]
fn errors_display_with_their_source_line_a_caret_and_a_hint_then_a_count() {
    let errors = parse(
        &with_tag("name = \"t\"\nadress = \"hr:0\"\naddress = \"hr:0\"\ntype = \"u16\""),
        Path::new("board.toml"),
        &FakeSecrets::default(),
    )
    .expect_err("unknown key");
    assert_eq!(
        errors.to_string(),
        "board.toml:20:1: unknown key `adress` in [[device.tag]]\n   |\n20 | adress = \"hr:0\"\n   | ^^^^^^\n  hint: did you mean `address`?\n\n1 error"
    );
}

fn board_config(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../board-configs")
        .join(name);
    let src = std::fs::read_to_string(&path).expect("board config in the repository");
    (path, src)
}

#[test]
fn the_example_modbus_tcp_config_parses() {
    let (path, src) = board_config("example-modbus-tcp.toml");
    let secrets = FakeSecrets::default().with_env("MES_MQTT_PASSWORD", "pw");
    let config = match parse(&src, &path, &secrets) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    };
    assert_eq!(config.devices.len(), 2);
    assert_eq!(
        config.devices.iter().map(|d| d.tags.len()).sum::<usize>(),
        15
    );
    assert!(config.northbounds[0].url.tls);
}

#[test]
fn the_demo_config_parses() {
    let (path, src) = board_config("demo.toml");
    if let Err(errors) = parse(&src, &path, &FakeSecrets::default()) {
        panic!("{errors}");
    }
}

#[test]
fn no_edit_of_a_valid_config_can_crash_the_reader_or_misplace_an_error() {
    let (path, src) = board_config("example-modbus-tcp.toml");
    let secrets = FakeSecrets::default().with_env("MES_MQTT_PASSWORD", "pw");
    let line_count = src.lines().count() + 1;
    let boundaries: Vec<usize> = src.char_indices().map(|(i, _)| i).collect();
    let mut variants = Vec::new();
    for (n, &i) in boundaries.iter().enumerate() {
        let next = boundaries.get(n + 1).copied().unwrap_or(src.len());
        // Every truncation and every single-character deletion, duplication and replacement
        // by a character that matters to TOML.
        variants.push(src[..i].to_owned());
        variants.push(format!("{}{}", &src[..i], &src[next..]));
        if n % 7 == 0 {
            for c in ["\"", "[", "=", "\n", "é"] {
                variants.push(format!("{}{c}{}", &src[..i], &src[next..]));
            }
        }
    }
    for variant in &variants {
        if let Err(errors) = parse(variant, &path, &secrets) {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(e.line >= 1 && e.line <= line_count, "{e}");
                assert!(e.column >= 1 && e.width >= 1, "{e}");
                let line_chars = e.source_line.chars().count();
                assert!(e.column <= line_chars + 1, "{e}");
            }
        }
    }
}

mod admin {
    use super::*;

    const BASE: &str = r#"
[gateway]
id = "gw"
data_dir = "/var/lib/edge-agent"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "mqtt://127.0.0.1"

[[device]]
name = "press"
protocol = "modbus-tcp"
host = "127.0.0.1"
  [[device.tag]]
  name = "count"
  address = "hr:0"
  type = "u16"
"#;

    fn parse_with(extra: &str) -> Result<Config, edge_config::ConfigErrors> {
        let src = format!("{BASE}\n{extra}");
        parse(&src, Path::new(FILE), &FakeSecrets::default())
    }

    #[test]
    fn without_an_admin_table_no_endpoint_is_configured() {
        let cfg = parse_with("").expect("valid");
        assert_eq!(cfg.admin, None);
    }

    #[test]
    fn an_empty_admin_table_listens_on_loopback_by_default() {
        let cfg = parse_with("[admin]\n").expect("valid");
        let admin = cfg.admin.expect("admin on");
        assert_eq!(admin.listen.to_string(), "127.0.0.1:9900");
        assert!(admin.listen.ip().is_loopback());
    }

    #[test]
    fn an_explicit_loopback_listen_address_is_taken_with_the_console_on_and_editing_off() {
        let cfg = parse_with("[admin]\nlisten = \"127.0.0.1:9100\"\n").expect("valid");
        let admin = cfg.admin.expect("admin on");
        assert_eq!(admin.listen.to_string(), "127.0.0.1:9100");
        assert!(admin.console);
        assert!(!admin.edit, "editing is off by default");
        assert!(!admin.auth_required(), "loopback without users");
    }

    const USERS: &str = "anna:admin:pbkdf2-sha256$10000$00112233445566778899aabbccddeeff$000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

    #[test]
    fn beyond_loopback_without_users_is_an_error_at_listen() {
        let errors = parse_with("[admin]\nlisten = \"0.0.0.0:9100\"\n").expect_err("no users");
        let e = &errors.0[0];
        assert!(e.message.contains("no users are configured"), "{errors}");
        let listen_line = BASE.lines().count() + 3;
        assert_eq!((e.line, e.column), (listen_line, 10), "{errors}");
    }

    #[test]
    fn beyond_loopback_with_users_the_console_needs_credentials() {
        let src =
            format!("{BASE}\n[admin]\nlisten = \"0.0.0.0:9100\"\nusers_file = \"/etc/ea/users\"\n");
        let secrets = FakeSecrets::default().with_file("/etc/ea/users", USERS);
        let cfg = parse(&src, Path::new(FILE), &secrets).expect("valid");
        let admin = cfg.admin.expect("admin on");
        assert_eq!(admin.users.len(), 1);
        assert!(admin.auth_required());
    }

    #[test]
    fn only_the_probes_may_be_open_beyond_loopback_without_users() {
        let cfg =
            parse_with("[admin]\nlisten = \"0.0.0.0:9100\"\nconsole = false\nopen_probes = true\n")
                .expect("valid: Prometheus only");
        assert!(cfg.admin.expect("on").open_probes);
        assert!(parse_with("[admin]\nlisten = \"0.0.0.0:9100\"\nopen_probes = true\n").is_err());
    }

    #[test]
    fn a_users_file_that_is_missing_or_invalid_is_an_error_at_its_key() {
        let errors = parse_with("[admin]\nusers_file = \"/nope\"\n").expect_err("missing");
        assert!(
            errors
                .to_string()
                .contains("cannot read the users file /nope"),
            "{errors}"
        );
        let src = format!("{BASE}\n[admin]\nusers_file = \"/u\"\n");
        let secrets = FakeSecrets::default().with_file("/u", "anna:root:x\n");
        let errors = parse(&src, Path::new(FILE), &secrets).expect_err("invalid");
        assert!(errors.to_string().contains("role `root`"), "{errors}");
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let errors = parse_with("[admin]\ntls_cert = \"c.pem\"\n").expect_err("no key");
        assert!(
            errors
                .to_string()
                .contains("`tls_cert` and `tls_key` go together"),
            "{errors}"
        );
    }

    #[test]
    fn a_listen_value_that_is_not_ip_and_port_is_an_error_with_its_position() {
        let errors = parse_with("[admin]\nlisten = \"localhost\"\n").expect_err("invalid");
        let text = errors.to_string();
        assert!(text.contains("`listen` must be ip:port"), "{text}");
        assert!(text.contains(":"), "{text}");
    }

    #[test]
    fn an_unknown_key_in_admin_is_an_error() {
        let errors = parse_with("[admin]\nlisen = \"127.0.0.1:1\"\n").expect_err("invalid");
        assert!(errors.to_string().contains("lisen"), "{errors}");
    }
}
fn sparkplug_northbound(keys: &str) -> String {
    let tag = "[[device.tag]]\nname = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"";
    with_device("", tag).replace(
        "url = \"mqtt://127.0.0.1\"",
        &format!("url = \"mqtt://127.0.0.1\"\nformat = \"sparkplug-b\"\n{keys}"),
    )
}

#[test]
fn a_sparkplug_northbound_takes_a_group_and_defaults_the_node_to_the_gateway_id() {
    let config = parse_ok(&sparkplug_northbound("group_id = \"Plant 1\""));
    assert_eq!(
        config.northbounds[0].format,
        Format::SparkplugB(SparkplugSettings {
            group_id: "Plant 1".into(),
            edge_node_id: "gw-line1".into(),
            primary_host_id: None,
            delivery_topic: "edge-agent/Plant 1/gw-line1/delivered".into(),
        })
    );
    assert_eq!(config.northbounds[0].format.as_str(), "sparkplug-b");

    let config = parse_ok(&sparkplug_northbound(
        "group_id = \"plant1\"\nedge_node_id = \"line1-gw\"\nprimary_host_id = \"scada-1\"\ndelivery_topic = \"acme/delivered\"",
    ));
    let Format::SparkplugB(sp) = &config.northbounds[0].format else {
        panic!("a Sparkplug northbound");
    };
    assert_eq!(sp.edge_node_id, "line1-gw");
    assert_eq!(sp.primary_host_id.as_deref(), Some("scada-1"));
    assert_eq!(sp.delivery_topic, "acme/delivered");
}

#[test]
fn a_sparkplug_northbound_needs_a_group_id() {
    let errors = parse_err(&sparkplug_northbound(""));
    let error = only_error(&errors);
    assert_eq!(error.message, "missing `group_id` in [[northbound]]");
    assert_eq!(error.line, 9, "points at the [[northbound]] header");
}

#[test]
fn sparkplug_ids_must_be_single_topic_levels() {
    let errors = parse_err(&sparkplug_northbound(
        "group_id = \"plant/1\"\nedge_node_id = \"gw#1\"\nprimary_host_id = \"\"",
    ));
    assert_eq!(
        positions(&errors),
        [
            (
                13,
                12,
                "`group_id` contains `/`, which a Sparkplug id must not contain"
            ),
            (
                14,
                16,
                "`edge_node_id` contains `#`, which a Sparkplug id must not contain"
            ),
            (15, 19, "`primary_host_id` must not be empty"),
        ]
    );
}

#[test]
fn the_delivery_topic_stays_out_of_the_sparkplug_namespace() {
    for (topic, message) in [
        ("spBv1.0/plant1/x", "`delivery_topic` must not be under `spBv1.0/`, where Sparkplug hosts expect only Sparkplug messages"),
        ("a/+/b", "`delivery_topic` must not contain `+`, `#` or a NUL character"),
        ("$SYS/x", "`delivery_topic` must not start with `$`, which brokers reserve"),
        ("", "`delivery_topic` must not be empty"),
    ] {
        let errors = parse_err(&sparkplug_northbound(&format!(
            "group_id = \"plant1\"\ndelivery_topic = \"{topic}\""
        )));
        assert_eq!(only_error(&errors).message, message);
    }
}

#[test]
fn uns_keys_and_sparkplug_keys_do_not_mix() {
    let errors = parse_err(&sparkplug_northbound(
        "group_id = \"plant1\"\ntopic_root = \"a/b\"\nbatching = \"per-device\"",
    ));
    assert_eq!(
        positions(&errors),
        [
            (
                14,
                14,
                "`topic_root` does not apply to format = \"sparkplug-b\""
            ),
            (
                15,
                12,
                "`batching` does not apply to format = \"sparkplug-b\""
            ),
        ]
    );

    let tag = "[[device.tag]]\nname = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"";
    let src = with_device("", tag).replace(
        "url = \"mqtt://127.0.0.1\"",
        "url = \"mqtt://127.0.0.1\"\ngroup_id = \"plant1\"\nprimary_host_id = \"scada\"",
    );
    let errors = parse_err(&src);
    assert_eq!(
        positions(&errors),
        [
            (
                12,
                12,
                "`group_id` only applies to format = \"sparkplug-b\""
            ),
            (
                13,
                19,
                "`primary_host_id` only applies to format = \"sparkplug-b\""
            ),
        ]
    );
    assert!(errors[0]
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("format = \"sparkplug-b\"")));
}

#[test]
fn command_safety_keys_set_the_northbounds_policy_and_default_to_timed_commands_of_ten_seconds() {
    let base = with_tag("name = \"t\"\naddress = \"hr:0\"\ntype = \"u16\"");
    let cfg = parse_ok(&base);
    assert_eq!(cfg.northbounds[0].commands, CommandPolicy::default());
    assert!(cfg.northbounds[0].commands.enabled);
    assert_eq!(cfg.northbounds[0].commands.max_age_ms, 10_000);
    assert!(!cfg.northbounds[0].commands.allow_untimed);
    let tuned = base.replacen(
        "[[northbound]]\n",
        "[[northbound]]\ncommands = false\ncommand_max_age_ms = 3000\ncommand_clock_skew_ms = 500\nallow_untimed_commands = true\n",
        1,
    );
    let cfg = parse_ok(&tuned);
    assert_eq!(
        cfg.northbounds[0].commands,
        CommandPolicy {
            enabled: false,
            max_age_ms: 3000,
            clock_skew_ms: 500,
            allow_untimed: true,
        }
    );
    let wrong = base.replacen(
        "[[northbound]]\n",
        "[[northbound]]\ncommand_max_age_ms = 10\n",
        1,
    );
    let errors = parse_err(&wrong);
    let e = only_error(&errors);
    assert!(
        e.to_string().contains("command_max_age_ms"),
        "the key is named in the error: {e}"
    );
}

mod broker_lists {
    use super::*;

    const BASE: &str = r#"
[gateway]
id = "gw"
data_dir = "/var/lib/edge-agent"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
URLS

[[device]]
name = "press"
protocol = "modbus-tcp"
host = "127.0.0.1"
  [[device.tag]]
  name = "count"
  address = "hr:0"
  type = "u16"
"#;

    fn with(urls: &str) -> Result<Config, edge_config::ConfigErrors> {
        let src = BASE.replace("URLS", urls);
        parse(&src, Path::new(FILE), &FakeSecrets::default())
    }

    #[test]
    fn the_first_of_urls_is_preferred_and_the_rest_are_fallbacks_in_order() {
        let cfg = with("urls = [\"mqtt://a:1883\", \"mqtt://b:1884\", \"mqtt://c\"]\nreturn_to_preferred_s = 0")
            .expect("valid");
        let nb = &cfg.northbounds[0];
        assert_eq!(nb.url.host, "a");
        let rest: Vec<String> = nb
            .fallbacks
            .iter()
            .map(|b| format!("{}:{}", b.host, b.port))
            .collect();
        assert_eq!(rest, ["b:1884", "c:1883"]);
        assert_eq!(nb.return_to_preferred, None, "0 never returns");
        let one = with("url = \"mqtt://a\"").expect("valid");
        assert!(one.northbounds[0].fallbacks.is_empty());
        assert_eq!(
            one.northbounds[0].return_to_preferred,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_malformed_url_in_the_list_is_an_error_at_its_own_position() {
        let errors = with("urls = [\"mqtt://a\", \"http://b\"]").expect_err("invalid");
        let e = &errors.0[0];
        let line = BASE.lines().position(|l| l == "URLS").expect("the line") + 1;
        assert_eq!((e.line, e.column), (line, 21), "{errors}");
    }

    #[test]
    fn url_and_urls_together_a_repeated_broker_or_a_mixed_scheme_are_errors() {
        assert!(with("url = \"mqtt://a\"\nurls = [\"mqtt://b\"]").is_err());
        let twice = with("urls = [\"mqtt://a\", \"mqtt://a:1883\"]").expect_err("twice");
        assert!(twice.to_string().contains("twice"), "{twice}");
        let mixed =
            with("urls = [\"mqtt://a\", \"mqtts://b\"]\nca_file = \"/ca.pem\"").expect_err("mixed");
        assert!(
            mixed.to_string().contains("mixes mqtt:// and mqtts://"),
            "{mixed}"
        );
        assert!(with("urls = []").is_err());
    }

    #[test]
    fn two_northbounds_with_one_client_id_on_a_common_broker_are_an_error_at_the_second() {
        let src = BASE.replace(
            "URLS",
            "urls = [\"mqtt://a\", \"mqtt://b\"]\nclient_id = \"gw-1\"\n\n[[northbound]]\nname = \"historian\"\nurl = \"mqtt://b\"\nclient_id = \"gw-1\"",
        );
        let errors = parse(&src, Path::new(FILE), &FakeSecrets::default()).expect_err("shared id");
        let e = &errors.0[0];
        assert!(
            e.message
                .contains("use client id `gw-1` on the same broker"),
            "{errors}"
        );
        let line = src
            .lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| *l == "client_id = \"gw-1\"")
            .expect("line")
            + 1;
        assert_eq!(e.line, line, "{errors}");
        // Other brokers, or other ids: fine.
        let apart = BASE.replace(
            "URLS",
            "url = \"mqtt://a\"\nclient_id = \"gw-1\"\n\n[[northbound]]\nname = \"historian\"\nurl = \"mqtt://b\"\nclient_id = \"gw-1\"",
        );
        assert!(parse(&apart, Path::new(FILE), &FakeSecrets::default()).is_ok());
    }

    #[test]
    fn mqtt_5_is_chosen_per_northbound_with_a_session_expiry_that_is_never_infinite() {
        let three = with("url = \"mqtt://a\"").expect("valid");
        assert_eq!(
            three.northbounds[0].protocol,
            MqttVersion::V311,
            "the default"
        );
        let five = with("url = \"mqtt://a\"\nprotocol = 5").expect("valid");
        assert_eq!(five.northbounds[0].protocol, MqttVersion::V5);
        assert_eq!(five.northbounds[0].session_expiry, Duration::from_secs(300));
        let set = with("url = \"mqtt://a\"\nprotocol = 5\nsession_expiry_s = 60").expect("valid");
        assert_eq!(set.northbounds[0].session_expiry, Duration::from_secs(60));
        for bad in [
            "url = \"mqtt://a\"\nprotocol = 3",
            "url = \"mqtt://a\"\nsession_expiry_s = 60",
            "url = \"mqtt://a\"\nprotocol = 5\nsession_expiry_s = 4294967295",
        ] {
            assert!(with(bad).is_err(), "{bad}");
        }
        let spb =
            with("url = \"mqtt://a\"\nformat = \"sparkplug-b\"\ngroup_id = \"g\"\nprotocol = 5")
                .expect_err("sparkplug over MQTT 5");
        assert!(spb.to_string().contains("speaks MQTT 3.1.1"), "{spb}");
    }

    #[test]
    fn a_sparkplug_northbound_takes_a_server_set() {
        let cfg =
            with("urls = [\"mqtt://a\", \"mqtt://b\"]\nformat = \"sparkplug-b\"\ngroup_id = \"g\"")
                .expect("a server set");
        assert_eq!(cfg.northbounds[0].fallbacks.len(), 1);
    }
}
