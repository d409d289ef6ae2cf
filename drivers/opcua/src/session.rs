//! One OPC UA session, from nothing to usable: the endpoint the server offers for the configured
//! security, the identity, the secure channel and the activated session, then the server's
//! operation limits and namespace array. The session makes exactly one connection attempt: when
//! it is lost, the device task throws it away and builds a new one, so recovery after a server
//! restart never depends on state the server has forgotten.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opcua::client::{
    ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore, Session,
    SessionPollResult,
};
use opcua::crypto::X509;
use opcua::types::{
    AttributeId, DataChangeNotification, DataValue, EndpointDescription, MessageSecurityMode,
    NamespaceMap, NodeId, NotificationMessage, QualifiedName, ReadValueId,
    StatusChangeNotification, StatusCode, TimestampsToReturn, VariableId, Variant,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::node::{Identifier, Namespace, NodeAddress};
use crate::pki::{cert_file_name, Pki};
use crate::spec::{DeviceSpec, Identity, SecurityMode, SecurityPolicy};

/// Notifications buffered between the session's event loop and the device task, in publish
/// responses (each carries many values). Beyond it notifications are dropped and counted.
pub const NOTIFICATION_QUEUE: usize = 1024;

/// The longest array the session decodes (a publish holds at most
/// [`MAX_NOTIFICATIONS_PER_PUBLISH`] values; a browse or a Read may hold more).
const MAX_ARRAY: usize = 100_000;
/// The largest message the session sends or takes.
const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// Values per publish response asked of the server, so one response stays a few tens of KiB.
pub const MAX_NOTIFICATIONS_PER_PUBLISH: u32 = 1000;

/// Used when the server does not publish an operation limit.
const FALLBACK_NODES_PER_CALL: usize = 1000;

/// Why a session could not be established.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("no answer from {endpoint} within {limit:?}")]
    Timeout { endpoint: String, limit: Duration },
    #[error("cannot get the endpoints of {endpoint}: {status}")]
    Discovery { endpoint: String, status: String },
    #[error("the server offers no endpoint with security {policy}/{mode}; it offers {offered}")]
    NoMatchingEndpoint {
        policy: SecurityPolicy,
        mode: SecurityMode,
        offered: String,
    },
    #[error("the server's certificate is not trusted; it was saved as {}", path.display())]
    Untrusted {
        path: std::path::PathBuf,
        thumbprint: String,
    },
    #[error("the server refused the user identity ({identity}): {status}")]
    Identity { identity: String, status: String },
    #[error("the user certificate or key cannot be read: {0}")]
    IdentityFiles(String),
    #[error("the gateway's certificate cannot be used: {0}")]
    OwnCertificate(String),
    #[error("the session could not be established: {0}")]
    Session(String),
}

/// What the session's event loop reports to the device task.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    Connected,
    /// The connection is gone (server stopped, network cut, keep-alives failed).
    Lost(StatusCode),
}

/// What subscriptions deliver.
#[derive(Debug)]
pub enum Notification {
    /// Values of one publish response: (client handle, value).
    Data(Vec<(u32, DataValue)>),
    /// The server changed a subscription's state (for example it timed out).
    Status(StatusCode),
}

/// The server's operation limits that batch the gateway's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub nodes_per_read: usize,
    pub nodes_per_write: usize,
    pub items_per_call: usize,
}

impl Limits {
    /// A published limit of 0 means none; the configured cap (0: none) applies on top.
    pub fn from_server(read: u32, write: u32, items: u32, configured_read_cap: u32) -> Limits {
        let pick = |server: u32| match server {
            0 => FALLBACK_NODES_PER_CALL,
            n => n as usize,
        };
        let mut nodes_per_read = pick(read);
        if configured_read_cap > 0 {
            nodes_per_read = nodes_per_read.min(configured_read_cap as usize);
        }
        Limits {
            nodes_per_read,
            nodes_per_write: pick(write),
            items_per_call: pick(items),
        }
    }
}

/// An established session and the channels it reports on.
pub struct Connection {
    pub session: Arc<Session>,
    pub events: mpsc::Receiver<LinkEvent>,
    pub namespaces: NamespaceMap,
    pub limits: Limits,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Closes the session politely (bounded), then stops its event loop.
    pub async fn close(self, limit: Duration) {
        let _ = timeout(limit, self.session.disconnect()).await;
        self.driver.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A connection dropped without `close` (lost, or the task stopping) must not leave its
        // event loop running.
        self.driver.abort();
    }
}

/// Makes one attempt to connect, create and activate a session, bounded by the request
/// timeout for each step.
pub async fn connect(spec: &DeviceSpec) -> Result<Connection, ConnectError> {
    let pki = Pki::new(&spec.pki.dir);
    let mut client = ClientBuilder::new()
        .application_name(spec.pki.application_name.clone())
        .application_uri(spec.pki.application_uri.clone())
        .product_uri("urn:edge-agent")
        .pki_dir(pki.dir().to_path_buf())
        .create_sample_keypair(false)
        .trust_server_certs(spec.pki.trust_on_first_use)
        .session_retry_limit(0)
        .session_timeout(millis_u32(spec.session_timeout))
        .request_timeout(spec.request_timeout)
        .keep_alive_interval(spec.keep_alive)
        .max_failed_keep_alive_count(2)
        .recreate_subscriptions(false)
        // Large address spaces and busy subscriptions send long arrays and big messages; the
        // stack's defaults (1000 elements, 320 KiB) would drop the session on them.
        .max_array_length(MAX_ARRAY)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_chunk_count(MAX_MESSAGE_BYTES / 65_535 + 1)
        .session_name(format!("edge-agent {}", spec.name))
        .client()
        .map_err(|e| ConnectError::Session(e.join("; ")))?;

    let limit = spec.request_timeout;
    let endpoints = match timeout(
        limit,
        client.get_server_endpoints_from_url(spec.endpoint.as_str()),
    )
    .await
    {
        Err(_) => {
            return Err(ConnectError::Timeout {
                endpoint: spec.endpoint.clone(),
                limit,
            })
        }
        Ok(Err(e)) => {
            return Err(ConnectError::Discovery {
                endpoint: spec.endpoint.clone(),
                status: e.to_string(),
            })
        }
        Ok(Ok(e)) => e,
    };
    let mut endpoint = matching_endpoint(&endpoints, spec)?;
    // The server may advertise a host name the gateway cannot resolve: the configured URL is
    // the one known to work.
    endpoint.endpoint_url = spec.endpoint.as_str().into();
    let server_cert = (spec.security_policy != SecurityPolicy::None)
        .then(|| X509::from_byte_string(&endpoint.server_certificate).ok())
        .flatten();

    let token = identity_token(&spec.identity)?;
    let (session, event_loop) = client
        .connect_to_endpoint_directly(endpoint, token)
        .map_err(|e| ConnectError::Session(e.to_string()))?;

    let (tx, mut events) = mpsc::channel(8);
    let driver = tokio::spawn(drive(event_loop, tx));
    // Creating and activating the session takes a few round trips (and the key exchange).
    let first = timeout(limit * 3, events.recv()).await;
    let lost = match first {
        Ok(Some(LinkEvent::Connected)) => None,
        Ok(Some(LinkEvent::Lost(code))) => Some(code),
        Ok(None) => Some(StatusCode::BadConnectionClosed),
        Err(_) => {
            driver.abort();
            return Err(ConnectError::Timeout {
                endpoint: spec.endpoint.clone(),
                limit: limit * 3,
            });
        }
    };
    if let Some(code) = lost {
        driver.abort();
        return Err(classify_failure(code, spec, &pki, server_cert.as_ref()));
    }

    let (namespaces, limits) = match timeout(limit, read_server_facts(&session, spec)).await {
        Ok(Ok(facts)) => facts,
        Ok(Err(status)) => {
            driver.abort();
            return Err(ConnectError::Session(format!(
                "reading the server's namespaces and limits failed: {status}"
            )));
        }
        Err(_) => {
            driver.abort();
            return Err(ConnectError::Timeout {
                endpoint: spec.endpoint.clone(),
                limit,
            });
        }
    };
    Ok(Connection {
        session,
        events,
        namespaces,
        limits,
        driver,
    })
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Runs the session's event loop, reporting the first connection and its loss. It stops at the
/// loss: reconnecting is the device task's decision.
async fn drive<T>(event_loop: opcua::client::SessionEventLoop<T>, tx: mpsc::Sender<LinkEvent>)
where
    T: opcua::client::transport::Connector + Send + Sync + 'static,
{
    let stream = event_loop.enter();
    futures::pin_mut!(stream);
    loop {
        let event = match stream.next().await {
            Some(Ok(SessionPollResult::Reconnected(_))) => LinkEvent::Connected,
            Some(Ok(SessionPollResult::ConnectionLost(code))) => LinkEvent::Lost(code),
            Some(Ok(SessionPollResult::ReconnectFailed(code))) => LinkEvent::Lost(code),
            Some(Ok(_)) => continue,
            Some(Err(code)) => LinkEvent::Lost(code),
            None => LinkEvent::Lost(StatusCode::BadConnectionClosed),
        };
        let last = matches!(event, LinkEvent::Lost(_));
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}

/// The server's endpoint for the configured policy and mode; when the server offers it under
/// several paths, the one matching the configured URL's path.
fn matching_endpoint(
    endpoints: &[EndpointDescription],
    spec: &DeviceSpec,
) -> Result<EndpointDescription, ConnectError> {
    let mode = match spec.security_mode {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    };
    let candidates: Vec<&EndpointDescription> = endpoints
        .iter()
        .filter(|e| {
            e.security_mode == mode && e.security_policy_uri.as_ref() == spec.security_policy.uri()
        })
        .collect();
    let wanted_path = url_path(&spec.endpoint);
    candidates
        .iter()
        .find(|e| url_path(e.endpoint_url.as_ref()) == wanted_path)
        .or(candidates.first())
        .map(|e| (*e).clone())
        .ok_or_else(|| ConnectError::NoMatchingEndpoint {
            policy: spec.security_policy,
            mode: spec.security_mode,
            offered: offered_security(endpoints),
        })
}

/// "None/None, Basic256Sha256/SignAndEncrypt" for messages.
pub fn offered_security(endpoints: &[EndpointDescription]) -> String {
    let mut offered: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let policy = SecurityPolicy::from_uri(e.security_policy_uri.as_ref())
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| {
                    e.security_policy_uri
                        .as_ref()
                        .rsplit('#')
                        .next()
                        .unwrap_or("?")
                        .to_owned()
                });
            format!("{policy}/{:?}", e.security_mode)
        })
        .collect();
    offered.sort();
    offered.dedup();
    if offered.is_empty() {
        "no endpoints".to_owned()
    } else {
        offered.join(", ")
    }
}

/// The path of an `opc.tcp://host:port/path` URL, without trailing slashes.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or("", |i| &rest[i..])
        .trim_end_matches('/')
}

fn identity_token(identity: &Identity) -> Result<IdentityToken, ConnectError> {
    Ok(match identity {
        Identity::Anonymous => IdentityToken::Anonymous,
        Identity::UserName { user, password } => {
            IdentityToken::new_user_name(user.clone(), password.expose().to_owned())
        }
        Identity::X509 { cert, key } => IdentityToken::new_x509_path(cert, key)
            .map_err(|e| ConnectError::IdentityFiles(e.to_string()))?,
    })
}

/// Turns the status a failed session attempt ended with into what a technician can act on.
fn classify_failure(
    code: StatusCode,
    spec: &DeviceSpec,
    pki: &Pki,
    server_cert: Option<&X509>,
) -> ConnectError {
    if let Some(cert) = server_cert {
        let path = pki.rejected_dir().join(cert_file_name(cert));
        if path.exists() {
            return ConnectError::Untrusted {
                path,
                thumbprint: cert.thumbprint().as_hex_string(),
            };
        }
    }
    if matches!(
        code,
        StatusCode::BadIdentityTokenInvalid
            | StatusCode::BadIdentityTokenRejected
            | StatusCode::BadUserAccessDenied
            | StatusCode::BadUserSignatureInvalid
    ) {
        return ConnectError::Identity {
            identity: spec.identity.describe(),
            status: status_text(code),
        };
    }
    if matches!(
        code,
        StatusCode::BadCertificateInvalid | StatusCode::BadSecurityChecksFailed
    ) && spec.security_policy != SecurityPolicy::None
        && !pki.own_cert_path().exists()
    {
        return ConnectError::OwnCertificate(format!(
            "{} is missing",
            pki.own_cert_path().display()
        ));
    }
    ConnectError::Session(status_text(code))
}

/// `BadNodeIdUnknown (The node id refers to a node that does not exist in the server address space.)`
pub fn status_text(code: StatusCode) -> String {
    let sub = code.sub_code();
    let description = sub.description();
    if description.is_empty() {
        code.to_string()
    } else {
        format!("{code} ({})", description.trim_end_matches('.'))
    }
}

/// The namespace array and the operation limits, in one Read.
async fn read_server_facts(
    session: &Session,
    spec: &DeviceSpec,
) -> Result<(NamespaceMap, Limits), String> {
    let ids = [
        VariableId::Server_NamespaceArray,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerWrite,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    ];
    let nodes: Vec<ReadValueId> = ids.iter().map(|id| value_of(id.into())).collect();
    let values = session
        .read(&nodes, TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| e.to_string())?;
    let limit = |i: usize| -> u32 {
        values
            .get(i)
            .filter(|v| v.status().is_good())
            .and_then(|v| match &v.value {
                Some(Variant::UInt32(n)) => Some(*n),
                _ => None,
            })
            .unwrap_or(0)
    };
    let mut namespaces = NamespaceMap::new();
    if let Some(Variant::Array(array)) = values.first().and_then(|v| v.value.as_ref()) {
        for uri in array.values.iter() {
            if let Variant::String(s) = uri {
                namespaces.add_namespace(s.as_ref());
            }
        }
    }
    Ok((
        namespaces,
        Limits::from_server(limit(1), limit(2), limit(3), spec.max_nodes_per_read),
    ))
}

/// A ReadValueId for the Value attribute of `node`.
pub fn value_of(node: NodeId) -> ReadValueId {
    ReadValueId {
        node_id: node,
        attribute_id: AttributeId::Value as u32,
        index_range: Default::default(),
        data_encoding: QualifiedName::null(),
    }
}

/// The node id on this server, or why the configured one cannot be used (its namespace URI is
/// not in the server's namespace array).
pub fn resolve(node: &NodeAddress, namespaces: &NamespaceMap) -> Result<NodeId, String> {
    let ns = match &node.namespace {
        Namespace::Index(i) => *i,
        Namespace::Uri(uri) => namespaces.get_index(uri).ok_or_else(|| {
            format!("the server has no namespace `{uri}` (see its Server.NamespaceArray)")
        })?,
    };
    Ok(match &node.identifier {
        Identifier::Numeric(n) => NodeId::new(ns, *n),
        Identifier::String(s) => NodeId::new(ns, s.as_str()),
        Identifier::Guid(g) => {
            let guid = g
                .parse::<opcua::types::Guid>()
                .map_err(|_| format!("`{g}` is not a GUID"))?;
            NodeId::new(ns, guid)
        }
        Identifier::Opaque(b) => {
            let bytes = opcua::types::ByteString::from_base64(b)
                .ok_or_else(|| format!("`{b}` is not base64"))?;
            NodeId::new(ns, bytes)
        }
    })
}

/// Receives a subscription's publish responses on the session's event loop and hands them to
/// the device task without blocking the loop.
#[derive(Debug)]
pub struct NotificationSink {
    pub tx: mpsc::Sender<Notification>,
    /// Publish responses dropped because the device task fell behind.
    pub dropped: Arc<AtomicU64>,
}

impl NotificationSink {
    fn offer(&self, n: Notification) {
        if self.tx.try_send(n).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl OnSubscriptionNotificationCore for NotificationSink {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _monitored_items: MonitoredItemMap<'_>,
    ) {
        let Some(objects) = notification.notification_data else {
            return;
        };
        for obj in objects {
            if obj.inner_is::<DataChangeNotification>() {
                if let Some(change) = obj.into_inner_as::<DataChangeNotification>() {
                    let values: Vec<(u32, DataValue)> = change
                        .monitored_items
                        .into_iter()
                        .flatten()
                        .map(|item| (item.client_handle, item.value))
                        .collect();
                    if !values.is_empty() {
                        self.offer(Notification::Data(values));
                    }
                }
            } else if obj.inner_is::<StatusChangeNotification>() {
                if let Some(change) = obj.into_inner_as::<StatusChangeNotification>() {
                    self.offer(Notification::Status(change.status));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_server_and_the_configured_cap() {
        assert_eq!(
            Limits::from_server(0, 0, 0, 0),
            Limits {
                nodes_per_read: FALLBACK_NODES_PER_CALL,
                nodes_per_write: FALLBACK_NODES_PER_CALL,
                items_per_call: FALLBACK_NODES_PER_CALL
            }
        );
        let l = Limits::from_server(100, 50, 20, 0);
        assert_eq!(
            (l.nodes_per_read, l.nodes_per_write, l.items_per_call),
            (100, 50, 20)
        );
        assert_eq!(Limits::from_server(100, 0, 0, 10).nodes_per_read, 10);
        assert_eq!(Limits::from_server(5, 0, 0, 10).nodes_per_read, 5);
    }

    #[test]
    fn url_paths_compare_without_trailing_slashes() {
        assert_eq!(url_path("opc.tcp://10.0.0.5:4840"), "");
        assert_eq!(url_path("opc.tcp://10.0.0.5:4840/"), "");
        assert_eq!(url_path("opc.tcp://plc:4840/UA/Server/"), "/UA/Server");
    }

    #[test]
    fn node_ids_resolve_by_index_or_namespace_uri() {
        let mut ns = NamespaceMap::new();
        ns.add_namespace("urn:acme:plant");
        let by_index: NodeAddress = "ns=2;s=Filler.State".parse().expect("node id");
        assert_eq!(resolve(&by_index, &ns), Ok(NodeId::new(2, "Filler.State")));
        let by_uri: NodeAddress = "nsu=urn:acme:plant;i=7".parse().expect("node id");
        let index = ns.get_index("urn:acme:plant").expect("added");
        assert_eq!(resolve(&by_uri, &ns), Ok(NodeId::new(index, 7u32)));
        let unknown: NodeAddress = "nsu=urn:other;i=7".parse().expect("node id");
        assert!(resolve(&unknown, &ns).is_err());
        let guid: NodeAddress = "ns=1;g=72962b91-fa75-4ae6-8d28-b404dc7daf63"
            .parse()
            .expect("node id");
        assert!(resolve(&guid, &ns).is_ok());
    }

    #[test]
    fn status_texts_name_the_code() {
        assert!(status_text(StatusCode::BadNodeIdUnknown).starts_with("BadNodeIdUnknown"));
    }
}
