//! The northbound's security (SPEC §5, README "Board config"): TLS to a broker whose certificate
//! the configured CA signed, client certificates, username and password; and the refusals: a
//! broker certificate from another CA, a missing client certificate, a wrong password. A
//! refused agent delivers nothing, says why in its log, keeps its samples and keeps retrying.
//! Certificates are made for each test; the test's own subscriber uses a plain listener of the
//! same broker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::common::*;
use crate::support::mqtt::Received;
use crate::support::seqcheck::check_payloads;
use crate::support::{free_port, AgentProcess, Collector, Mosquitto, TestDir};

/// What the publisher logs each time a connection attempt fails.
/// The first refusal of an outage is a warning (an error for a certificate problem), each retry
/// after it a debug line (the tests run the agent with `edge_agent=debug`) that says
/// "unreachable" and gives the reason.
const CONNECTION_LOST: &str = "unreachable";
/// How many failed attempts prove that a refused agent keeps retrying.
const RETRIES: usize = 3;
/// Fresh ports tried when the second listener's port was taken in the meantime.
const LISTENER_ATTEMPTS: usize = 4;

/// A certificate authority made for one test.
pub(crate) struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    /// Writes the CA certificate as `{name}.pem` and returns its path.
    pub(crate) fn write(&self, dir: &TestDir, name: &str) -> PathBuf {
        dir.write(&format!("{name}.pem"), self.cert.pem())
    }

    /// Issues a certificate for `names` (IP addresses or DNS names) with the given purpose and
    /// writes it as `{file}.pem` with its key as `{file}.key`; returns both paths.
    fn issue(
        &self,
        dir: &TestDir,
        file: &str,
        common_name: &str,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        (
            dir.write(&format!("{file}.pem"), cert.pem()),
            dir.write(&format!("{file}.key"), key.serialize_pem()),
        )
    }

    /// A broker certificate for 127.0.0.1 and localhost.
    pub(crate) fn issue_server(&self, dir: &TestDir, file: &str) -> (PathBuf, PathBuf) {
        self.issue(
            dir,
            file,
            "127.0.0.1",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }
}

/// A broker with its plain listener (for the test's subscriber) and a second listener on
/// another free port, configured by `options` (one `mosquitto.conf` line each, for that
/// listener), followed by `global` lines. Returns the broker and the second listener's port.
fn broker_with_listener(options: &[String], global: &[String]) -> (Mosquitto, u16) {
    let mut last_error = None;
    for _ in 0..LISTENER_ATTEMPTS {
        let port = free_port();
        let mut config = format!("listener {port} 127.0.0.1\n");
        for line in options.iter().chain(global) {
            config.push_str(line);
            config.push('\n');
        }
        match Mosquitto::start_with_config(&config) {
            Ok(broker) => return (broker, port),
            // The second port may have been taken between `free_port` and the broker's bind.
            Err(e) => last_error = Some(e),
        }
    }
    panic!("mosquitto with a second listener does not start: {last_error:?}")
}

/// The listener options of a TLS listener with this CA file and server certificate.
fn tls_listener(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        format!("cafile {}", ca.display()),
        format!("certfile {}", cert.display()),
        format!("keyfile {}", key.display()),
    ]
}

/// The board config of `config_toml` with the northbound pointed at `url` under `client_id`,
/// plus `extra` lines in the `[[northbound]]` table.
fn with_northbound(
    config: &str,
    plain_port: u16,
    url: &str,
    client_id: &str,
    extra: &[String],
) -> String {
    let old_url = format!("url = \"mqtt://127.0.0.1:{plain_port}\"");
    let old_id = "client_id = \"edge-gw-test-mes\"";
    assert!(
        config.contains(&old_url) && config.contains(old_id),
        "the base config changed shape:\n{config}"
    );
    let mut id_and_extra = format!("client_id = \"{client_id}\"");
    for line in extra {
        id_and_extra.push('\n');
        id_and_extra.push_str(line);
    }
    config
        .replace(&old_url, &format!("url = \"{url}\""))
        .replace(old_id, &id_and_extra)
}

/// Telemetry samples received from `device`.
fn samples_of(msgs: &[Received], device: &str) -> usize {
    check_payloads(
        ROOT,
        msgs.iter()
            .map(|m| (m.topic.as_str(), m.payload.as_slice())),
    )
    .get(device)
    .map_or(0, |r| r.samples)
}

/// Waits (bounded) until the agent has logged `pattern` at least `times` times.
async fn wait_log_count(agent: &mut AgentProcess, pattern: &str, times: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let log = agent.log();
        if log.matches(pattern).count() >= times {
            return;
        }
        assert!(
            agent.is_running(),
            "the agent exited while waiting for {pattern:?} ×{times}; log:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "the agent did not log {pattern:?} {times} times within {timeout:?}; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The log lines that contain `pattern`, for assertions on what a refusal says.
fn lines_with(log: &str, pattern: &str) -> String {
    log.lines()
        .filter(|l| l.contains(pattern))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that a refused agent keeps running and retrying, delivered nothing, keeps what it
/// polled in its store, and gave `reason` (case-insensitive) for the refusal.
async fn assert_refused(
    agent: &mut AgentProcess,
    collector: &Collector,
    data: &Path,
    device: &str,
    reason: &str,
) {
    wait_log_count(agent, CONNECTION_LOST, RETRIES, Duration::from_secs(30)).await;
    let log = agent.log();
    let refusals = lines_with(&log, CONNECTION_LOST);
    assert!(
        refusals.to_lowercase().contains(&reason.to_lowercase()),
        "the log says why the broker connection failed ({reason:?}):\n{refusals}"
    );
    assert!(agent.is_running(), "a refused agent keeps running");
    assert_eq!(
        samples_of(&collector.messages(), device),
        0,
        "nothing of {device} arrives through a refused connection"
    );
    wait_status(
        data,
        Duration::from_secs(10),
        "samples kept in the store",
        |s| pending(s) > 0 && pending(s) != u64::MAX,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_publishes_over_tls_to_a_broker_whose_certificate_its_ca_file_trusts() {
    let dir = TestDir::new();
    let ca = Ca::new("edge-agent test CA");
    let ca_file = ca.write(&dir, "ca");
    let (cert, key) = ca.issue_server(&dir, "broker");
    let (broker, tls_port) = broker_with_listener(&tls_listener(&ca_file, &cert, &key), &[]);
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let collector = Collector::start(broker.port(), "tls-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects over the plain listener");

    let data = dir.data_dir();
    let base = config_toml(
        &data,
        broker.port(),
        "per-tag",
        "",
        &[device(
            "filler",
            plc.local_addr().port(),
            50,
            counter_tags(),
        )],
    );
    let config = with_northbound(
        &base,
        broker.port(),
        &format!("mqtts://127.0.0.1:{tls_port}"),
        "edge-gw-test-mes",
        &[format!("ca_file = \"{}\"", ca_file.display())],
    );
    let path = dir.write_config(&config);
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");

    agent
        .wait_log("connected to broker", Duration::from_secs(20))
        .await
        .expect("the agent connects over TLS");
    collector
        .wait_for(|m| samples_of(m, "filler") >= 20, Duration::from_secs(20))
        .await
        .expect("telemetry sent over TLS arrives");
    assert!(
        broker.log().contains(&format!("on port {tls_port}")),
        "the agent came in through the TLS listener; broker log:\n{}",
        broker.log()
    );
    let status = collector
        .messages()
        .iter()
        .find(|m| m.topic == format!("{ROOT}/_gateway/gw-test/status"))
        .and_then(Received::json);
    assert_eq!(
        status.as_ref().map(|s| s["online"].clone()),
        Some(serde_json::json!(true)),
        "the online status also travels over TLS: {status:?}"
    );
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_client_certificates_admits_the_agent_with_one_and_refuses_it_without(
) {
    let dir = TestDir::new();
    let ca = Ca::new("edge-agent test CA");
    let ca_file = ca.write(&dir, "ca");
    let (cert, key) = ca.issue_server(&dir, "broker");
    let (client_cert, client_key) = ca.issue(
        &dir,
        "gateway",
        "gw-test",
        &["gw-test.edge.invalid"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let mut listener = tls_listener(&ca_file, &cert, &key);
    listener.push("require_certificate true".to_owned());
    let (broker, tls_port) = broker_with_listener(&listener, &[]);
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let collector = Collector::start(broker.port(), "mtls-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects over the plain listener");
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let ca_line = format!("ca_file = \"{}\"", ca_file.display());

    // Two agents side by side, each with its own store, client id and device name.
    let with_dir = TestDir::new();
    let with_base = config_toml(
        &with_dir.data_dir(),
        broker.port(),
        "per-tag",
        "",
        &[device(
            "certified",
            plc.local_addr().port(),
            50,
            counter_tags(),
        )],
    );
    let with_config = with_northbound(
        &with_base,
        broker.port(),
        &url,
        "edge-gw-certified",
        &[
            ca_line.clone(),
            format!("client_cert_file = \"{}\"", client_cert.display()),
            format!("client_key_file = \"{}\"", client_key.display()),
        ],
    );
    let without_data = dir.data_dir();
    let without_base = config_toml(
        &without_data,
        broker.port(),
        "per-tag",
        "",
        &[device(
            "uncertified",
            plc.local_addr().port(),
            50,
            counter_tags(),
        )],
    );
    let without_config = with_northbound(
        &without_base,
        broker.port(),
        &url,
        "edge-gw-uncertified",
        &[ca_line],
    );
    let mut without = AgentProcess::spawn(&bin(), &dir.write_config(&without_config), &[])
        .expect("agent without a client certificate starts");
    let mut with = AgentProcess::spawn(&bin(), &with_dir.write_config(&with_config), &[])
        .expect("agent with a client certificate starts");

    collector
        .wait_for(
            |m| samples_of(m, "certified") >= 20,
            Duration::from_secs(20),
        )
        .await
        .expect("the agent with a client certificate delivers");
    // The broker's TLS stack refuses the handshake for want of a certificate.
    assert_refused(
        &mut without,
        &collector,
        &without_data,
        "uncertified",
        "certificate",
    )
    .await;
    assert!(with.is_running());
    with.wait_log("connected to broker", Duration::from_secs(1))
        .await
        .expect("the certified agent logged its connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_and_password_from_the_environment_are_accepted_a_wrong_password_is_refused_and_neither_is_logged(
) {
    const USER: &str = "gateway";
    const PASSWORD: &str = "Pa55-right-7f1c9e";
    const WRONG: &str = "Pa55-wrong-0b2d44";
    let dir = TestDir::new();
    let passwd = dir.join("passwd");
    let out = Command::new(mosquitto_passwd())
        .arg("-c")
        .arg("-b")
        .arg(&passwd)
        .arg(USER)
        .arg(PASSWORD)
        .output()
        .expect("mosquitto_passwd runs");
    assert!(
        out.status.success(),
        "mosquitto_passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Anonymous clients (the test's subscriber) may only read; only `gateway` may publish, so
    // a delivery proves the agent authenticated. Mosquitto's security settings are global
    // unless set per listener before any other, which the shared base config rules out.
    let acl = dir.write(
        "acl",
        format!("topic read #\n\nuser {USER}\ntopic readwrite {ROOT}/#\n"),
    );
    let (broker, auth_port) = broker_with_listener(
        &[],
        &[
            format!("password_file {}", passwd.display()),
            format!("acl_file {}", acl.display()),
        ],
    );
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let collector = Collector::start(broker.port(), "auth-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("anonymous subscriber connects");
    let url = format!("mqtt://127.0.0.1:{auth_port}");
    let credentials = [
        format!("username = \"{USER}\""),
        "password_env = \"EDGE_TEST_MQTT_PASSWORD\"".to_owned(),
    ];

    let right_dir = TestDir::new();
    let right_base = config_toml(
        &right_dir.data_dir(),
        broker.port(),
        "per-tag",
        "",
        &[device(
            "trusted",
            plc.local_addr().port(),
            50,
            counter_tags(),
        )],
    );
    let right_config = with_northbound(
        &right_base,
        broker.port(),
        &url,
        "edge-gw-right",
        &credentials,
    );
    let wrong_data = dir.data_dir();
    let wrong_base = config_toml(
        &wrong_data,
        broker.port(),
        "per-tag",
        "",
        &[device(
            "impostor",
            plc.local_addr().port(),
            50,
            counter_tags(),
        )],
    );
    let wrong_config = with_northbound(
        &wrong_base,
        broker.port(),
        &url,
        "edge-gw-wrong",
        &credentials,
    );
    let mut wrong = AgentProcess::spawn(
        &bin(),
        &dir.write_config(&wrong_config),
        &[("EDGE_TEST_MQTT_PASSWORD", WRONG)],
    )
    .expect("agent with a wrong password starts");
    let mut right = AgentProcess::spawn(
        &bin(),
        &right_dir.write_config(&right_config),
        &[("EDGE_TEST_MQTT_PASSWORD", PASSWORD)],
    )
    .expect("agent with the right password starts");

    collector
        .wait_for(|m| samples_of(m, "trusted") >= 20, Duration::from_secs(20))
        .await
        .expect("the agent with the right password delivers");
    assert!(
        broker.log().contains(&format!("u'{USER}'")),
        "the broker saw the user name; broker log:\n{}",
        broker.log()
    );
    // MQTT 3.1.1 answers a bad password with CONNACK 5, "not authorized", logged in words.
    assert_refused(
        &mut wrong,
        &collector,
        &wrong_data,
        "impostor",
        "broker refused the connection: not authorised",
    )
    .await;
    assert!(right.is_running());

    for (name, agent) in [("right", &right), ("wrong", &wrong)] {
        let log = agent.log();
        for secret in [PASSWORD, WRONG] {
            assert!(
                !log.contains(secret),
                "the {name} agent's log must not contain a password"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_signed_by_another_ca_is_an_error_naming_the_ca_file_and_nothing_is_delivered(
) {
    let dir = TestDir::new();
    let trusted = Ca::new("edge-agent test CA");
    let trusted_file = trusted.write(&dir, "ca");
    let rogue = Ca::new("someone else's CA");
    let rogue_file = rogue.write(&dir, "rogue-ca");
    let (cert, key) = rogue.issue_server(&dir, "broker");
    let (broker, tls_port) = broker_with_listener(&tls_listener(&rogue_file, &cert, &key), &[]);
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let collector = Collector::start(broker.port(), "rogue-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects over the plain listener");

    let data = dir.data_dir();
    let base = config_toml(
        &data,
        broker.port(),
        "per-tag",
        "",
        &[device(
            "filler",
            plc.local_addr().port(),
            50,
            counter_tags(),
        )],
    );
    let config = with_northbound(
        &base,
        broker.port(),
        &format!("mqtts://127.0.0.1:{tls_port}"),
        "edge-gw-test-mes",
        &[format!("ca_file = \"{}\"", trusted_file.display())],
    );
    let mut agent =
        AgentProcess::spawn(&bin(), &dir.write_config(&config), &[]).expect("agent starts");

    // rustls names the failed check: the broker's certificate has an issuer we do not trust.
    assert_refused(&mut agent, &collector, &data, "filler", "UnknownIssuer").await;
    // An operator must act, so it is an error in words, once, and not an outage warning.
    let log = agent.log();
    let errors = lines_with(&log, " ERROR ");
    let ca = trusted_file.display().to_string();
    let problem = lines_with(&errors, "certificate problem");
    assert_eq!(
        problem.lines().count(),
        1,
        "one error, not one per retry:\n{log}"
    );
    for words in [
        "the broker's certificate is not signed by a CA in the ca_file",
        "UnknownIssuer",
        ca.as_str(),
    ] {
        assert!(
            problem.contains(words),
            "the error says {words:?}:\n{problem}"
        );
    }
    assert!(
        !log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("broker unreachable")),
        "a certificate problem is not reported as an unreachable broker:\n{log}"
    );
    assert!(
        !agent.log().contains("connected to broker"),
        "no connection was ever established"
    );
    assert!(
        collector
            .messages()
            .iter()
            .all(|m| !m.topic.contains("/_gateway/")),
        "not even the online status arrives"
    );
}

/// `mosquitto_passwd`, shipped with the broker: on `PATH`, or next to the broker.
fn mosquitto_passwd() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let beside_broker = crate::support::mosquitto::mosquitto_binary()
        .and_then(|b| b.parent().map(Path::to_path_buf));
    on_path
        .into_iter()
        .chain(beside_broker)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join("mosquitto_passwd"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mosquitto_passwd not found: it comes with the broker (apt-get install mosquitto)"
            )
        })
}
