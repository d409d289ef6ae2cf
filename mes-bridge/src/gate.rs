//! Command safety (SPEC §5): whether a command may reach a PLC at all, decided before anything
//! about its content is looked at. The same rules hold for UNS commands (`_set`, `_mes/cmd/...`)
//! and Sparkplug NCMD/DCMD. Pure: the publisher says how the message arrived, the command says
//! when it was sent, and the northbound's policy decides.
//!
//! Every refusal fails closed: a gateway whose clock is wrong, a sender whose clock is wrong, a
//! broker that kept a command for hours, a command left retained on its topic: each is refused
//! with its reason and nothing is written, never accepted on a guess.
//!
//! # The rules, in the order they are applied
//!
//! 1. Commands switched off on the northbound (`commands = false`): refused.
//! 2. Retained: a broker sets the retain flag on a message it delivers because a subscription
//!    was just made (a stored message), never on a live one; a retained command is a stale one.
//! 3. No timestamp: refused unless the northbound allows untimed commands. A northbound that
//!    does takes its commands on a session the broker does not keep (clean session), so no
//!    command queued while the gateway was away can arrive at all.
//! 4. The gateway's own clock is known not to be synchronised (no battery-backed clock, NTP not
//!    synchronised yet): no age can be judged, so every timed command is refused.
//! 5. Sent in the future by more than the clock skew tolerance: the sender's clock is ahead.
//! 6. Older than the age limit: expired.
//! 7. Sent before the gateway's current connection to the broker was made (beyond the skew
//!    tolerance): it waited in the broker's session while the gateway was away, whatever the
//!    age limit says.
//! 8. MQTT 5: its message expiry passed before the gateway came to carry it out (it waited
//!    behind other commands): [`expired`], judged when the command is taken, not when it
//!    arrived.

use std::fmt;

/// How a northbound takes commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandPolicy {
    /// Commands are carried out at all.
    pub enabled: bool,
    /// The oldest a command may be when it arrives, by its own timestamp.
    pub max_age_ms: u64,
    /// How far the sender's clock may be off the gateway's, either way.
    pub clock_skew_ms: u64,
    /// Commands without a timestamp are taken (the session keeps no commands while away).
    pub allow_untimed: bool,
}

impl CommandPolicy {
    pub const DEFAULT_MAX_AGE_MS: u64 = 10_000;
    pub const DEFAULT_CLOCK_SKEW_MS: u64 = 2_000;
}

impl Default for CommandPolicy {
    fn default() -> Self {
        CommandPolicy {
            enabled: true,
            max_age_ms: CommandPolicy::DEFAULT_MAX_AGE_MS,
            clock_skew_ms: CommandPolicy::DEFAULT_CLOCK_SKEW_MS,
            allow_untimed: false,
        }
    }
}

/// How a command message reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The MQTT retain flag of the delivered message.
    pub retained: bool,
    /// The gateway's clock when the message arrived (epoch ms).
    pub received_ms: u64,
    /// The gateway's clock when the connection it arrived on was acknowledged (CONNACK).
    pub connected_ms: u64,
    /// Whether the gateway's clock can be trusted to judge ages.
    pub clock_synchronised: bool,
    /// MQTT 5: when the message expires (the gateway's clock: arrival plus the expiry the
    /// broker forwarded, which is what was left of the sender's).
    pub expires_ms: Option<u64>,
}

/// Why a command is refused before its content is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Disabled,
    Retained,
    Untimed,
    ClockUnsynchronised,
    Future { ahead_ms: u64 },
    Expired { age_ms: u64 },
    QueuedBeforeConnect { before_ms: u64 },
    MessageExpired { late_ms: u64 },
}

impl Refusal {
    /// Every refusal reason, for metrics that show zeros too.
    pub const REASONS: [&'static str; 7] = [
        "disabled",
        "retained",
        "untimed",
        "clock_unsynchronised",
        "future",
        "expired",
        "queued_before_connect",
    ];

    /// The reason as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::Retained => "retained",
            Refusal::Untimed => "untimed",
            Refusal::ClockUnsynchronised => "clock_unsynchronised",
            Refusal::Future { .. } => "future",
            Refusal::Expired { .. } => "expired",
            Refusal::QueuedBeforeConnect { .. } => "queued_before_connect",
            Refusal::MessageExpired { .. } => "expired",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Disabled => f.write_str("commands are switched off on this northbound; nothing was written"),
            Refusal::Retained => f.write_str("the command was published with the retain flag, so it is a stored message, not a live one; retained commands are never executed (publish it without retain)"),
            Refusal::Untimed => f.write_str("the command has no `timestamp_ms` (epoch milliseconds when it was sent); this northbound refuses untimed commands"),
            Refusal::ClockUnsynchronised => f.write_str("the gateway's clock is not synchronised, so the command's age cannot be judged; nothing was written"),
            Refusal::Future { ahead_ms } => write!(f, "the command's timestamp is {ahead_ms} ms ahead of the gateway's clock, more than the clock skew allowed; check the sender's clock"),
            Refusal::Expired { age_ms } => write!(f, "expired: the command is {age_ms} ms old, older than this northbound's age limit"),
            Refusal::QueuedBeforeConnect { before_ms } => write!(f, "expired: the command was sent {before_ms} ms before the gateway connected, so it waited in the broker while the gateway was away"),
            Refusal::MessageExpired { late_ms } => write!(f, "expired: the command's MQTT message expiry passed {late_ms} ms before the gateway could carry it out; nothing was written"),
        }
    }
}

/// The rules that need nothing of the command's content (1 and 2): a command on a northbound
/// with commands off, or a retained one, is refused whatever it says, even unreadable.
pub fn precheck(policy: &CommandPolicy, arrival: &Arrival) -> Result<(), Refusal> {
    if !policy.enabled {
        return Err(Refusal::Disabled);
    }
    if arrival.retained {
        return Err(Refusal::Retained);
    }
    Ok(())
}

/// Whether a command sent at `sent_ms` (its own timestamp, if it has one) that arrived as
/// `arrival` may be carried out under `policy`.
pub fn admit(
    policy: &CommandPolicy,
    arrival: &Arrival,
    sent_ms: Option<u64>,
) -> Result<(), Refusal> {
    precheck(policy, arrival)?;
    let Some(sent) = sent_ms else {
        return if policy.allow_untimed {
            Ok(())
        } else {
            Err(Refusal::Untimed)
        };
    };
    if !arrival.clock_synchronised {
        return Err(Refusal::ClockUnsynchronised);
    }
    let now = arrival.received_ms;
    if sent > now.saturating_add(policy.clock_skew_ms) {
        return Err(Refusal::Future {
            ahead_ms: sent - now,
        });
    }
    let age = now.saturating_sub(sent);
    if age > policy.max_age_ms {
        return Err(Refusal::Expired { age_ms: age });
    }
    if sent.saturating_add(policy.clock_skew_ms) < arrival.connected_ms {
        return Err(Refusal::QueuedBeforeConnect {
            before_ms: arrival.connected_ms - sent,
        });
    }
    Ok(())
}

/// Rule 8: whether a command's MQTT 5 message expiry has passed at `now_ms`, when the
/// gateway is about to carry it out.
pub fn expired(arrival: &Arrival, now_ms: u64) -> Result<(), Refusal> {
    match arrival.expires_ms {
        Some(at) if now_ms >= at => Err(Refusal::MessageExpired {
            late_ms: now_ms - at,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000;

    fn live() -> Arrival {
        Arrival {
            retained: false,
            received_ms: NOW,
            connected_ms: NOW - 60_000,
            clock_synchronised: true,
            expires_ms: None,
        }
    }

    #[test]
    fn a_command_whose_message_expiry_passed_while_it_waited_is_refused() {
        let timed = Arrival {
            expires_ms: Some(NOW + 1000),
            ..live()
        };
        assert_eq!(expired(&timed, NOW + 999), Ok(()));
        assert_eq!(
            expired(&timed, NOW + 1500),
            Err(Refusal::MessageExpired { late_ms: 500 })
        );
        assert_eq!(
            expired(&live(), NOW + 3_600_000),
            Ok(()),
            "no expiry, no deadline"
        );
        assert_eq!(Refusal::MessageExpired { late_ms: 1 }.reason(), "expired");
    }

    fn policy() -> CommandPolicy {
        CommandPolicy::default()
    }

    #[test]
    fn a_fresh_live_command_is_admitted() {
        assert_eq!(admit(&policy(), &live(), Some(NOW - 500)), Ok(()));
        assert_eq!(admit(&policy(), &live(), Some(NOW)), Ok(()));
    }

    #[test]
    fn a_retained_command_is_refused_however_fresh_and_whatever_the_policy() {
        let retained = Arrival {
            retained: true,
            ..live()
        };
        let lenient = CommandPolicy {
            allow_untimed: true,
            max_age_ms: u64::MAX,
            ..policy()
        };
        assert_eq!(
            admit(&lenient, &retained, Some(NOW)),
            Err(Refusal::Retained)
        );
        assert_eq!(admit(&lenient, &retained, None), Err(Refusal::Retained));
    }

    #[test]
    fn a_northbound_with_commands_off_refuses_everything_first() {
        let off = CommandPolicy {
            enabled: false,
            ..policy()
        };
        let retained = Arrival {
            retained: true,
            ..live()
        };
        assert_eq!(admit(&off, &live(), Some(NOW)), Err(Refusal::Disabled));
        assert_eq!(admit(&off, &retained, None), Err(Refusal::Disabled));
    }

    #[test]
    fn an_untimed_command_is_refused_unless_the_northbound_allows_untimed_commands() {
        assert_eq!(admit(&policy(), &live(), None), Err(Refusal::Untimed));
        let untimed = CommandPolicy {
            allow_untimed: true,
            ..policy()
        };
        assert_eq!(admit(&untimed, &live(), None), Ok(()));
        // Even allowed, an unsynchronised clock does not matter without a timestamp to judge.
        let unsynced = Arrival {
            clock_synchronised: false,
            ..live()
        };
        assert_eq!(admit(&untimed, &unsynced, None), Ok(()));
    }

    #[test]
    fn an_old_command_is_expired_with_its_age() {
        assert_eq!(
            admit(&policy(), &live(), Some(NOW - 10_001)),
            Err(Refusal::Expired { age_ms: 10_001 })
        );
        assert_eq!(admit(&policy(), &live(), Some(NOW - 10_000)), Ok(()));
    }

    #[test]
    fn a_command_queued_in_the_broker_before_the_gateway_connected_is_refused_within_the_age_limit()
    {
        let just_connected = Arrival {
            connected_ms: NOW - 1_000,
            ..live()
        };
        // Sent 5 s ago, 4 s before the connection: young enough, but it waited in the session.
        assert_eq!(
            admit(&policy(), &just_connected, Some(NOW - 5_000)),
            Err(Refusal::QueuedBeforeConnect { before_ms: 4_000 })
        );
        // Within the skew of the connection: the sender's clock may be a little behind.
        assert_eq!(admit(&policy(), &just_connected, Some(NOW - 2_500)), Ok(()));
    }

    #[test]
    fn a_sender_clock_ahead_by_more_than_the_skew_is_refused_not_trusted() {
        assert_eq!(
            admit(&policy(), &live(), Some(NOW + 2_001)),
            Err(Refusal::Future { ahead_ms: 2_001 })
        );
        assert_eq!(admit(&policy(), &live(), Some(NOW + 2_000)), Ok(()));
    }

    #[test]
    fn an_unsynchronised_gateway_clock_refuses_every_timed_command() {
        let unsynced = Arrival {
            clock_synchronised: false,
            ..live()
        };
        assert_eq!(
            admit(&policy(), &unsynced, Some(NOW)),
            Err(Refusal::ClockUnsynchronised)
        );
    }

    #[test]
    fn every_refusal_has_a_listed_reason_and_says_what_to_do_in_words() {
        let all = [
            Refusal::Disabled,
            Refusal::Retained,
            Refusal::Untimed,
            Refusal::ClockUnsynchronised,
            Refusal::Future { ahead_ms: 1 },
            Refusal::Expired { age_ms: 1 },
            Refusal::QueuedBeforeConnect { before_ms: 1 },
        ];
        for r in all {
            assert!(Refusal::REASONS.contains(&r.reason()), "{r:?}");
            assert!(r.to_string().len() > 30, "{r:?}: {r}");
        }
    }

    proptest! {
        /// Whatever the clocks say, an admitted timed command was sent within the age limit
        /// (and the skew) of its arrival, and not before the connection it came on.
        #[test]
        fn an_admitted_command_is_young_and_was_sent_on_this_connection(
            sent in 0u64..4_000_000_000_000,
            received in 0u64..4_000_000_000_000,
            connected_back in 0u64..100_000,
            max_age in 0u64..120_000,
            skew in 0u64..10_000,
        ) {
            let policy = CommandPolicy { enabled: true, max_age_ms: max_age, clock_skew_ms: skew, allow_untimed: false };
            let arrival = Arrival {
                retained: false,
                received_ms: received,
                connected_ms: received.saturating_sub(connected_back),
                clock_synchronised: true,
                expires_ms: None,
            };
            if admit(&policy, &arrival, Some(sent)).is_ok() {
                prop_assert!(sent <= received + skew);
                prop_assert!(received.saturating_sub(sent) <= max_age);
                prop_assert!(sent + skew >= arrival.connected_ms);
            }
        }
    }
}
