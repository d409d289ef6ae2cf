//! The MQTT client of a UNS northbound, in MQTT 3.1.1 or MQTT 5 (`protocol`), behind one set
//! of events so that the publisher is written once.
//!
//! rumqttc has a client per protocol version with types of its own. [`open`] starts the one
//! the northbound asks for, with its I/O in a [`Link`] task, and [`Events::next`] turns what
//! either reports into an [`Event`]: the CONNACK with what the broker grants, a message on a
//! command topic with its MQTT 5 properties, a PUBACK with the broker's verdict. What MQTT 5
//! adds and the publisher acts on:
//!
//! - data messages carry user properties (`device`, `seq`, `event_id`, the ISA-95 levels);
//! - a command's message expiry becomes its deadline, and its answer goes to the request's
//!   response topic with its correlation data;
//! - the session expires after `session_expiry_s` instead of never;
//! - the broker's receive maximum bounds the window, its maximum packet size is checked before
//!   a message is handed over, and refusals (CONNACK, PUBACK, SUBACK, a DISCONNECT from the
//!   server) are reported with their reason in words.

use bytes::Bytes;
use edge_config::{BrokerUrl, MqttVersion, Northbound, UnsPath};
use futures::FutureExt;
use mes_bridge::{Keys, Message};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{v5, QoS, Transport};

use crate::northbound::link::Link;
use crate::northbound::window::Outgoing;
use crate::northbound::NorthboundError;

/// What a connection needs besides the northbound's own settings.
#[derive(Clone)]
pub struct Connect<'a> {
    pub nb: &'a Northbound,
    pub broker: &'a BrokerUrl,
    pub transport: Transport,
    /// Start a clean session.
    pub clean: bool,
    /// Packet ids (and so inflight publishes) the client may use.
    pub ids: u16,
    /// The largest packet the agent reads.
    pub max_incoming: usize,
    /// The will (the offline status), if any.
    pub will: Option<Message>,
}

impl std::fmt::Debug for Connect<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("northbound", &self.nb.name)
            .field("broker", &self.broker)
            .field("clean", &self.clean)
            .finish()
    }
}

/// The client half: hands requests to the I/O task, never waiting.
#[derive(Debug, Clone)]
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The I/O half: the connection's events.
#[derive(Debug)]
pub enum Events {
    V4(Link<Result<rumqttc::Event, rumqttc::ConnectionError>>),
    V5(Link<Result<v5::Event, v5::ConnectionError>>),
}

/// What the broker granted at CONNACK (MQTT 5 only says more than `session_present`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    pub session_present: bool,
    /// Publishes awaiting PUBACK the broker takes at once.
    pub receive_max: Option<u16>,
    /// The largest packet the broker takes.
    pub max_packet: Option<u32>,
    /// The session expiry the broker applies, when it changed ours.
    pub session_expiry_s: Option<u32>,
    /// The keep-alive the broker imposes, when it changed ours.
    pub keep_alive_s: Option<u16>,
}

/// A message on a command topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    /// MQTT 5: the seconds left before the message expires, as the broker forwarded it.
    pub expiry_s: Option<u32>,
    /// MQTT 5: where the sender wants the answer, and the data to answer with.
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
}

/// One event of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected(Granted),
    Received(Received),
    /// A publish went out with this packet id.
    Sent(u16),
    /// The broker acknowledged packet `pkid`; `refused` says why it did not take the message.
    Acked {
        pkid: u16,
        refused: Option<String>,
    },
    /// Subscriptions the broker refused, with the reason.
    Subscribed {
        refused: Vec<String>,
    },
    /// Our DISCONNECT went out.
    Disconnected,
    Other,
}

/// A failed connection, from either client.
#[derive(Debug)]
pub enum LinkError {
    V4(rumqttc::ConnectionError),
    V5(v5::ConnectionError),
}

/// A publish the client could not take.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    V4(Box<rumqttc::ClientError>),
    #[error(transparent)]
    V5(Box<v5::ClientError>),
}

impl From<rumqttc::ClientError> for ClientError {
    fn from(e: rumqttc::ClientError) -> Self {
        ClientError::V4(Box::new(e))
    }
}

impl From<v5::ClientError> for ClientError {
    fn from(e: v5::ClientError) -> Self {
        ClientError::V5(Box::new(e))
    }
}

/// The ISA-95 levels every MQTT 5 data message carries, with the names of [`Keys`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isa95(Vec<(String, String)>);

impl Isa95 {
    pub fn new(path: &UnsPath) -> Isa95 {
        Isa95(vec![
            ("enterprise".into(), path.enterprise.clone()),
            ("site".into(), path.site.clone()),
            ("area".into(), path.area.clone()),
            ("line".into(), path.line.clone()),
        ])
    }
}

/// The user properties of a data message: its keys, then the ISA-95 levels.
pub fn user_properties(keys: &Keys, isa95: &Isa95) -> Vec<(String, String)> {
    let mut p = Vec::with_capacity(8);
    if let Some(d) = &keys.device {
        p.push(("device".to_owned(), d.clone()));
    }
    if let Some((first, last)) = keys.seq {
        p.push(("seq".to_owned(), first.to_string()));
        if last != first {
            p.push(("seq_last".to_owned(), last.to_string()));
        }
    }
    if let Some(e) = &keys.event_id {
        p.push(("event_id".to_owned(), e.clone()));
    }
    if let Some(m) = &keys.machine {
        p.push(("machine".to_owned(), m.clone()));
    }
    if keys != &Keys::default() {
        p.extend(isa95.0.iter().cloned());
    }
    p
}

/// The size of a PUBLISH packet with this topic, payload and properties, near enough to check
/// against a broker's maximum packet size (a few bytes over at most).
pub fn publish_size(topic: &str, payload: usize, properties: &[(String, String)]) -> usize {
    let props: usize = properties.iter().map(|(k, v)| 5 + k.len() + v.len()).sum();
    // Fixed header (up to 5), topic length prefix, packet id, property length (up to 4).
    5 + 2 + topic.len() + 2 + 4 + props + 16 + payload
}

/// Starts the client the northbound's `protocol` names.
pub fn open(c: Connect<'_>) -> (Client, Events) {
    let timeout = c.nb.connect_timeout.as_secs().max(1);
    let capacity = usize::from(c.ids) + 16;
    match c.nb.protocol {
        MqttVersion::V311 => {
            let mut o = rumqttc::MqttOptions::new(&c.nb.client_id, &c.broker.host, c.broker.port);
            o.set_clean_session(c.clean);
            o.set_keep_alive(c.nb.keep_alive);
            o.set_inflight(c.ids);
            o.set_request_channel_capacity(capacity);
            o.set_max_packet_size(c.max_incoming, 1 << 20);
            o.set_transport(c.transport);
            if let Some(will) = c.will {
                o.set_last_will(rumqttc::LastWill::new(
                    will.topic,
                    will.payload,
                    QoS::AtLeastOnce,
                    true,
                ));
            }
            crate::northbound::set_credentials(&mut o, c.nb);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(o, capacity);
            eventloop.network_options.set_connection_timeout(timeout);
            (Client::V4(client), Events::V4(Link::start(eventloop)))
        }
        MqttVersion::V5 => {
            let mut o = v5::MqttOptions::new(&c.nb.client_id, &c.broker.host, c.broker.port);
            o.set_clean_start(c.clean);
            // A clean session each time is one the broker drops at disconnect.
            let expiry = if c.clean {
                0
            } else {
                u32::try_from(c.nb.session_expiry.as_secs()).unwrap_or(u32::MAX)
            };
            o.set_session_expiry_interval(Some(expiry));
            o.set_keep_alive(c.nb.keep_alive);
            o.set_outgoing_inflight_upper_limit(c.ids);
            // The broker never sends the agent more than it reads: larger messages are
            // dropped by the broker, not by ending this connection.
            o.set_max_packet_size(Some(u32::try_from(c.max_incoming).unwrap_or(u32::MAX)));
            o.set_request_channel_capacity(capacity);
            o.set_connection_timeout(timeout);
            o.set_transport(c.transport);
            if let Some(will) = c.will {
                o.set_last_will(p5::LastWill::new(
                    will.topic,
                    will.payload,
                    QoS5::AtLeastOnce,
                    true,
                    None,
                ));
            }
            if let Some((user, password)) = crate::northbound::credentials(c.nb) {
                o.set_credentials(user, password);
            }
            let (client, eventloop) = v5::AsyncClient::new(o, capacity);
            (Client::V5(client), Events::V5(Link::start(eventloop)))
        }
    }
}

impl Client {
    /// Hands a data message to the client if it takes it now: `None` when its queue is full
    /// (the I/O task is behind; the message goes at the next event).
    pub fn publish_now(
        &self,
        m: &Outgoing,
        properties: Vec<(String, String)>,
    ) -> Option<Result<(), ClientError>> {
        match self {
            Client::V4(c) => c
                .publish_bytes(
                    m.topic.clone(),
                    QoS::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                )
                .now_or_never()
                .map(|r| r.map_err(ClientError::from)),
            Client::V5(c) => {
                let props = p5::PublishProperties {
                    user_properties: properties,
                    ..Default::default()
                };
                c.publish_bytes_with_properties(
                    m.topic.clone(),
                    QoS5::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                    props,
                )
                .now_or_never()
                .map(|r| r.map_err(ClientError::from))
            }
        }
    }

    /// Publishes a status message or an answer (QoS 1) if the client takes it now; the
    /// correlation data goes with it on MQTT 5.
    pub fn try_publish(&self, m: &Message, correlation: Option<Bytes>) -> bool {
        match self {
            Client::V4(c) => c
                .try_publish(
                    m.topic.clone(),
                    QoS::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                )
                .is_ok(),
            Client::V5(c) => {
                let props = p5::PublishProperties {
                    correlation_data: correlation,
                    ..Default::default()
                };
                c.try_publish_with_properties(
                    m.topic.clone(),
                    QoS5::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                    props,
                )
                .is_ok()
            }
        }
    }

    /// Subscribes to `filters` at QoS 1. On MQTT 5 the gateway's own messages (its answers)
    /// are not sent back to it.
    pub fn subscribe(&self, filters: impl IntoIterator<Item = String>) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c.try_subscribe_many(
                filters
                    .into_iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce)),
            )?,
            Client::V5(c) => c.try_subscribe_many(filters.into_iter().map(|f| {
                let mut filter = p5::Filter::new(f, QoS5::AtLeastOnce);
                filter.nolocal = true;
                filter
            }))?,
        }
        Ok(())
    }

    pub fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(ClientError::from),
            Client::V5(c) => c.try_disconnect().map_err(ClientError::from),
        };
    }
}

impl Events {
    /// The next event; `None` once the I/O task has ended after reporting its error. Safe to
    /// cancel.
    pub async fn next(&mut self) -> Option<Result<Event, LinkError>> {
        match self {
            Events::V4(link) => Some(match link.next().await? {
                Ok(e) => Ok(from_v4(e)),
                Err(e) => Err(LinkError::V4(e)),
            }),
            Events::V5(link) => Some(match link.next().await? {
                Ok(e) => Ok(from_v5(e)),
                Err(e) => Err(LinkError::V5(e)),
            }),
        }
    }
}

fn from_v4(e: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Incoming as I, Outgoing as O};
    match e {
        E::Incoming(I::ConnAck(ack)) => Event::Connected(Granted {
            session_present: ack.session_present,
            ..Granted::default()
        }),
        E::Incoming(I::Publish(p)) => Event::Received(Received {
            topic: p.topic,
            payload: p.payload,
            retain: p.retain,
            expiry_s: None,
            response_topic: None,
            correlation: None,
        }),
        E::Incoming(I::PubAck(ack)) => Event::Acked {
            pkid: ack.pkid,
            refused: None,
        },
        E::Incoming(I::SubAck(ack)) => Event::Subscribed {
            refused: ack
                .return_codes
                .iter()
                .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                .map(|_| "refused by the broker (MQTT 3.1.1 gives no reason)".to_owned())
                .collect(),
        },
        E::Outgoing(O::Publish(pkid)) => Event::Sent(pkid),
        E::Outgoing(O::Disconnect) => Event::Disconnected,
        _ => Event::Other,
    }
}

fn from_v5(e: v5::Event) -> Event {
    use rumqttc::v5::{Event as E, Incoming as I};
    use rumqttc::Outgoing as O;
    match e {
        E::Incoming(I::ConnAck(ack)) => {
            let p = ack.properties.as_ref();
            Event::Connected(Granted {
                session_present: ack.session_present,
                receive_max: p.and_then(|p| p.receive_max),
                max_packet: p.and_then(|p| p.max_packet_size),
                session_expiry_s: p.and_then(|p| p.session_expiry_interval),
                keep_alive_s: p.and_then(|p| p.server_keep_alive),
            })
        }
        E::Incoming(I::Publish(p)) => {
            let props = p.properties.unwrap_or_default();
            Event::Received(Received {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
                retain: p.retain,
                expiry_s: props.message_expiry_interval,
                response_topic: props.response_topic,
                correlation: props.correlation_data,
            })
        }
        E::Incoming(I::PubAck(ack)) => Event::Acked {
            pkid: ack.pkid,
            refused: puback_refusal(ack.reason, ack.properties.and_then(|p| p.reason_string)),
        },
        E::Incoming(I::SubAck(ack)) => Event::Subscribed {
            refused: ack
                .return_codes
                .iter()
                .filter_map(|c| match c {
                    p5::SubscribeReasonCode::Success(_) => None,
                    other => Some(suback_words(other).to_owned()),
                })
                .collect(),
        },
        E::Outgoing(O::Publish(pkid)) => Event::Sent(pkid),
        E::Outgoing(O::Disconnect) => Event::Disconnected,
        _ => Event::Other,
    }
}

/// Why the broker did not take a message, in words; `None` when it did.
fn puback_refusal(reason: p5::PubAckReason, text: Option<String>) -> Option<String> {
    use p5::PubAckReason as R;
    let words = match reason {
        R::Success | R::NoMatchingSubscribers => return None,
        R::UnspecifiedError => "the broker refused it without a reason",
        R::ImplementationSpecificError => "the broker refused it (implementation-specific)",
        R::NotAuthorized => {
            "not authorised: the broker's ACL does not let this client publish on the topic"
        }
        R::TopicNameInvalid => "the broker finds the topic name invalid",
        R::PacketIdentifierInUse => "packet identifier in use",
        R::QuotaExceeded => "the broker's quota for this client is exceeded",
        R::PayloadFormatInvalid => "the broker finds the payload format invalid",
    };
    Some(with_text(words, text))
}

fn with_text(words: &str, text: Option<String>) -> String {
    match text {
        Some(t) if !t.is_empty() => format!("{words} (the broker says: {t})"),
        _ => words.to_owned(),
    }
}

fn suback_words(code: &p5::SubscribeReasonCode) -> &'static str {
    use p5::SubscribeReasonCode as S;
    match code {
        S::Success(_) => "granted",
        S::NotAuthorized => "not authorised by the broker's ACL",
        S::TopicFilterInvalid => "the broker finds the topic filter invalid",
        S::QuotaExceeded => "the broker's quota is exceeded",
        S::WildcardSubscriptionsNotSupported => "the broker takes no wildcard subscriptions",
        S::SharedSubscriptionsNotSupported => "the broker takes no shared subscriptions",
        S::SubscriptionIdNotSupported => "the broker takes no subscription identifiers",
        S::PkidInUse => "packet identifier in use",
        S::Failure | S::Unspecified | S::ImplementationSpecific => {
            "refused by the broker without a reason"
        }
    }
}

/// Why the broker refused a connection, in words, for both protocol versions.
pub fn connect_refusal(code: v5::mqttbytes::v5::ConnectReturnCode) -> &'static str {
    use v5::mqttbytes::v5::ConnectReturnCode as C;
    match code {
        C::Success => "accepted",
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
            "the broker does not speak this MQTT version (set `protocol` to what it supports)"
        }
        C::BadClientId | C::ClientIdentifierNotValid => "the broker does not accept the client id",
        C::ServiceUnavailable | C::ServerUnavailable => "the broker is unavailable",
        C::BadUserNamePassword => "bad user name or password",
        C::NotAuthorized => "not authorised: the broker does not let this client connect",
        C::ServerBusy => "the broker is busy",
        C::Banned => "this client is banned by the broker",
        C::BadAuthenticationMethod => "the broker does not accept the authentication method",
        C::QuotaExceeded => "the broker's quota is exceeded",
        C::ConnectionRateExceeded => "too many connections too fast for the broker",
        C::UseAnotherServer | C::ServerMoved => "the broker asks the client to use another server",
        C::PacketTooLarge => "the CONNECT packet is larger than the broker takes",
        C::MalformedPacket | C::ProtocolError => "the broker found a protocol error",
        C::TopicNameInvalid => "the broker finds the will topic invalid",
        C::PayloadFormatInvalid => "the broker finds the will payload invalid",
        C::RetainNotSupported => {
            "the broker does not support retained messages (the status is retained)"
        }
        C::QoSNotSupported => "the broker does not support QoS 1",
        C::UnspecifiedError | C::ImplementationSpecificError => {
            "the broker refused the connection without a reason"
        }
    }
}

/// The same for an MQTT 3.1.1 CONNACK.
pub fn connect_refusal_v4(code: rumqttc::ConnectReturnCode) -> &'static str {
    use rumqttc::ConnectReturnCode as C;
    use v5::mqttbytes::v5::ConnectReturnCode as C5;
    connect_refusal(match code {
        C::Success => C5::Success,
        C::RefusedProtocolVersion => C5::RefusedProtocolVersion,
        C::BadClientId => C5::BadClientId,
        C::ServiceUnavailable => C5::ServiceUnavailable,
        C::BadUserNamePassword => C5::BadUserNamePassword,
        C::NotAuthorized => C5::NotAuthorized,
    })
}

/// Why the server ended an MQTT 5 connection with DISCONNECT, in words.
fn disconnect_words(code: p5::DisconnectReasonCode) -> &'static str {
    use p5::DisconnectReasonCode as D;
    match code {
        D::NormalDisconnection | D::DisconnectWithWillMessage => "the broker closed the connection",
        D::ServerShuttingDown => "the broker is shutting down",
        D::SessionTakenOver => {
            "another client connected with the same client id (session taken over)"
        }
        D::KeepAliveTimeout => "the broker heard nothing within the keep-alive",
        D::NotAuthorized => "not authorised",
        D::ServerBusy => "the broker is busy",
        D::PacketTooLarge => "a packet was larger than the broker takes",
        D::ReceiveMaximumExceeded => {
            "more publishes awaited PUBACK than the broker's receive maximum"
        }
        D::MessageRateTooHigh => "messages came faster than the broker allows",
        D::QuotaExceeded => "the broker's quota is exceeded",
        D::AdministrativeAction => "an administrator disconnected this client",
        D::UseAnotherServer | D::ServerMoved => "the broker asks the client to use another server",
        D::ConnectionRateExceeded => "too many connections too fast for the broker",
        D::MaximumConnectTime => "the broker's maximum connect time was reached",
        D::TopicNameInvalid | D::TopicFilterInvalid | D::TopicAliasInvalid => {
            "the broker found an invalid topic"
        }
        D::PayloadFormatInvalid => "the broker found an invalid payload format",
        D::RetainNotSupported => "the broker does not support retained messages",
        D::QoSNotSupported => "the broker does not support QoS 1",
        D::MalformedPacket | D::ProtocolError => "the broker found a protocol error",
        D::SharedSubscriptionNotSupported
        | D::SubscriptionIdentifiersNotSupported
        | D::WildcardSubscriptionsNotSupported => {
            "the broker does not support a subscription option"
        }
        D::UnspecifiedError | D::ImplementationSpecificError => {
            "the broker ended the connection without a reason"
        }
    }
}

impl LinkError {
    /// The broker sent a packet over the incoming size limit (MQTT 3.1.1 cannot tell it not to).
    pub fn too_large(&self) -> bool {
        matches!(
            self,
            LinkError::V4(rumqttc::ConnectionError::MqttState(
                rumqttc::StateError::Deserialization(
                    rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
                )
            ))
        )
    }

    /// Why the connection ended, in the publisher's terms.
    pub fn into_error(self, tls: Option<&edge_config::TlsFiles>) -> NorthboundError {
        match self {
            LinkError::V4(e) => match crate::northbound::certificate_problem(&e, tls) {
                Some(problem) => NorthboundError::Certificate(problem),
                None => NorthboundError::from(e),
            },
            LinkError::V5(e) => {
                let (tls_error, io) = match &e {
                    v5::ConnectionError::Tls(t) => (Some(t), None),
                    v5::ConnectionError::Io(io) => (None, Some(io)),
                    _ => (None, None),
                };
                if let Some(problem) = crate::northbound::certificate_problem_of(tls_error, io, tls)
                {
                    return NorthboundError::Certificate(problem);
                }
                match e {
                    v5::ConnectionError::ConnectionRefused(code) => {
                        NorthboundError::Refused(connect_refusal(code).to_owned())
                    }
                    v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
                        reason_code,
                        reason_string,
                    }) => NorthboundError::ServerDisconnect(with_text(
                        disconnect_words(reason_code),
                        reason_string,
                    )),
                    other => NorthboundError::Mqtt5(Box::new(other)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_message_carries_its_keys_and_the_isa95_levels_and_a_status_none() {
        let isa = Isa95::new(&UnsPath {
            enterprise: "acme".into(),
            site: "plant1".into(),
            area: "packaging".into(),
            line: "line1".into(),
        });
        let batch = Keys {
            device: Some("filler".into()),
            seq: Some((7, 9)),
            ..Keys::default()
        };
        let p = user_properties(&batch, &isa);
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("device"), Some("filler"));
        assert_eq!(get("seq"), Some("7"));
        assert_eq!(get("seq_last"), Some("9"));
        assert_eq!(get("line"), Some("line1"));
        assert_eq!(get("event_id"), None);
        let one = user_properties(
            &Keys {
                seq: Some((4, 4)),
                ..batch.clone()
            },
            &isa,
        );
        assert!(!one.iter().any(|(k, _)| k == "seq_last"), "{one:?}");
        assert!(user_properties(&Keys::default(), &isa).is_empty());
    }

    #[test]
    fn refusals_are_in_words() {
        assert_eq!(
            puback_refusal(p5::PubAckReason::NoMatchingSubscribers, None),
            None,
            "nobody subscribed is still delivered"
        );
        let acl =
            puback_refusal(p5::PubAckReason::NotAuthorized, Some("acl".into())).expect("a refusal");
        assert!(acl.starts_with("not authorised") && acl.ends_with("(the broker says: acl)"));
        assert_eq!(
            connect_refusal_v4(rumqttc::ConnectReturnCode::BadUserNamePassword),
            "bad user name or password"
        );
    }

    #[test]
    fn the_size_estimate_is_never_below_the_payload_and_topic() {
        let props = vec![("device".to_owned(), "filler".to_owned())];
        assert!(publish_size("a/b", 100, &props) >= 100 + 3 + 6 + 6);
    }
}
