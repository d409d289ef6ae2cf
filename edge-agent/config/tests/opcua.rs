//! OPC UA devices in the board config as technicians write them, right and wrong: endpoint,
//! security, identity, subscription and polling tags with their defaults, and every mistake
//! reported at once at its exact line and column.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_config::{
    parse, Config, ConfigError, ConfigErrors, OpcUa, OpcUaTag, Protocol, SecretSource, Tag,
    TagAddress,
};
use edge_model::DataType;
use edge_opcua::{Deadband, Identity, SecurityMode, SecurityPolicy, TagMode};

#[derive(Default)]
struct FakeSecrets {
    env: HashMap<String, String>,
}

impl SecretSource for FakeSecrets {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn file(&self, path: &Path) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found", path.display()),
        ))
    }
}

const FILE: &str = "/etc/edge-agent/board.toml";

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

fn with_device(device: &str) -> String {
    format!("{HEAD}\n[[device]]\nname = \"line2\"\nprotocol = \"opcua\"\n{device}")
}

fn parse_with(src: &str, secrets: &FakeSecrets) -> Result<Config, Vec<ConfigError>> {
    parse(src, Path::new(FILE), secrets).map_err(|ConfigErrors(e)| e)
}

fn parse_ok(src: &str) -> Config {
    match parse_with(src, &FakeSecrets::default()) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{}", ConfigErrors(e)),
    }
}

fn parse_err(src: &str) -> Vec<ConfigError> {
    match parse_with(src, &FakeSecrets::default()) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e,
    }
}

fn opcua(cfg: &Config) -> &OpcUa {
    match &cfg.devices[0].protocol {
        Protocol::OpcUa(ua) => ua,
        other => panic!("not an OPC UA device: {other:?}"),
    }
}

/// The OPC UA part of tag `i` of the first device.
fn ua_tag(cfg: &Config, i: usize) -> &OpcUaTag {
    match &cfg.devices[0].tags[i].address {
        TagAddress::OpcUa(o) => o,
        other => panic!("not an OPC UA tag: {other:?}"),
    }
}

fn positions(errors: &[ConfigError]) -> Vec<(usize, usize, &str)> {
    errors
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect()
}

#[test]
fn an_opcua_device_reads_with_its_defaults_filled_in() {
    let cfg = parse_ok(&with_device(
        r#"endpoint = "opc.tcp://10.0.0.5:4840"

  [[device.tag]]
  name = "temperature"
  address = "ns=2;s=Filler.Temperature"

  [[device.tag]]
  name = "work_order"
  address = "ns=2;s=Filler.WorkOrder"
  mode = "polling"
"#,
    ));
    let dev = &cfg.devices[0];
    assert_eq!(dev.protocol.as_str(), "opcua");
    assert_eq!(
        dev.tags.len(),
        2,
        "OPC UA tags live in the device, as Modbus ones"
    );
    assert!(
        dev.tags
            .iter()
            .all(|t| matches!(t.address, TagAddress::OpcUa(_))),
        "{:?}",
        dev.tags
    );
    assert_eq!(
        dev.timeout,
        Duration::from_millis(OpcUa::DEFAULT_TIMEOUT_MS)
    );
    let ua = opcua(&cfg);
    assert_eq!(ua.endpoint, "opc.tcp://10.0.0.5:4840");
    assert_eq!(ua.security_policy, SecurityPolicy::None);
    assert_eq!(ua.security_mode, SecurityMode::None);
    assert_eq!(ua.identity, Identity::Anonymous);
    assert_eq!(ua.session_timeout, Duration::from_secs(60));
    assert!(!ua.trust_on_first_use);
    assert_eq!(OpcUa::split(&dev.tags), (1, 1));
    assert_eq!(
        ua_tag(&cfg, 0).mode,
        TagMode::Subscription {
            publishing_interval: Duration::from_millis(1000),
            sampling_interval: Duration::from_millis(1000),
            queue_size: 10,
            deadband: Deadband::None,
        }
    );
    assert_eq!(
        ua_tag(&cfg, 1).mode,
        TagMode::Polling {
            interval: Duration::from_millis(1000),
            deadband: None,
            heartbeat: None,
        }
    );
    assert_eq!(
        ua_tag(&cfg, 0).node.to_string(),
        "ns=2;s=Filler.Temperature"
    );
    assert_eq!(ua_tag(&cfg, 0).data_type, None);
    assert_eq!(dev.tags[0].data_type(), None);
    assert_eq!(dev.tags[0].address_text(), "ns=2;s=Filler.Temperature");
}

#[test]
fn device_defaults_apply_to_tags_that_do_not_set_their_own() {
    let cfg = parse_ok(&with_device(
        r#"endpoint = "opc.tcp://plc:4840/UA/Server"
security_policy = "Basic256Sha256"
mode = "polling"
poll_interval_ms = 250
heartbeat_s = 30
trust_on_first_use = true
max_nodes_per_read = 100

  [[device.tag]]
  name = "count"
  address = "nsu=urn:acme:plant;i=1001"
  type = "u32"
  deadband = 0

  [[device.tag]]
  name = "speed"
  address = "ns=3;s=Speed"
  mode = "subscription"
  publishing_interval_ms = 200
  sampling_interval_ms = 50
  queue_size = 4
  deadband_percent = 2.5
  scale = 0.1
  unit = "m/min"
  writable = true
"#,
    ));
    let ua = opcua(&cfg);
    assert_eq!(ua.security_policy, SecurityPolicy::Basic256Sha256);
    assert_eq!(
        ua.security_mode,
        SecurityMode::SignAndEncrypt,
        "a policy without a mode means SignAndEncrypt"
    );
    assert!(ua.trust_on_first_use);
    assert_eq!(ua.max_nodes_per_read, 100);
    assert_eq!(ua_tag(&cfg, 0).data_type, Some(DataType::U32));
    assert_eq!(
        ua_tag(&cfg, 0).mode,
        TagMode::Polling {
            interval: Duration::from_millis(250),
            deadband: Some(0.0),
            heartbeat: Some(Duration::from_secs(30)),
        }
    );
    assert_eq!(
        ua_tag(&cfg, 1).mode,
        TagMode::Subscription {
            publishing_interval: Duration::from_millis(200),
            sampling_interval: Duration::from_millis(50),
            queue_size: 4,
            deadband: Deadband::Percent(2.5),
        }
    );
    let speed = &cfg.devices[0].tags[1];
    assert_eq!(speed.scale, 0.1);
    assert_eq!(speed.unit.as_deref(), Some("m/min"));
    assert!(speed.writable);
    assert!(speed.accepts_writes());
}

#[test]
fn a_user_name_takes_its_password_from_the_environment_and_certificates_resolve_next_to_the_config()
{
    let secrets = FakeSecrets {
        env: [("UA_PASS".to_owned(), "s3cret".to_owned())].into(),
    };
    let src = with_device(
        r#"endpoint = "opc.tcp://10.0.0.5:4840"
username = "operator"
password_env = "UA_PASS"
  [[device.tag]]
  name = "t"
  address = "i=2258"
"#,
    );
    let cfg = parse_with(&src, &secrets).expect("valid");
    match &opcua(&cfg).identity {
        Identity::UserName { user, password } => {
            assert_eq!(user, "operator");
            assert_eq!(password.expose(), "s3cret");
        }
        other => panic!("{other:?}"),
    }
    let cfg = parse_ok(&with_device(
        r#"endpoint = "opc.tcp://10.0.0.5:4840"
user_cert_file = "pki/user.der"
user_key_file = "/etc/edge-agent/user.pem"
  [[device.tag]]
  name = "t"
  address = "i=2258"
"#,
    ));
    assert_eq!(
        opcua(&cfg).identity,
        Identity::X509 {
            cert: PathBuf::from("/etc/edge-agent/pki/user.der"),
            key: PathBuf::from("/etc/edge-agent/user.pem"),
        }
    );
}

#[test]
fn every_opcua_mistake_is_reported_at_once_at_its_exact_line_and_column() {
    let src = with_device(
        r#"endpoint = "http://10.0.0.5:4840"
security_policy = "Basic128Rsa15"
byte_order = "ABCD"
username = "operator"

  [[device.tag]]
  name = "temperature"
  address = "Filler.Temperature"

  [[device.tag]]
  name = "state"
  address = "ns=2;s=Filler.State"
  mode = "polling"
  queue_size = 5

  [[device.tag]]
  name = "count"
  address = "ns=2;i=7"
  poll_interval_ms = 100
  deadband = 1
  deadband_percent = 2

  [[device.tag]]
  name = "order"
  address = "ns=2;s=Order"
  type = "string:16"
  scale = 2
"#,
    );
    let errors = parse_err(&src);
    assert_eq!(
        positions(&errors),
        vec![
            (16, 12, "the OPC UA endpoint must use opc.tcp://, not http://"),
            (17, 19, "security policy `Basic128Rsa15` is deprecated (SHA-1) and not offered; use Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss"),
            (18, 1, "unknown key `byte_order` in [[device]]"),
            (19, 12, "an OPC UA user name needs its password"),
            (23, 13, "`Filler.Temperature` is not an OPC UA node id; write `ns=<index>;s=<name>` (or i=, g=, b= for numeric, GUID and opaque ids), as in `ns=2;s=Filler.Temperature`"),
            (29, 16, "`queue_size` applies to subscription tags, and this tag's mode is polling"),
            (34, 22, "`poll_interval_ms` applies to polling tags, and this tag's mode is subscription"),
            (36, 22, "give either `deadband` (absolute) or `deadband_percent`, not both"),
            (42, 11, "`scale` only applies to numeric types, not to string:16"),
        ],
        "{}",
        ConfigErrors(errors.clone())
    );
    assert!(errors[4]
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("edge-agent opcua browse")));
}

#[test]
fn security_policy_and_mode_must_agree() {
    let errors = parse_err(&with_device(
        r#"endpoint = "opc.tcp://10.0.0.5:4840"
security_policy = "None"
security_mode = "Sign"
  [[device.tag]]
  name = "t"
  address = "i=2258"
"#,
    ));
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    assert!(errors[0]
        .message
        .contains("needs a security policy other than None"));
    let errors = parse_err(&with_device(
        r#"endpoint = "opc.tcp://10.0.0.5:4840"
security_mode = "SignAndEncrypt"
  [[device.tag]]
  name = "t"
  address = "i=2258"
"#,
    ));
    assert!(errors[0].message.contains("needs a `security_policy`"));
}

#[test]
fn an_endpoint_needs_a_host_and_a_valid_port() {
    for (endpoint, message) in [
        ("opc.tcp://:4840", "the endpoint url has no host"),
        (
            "opc.tcp://plc:99999",
            "`99999` is not a port number (1 to 65535)",
        ),
        (
            "opc.tcp://plc 1:4840",
            "the endpoint url must not contain spaces",
        ),
    ] {
        let errors = parse_err(&with_device(&format!(
            "endpoint = \"{endpoint}\"\n  [[device.tag]]\n  name = \"t\"\n  address = \"i=2258\"\n"
        )));
        assert_eq!(errors.len(), 1, "{endpoint}");
        assert_eq!(errors[0].message, message, "{endpoint}");
    }
}

#[test]
fn an_opcua_device_without_tags_says_how_to_find_node_ids() {
    let errors = parse_err(&with_device("endpoint = \"opc.tcp://10.0.0.5:4840\"\n"));
    assert_eq!(errors.len(), 1);
    assert!(errors[0]
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("edge-agent opcua browse")));
}

#[test]
fn the_example_opcua_board_config_is_valid() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../board-configs/example-opcua.toml");
    let src = std::fs::read_to_string(&path).expect("the example exists");
    let secrets = FakeSecrets {
        env: [("OPCUA_PASSWORD".to_owned(), "x".to_owned())].into(),
    };
    let cfg = match parse(&src, &path, &secrets) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let ua = opcua(&cfg);
    assert_eq!(ua.security_mode, SecurityMode::SignAndEncrypt);
    assert_eq!(OpcUa::split(&cfg.devices[0].tags), (4, 2));
}

#[test]
fn an_opcua_devices_tags_are_in_device_tags_with_their_node_optional_type_and_mode() {
    let cfg = parse_ok(&with_device(
        r#"endpoint = "opc.tcp://10.0.0.5:4840"
publishing_interval_ms = 500

  [[device.tag]]
  name = "temperature"
  address = "ns=2;s=Filler.Temperature"
  type = "f32"
  scale = 0.1
  offset = -40
  unit = "degC"

  [[device.tag]]
  name = "setpoint"
  address = "ns=2;i=1001"
  mode = "polling"
  poll_interval_ms = 2000
  writable = true
"#,
    ));
    let dev = &cfg.devices[0];
    assert_eq!(
        dev.tags,
        vec![
            Tag {
                name: "temperature".into(),
                address: TagAddress::OpcUa(OpcUaTag {
                    node: "ns=2;s=Filler.Temperature".parse().expect("a node id"),
                    data_type: Some(DataType::F32),
                    mode: TagMode::Subscription {
                        publishing_interval: Duration::from_millis(500),
                        sampling_interval: Duration::from_millis(500),
                        queue_size: 10,
                        deadband: Deadband::None,
                    },
                }),
                scale: 0.1,
                offset: -40.0,
                unit: Some("degC".into()),
                writable: false,
            },
            Tag {
                name: "setpoint".into(),
                address: TagAddress::OpcUa(OpcUaTag {
                    node: "ns=2;i=1001".parse().expect("a node id"),
                    data_type: None,
                    mode: TagMode::Polling {
                        interval: Duration::from_millis(2000),
                        deadband: None,
                        heartbeat: None,
                    },
                }),
                scale: 1.0,
                offset: 0.0,
                unit: None,
                writable: true,
            },
        ]
    );
    let (temperature, setpoint) = (&dev.tags[0], &dev.tags[1]);
    assert_eq!(temperature.data_type(), Some(DataType::F32));
    assert_eq!(
        setpoint.data_type(),
        None,
        "without `type` the server's type"
    );
    assert!(temperature.modbus().is_none());
    assert_eq!(setpoint.address_text(), "ns=2;i=1001");
    assert!(!temperature.accepts_writes());
    assert!(setpoint.accepts_writes());
    assert_eq!(OpcUa::split(&dev.tags), (1, 1));
}

#[test]
fn a_modbus_and_an_opcua_device_sit_side_by_side_in_one_config() {
    let src = format!(
        r#"{HEAD}
[[device]]
name = "filler"
protocol = "modbus-tcp"
host = "10.0.0.5"
unit_id = 3
  [[device.tag]]
  name = "good_count"
  address = "hr:0"
  type = "u32"

[[device]]
name = "filler_ua"
protocol = "opcua"
endpoint = "opc.tcp://10.0.0.6:4840"
  [[device.tag]]
  name = "good_count"
  address = "ns=2;s=Filler.GoodCount"
  type = "u32"
"#
    );
    let cfg = parse_ok(&src);
    let [modbus, ua] = &cfg.devices[..] else {
        panic!("two devices: {:#?}", cfg.devices);
    };
    assert_eq!(
        (modbus.name.as_str(), modbus.protocol.as_str()),
        ("filler", "modbus-tcp")
    );
    assert_eq!(
        (ua.name.as_str(), ua.protocol.as_str()),
        ("filler_ua", "opcua")
    );
    assert_eq!(modbus.protocol.endpoint(), "10.0.0.5:502");
    assert_eq!(ua.protocol.endpoint(), "opc.tcp://10.0.0.6:4840");
    assert_eq!((modbus.protocol.unit_id(), ua.protocol.unit_id()), (3, 0));
    assert!(modbus.protocol.opcua().is_none() && ua.protocol.modbus().is_none());
    assert_eq!(
        modbus.timeout,
        Duration::from_millis(edge_config::Device::DEFAULT_TIMEOUT_MS)
    );
    assert_eq!(ua.timeout, Duration::from_millis(OpcUa::DEFAULT_TIMEOUT_MS));
    // The same tag name in each device: names are unique per device only.
    assert_eq!(modbus.tags[0].name, ua.tags[0].name);
    assert!(matches!(modbus.tags[0].address, TagAddress::Modbus(_)));
    assert!(matches!(ua.tags[0].address, TagAddress::OpcUa(_)));
    assert_eq!(modbus.tags[0].address_text(), "hr:0");
    assert_eq!(ua.tags[0].address_text(), "ns=2;s=Filler.GoodCount");
    assert_eq!(
        (modbus.tags[0].data_type(), ua.tags[0].data_type()),
        (Some(DataType::U32), Some(DataType::U32))
    );
}

#[test]
fn a_modbus_key_on_an_opcua_tag_is_an_unknown_key_at_its_line_and_column() {
    let src = with_device(
        r#"endpoint = "opc.tcp://10.0.0.5:4840"
  [[device.tag]]
  name = "t"
  address = "ns=2;s=T"
  byte_order = "CDAB"
"#,
    );
    let errors = parse_err(&src);
    assert_eq!(
        positions(&errors),
        vec![(20, 3, "unknown key `byte_order` in [[device.tag]]")],
        "{}",
        ConfigErrors(errors.clone())
    );
}
