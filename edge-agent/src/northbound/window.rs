//! The in-flight window of a northbound: which records are being delivered, which of their
//! messages the broker has acknowledged, and how far the cursor may move. Pure bookkeeping:
//! no MQTT client, no store, no clock, so every rule below has a unit test.
//!
//! - Records enter in id order from the cursor on ([`Window::push`]); each carries the
//!   messages encoded from it (telemetry and MES events) and, optionally, the MES checkpoint
//!   as of the end of the record.
//! - Messages leave in that order ([`Window::next`], then [`Window::handed`] once the MQTT
//!   client accepted it), at most `budget.messages` awaiting a PUBACK.
//! - The window holds at most `budget.bytes` of payload not yet acknowledged (sent or not),
//!   whatever the backlog behind it: [`Window::wants_record`] says when another record may be
//!   read. A single record larger than the budget is still taken when the window is empty, so a
//!   big record delays but never blocks delivery.
//! - The MQTT client reports each publish's packet id in the order the publishes were handed
//!   ([`Window::on_outgoing`]), and acknowledges them in any order ([`Window::on_puback`]).
//!   Publishes the window does not own (the gateway status, command answers) are handed
//!   through [`Window::handed_other`] so that the packet ids stay matched.
//! - The cursor moves only over an unbroken run of fully acknowledged records
//!   ([`Window::release`]); an acknowledged message's payload is freed at once.
//! - A lost connection rewinds the window ([`Window::rewind`]): every message not yet
//!   acknowledged is sent again, in the original order, on the next connection.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use edge_store::RecordId;
use mes_bridge::{Keys, Message};

/// How much the window may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Messages awaiting a PUBACK at once (`max_inflight`).
    pub messages: usize,
    /// Payload bytes held and not yet acknowledged (`max_inflight_bytes`).
    pub bytes: usize,
}

/// A message ready to be handed to the MQTT client. The payload is shared with the window,
/// so handing it does not copy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    /// What the message is about (MQTT 5 user properties).
    pub keys: Keys,
    /// Sent on an earlier connection already.
    pub resend: bool,
}

/// The cursor may move: every record below `cursor` is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub cursor: RecordId,
    /// The newest MES checkpoint among the released records, if any had one.
    pub checkpoint: Option<Vec<u8>>,
    /// Records released by this call.
    pub records: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unsent,
    InFlight,
    Acked,
}

#[derive(Debug)]
struct Held {
    topic: String,
    payload: Bytes,
    retain: bool,
    keys: Keys,
    state: State,
    /// Handed to an earlier connection.
    sent_before: bool,
}

#[derive(Debug)]
struct Record {
    id: RecordId,
    messages: Vec<Held>,
    unacked: usize,
    checkpoint: Option<Vec<u8>>,
}

/// What a publish handed to the client stands for, in hand order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handed {
    Message { record: RecordId, index: usize },
    Other,
}

/// The in-flight window of one northbound (see the module documentation).
#[derive(Debug)]
pub struct Window {
    budget: Budget,
    /// `budget.messages` as configured; the broker of a connection may allow fewer.
    configured_messages: usize,
    records: VecDeque<Record>,
    /// The first record id not yet released.
    cursor: RecordId,
    /// The id the next pushed record must have.
    next_id: RecordId,
    /// Where the next message to hand is searched from: (record position, message index).
    send_from: (usize, usize),
    handed: VecDeque<Handed>,
    by_pkid: HashMap<u16, (RecordId, usize)>,
    inflight: usize,
    held_bytes: usize,
}

impl Window {
    pub fn new(cursor: RecordId, budget: Budget) -> Window {
        Window {
            budget: Budget {
                messages: budget.messages.max(1),
                bytes: budget.bytes.max(1),
            },
            configured_messages: budget.messages.max(1),
            records: VecDeque::new(),
            cursor,
            next_id: cursor,
            send_from: (0, 0),
            handed: VecDeque::new(),
            by_pkid: HashMap::new(),
            inflight: 0,
            held_bytes: 0,
        }
    }

    /// The broker of this connection takes at most `limit` messages awaiting a PUBACK (MQTT 5
    /// Receive Maximum); `None` leaves the configured budget.
    pub fn limit_inflight(&mut self, limit: Option<usize>) {
        self.budget.messages = match limit {
            Some(l) => self.configured_messages.min(l.max(1)),
            None => self.configured_messages,
        };
    }

    /// The topic of the message sent with packet id `pkid`, while it awaits its PUBACK.
    pub fn topic_of(&self, pkid: u16) -> Option<String> {
        let (record, index) = *self.by_pkid.get(&pkid)?;
        let rec = self.records.get(self.position(record)?)?;
        rec.messages.get(index).map(|m| m.topic.clone())
    }

    /// The first record id not yet released (the northbound's cursor as far as this window
    /// knows).
    pub fn cursor(&self) -> RecordId {
        self.cursor
    }

    /// The id of the next record to push: everything below it was read.
    pub fn read_position(&self) -> RecordId {
        self.next_id
    }

    /// Messages awaiting a PUBACK.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Payload bytes held and not yet acknowledged.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Records held (read and not yet released).
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// True when nothing is held: every record read was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// True when another record may be read: every message held was handed, fewer than
    /// `budget.messages` await a PUBACK, and the held bytes are under the budget.
    pub fn wants_record(&self) -> bool {
        self.inflight < self.budget.messages
            && self.held_bytes < self.budget.bytes
            && self.next_unsent().is_none()
    }

    /// Takes the record `id` and the messages encoded from it. Records must come in id order
    /// without gaps; a gap (records the store no longer has, evicted while being read) is
    /// accepted and counts as delivered.
    pub fn push(&mut self, id: RecordId, messages: Vec<Message>, checkpoint: Option<Vec<u8>>) {
        debug_assert!(id >= self.next_id, "records enter in id order");
        let messages: Vec<Held> = messages
            .into_iter()
            .map(|m| Held {
                topic: m.topic,
                payload: Bytes::from(m.payload),
                retain: m.retain,
                keys: m.keys,
                state: State::Unsent,
                sent_before: false,
            })
            .collect();
        self.held_bytes += messages.iter().map(|m| m.payload.len()).sum::<usize>();
        self.next_id = id + 1;
        self.records.push_back(Record {
            id,
            unacked: messages.len(),
            messages,
            checkpoint,
        });
    }

    /// The position of the next message to hand, if any.
    fn next_unsent(&self) -> Option<(usize, usize)> {
        let (mut r, mut m) = self.send_from;
        while let Some(rec) = self.records.get(r) {
            while let Some(msg) = rec.messages.get(m) {
                if msg.state == State::Unsent {
                    return Some((r, m));
                }
                m += 1;
            }
            r += 1;
            m = 0;
        }
        None
    }

    /// The next message to hand to the client, while the budget allows; the window changes
    /// only when [`Window::handed`] confirms that the client took it.
    pub fn next(&self) -> Option<Outgoing> {
        if self.inflight >= self.budget.messages {
            return None;
        }
        let (r, m) = self.next_unsent()?;
        let msg = self.records.get(r)?.messages.get(m)?;
        Some(Outgoing {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            retain: msg.retain,
            keys: msg.keys.clone(),
            resend: msg.sent_before,
        })
    }

    /// The client took the message [`Window::next`] returned.
    pub fn handed(&mut self) {
        let Some((r, m)) = self.next_unsent() else {
            return;
        };
        let Some(rec) = self.records.get_mut(r) else {
            return;
        };
        if let Some(msg) = rec.messages.get_mut(m) {
            msg.state = State::InFlight;
            self.handed.push_back(Handed::Message {
                record: rec.id,
                index: m,
            });
            self.inflight += 1;
        }
        self.send_from = (r, m + 1);
    }

    /// The client took a publish this window does not own (status, command answer).
    pub fn handed_other(&mut self) {
        self.handed.push_back(Handed::Other);
    }

    /// The client sent the oldest handed publish with packet id `pkid`.
    pub fn on_outgoing(&mut self, pkid: u16) {
        if let Some(Handed::Message { record, index }) = self.handed.pop_front() {
            self.by_pkid.insert(pkid, (record, index));
        }
    }

    /// The broker acknowledged packet id `pkid`. Returns false for a packet id the window
    /// does not own (status, answers, or a PUBACK of an earlier connection).
    pub fn on_puback(&mut self, pkid: u16) -> bool {
        let Some((record, index)) = self.by_pkid.remove(&pkid) else {
            return false;
        };
        let Some(pos) = self.position(record) else {
            return false;
        };
        let Some(rec) = self.records.get_mut(pos) else {
            return false;
        };
        let Some(msg) = rec.messages.get_mut(index) else {
            return false;
        };
        if msg.state != State::InFlight {
            return false;
        }
        msg.state = State::Acked;
        self.held_bytes -= msg.payload.len();
        msg.payload = Bytes::new();
        rec.unacked -= 1;
        self.inflight -= 1;
        true
    }

    fn position(&self, id: RecordId) -> Option<usize> {
        let first = self.records.front()?.id;
        // Ids are increasing; without gaps the position is the difference.
        let guess = usize::try_from(id.checked_sub(first)?).ok()?;
        match self.records.get(guess) {
            Some(r) if r.id == id => Some(guess),
            _ => self.records.binary_search_by_key(&id, |r| r.id).ok(),
        }
    }

    /// Releases the unbroken run of fully acknowledged records at the front: the cursor may
    /// move past them.
    pub fn release(&mut self) -> Option<Release> {
        let mut released = 0;
        let mut checkpoint = None;
        while self.records.front().is_some_and(|r| r.unacked == 0) {
            let Some(done) = self.records.pop_front() else {
                break;
            };
            self.cursor = done.id + 1;
            if done.checkpoint.is_some() {
                checkpoint = done.checkpoint;
            }
            released += 1;
        }
        if released == 0 {
            return None;
        }
        self.send_from = match self.send_from.0.checked_sub(released) {
            Some(r) => (r, self.send_from.1),
            None => (0, 0),
        };
        if self.records.is_empty() {
            self.cursor = self.next_id;
            self.send_from = (0, 0);
        }
        Some(Release {
            cursor: self.cursor,
            checkpoint,
            records: released as u64,
        })
    }

    /// The connection was lost: whatever was handed and not acknowledged is sent again on the
    /// next connection, in its original order. Returns the number of such messages.
    pub fn rewind(&mut self) -> usize {
        let mut again = 0;
        for msg in self.records.iter_mut().flat_map(|r| r.messages.iter_mut()) {
            if msg.state == State::InFlight {
                msg.state = State::Unsent;
                msg.sent_before = true;
                again += 1;
            }
        }
        self.handed.clear();
        self.by_pkid.clear();
        self.inflight = 0;
        self.send_from = (0, 0);
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, bytes: usize) -> Message {
        Message {
            topic: topic.to_owned(),
            payload: vec![b'x'; bytes],
            retain: false,
            keys: Default::default(),
        }
    }

    fn budget(messages: usize, bytes: usize) -> Budget {
        Budget { messages, bytes }
    }

    /// Hands everything the window offers, giving packet ids from `next_pkid` on; returns
    /// the topics and packet ids in hand order.
    fn hand_all(w: &mut Window, next_pkid: &mut u16) -> Vec<(String, u16, bool)> {
        let mut out = Vec::new();
        while let Some(o) = w.next() {
            w.handed();
            w.on_outgoing(*next_pkid);
            out.push((o.topic, *next_pkid, o.resend));
            *next_pkid += 1;
        }
        out
    }

    #[test]
    fn messages_leave_in_record_order_and_the_cursor_moves_when_all_are_acknowledged() {
        let mut w = Window::new(10, budget(100, 1 << 20));
        w.push(10, vec![msg("a/1", 10), msg("a/2", 10)], None);
        w.push(11, vec![msg("b/1", 10)], None);
        let mut pkid = 1;
        let sent = hand_all(&mut w, &mut pkid);
        let topics: Vec<&str> = sent.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(topics, ["a/1", "a/2", "b/1"]);
        assert_eq!(w.inflight(), 3);
        assert!(w.on_puback(1));
        assert_eq!(w.release(), None, "record 10 still has a message in flight");
        assert!(w.on_puback(2));
        let r = w.release().expect("record 10 is acknowledged");
        assert_eq!((r.cursor, r.records), (11, 1));
        assert!(w.on_puback(3));
        assert_eq!(w.release().map(|r| r.cursor), Some(12));
        assert!(w.is_empty());
        assert_eq!(w.held_bytes(), 0);
    }

    #[test]
    fn pubacks_out_of_order_release_only_an_unbroken_run_with_the_newest_checkpoint() {
        let mut w = Window::new(0, budget(100, 1 << 20));
        for id in 0..4 {
            w.push(id, vec![msg("t", 5)], Some(vec![id as u8]));
        }
        let mut pkid = 1;
        hand_all(&mut w, &mut pkid);
        // The broker acknowledges 4, 2, 3 before 1.
        for p in [4, 2, 3] {
            assert!(w.on_puback(p));
            assert_eq!(w.release(), None, "record 0 is not acknowledged yet");
        }
        assert!(w.on_puback(1));
        let r = w.release().expect("all four acknowledged");
        assert_eq!(r.cursor, 4);
        assert_eq!(r.records, 4);
        assert_eq!(r.checkpoint, Some(vec![3]));
        assert!(
            !w.on_puback(1),
            "a second PUBACK of the same id is not counted twice"
        );
    }

    #[test]
    fn a_record_without_messages_is_released_with_those_before_it() {
        let mut w = Window::new(0, budget(10, 1 << 20));
        w.push(0, vec![msg("t", 1)], None);
        w.push(1, vec![], Some(vec![9]));
        let mut pkid = 1;
        hand_all(&mut w, &mut pkid);
        assert_eq!(w.release(), None);
        w.on_puback(1);
        let r = w.release().expect("released");
        assert_eq!((r.cursor, r.checkpoint), (2, Some(vec![9])));
    }

    #[test]
    fn a_broker_limit_lowers_the_message_budget_and_never_raises_it() {
        let mut w = Window::new(0, budget(4, 1 << 20));
        let six = (0..6).map(|i| msg(&format!("t{i}"), 1)).collect();
        w.push(0, six, None);
        let hand = |w: &mut Window| {
            let mut n = 0;
            while w.next().is_some() {
                w.handed();
                n += 1;
            }
            n
        };
        w.limit_inflight(Some(2));
        assert_eq!(hand(&mut w), 2, "the broker's receive maximum holds");
        w.limit_inflight(Some(100));
        assert_eq!(hand(&mut w), 2, "back to the configured 4, not 100");
        assert_eq!(w.inflight(), 4);
    }

    #[test]
    fn at_most_the_message_budget_awaits_a_puback() {
        let mut w = Window::new(0, budget(2, 1 << 20));
        w.push(0, vec![msg("a", 1), msg("b", 1), msg("c", 1)], None);
        let mut pkid = 1;
        assert_eq!(hand_all(&mut w, &mut pkid).len(), 2);
        assert!(!w.wants_record(), "a message of the record is still unsent");
        w.on_puback(2);
        let sent = hand_all(&mut w, &mut pkid);
        assert_eq!(sent.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn a_reconnect_resends_what_was_not_acknowledged_in_order_and_ignores_old_pubacks() {
        let mut w = Window::new(0, budget(100, 1 << 20));
        w.push(0, vec![msg("a", 1), msg("b", 1)], None);
        w.push(1, vec![msg("c", 1), msg("d", 1)], None);
        let mut pkid = 1;
        hand_all(&mut w, &mut pkid);
        w.on_puback(2); // "b"
        assert_eq!(w.rewind(), 3);
        assert_eq!(w.inflight(), 0);
        assert!(
            !w.on_puback(1),
            "a PUBACK from the lost connection is not taken"
        );
        // A status message first on the new connection: packet ids stay matched.
        w.handed_other();
        w.on_outgoing(1);
        let mut pkid = 2;
        let again = hand_all(&mut w, &mut pkid);
        assert_eq!(
            again,
            [
                ("a".to_owned(), 2, true),
                ("c".to_owned(), 3, true),
                ("d".to_owned(), 4, true)
            ]
        );
        assert!(!w.on_puback(1), "the status message is not the window's");
        for p in [4, 3, 2] {
            assert!(w.on_puback(p));
        }
        assert_eq!(w.release().map(|r| r.cursor), Some(2));
    }

    #[test]
    fn a_message_never_handed_is_not_a_resend() {
        let mut w = Window::new(0, budget(1, 1 << 20));
        w.push(0, vec![msg("a", 1), msg("b", 1)], None);
        let mut pkid = 1;
        hand_all(&mut w, &mut pkid);
        w.rewind();
        let sent = hand_all(&mut w, &mut pkid);
        assert_eq!(sent, [("a".to_owned(), 2, true)]);
        w.on_puback(2);
        let sent = hand_all(&mut w, &mut pkid);
        assert_eq!(sent, [("b".to_owned(), 3, false)]);
    }

    #[test]
    fn the_byte_budget_stops_reading_until_acknowledgements_free_room() {
        let mut w = Window::new(0, budget(100, 1000));
        let mut id = 0;
        while w.wants_record() {
            w.push(id, vec![msg("t", 400)], None);
            id += 1;
            let mut pkid = id as u16;
            hand_all(&mut w, &mut pkid);
        }
        assert_eq!(id, 3, "400 + 400 + 400 reaches the 1000-byte budget");
        assert_eq!(w.held_bytes(), 1200);
        w.on_puback(1);
        assert_eq!(
            w.held_bytes(),
            800,
            "an acknowledged payload is freed at once"
        );
        assert!(w.wants_record());
    }

    #[test]
    fn a_record_larger_than_the_budget_is_still_taken_when_the_window_is_empty() {
        let mut w = Window::new(0, budget(100, 1000));
        assert!(w.wants_record());
        w.push(0, vec![msg("big", 5000)], None);
        assert!(!w.wants_record());
        let mut pkid = 1;
        assert_eq!(hand_all(&mut w, &mut pkid).len(), 1);
        w.on_puback(1);
        assert_eq!(w.release().map(|r| r.cursor), Some(1));
        assert!(w.wants_record());
    }

    #[test]
    fn a_replay_far_larger_than_the_budget_never_holds_more_than_the_budget_and_one_record() {
        const RECORDS: u64 = 2000;
        const RECORD_BYTES: usize = 300;
        const BUDGET: usize = 4096;
        let mut w = Window::new(0, budget(16, BUDGET));
        let mut next_read = 0;
        let mut pkid: u16 = 1;
        let mut owed: Vec<u16> = Vec::new();
        let mut max_held = 0;
        let mut released_to = 0;
        let mut rounds = 0;
        while released_to < RECORDS {
            rounds += 1;
            assert!(rounds < 100_000, "the replay makes progress");
            while w.wants_record() && next_read < RECORDS {
                w.push(
                    next_read,
                    vec![msg("t", RECORD_BYTES / 2), msg("u", RECORD_BYTES / 2)],
                    None,
                );
                next_read += 1;
            }
            while let Some(_o) = w.next() {
                w.handed();
                w.on_outgoing(pkid);
                owed.push(pkid);
                pkid = pkid.wrapping_add(1).max(1);
            }
            max_held = max_held.max(w.held_bytes());
            assert!(w.inflight() <= 16);
            // The broker acknowledges the newest first.
            while let Some(p) = owed.pop() {
                assert!(w.on_puback(p));
            }
            if let Some(r) = w.release() {
                assert!(r.cursor > released_to, "the cursor only moves forward");
                released_to = r.cursor;
            }
        }
        assert_eq!(released_to, RECORDS);
        assert!(
            max_held < BUDGET + RECORD_BYTES,
            "held at most {max_held} bytes for a budget of {BUDGET}"
        );
        assert!(w.is_empty());
    }

    #[test]
    fn records_evicted_while_being_read_leave_a_gap_that_counts_as_delivered() {
        let mut w = Window::new(0, budget(10, 1 << 20));
        w.push(0, vec![msg("t", 1)], None);
        w.push(5, vec![msg("t", 1)], None);
        let mut pkid = 1;
        hand_all(&mut w, &mut pkid);
        w.on_puback(2);
        w.on_puback(1);
        assert_eq!(w.release().map(|r| r.cursor), Some(6));
        assert_eq!(w.read_position(), 6);
    }
}
