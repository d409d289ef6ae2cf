//! One MQTT connection's I/O, in a task of its own.
//!
//! rumqttc's `EventLoop::poll` is not safe to cancel: when the socket is full, `poll` waits
//! inside its write of a publish it has already given a packet id, and a caller that drops that
//! future (a `select!` woken by anything else) loses the publish without the client knowing.
//! The broker never acknowledges a packet it never got, so when the packet ids come round to
//! that id again the client waits for the missing PUBACK ("collision"), stops taking requests,
//! and gives up two keep-alives later with "Timeout while waiting to resolve collision".
//!
//! A [`Link`] owns the event loop and polls it in a loop nobody interrupts; the publisher
//! receives the events from a channel, which is safe to wait on in a `select!`. The task ends
//! with the first connection error (the publisher starts a new connection, with a new client)
//! or when the [`Link`] is dropped.

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events buffered between the I/O task and the publisher. The I/O task waits when the
/// publisher is behind, so this bounds memory, not what is delivered.
const EVENTS: usize = 256;

/// The packet ids the MQTT client may use for `max_inflight` messages of the window plus
/// `others` publishes it does not own (status, command answers). A packet id comes round again
/// only after this many later publishes, far more than can await a PUBACK at once, so a broker
/// that acknowledges in order never makes a packet id collide, and one that acknowledges out
/// of order (a cluster) at worst makes the client wait for that one PUBACK.
pub fn packet_ids(max_inflight: u16, others: usize) -> u16 {
    let wanted = usize::from(max_inflight) * 2 + others;
    u16::try_from(wanted)
        .unwrap_or(u16::MAX - 1)
        .min(u16::MAX - 1)
}

/// The I/O task of one connection and the events it reports, for either client
/// ([`EventSource`]; MQTT 3.1.1 by default).
#[derive(Debug)]
pub struct Link<T = Result<Event, ConnectionError>> {
    events: mpsc::Receiver<T>,
    task: JoinHandle<()>,
}

impl Link {
    /// A new client for `options` (with its request queue sized to its packet ids) and the
    /// task that runs its connection.
    pub fn connect(options: MqttOptions, connect_timeout_s: u64) -> (AsyncClient, Link) {
        let capacity = usize::from(options.inflight()) + 16;
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        eventloop
            .network_options
            .set_connection_timeout(connect_timeout_s.max(1));
        (client, Link::start(eventloop))
    }
}

/// An event loop of either rumqttc client, as a [`Link`] runs it.
pub trait EventSource: Send + 'static {
    type Item: Send + 'static;
    /// The next event or error of the connection.
    fn poll(&mut self) -> impl std::future::Future<Output = Self::Item> + Send;
    fn failed(item: &Self::Item) -> bool;
}

impl EventSource for EventLoop {
    type Item = Result<Event, ConnectionError>;
    fn poll(&mut self) -> impl std::future::Future<Output = Self::Item> + Send {
        EventLoop::poll(self)
    }
    fn failed(item: &Self::Item) -> bool {
        item.is_err()
    }
}

impl EventSource for rumqttc::v5::EventLoop {
    type Item = Result<rumqttc::v5::Event, rumqttc::v5::ConnectionError>;
    fn poll(&mut self) -> impl std::future::Future<Output = Self::Item> + Send {
        rumqttc::v5::EventLoop::poll(self)
    }
    fn failed(item: &Self::Item) -> bool {
        item.is_err()
    }
}

impl<T: Send + 'static> Link<T> {
    /// Runs `eventloop` until its first error or until the link is dropped.
    pub fn start<S: EventSource<Item = T>>(mut eventloop: S) -> Link<T> {
        let (tx, events) = mpsc::channel(EVENTS);
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = S::failed(&event);
                if tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        });
        Link { events, task }
    }

    /// The next event of the connection; `None` once the I/O task has ended after reporting
    /// its error. Safe to cancel: nothing is lost when another branch of a `select!` wins.
    pub async fn next(&mut self) -> Option<T> {
        self.events.recv().await
    }
}

impl<T> Drop for Link<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_leave_room_for_twice_the_window_and_the_other_publishes() {
        assert_eq!(packet_ids(256, 256), 768);
        assert_eq!(packet_ids(1, 0), 2);
        assert_eq!(packet_ids(u16::MAX, 256), u16::MAX - 1);
    }
}
