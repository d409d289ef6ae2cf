//! The read planner: merges the tags of one device into the fewest Modbus read requests the
//! protocol and the device's limits allow, one poll group per poll interval. Pure and
//! deterministic, so `check` can print the plan the driver will run.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use edge_model::DataType;

use crate::address::{Address, Area};
use crate::codec::register_count;

/// The most registers one read (0x03, 0x04) may ask for (Modbus application protocol 6.3, 6.4).
pub const MAX_READ_REGISTERS: u16 = 125;
/// The most bits one read (0x01, 0x02) may ask for (Modbus application protocol 6.1, 6.2).
pub const MAX_READ_BITS: u16 = 2000;

/// How the planner may merge reads for one device. Some devices accept fewer than the protocol's
/// 125 registers per read; a gap lets the planner read a few unused registers to save a request,
/// but devices may answer an exception for addresses they do not map, so it defaults to 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_registers: u16,
    pub max_bits: u16,
    pub max_gap_registers: u16,
    pub max_gap_bits: u16,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_registers: MAX_READ_REGISTERS,
            max_bits: MAX_READ_BITS,
            max_gap_registers: 0,
            max_gap_bits: 0,
        }
    }
}

impl PlanLimits {
    /// Checks the limits against the protocol: block sizes 1..=125 registers and 1..=2000 bits,
    /// and each gap smaller than its block (a larger gap could never be used).
    pub fn validate(&self) -> Result<(), PlanError> {
        for (name, value, max) in [
            ("max_registers", self.max_registers, MAX_READ_REGISTERS),
            ("max_bits", self.max_bits, MAX_READ_BITS),
        ] {
            if !(1..=max).contains(&value) {
                return Err(PlanError::LimitOutOfRange { name, value, max });
            }
        }
        for (name, value, block_name, block) in [
            (
                "max_gap_registers",
                self.max_gap_registers,
                "max_registers",
                self.max_registers,
            ),
            ("max_gap_bits", self.max_gap_bits, "max_bits", self.max_bits),
        ] {
            if value >= block {
                return Err(PlanError::GapNotBelowBlock {
                    name,
                    value,
                    block_name,
                    block,
                });
            }
        }
        Ok(())
    }

    /// The block limit and the largest gap for an area, in registers or bits.
    fn for_area(&self, area: Area) -> (u16, u16) {
        if area.is_bits() {
            (self.max_bits, self.max_gap_bits)
        } else {
            (self.max_registers, self.max_gap_registers)
        }
    }
}

/// One tag as the planner sees it; `id` is the tag's index in the caller's list.
#[derive(Debug, Clone)]
pub struct PlanTag {
    pub id: usize,
    pub address: Address,
    pub data_type: DataType,
    pub interval: Duration,
}

/// Every read of one device, grouped by poll interval (shortest first).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    pub groups: Vec<PollGroup>,
}

/// The reads due together every `interval`, ordered by area, then start address.
#[derive(Debug, Clone, PartialEq)]
pub struct PollGroup {
    pub interval: Duration,
    pub requests: Vec<ReadRequest>,
}

/// One Modbus read: `count` registers or bits of `area` from `start`, and the tags it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRequest {
    pub area: Area,
    pub start: u16,
    pub count: u16,
    pub items: Vec<PlanItem>,
}

/// Where one tag lies within a request's reply: `len` registers or bits from `offset`, counted
/// from the request's start. Tags sharing registers (bits of one register, overlapping
/// addresses) have overlapping items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanItem {
    pub id: usize,
    pub offset: u16,
    pub len: u16,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("{name} is {value}; it must be from 1 to {max}")]
    LimitOutOfRange {
        name: &'static str,
        value: u16,
        max: u16,
    },
    #[error("{name} is {value}; it must be smaller than {block_name} ({block})")]
    GapNotBelowBlock {
        name: &'static str,
        value: u16,
        block_name: &'static str,
        block: u16,
    },
    #[error("tag #{id} at {address}: coils and discrete inputs hold single bits, so the type must be bool, not {data_type}")]
    NotBoolOnBits {
        id: usize,
        address: Address,
        data_type: DataType,
    },
    #[error("tag #{id} at {address}: a bit number only applies to bool tags, not {data_type}")]
    BitOnNonBool {
        id: usize,
        address: Address,
        data_type: DataType,
    },
    #[error(
        "tag #{id} at {address}: a {data_type} occupies no registers, so there is nothing to read"
    )]
    Empty {
        id: usize,
        address: Address,
        data_type: DataType,
    },
    #[error("tag #{id} at {address}: a {data_type} needs {len} {unit}, more than one read may ask for ({limit})")]
    TooLong {
        id: usize,
        address: Address,
        data_type: DataType,
        len: u16,
        unit: &'static str,
        limit: u16,
    },
    #[error("tag #{id} at {address}: a {data_type} needs {len} {unit}, which runs past the last address 65535")]
    AddressOverflow {
        id: usize,
        address: Address,
        data_type: DataType,
        len: u16,
        unit: &'static str,
    },
    #[error("tag #{id} at {address}: the poll interval must be longer than zero")]
    ZeroInterval { id: usize, address: Address },
}

fn unit(area: Area) -> &'static str {
    if area.is_bits() {
        "bits"
    } else {
        "registers"
    }
}

/// A tag's range in its area: `[start, end)`, in registers or bits. `u32` because a range may
/// end at 65536.
#[derive(Debug, Clone, Copy)]
struct Span {
    id: usize,
    start: u32,
    end: u32,
}

/// Checks one tag and returns its range.
fn span_of(tag: &PlanTag, limits: &PlanLimits) -> Result<Span, PlanError> {
    let PlanTag {
        id,
        address,
        data_type,
        interval,
    } = *tag;
    if interval.is_zero() {
        return Err(PlanError::ZeroInterval { id, address });
    }
    let len = if address.area.is_bits() {
        if data_type != DataType::Bool {
            return Err(PlanError::NotBoolOnBits {
                id,
                address,
                data_type,
            });
        }
        1
    } else {
        if address.bit.is_some() && data_type != DataType::Bool {
            return Err(PlanError::BitOnNonBool {
                id,
                address,
                data_type,
            });
        }
        register_count(data_type)
    };
    if len == 0 {
        return Err(PlanError::Empty {
            id,
            address,
            data_type,
        });
    }
    let (block, _) = limits.for_area(address.area);
    if len > block {
        return Err(PlanError::TooLong {
            id,
            address,
            data_type,
            len,
            unit: unit(address.area),
            limit: block,
        });
    }
    let start = u32::from(address.offset);
    let end = start + u32::from(len);
    if end > 1 << 16 {
        return Err(PlanError::AddressOverflow {
            id,
            address,
            data_type,
            len,
            unit: unit(address.area),
        });
    }
    Ok(Span { id, start, end })
}

/// Plans the reads of one device. Tags are grouped by poll interval, then by area; within an
/// area, tags sorted by start address are merged greedily while the request stays within the
/// block limit and the unread gap before the next tag stays within the gap limit. For covering
/// sorted ranges with blocks of bounded span this greedy choice needs the fewest requests (the
/// tests check it against an exhaustive search). The first invalid tag, in input order, is the
/// error.
pub fn plan(tags: &[PlanTag], limits: &PlanLimits) -> Result<ReadPlan, PlanError> {
    limits.validate()?;
    let mut clusters: BTreeMap<(Duration, Area), Vec<Span>> = BTreeMap::new();
    for tag in tags {
        let span = span_of(tag, limits)?;
        clusters
            .entry((tag.interval, tag.address.area))
            .or_default()
            .push(span);
    }
    let mut groups: Vec<PollGroup> = Vec::new();
    for ((interval, area), spans) in clusters {
        let (block, gap) = limits.for_area(area);
        let requests = merge(area, spans, u32::from(block), u32::from(gap));
        match groups.last_mut() {
            Some(group) if group.interval == interval => group.requests.extend(requests),
            _ => groups.push(PollGroup { interval, requests }),
        }
    }
    Ok(ReadPlan { groups })
}

/// Greedy merge of the ranges of one area; every range is already known to fit in `block`.
fn merge(area: Area, mut spans: Vec<Span>, block: u32, gap: u32) -> Vec<ReadRequest> {
    spans.sort_by_key(|s| (s.start, s.end, s.id));
    let mut requests = Vec::new();
    let mut open: Option<(u32, u32, Vec<Span>)> = None;
    for span in spans {
        if let Some((start, end, members)) = &mut open {
            let new_end = (*end).max(span.end);
            if span.start <= *end + gap && new_end - *start <= block {
                *end = new_end;
                members.push(span);
                continue;
            }
        }
        if let Some(done) = open.take() {
            requests.push(request(area, done));
        }
        open = Some((span.start, span.end, vec![span]));
    }
    if let Some(done) = open {
        requests.push(request(area, done));
    }
    requests
}

fn request(area: Area, (start, end, members): (u32, u32, Vec<Span>)) -> ReadRequest {
    // Every bound fits in u16: starts are tag offsets, and a span is at most the block limit.
    let narrow = |x: u32| u16::try_from(x).unwrap_or(u16::MAX);
    ReadRequest {
        area,
        start: narrow(start),
        count: narrow(end - start),
        items: members
            .iter()
            .map(|s| PlanItem {
                id: s.id,
                offset: narrow(s.start - start),
                len: narrow(s.end - s.start),
            })
            .collect(),
    }
}

impl ReadPlan {
    /// Requests over all poll groups; each group's requests run once per its interval.
    pub fn request_count(&self) -> usize {
        self.groups.iter().map(|g| g.requests.len()).sum()
    }

    /// The steady request rate this plan puts on the device, summed over the poll groups.
    pub fn requests_per_second(&self) -> f64 {
        self.groups
            .iter()
            .map(|g| g.requests.len() as f64 / g.interval.as_secs_f64())
            .sum()
    }
}

impl ReadRequest {
    /// The Modbus read function: 0x01 coils, 0x02 discrete inputs, 0x03 holding registers,
    /// 0x04 input registers.
    pub fn function_code(&self) -> u8 {
        match self.area {
            Area::Coil => 0x01,
            Area::DiscreteInput => 0x02,
            Area::HoldingRegister => 0x03,
            Area::InputRegister => 0x04,
        }
    }

    /// One line for `check` and logs, as in `hr:100..=224 (125 registers, 0x03)`.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = (u32::from(self.start) + u32::from(self.count)).saturating_sub(1);
        let unit = match (self.area.is_bits(), self.count) {
            (true, 1) => "bit",
            (true, _) => "bits",
            (false, 1) => "register",
            (false, _) => "registers",
        };
        write!(
            f,
            "{}:{}..={} ({} {}, 0x{:02X})",
            self.area,
            self.start,
            last,
            self.count,
            unit,
            self.function_code()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn tag(id: usize, address: &str, data_type: DataType) -> PlanTag {
        PlanTag {
            id,
            address: address.parse().expect("test address"),
            data_type,
            interval: SECOND,
        }
    }

    fn every(interval: Duration, mut t: PlanTag) -> PlanTag {
        t.interval = interval;
        t
    }

    fn plan_ok(tags: &[PlanTag], limits: &PlanLimits) -> ReadPlan {
        plan(tags, limits).expect("valid tags plan")
    }

    /// `(area, start, count)` of each request of a one-group plan.
    fn shape(p: &ReadPlan) -> Vec<(Area, u16, u16)> {
        assert_eq!(p.groups.len(), 1, "{p:?}");
        p.groups[0]
            .requests
            .iter()
            .map(|r| (r.area, r.start, r.count))
            .collect()
    }

    const HR: Area = Area::HoldingRegister;

    #[test]
    fn adjacent_tags_merge_into_one_request() {
        let tags = [
            tag(0, "hr:100", DataType::U16),
            tag(1, "hr:101", DataType::F32),
            tag(2, "hr:103", DataType::F64),
            tag(3, "hr:107", DataType::String(5)),
        ];
        let p = plan_ok(&tags, &PlanLimits::default());
        assert_eq!(shape(&p), [(HR, 100, 10)]);
        assert_eq!(p.request_count(), 1);
    }

    #[test]
    fn a_gap_larger_than_max_gap_splits_and_one_equal_to_it_merges() {
        let tags = [tag(0, "hr:0", DataType::U16), tag(1, "hr:4", DataType::U16)];
        let no_gap = PlanLimits::default();
        assert_eq!(shape(&plan_ok(&tags, &no_gap)), [(HR, 0, 1), (HR, 4, 1)]);
        let gap = |g| PlanLimits {
            max_gap_registers: g,
            ..PlanLimits::default()
        };
        assert_eq!(shape(&plan_ok(&tags, &gap(2))), [(HR, 0, 1), (HR, 4, 1)]);
        assert_eq!(shape(&plan_ok(&tags, &gap(3))), [(HR, 0, 5)]);
        assert_eq!(shape(&plan_ok(&tags, &gap(4))), [(HR, 0, 5)]);

        let coils = [
            tag(0, "coil:10", DataType::Bool),
            tag(1, "coil:20", DataType::Bool),
        ];
        let bit_gap = |g| PlanLimits {
            max_gap_bits: g,
            ..PlanLimits::default()
        };
        assert_eq!(plan_ok(&coils, &bit_gap(8)).request_count(), 2);
        assert_eq!(shape(&plan_ok(&coils, &bit_gap(9))), [(Area::Coil, 10, 11)]);
        // A register gap does not apply to bits, nor a bit gap to registers.
        assert_eq!(plan_ok(&coils, &gap(100)).request_count(), 2);
        assert_eq!(plan_ok(&tags, &bit_gap(100)).request_count(), 2);
    }

    #[test]
    fn the_125_register_limit_splits_exactly_at_the_limit() {
        let tags: Vec<PlanTag> = (0..126)
            .map(|i| tag(i, &format!("hr:{}", 100 + i), DataType::U16))
            .collect();
        let p = plan_ok(&tags[..125], &PlanLimits::default());
        assert_eq!(shape(&p), [(HR, 100, 125)]);
        assert_eq!(
            p.groups[0].requests[0].describe(),
            "hr:100..=224 (125 registers, 0x03)"
        );
        let p = plan_ok(&tags, &PlanLimits::default());
        assert_eq!(shape(&p), [(HR, 100, 125), (HR, 225, 1)]);

        // A 4-register value that would straddle the limit starts the next request.
        let mut tags: Vec<PlanTag> = (0..123)
            .map(|i| tag(i, &format!("hr:{i}"), DataType::U16))
            .collect();
        tags.push(tag(123, "hr:123", DataType::F64));
        assert_eq!(
            shape(&plan_ok(&tags, &PlanLimits::default())),
            [(HR, 0, 123), (HR, 123, 4)]
        );
    }

    #[test]
    fn the_2000_bit_limit_splits_exactly_at_the_limit() {
        let tags: Vec<PlanTag> = (0..2001)
            .map(|i| tag(i, &format!("di:{i}"), DataType::Bool))
            .collect();
        let di = Area::DiscreteInput;
        assert_eq!(
            shape(&plan_ok(&tags[..2000], &PlanLimits::default())),
            [(di, 0, 2000)]
        );
        let p = plan_ok(&tags, &PlanLimits::default());
        assert_eq!(shape(&p), [(di, 0, 2000), (di, 2000, 1)]);
        assert_eq!(
            p.groups[0].requests[0].describe(),
            "di:0..=1999 (2000 bits, 0x02)"
        );
        assert_eq!(
            p.groups[0].requests[1].describe(),
            "di:2000..=2000 (1 bit, 0x02)"
        );
    }

    #[test]
    fn a_smaller_device_max_registers_splits_at_that_limit() {
        let tags: Vec<PlanTag> = (0..25)
            .map(|i| tag(i, &format!("ir:{i}"), DataType::U16))
            .collect();
        let limits = PlanLimits {
            max_registers: 10,
            ..PlanLimits::default()
        };
        let ir = Area::InputRegister;
        assert_eq!(
            shape(&plan_ok(&tags, &limits)),
            [(ir, 0, 10), (ir, 10, 10), (ir, 20, 5)]
        );
        let bits = PlanLimits {
            max_bits: 8,
            ..PlanLimits::default()
        };
        let coils: Vec<PlanTag> = (0..17)
            .map(|i| tag(i, &format!("coil:{i}"), DataType::Bool))
            .collect();
        assert_eq!(
            shape(&plan_ok(&coils, &bits)),
            [(Area::Coil, 0, 8), (Area::Coil, 8, 8), (Area::Coil, 16, 1)]
        );
    }

    #[test]
    fn different_areas_never_merge_even_at_the_same_offsets() {
        let tags = [
            tag(0, "hr:0", DataType::U16),
            tag(1, "ir:0", DataType::U16),
            tag(2, "coil:0", DataType::Bool),
            tag(3, "di:0", DataType::Bool),
            tag(4, "hr:1", DataType::U16),
            tag(5, "ir:1", DataType::U16),
        ];
        let p = plan_ok(&tags, &PlanLimits::default());
        assert_eq!(
            shape(&p),
            [
                (Area::Coil, 0, 1),
                (Area::DiscreteInput, 0, 1),
                (Area::InputRegister, 0, 2),
                (Area::HoldingRegister, 0, 2),
            ]
        );
        let codes: Vec<u8> = p.groups[0]
            .requests
            .iter()
            .map(ReadRequest::function_code)
            .collect();
        assert_eq!(codes, [0x01, 0x02, 0x04, 0x03]);
    }

    #[test]
    fn tags_with_different_intervals_form_separate_groups_shortest_first() {
        let slow = Duration::from_secs(10);
        let fast = Duration::from_millis(100);
        let tags = [
            every(slow, tag(0, "hr:0", DataType::U16)),
            every(fast, tag(1, "hr:1", DataType::U16)),
            every(slow, tag(2, "hr:2", DataType::U16)),
            every(SECOND, tag(3, "coil:0", DataType::Bool)),
            every(fast, tag(4, "hr:2", DataType::U16)),
        ];
        let p = plan_ok(&tags, &PlanLimits::default());
        let intervals: Vec<Duration> = p.groups.iter().map(|g| g.interval).collect();
        assert_eq!(intervals, [fast, SECOND, slow]);
        let ids = |g: &PollGroup| -> Vec<Vec<usize>> {
            g.requests
                .iter()
                .map(|r| r.items.iter().map(|i| i.id).collect())
                .collect()
        };
        assert_eq!(ids(&p.groups[0]), [vec![1, 4]]);
        assert_eq!(ids(&p.groups[1]), [vec![3]]);
        // Registers 0 and 2 at the slow rate are not adjacent: the fast tag between them does
        // not bridge groups.
        assert_eq!(ids(&p.groups[2]), [vec![0], vec![2]]);
        assert_eq!(p.request_count(), 4);
        assert!((p.requests_per_second() - (10.0 + 1.0 + 0.2)).abs() < 1e-9);
    }

    #[test]
    fn overlapping_and_duplicate_addresses_merge_for_free() {
        let tags = [
            tag(0, "hr:10", DataType::F32),
            tag(1, "hr:11", DataType::U16),
            tag(2, "hr:10", DataType::F32),
            tag(3, "hr:10", DataType::U16),
        ];
        let p = plan_ok(&tags, &PlanLimits::default());
        assert_eq!(shape(&p), [(HR, 10, 2)]);
        let mut items = p.groups[0].requests[0].items.clone();
        items.sort_by_key(|i| i.id);
        assert_eq!(
            items,
            [
                PlanItem {
                    id: 0,
                    offset: 0,
                    len: 2
                },
                PlanItem {
                    id: 1,
                    offset: 1,
                    len: 1
                },
                PlanItem {
                    id: 2,
                    offset: 0,
                    len: 2
                },
                PlanItem {
                    id: 3,
                    offset: 0,
                    len: 1
                },
            ]
        );
        // A tag inside a long one does not count against the block limit.
        let limits = PlanLimits {
            max_registers: 4,
            ..PlanLimits::default()
        };
        let tags = [
            tag(0, "hr:0", DataType::F64),
            tag(1, "hr:1", DataType::U16),
            tag(2, "hr:3", DataType::U16),
        ];
        assert_eq!(shape(&plan_ok(&tags, &limits)), [(HR, 0, 4)]);
    }

    #[test]
    fn bools_on_bits_of_one_register_share_it() {
        let tags = [
            tag(0, "hr:10.0", DataType::Bool),
            tag(1, "hr:10.1", DataType::Bool),
            tag(2, "hr:10.15", DataType::Bool),
            tag(3, "hr:10", DataType::Bool),
        ];
        let p = plan_ok(&tags, &PlanLimits::default());
        assert_eq!(shape(&p), [(HR, 10, 1)]);
        for item in &p.groups[0].requests[0].items {
            assert_eq!((item.offset, item.len), (0, 1));
        }
    }

    #[test]
    fn item_offsets_and_lengths_point_at_each_tags_registers() {
        let tags = [
            tag(0, "hr:207", DataType::U16),
            tag(1, "hr:200", DataType::F32),
            tag(2, "hr:202", DataType::String(9)),
            tag(3, "hr:208", DataType::I16),
        ];
        let p = plan_ok(&tags, &PlanLimits::default());
        assert_eq!(shape(&p), [(HR, 200, 9)]);
        let request = &p.groups[0].requests[0];
        let by_id = |id| {
            *request
                .items
                .iter()
                .find(|i| i.id == id)
                .expect("every tag has an item")
        };
        assert_eq!((by_id(1).offset, by_id(1).len), (0, 2));
        assert_eq!((by_id(2).offset, by_id(2).len), (2, 5));
        assert_eq!((by_id(0).offset, by_id(0).len), (7, 1));
        assert_eq!((by_id(3).offset, by_id(3).len), (8, 1));
        // Items follow the order of their registers.
        let offsets: Vec<u16> = request.items.iter().map(|i| i.offset).collect();
        assert_eq!(offsets, [0, 2, 7, 8]);
    }

    #[test]
    fn a_tag_longer_than_one_read_is_an_error_naming_it() {
        let tags = [
            tag(0, "hr:0", DataType::U16),
            tag(1, "hr:10", DataType::String(251)),
        ];
        let err = plan(&tags, &PlanLimits::default()).expect_err("126 registers");
        assert_eq!(
            err,
            PlanError::TooLong {
                id: 1,
                address: "hr:10".parse().expect("address"),
                data_type: DataType::String(251),
                len: 126,
                unit: "registers",
                limit: 125,
            }
        );
        let text = err.to_string();
        assert!(text.contains("#1") && text.contains("hr:10"), "{text}");
        // 250 bytes fill exactly 125 registers.
        assert!(plan(
            &[tag(0, "hr:10", DataType::String(250))],
            &PlanLimits::default()
        )
        .is_ok());
        let small = PlanLimits {
            max_registers: 3,
            ..PlanLimits::default()
        };
        assert!(matches!(
            plan(&[tag(7, "ir:0", DataType::F64)], &small),
            Err(PlanError::TooLong { id: 7, .. })
        ));
    }

    #[test]
    fn a_tag_running_past_address_65535_is_an_error() {
        let err = plan(&[tag(4, "hr:65534", DataType::F32)], &PlanLimits::default());
        assert!(err.is_ok(), "65534 and 65535 exist: {err:?}");
        let err = plan(&[tag(4, "hr:65535", DataType::F32)], &PlanLimits::default())
            .expect_err("65536 does not exist");
        assert!(matches!(err, PlanError::AddressOverflow { id: 4, .. }));
        assert!(err.to_string().contains("hr:65535"), "{err}");
        let p = plan_ok(
            &[
                tag(0, "coil:65535", DataType::Bool),
                tag(1, "hr:65535", DataType::U16),
            ],
            &PlanLimits::default(),
        );
        assert_eq!(
            shape(&p),
            [(Area::Coil, 65535, 1), (Area::HoldingRegister, 65535, 1)]
        );
        assert_eq!(
            p.groups[0].requests[1].describe(),
            "hr:65535..=65535 (1 register, 0x03)"
        );
    }

    #[test]
    fn tags_the_planner_cannot_read_are_errors() {
        let limits = PlanLimits::default();
        assert!(matches!(
            plan(&[tag(2, "coil:1", DataType::U16)], &limits),
            Err(PlanError::NotBoolOnBits { id: 2, .. })
        ));
        assert!(matches!(
            plan(&[tag(3, "hr:1.4", DataType::U16)], &limits),
            Err(PlanError::BitOnNonBool { id: 3, .. })
        ));
        assert!(matches!(
            plan(&[tag(5, "hr:1", DataType::String(0))], &limits),
            Err(PlanError::Empty { id: 5, .. })
        ));
        assert!(matches!(
            plan(
                &[every(Duration::ZERO, tag(6, "hr:1", DataType::U16))],
                &limits
            ),
            Err(PlanError::ZeroInterval { id: 6, .. })
        ));
    }

    #[test]
    fn limits_outside_the_protocol_are_refused() {
        let ok = PlanLimits::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            PlanLimits {
                max_registers: 126,
                ..ok
            },
            PlanLimits {
                max_registers: 0,
                ..ok
            },
            PlanLimits {
                max_bits: 2001,
                ..ok
            },
            PlanLimits { max_bits: 0, ..ok },
            PlanLimits {
                max_gap_registers: 125,
                ..ok
            },
            PlanLimits {
                max_registers: 10,
                max_gap_registers: 10,
                ..ok
            },
            PlanLimits {
                max_gap_bits: 2000,
                ..ok
            },
        ];
        for limits in bad {
            let err = limits.validate().expect_err("invalid limits");
            assert_eq!(plan(&[], &limits), Err(err));
        }
        let err = PlanLimits {
            max_registers: 126,
            ..ok
        }
        .validate()
        .expect_err("126 registers");
        assert_eq!(
            err.to_string(),
            "max_registers is 126; it must be from 1 to 125"
        );
        let err = PlanLimits {
            max_gap_bits: 2000,
            ..ok
        }
        .validate()
        .expect_err("gap as big as the block");
        assert_eq!(
            err.to_string(),
            "max_gap_bits is 2000; it must be smaller than max_bits (2000)"
        );
        let edge = PlanLimits {
            max_registers: 1,
            max_bits: 1,
            max_gap_registers: 0,
            max_gap_bits: 0,
        };
        assert_eq!(edge.validate(), Ok(()));
        assert!(PlanLimits {
            max_gap_registers: 124,
            max_gap_bits: 1999,
            ..ok
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn no_tags_make_an_empty_plan() {
        let p = plan_ok(&[], &PlanLimits::default());
        assert!(p.groups.is_empty());
        assert_eq!(p.request_count(), 0);
        assert_eq!(p.requests_per_second(), 0.0);
    }

    /// Whether one request may carry all of `spans`: its span within `block`, and no unread run
    /// between the tags longer than `gap`. Written from the definition, independent of `merge`.
    fn feasible(spans: &[(u32, u32)], block: u32, gap: u32) -> bool {
        let mut sorted = spans.to_vec();
        sorted.sort_unstable();
        let Some(&(first, _)) = sorted.first() else {
            return true;
        };
        let mut covered_to = first;
        for &(start, end) in &sorted {
            if start > covered_to + gap {
                return false;
            }
            covered_to = covered_to.max(end);
        }
        covered_to - first <= block
    }

    /// The fewest requests covering `spans`, over every partition of the tags into requests.
    fn brute_force_minimum(spans: &[(u32, u32)], block: u32, gap: u32) -> usize {
        let n = spans.len();
        let full = (1usize << n) - 1;
        let ok: Vec<bool> = (0..=full)
            .map(|mask| {
                let members: Vec<(u32, u32)> = (0..n)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| spans[i])
                    .collect();
                feasible(&members, block, gap)
            })
            .collect();
        let mut best = vec![usize::MAX; full + 1];
        best[0] = 0;
        for mask in 1..=full {
            // The request carrying the lowest tag of `mask`, with any subset of the others.
            let lowest = mask & mask.wrapping_neg();
            let rest = mask ^ lowest;
            let mut others = rest;
            loop {
                let group = others | lowest;
                if ok[group] && best[mask ^ group] != usize::MAX {
                    best[mask] = best[mask].min(best[mask ^ group] + 1);
                }
                if others == 0 {
                    break;
                }
                others = (others - 1) & rest;
            }
        }
        best[full]
    }

    fn area() -> impl Strategy<Value = Area> {
        // Weighted towards one area so that many tags compete for the same requests.
        prop_oneof![
            4 => Just(Area::HoldingRegister),
            1 => Just(Area::InputRegister),
            2 => Just(Area::Coil),
            1 => Just(Area::DiscreteInput),
        ]
    }

    fn register_type() -> impl Strategy<Value = (DataType, Option<u8>)> {
        prop_oneof![
            Just((DataType::Bool, None)),
            (0u8..16).prop_map(|b| (DataType::Bool, Some(b))),
            Just((DataType::U16, None)),
            Just((DataType::F32, None)),
            Just((DataType::F64, None)),
            (1u16..=8).prop_map(|n| (DataType::String(n), None)),
        ]
    }

    fn random_tags() -> impl Strategy<Value = Vec<PlanTag>> {
        prop::collection::vec((area(), 0u16..32, register_type(), interval()), 0..=10).prop_map(
            |raw| {
                raw.into_iter()
                    .enumerate()
                    .map(|(id, (area, offset, (dt, bit), interval))| {
                        let (data_type, bit) = if area.is_bits() {
                            (DataType::Bool, None)
                        } else {
                            (dt, bit)
                        };
                        PlanTag {
                            id,
                            address: Address { area, offset, bit },
                            data_type,
                            interval,
                        }
                    })
                    .collect()
            },
        )
    }

    fn interval() -> impl Strategy<Value = Duration> {
        prop_oneof![4 => Just(SECOND), 1 => Just(2 * SECOND)]
    }

    fn small_limits() -> impl Strategy<Value = PlanLimits> {
        (4u16..=12, 1u16..=12, 0u16..=3, 0u16..=3).prop_map(|(regs, bits, gap_r, gap_b)| {
            PlanLimits {
                max_registers: regs,
                max_bits: bits,
                max_gap_registers: gap_r.min(regs - 1),
                max_gap_bits: gap_b.min(bits - 1),
            }
        })
    }

    fn tag_len(t: &PlanTag) -> u16 {
        if t.address.area.is_bits() || t.data_type == DataType::Bool {
            1
        } else {
            register_count(t.data_type)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn plans_need_the_fewest_requests_and_cover_every_tag_exactly_once(
            tags in random_tags(),
            limits in small_limits(),
        ) {
            let p = plan(&tags, &limits).expect("generated tags fit the limits");

            // Fewest requests: the brute-force minimum for each (interval, area), summed.
            let mut clusters: BTreeMap<(Duration, Area), Vec<(u32, u32)>> = BTreeMap::new();
            for t in &tags {
                let start = u32::from(t.address.offset);
                clusters
                    .entry((t.interval, t.address.area))
                    .or_default()
                    .push((start, start + u32::from(tag_len(t))));
            }
            let minimum: usize = clusters
                .iter()
                .map(|(&(_, area), spans)| {
                    let (block, gap) = limits.for_area(area);
                    brute_force_minimum(spans, u32::from(block), u32::from(gap))
                })
                .sum();
            prop_assert_eq!(p.request_count(), minimum);

            // Groups sorted by interval, each interval once.
            for pair in p.groups.windows(2) {
                prop_assert!(pair[0].interval < pair[1].interval);
            }

            let mut seen = vec![0usize; tags.len()];
            for group in &p.groups {
                for r in &group.requests {
                    let (block, gap) = limits.for_area(r.area);
                    prop_assert!(r.count >= 1 && r.count <= block, "{:?}", r);
                    prop_assert!(u32::from(r.start) + u32::from(r.count) <= 1 << 16);
                    let mut ranges = Vec::new();
                    for item in &r.items {
                        let t = &tags[item.id];
                        seen[item.id] += 1;
                        prop_assert_eq!(t.interval, group.interval);
                        prop_assert_eq!(t.address.area, r.area);
                        prop_assert_eq!(item.len, tag_len(t));
                        prop_assert_eq!(r.start + item.offset, t.address.offset);
                        prop_assert!(item.offset + item.len <= r.count);
                        let start = u32::from(t.address.offset);
                        ranges.push((start, start + u32::from(item.len)));
                    }
                    // The request reads exactly from its first tag to its last, gaps in limit.
                    prop_assert!(feasible(&ranges, u32::from(block), u32::from(gap)));
                    let lo = ranges.iter().map(|r| r.0).min();
                    let hi = ranges.iter().map(|r| r.1).max();
                    prop_assert_eq!(lo, Some(u32::from(r.start)));
                    prop_assert_eq!(hi, Some(u32::from(r.start) + u32::from(r.count)));
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "{:?}", seen);
        }
    }
}
