//! OPC UA devices in the board config as technicians write them, right and wrong: endpoint,
//! security, identity, subscription and polling tags with their defaults, and every mistake
//! reported at once at its exact line and column.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_config::{parse, Config, ConfigError, ConfigErrors, OpcUa, Protocol, SecretSource};
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
    assert!(dev.tags.is_empty(), "OPC UA tags live in the protocol");
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
    assert_eq!(ua.split(), (1, 1));
    assert_eq!(
        ua.tags[0].mode,
        TagMode::Subscription {
            publishing_interval: Duration::from_millis(1000),
            sampling_interval: Duration::from_millis(1000),
            queue_size: 10,
            deadband: Deadband::None,
        }
    );
    assert_eq!(
        ua.tags[1].mode,
        TagMode::Polling {
            interval: Duration::from_millis(1000),
            deadband: None,
            heartbeat: None,
        }
    );
    assert_eq!(ua.tags[0].node.to_string(), "ns=2;s=Filler.Temperature");
    assert_eq!(ua.tags[0].data_type, None);
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
    assert_eq!(ua.tags[0].data_type, Some(DataType::U32));
    assert_eq!(
        ua.tags[0].mode,
        TagMode::Polling {
            interval: Duration::from_millis(250),
            deadband: Some(0.0),
            heartbeat: Some(Duration::from_secs(30)),
        }
    );
    assert_eq!(
        ua.tags[1].mode,
        TagMode::Subscription {
            publishing_interval: Duration::from_millis(200),
            sampling_interval: Duration::from_millis(50),
            queue_size: 4,
            deadband: Deadband::Percent(2.5),
        }
    );
    assert_eq!(ua.tags[1].scale, 0.1);
    assert!(ua.tags[1].writable);
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
    assert_eq!(ua.split(), (4, 2));
}
