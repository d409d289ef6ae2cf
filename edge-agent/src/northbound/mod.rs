//! The northbounds: the UNS JSON publisher with the MES events ([`uns`]), the Sparkplug B edge
//! node ([`sparkplug`]), and the commands both take back ([`commands`]). The UNS publisher is
//! put together from pieces with one job each: the in-flight [`window`], the record
//! [`encode`]rs, the connection's I/O task ([`link`]) and the cursor writer ([`acks`]).
//! This module holds what every publisher shares, whatever its payload format: the transport
//! (plain TCP, or TLS with the configured CA and client certificate), why a connection ended
//! ([`NorthboundError`]), when the reconnect backoff starts over, the stop signal, and reading
//! committed records in order from a northbound's cursor with a read-ahead bounded in bytes.

pub mod acks;
pub mod commands;
pub mod encode;
pub mod link;
pub mod mqtt;
pub mod pace;
pub mod safety;
pub mod sparkplug;
pub mod uns;
pub mod walk;
pub mod window;

use std::collections::VecDeque;
use std::time::Duration;

use edge_config::{BrokerUrl, TlsFiles};
use edge_driver::Backoff;
use edge_model::Batch;
use edge_store::{RecordId, Store, StoreError};
use rumqttc::{ClientError, ConnectionError, TlsConfiguration, TlsError, Transport};
use rustls::{AlertDescription, CertificateError};
use tokio::sync::watch;
use tracing::{debug, error};

/// Records read from the store in one go when the reader runs dry, at most.
pub const READ_CHUNK: usize = 64;
/// The share of a northbound's byte budget (`max_inflight_bytes`) the read-ahead may take.
const READ_AHEAD_SHARE: usize = 4;
/// A connection that stayed up this long resets the reconnect backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0} uses TLS but no ca_file is configured")]
    NoCaFile(String),
}

/// Why a northbound's connection ended (or could not start), as logged and shown in its
/// `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum NorthboundError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot read the store: {0}")]
    Store(#[from] StoreError),
    #[error("MQTT client refused a publish: {0}")]
    Client(Box<mqtt::ClientError>),
    #[error("cannot subscribe: {0}")]
    Subscribe(Box<ClientError>),
    /// The broker refused the connection, in words.
    #[error("broker refused the connection: {0}")]
    Refused(String),
    #[error(transparent)]
    Connection(Box<ConnectionError>),
    #[error(transparent)]
    Mqtt5(Box<rumqttc::v5::ConnectionError>),
    /// MQTT 5: the broker ended the connection with DISCONNECT, in words.
    #[error("the broker disconnected: {0}")]
    ServerDisconnect(String),
    /// MQTT 5: the broker answered a PUBACK with a failure; the message stays unacknowledged
    /// and goes again on the next connection.
    #[error("the broker did not take a message on {topic}: {why}")]
    MessageRefused { topic: String, why: String },
    /// MQTT 5: a message is larger than the broker's maximum packet size; it stays in the
    /// store, unacknowledged, until the broker's limit or the northbound's batching changes.
    #[error("a message on {topic} is {bytes} bytes, more than the broker's maximum packet size of {max} bytes; it stays in the store (raise the broker's limit, or use batching = \"per-tag\")")]
    TooLargeForBroker {
        topic: String,
        bytes: usize,
        max: u32,
    },
    /// A TLS certificate problem, in words an operator can act on ([`certificate_problem`]);
    /// logged as an error, not as an outage.
    #[error("{0}")]
    Certificate(String),
    #[error("the connection's I/O task stopped")]
    LinkClosed,
    /// Sparkplug: the primary host went offline, so the node ends its session.
    #[error("the primary host went offline")]
    PrimaryHostOffline,
    /// Sparkplug: the primary host sent `Node Control/Next Server`.
    #[error("the primary host asked for the next server (Node Control/Next Server)")]
    NextServer,
}

impl From<ClientError> for NorthboundError {
    fn from(e: ClientError) -> Self {
        NorthboundError::Client(Box::new(mqtt::ClientError::from(e)))
    }
}

impl From<mqtt::ClientError> for NorthboundError {
    fn from(e: mqtt::ClientError) -> Self {
        NorthboundError::Client(Box::new(e))
    }
}

impl From<ConnectionError> for NorthboundError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::ConnectionRefused(code) => {
                NorthboundError::Refused(mqtt::connect_refusal_v4(code).to_owned())
            }
            e => NorthboundError::Connection(Box::new(e)),
        }
    }
}

/// The northbound's username and password, when it has them (for either MQTT client).
pub fn credentials(nb: &edge_config::Northbound) -> Option<(String, &str)> {
    let c = nb.credentials.as_ref()?;
    let password = c.password.as_ref().map(|p| p.expose()).unwrap_or("");
    Some((c.username.clone(), password))
}

/// The northbound's username and password on `o`, when it has them.
pub fn set_credentials(o: &mut rumqttc::MqttOptions, nb: &edge_config::Northbound) {
    if let Some((user, password)) = credentials(nb) {
        o.set_credentials(user, password);
    }
}

/// How one connection of a publisher ended.
#[derive(Debug)]
pub enum SessionEnd {
    Shutdown,
    Lost(NorthboundError),
    /// Left a fallback broker on purpose: the preferred one is back (UNS).
    BackToPreferred,
}

fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// The rumqttc transport for a broker URL: TCP for `mqtt://`, TLS for `mqtts://` with the CA
/// bundle and the optional client certificate read from disk now.
pub fn transport(url: &BrokerUrl, tls: Option<&TlsFiles>) -> Result<Transport, TransportError> {
    if !url.tls {
        return Ok(Transport::Tcp);
    }
    let Some(tls) = tls else {
        return Err(TransportError::NoCaFile(url.to_string()));
    };
    let ca = read_file("CA file", &tls.ca_file)?;
    let client_auth = match &tls.client_cert {
        Some((cert, key)) => Some((
            read_file("client certificate", cert)?,
            read_file("client key", key)?,
        )),
        None => None,
    };
    Ok(Transport::Tls(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

/// A failed connection that is a certificate problem, in words an operator can act on (which
/// certificate, which file, what is wrong with it), or `None` for any other failure. Waiting
/// for the broker does not fix these, so they are logged as errors, not as an outage.
pub fn certificate_problem(e: &ConnectionError, tls: Option<&TlsFiles>) -> Option<String> {
    match e {
        ConnectionError::Tls(t) => certificate_problem_of(Some(t), None, tls),
        ConnectionError::Io(io) => certificate_problem_of(None, Some(io), tls),
        _ => None,
    }
}

/// [`certificate_problem`] of the TLS or I/O error of either MQTT client.
pub fn certificate_problem_of(
    tls_error: Option<&TlsError>,
    io: Option<&std::io::Error>,
    tls: Option<&TlsFiles>,
) -> Option<String> {
    let tls = tls?;
    let ca = tls.ca_file.display();
    let tls_error = match (tls_error, io) {
        (Some(t), _) => t,
        // A handshake that fails after the TCP connection carries rustls' error inside the
        // I/O error (tokio-rustls), whichever layer returned it.
        (None, Some(io)) => return rustls_inner(io).and_then(|r| rustls_problem(r, tls)),
        (None, None) => return None,
    };
    match tls_error {
        TlsError::Io(io) => rustls_inner(io).and_then(|r| rustls_problem(r, tls)),
        TlsError::TLS(r) => rustls_problem(r, tls).or_else(|| {
            Some(format!(
                "the client certificate and key cannot be used together ({r})"
            ))
        }),
        TlsError::NoValidCertInChain => Some(format!(
            "ca_file {ca} holds no PEM certificate, so no broker certificate can be checked"
        )),
        TlsError::NoValidClientCertInChain => tls.client_cert.as_ref().map(|(cert, _)| {
            format!(
                "client_cert_file {} holds no PEM certificate",
                cert.display()
            )
        }),
        TlsError::NoValidKeyInChain => tls.client_cert.as_ref().map(|(_, key)| {
            format!(
                "client_key_file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                key.display()
            )
        }),
        TlsError::WebPki(w) => Some(format!(
            "the broker's certificate is not accepted ({w}); checked against ca_file {ca}"
        )),
        _ => None,
    }
}

fn rustls_inner(io: &std::io::Error) -> Option<&rustls::Error> {
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

fn rustls_problem(e: &rustls::Error, tls: &TlsFiles) -> Option<String> {
    let ca = tls.ca_file.display();
    match e {
        rustls::Error::InvalidCertificate(c) => {
            let what = match c {
                CertificateError::UnknownIssuer => "is not signed by a CA in the ca_file",
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "has expired"
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "is not valid yet (is the gateway's clock right?)"
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "is not issued for the host name of the url"
                }
                CertificateError::Revoked => "is revoked",
                CertificateError::BadSignature => "has a signature that does not verify",
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                    "is not a server certificate (extended key usage)"
                }
                _ => "is not accepted",
            };
            Some(format!(
                "the broker's certificate {what} ({e}); checked against ca_file {ca}"
            ))
        }
        rustls::Error::NoCertificatesPresented => Some(format!(
            "the broker presented no certificate to check against ca_file {ca}"
        )),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::UnknownCA),
        ) => Some(match &tls.client_cert {
            Some((cert, _)) => format!(
                "the broker refused the gateway's client certificate {} ({alert:?})",
                cert.display()
            ),
            None => format!(
                "the broker asks for a client certificate ({alert:?}); configure client_cert_file and client_key_file"
            ),
        }),
        _ => None,
    }
}

/// Logs certificate problems: a new one at ERROR, the same one again at debug, so a retry
/// every few seconds does not fill the journal.
#[derive(Debug, Default)]
pub struct CertificateReport {
    last: Option<String>,
}

impl CertificateReport {
    pub fn report(
        &mut self,
        northbound: &str,
        url: &BrokerUrl,
        tls: Option<&TlsFiles>,
        reason: &str,
        retry_in: Duration,
    ) {
        let ca_file = tls
            .map(|t| t.ca_file.display().to_string())
            .unwrap_or_default();
        if self.last.as_deref() == Some(reason) {
            debug!(
                northbound,
                reason,
                ?retry_in,
                "broker still unreachable: certificate problem"
            );
            return;
        }
        error!(northbound, %url, ca_file, reason, ?retry_in,
            "certificate problem: the TLS handshake with the broker failed and retrying will not fix it; samples stay in the store until the certificate or ca_file is fixed");
        self.last = Some(reason.to_owned());
    }

    /// A connection succeeded: the next problem is new again.
    pub fn clear(&mut self) {
        self.last = None;
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone), holding no borrow after.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// How long to wait before reconnecting to the broker after a connection that lasted
/// `lasted`: one that stayed up [`STABLE_CONNECTION`] starts the backoff over.
pub fn reconnect_wait(backoff: &mut Backoff, lasted: Duration) -> Duration {
    if lasted >= STABLE_CONNECTION {
        backoff.reset();
    }
    backoff.next_wait()
}

/// Reads one northbound's records in order from a position, a chunk at a time. A chunk holds
/// at most [`READ_CHUNK`] records and, once the reader has seen how large records are, about
/// a quarter of the northbound's byte budget of samples, so a backlog of large records costs
/// no more memory than one of small ones.
#[derive(Debug)]
pub struct StoreReader {
    /// The next record id to ask the store for.
    next_to_read: RecordId,
    /// Records read but not yet taken (at most one chunk).
    ahead: VecDeque<(RecordId, Batch)>,
    /// Records to read at the next refill.
    chunk: usize,
    /// What the read-ahead may hold, in bytes of samples.
    ahead_bytes: usize,
}

impl StoreReader {
    /// A reader from `from` whose read-ahead stays within about a quarter of `budget_bytes`.
    pub fn new(from: RecordId, budget_bytes: usize) -> StoreReader {
        StoreReader {
            next_to_read: from,
            ahead: VecDeque::new(),
            // Small until the size of a record is known.
            chunk: 4,
            ahead_bytes: (budget_bytes / READ_AHEAD_SHARE).max(1),
        }
    }

    /// Records to read next time, from the size of the records just read.
    fn resize(&mut self, records: &[(RecordId, Batch)]) {
        let samples: usize = records.iter().map(|(_, b)| b.samples.len()).sum();
        let per_record =
            (samples / records.len().max(1)).max(1) * std::mem::size_of::<edge_model::Sample>();
        self.chunk = (self.ahead_bytes / per_record).clamp(1, READ_CHUNK);
    }

    /// The id of the next record [`StoreReader::next`] returns, or the first id not yet read.
    pub fn position(&self) -> RecordId {
        self.ahead.front().map_or(self.next_to_read, |(id, _)| *id)
    }

    /// The next committed record, or `None` when every record on disk was taken.
    pub fn next(
        &mut self,
        store: &Store,
        northbound: &str,
    ) -> Result<Option<(RecordId, Batch)>, StoreError> {
        if self.ahead.is_empty() {
            if self.next_to_read >= store.next_id() {
                return Ok(None);
            }
            let records = store.read(northbound, self.next_to_read, self.chunk)?;
            let Some((last, _)) = records.last() else {
                return Ok(None);
            };
            self.next_to_read = last + 1;
            self.resize(&records);
            self.ahead.extend(records);
        }
        Ok(self.ahead.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(client: bool) -> TlsFiles {
        TlsFiles {
            ca_file: "/etc/edge-agent/ca.pem".into(),
            client_cert: client.then(|| {
                (
                    "/etc/edge-agent/gw.crt".into(),
                    "/etc/edge-agent/gw.key".into(),
                )
            }),
        }
    }

    fn handshake(e: rustls::Error) -> ConnectionError {
        ConnectionError::Tls(TlsError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        )))
    }

    #[test]
    fn a_broker_certificate_from_another_ca_names_the_ca_file() {
        let e = handshake(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            certificate_problem(&e, Some(&tls(false))).as_deref(),
            Some("the broker's certificate is not signed by a CA in the ca_file (invalid peer certificate: UnknownIssuer); checked against ca_file /etc/edge-agent/ca.pem")
        );
    }

    #[test]
    fn a_certificate_error_found_after_the_handshake_is_still_a_certificate_problem() {
        let e = ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        ));
        let p = certificate_problem(&e, Some(&tls(false))).expect("certificate problem");
        assert!(p.starts_with("the broker's certificate has expired"), "{p}");
    }

    #[test]
    fn a_refused_client_certificate_names_it_and_a_missing_one_says_what_to_configure() {
        let e = || {
            handshake(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired,
            ))
        };
        let with = certificate_problem(&e(), Some(&tls(true))).expect("problem");
        assert!(
            with.contains("client certificate /etc/edge-agent/gw.crt"),
            "{with}"
        );
        let without = certificate_problem(&e(), Some(&tls(false))).expect("problem");
        assert!(
            without.contains("configure client_cert_file and client_key_file"),
            "{without}"
        );
    }

    #[test]
    fn a_broker_that_is_down_or_a_plain_connection_is_not_a_certificate_problem() {
        let refused = || {
            ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))
        };
        assert_eq!(certificate_problem(&refused(), Some(&tls(false))), None);
        assert_eq!(
            certificate_problem(&ConnectionError::NetworkTimeout, Some(&tls(false))),
            None
        );
        let bad_cert = handshake(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(certificate_problem(&bad_cert, None), None);
        assert_eq!(
            certificate_problem(&ConnectionError::Tls(TlsError::NoValidCertInChain), Some(&tls(false))).as_deref(),
            Some("ca_file /etc/edge-agent/ca.pem holds no PEM certificate, so no broker certificate can be checked")
        );
    }

    #[test]
    fn short_connections_keep_doubling_the_backoff() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..3 {
            reconnect_wait(&mut b, STABLE_CONNECTION / 2);
        }
        assert_eq!(b.step(), Duration::from_millis(800));
    }

    #[test]
    fn a_stable_connection_starts_the_backoff_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            reconnect_wait(&mut b, Duration::ZERO);
        }
        let w = reconnect_wait(&mut b, STABLE_CONNECTION);
        assert!(w <= Duration::from_millis(100), "{w:?}");
    }
}
