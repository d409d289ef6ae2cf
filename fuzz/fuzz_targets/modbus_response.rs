//! Bytes from a PLC: the RTU master's response scanner and reply decoding, the register codec
//! for every type, byte order, bit and scaling, the planned reads sliced into tag values as the
//! poller does, and the block-size learner driven by a device's answers.
#![no_main]

use std::time::{Duration, Instant};

use edge_driver::{ReportRule, ReportState, Scaling};
use edge_modbus::codec::{decode_registers, encode_registers, register_count};
use edge_modbus::learn::BlockLearner;
use edge_modbus::plan::{plan, PlanLimits, PlanTag};
use edge_modbus::rtu::{decode_reply, scan_response, Op, Reply, Scan};
use edge_modbus::{Address, Area, ByteOrder};
use edge_model::{DataType, Quality, Value};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// `string:N` takes N from 1 to 2000 (edge-model's limit, checked by the config).
const MAX_STRING_LEN: u16 = 2000;

const AREAS: [Area; 4] = [
    Area::Coil,
    Area::DiscreteInput,
    Area::HoldingRegister,
    Area::InputRegister,
];

const FIXED_TYPES: [DataType; 9] = [
    DataType::Bool,
    DataType::I16,
    DataType::U16,
    DataType::I32,
    DataType::U32,
    DataType::I64,
    DataType::U64,
    DataType::F32,
    DataType::F64,
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = rtu_line(&mut u);
    let _ = codec(&mut u);
    let _ = planned_reads(&mut u);
    let _ = learner(&mut u);
});

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => Op::Read {
            area: *u.choose(&AREAS)?,
            start: u.arbitrary()?,
            count: u.arbitrary()?,
        },
        1 => Op::WriteCoil {
            address: u.arbitrary()?,
            on: u.arbitrary()?,
        },
        2 => Op::WriteRegister {
            address: u.arbitrary()?,
            value: u.arbitrary()?,
        },
        _ => {
            let n = u.int_in_range(0..=130usize)?;
            let mut words = Vec::with_capacity(n);
            for _ in 0..n {
                words.push(u.arbitrary()?);
            }
            Op::WriteRegisters {
                address: u.arbitrary()?,
                words,
            }
        }
    })
}

/// What `RtuLine::transact` does with the bytes received after a request: scan, drop a byte
/// on noise or a CRC error, decode the answer.
fn rtu_line(u: &mut Unstructured<'_>) -> Result<()> {
    let unit: u8 = u.arbitrary()?;
    let op = op(u)?;
    let len = u.arbitrary_len::<u8>()?;
    let line = u.bytes(len)?;
    let function = op.function_code();
    let mut buf = line.to_vec();
    // Every pass drops a byte or ends, so the scan is bounded by the line's length.
    for _ in 0..=line.len() {
        match scan_response(&buf, unit, function) {
            Scan::Answer { len, result } => {
                assert!(len <= buf.len(), "an answer longer than what arrived");
                assert!(len >= 4, "an answer shorter than unit, function and CRC");
                buf.drain(..len);
                if let Ok(data) = result {
                    check_reply(&op, &data);
                }
                return Ok(());
            }
            Scan::Stray | Scan::CrcError => {
                assert!(!buf.is_empty(), "a stray byte in an empty buffer");
                buf.remove(0);
            }
            Scan::Incomplete => return Ok(()),
        }
    }
    panic!("the scan neither ended nor consumed the line");
}

fn check_reply(op: &Op, data: &[u8]) {
    let _ = op.describe();
    match (op, decode_reply(op, data)) {
        (Op::Read { count, .. }, Ok(Reply::Bits(bits))) => {
            assert!(
                bits.len() <= usize::from(*count),
                "more bits than asked for"
            );
        }
        (Op::Read { .. }, Ok(Reply::Registers(regs))) => {
            assert!(regs.len() * 2 < data.len(), "more registers than bytes");
        }
        (Op::Read { .. }, Ok(Reply::Written)) => panic!("a read answered as a write"),
        (_, Ok(Reply::Written)) | (_, Err(_)) => {}
        (_, Ok(other)) => panic!("a write answered with data: {other:?}"),
    }
}

fn scaling(u: &mut Unstructured<'_>) -> Result<Scaling> {
    Ok(if u.arbitrary()? {
        Scaling::IDENTITY
    } else {
        Scaling {
            scale: u.arbitrary()?,
            offset: u.arbitrary()?,
        }
    })
}

fn data_type(u: &mut Unstructured<'_>) -> Result<DataType> {
    Ok(if u.ratio(1u8, 4)? {
        DataType::String(u.int_in_range(1..=MAX_STRING_LEN)?)
    } else {
        *u.choose(&FIXED_TYPES)?
    })
}

/// Register words from the device as every type, byte order and a few bits and scalings.
fn codec(u: &mut Unstructured<'_>) -> Result<()> {
    let n = u.int_in_range(0..=130usize)?;
    let mut regs: Vec<u16> = Vec::with_capacity(n);
    for _ in 0..n {
        regs.push(u.arbitrary()?);
    }
    let string_len = u.int_in_range(1..=MAX_STRING_LEN)?;
    let bit: Option<u8> = u.arbitrary()?;
    let scale = scaling(u)?;
    let rule = ReportRule {
        deadband: u.arbitrary()?,
        heartbeat: None,
    };
    let types = FIXED_TYPES
        .iter()
        .copied()
        .chain([DataType::String(string_len), DataType::String(1)]);
    for dt in types {
        let need = usize::from(register_count(dt));
        // Exactly the registers the type takes when the reply has them, and a wrong count too.
        let slices = [regs.get(..need), Some(&regs[..need.min(regs.len())])];
        for order in ByteOrder::ALL {
            for slice in slices.into_iter().flatten() {
                for b in [None, bit, Some(0), Some(15)] {
                    decode_one(dt, order, b, slice, &scale, &rule);
                }
            }
        }
    }
    Ok(())
}

fn decode_one(
    dt: DataType,
    order: ByteOrder,
    bit: Option<u8>,
    regs: &[u16],
    scale: &Scaling,
    rule: &ReportRule,
) {
    let Ok(raw) = decode_registers(dt, order, bit, regs) else {
        return;
    };
    assert_eq!(regs.len(), usize::from(register_count(dt)));
    match (&raw, dt) {
        (Value::Bool(_), _) => {}
        (Value::String(s), DataType::String(n)) => {
            assert!(s.len() <= usize::from(n), "a string longer than its tag");
            let words = encode_registers(dt, order, &raw).expect("a decoded string encodes");
            let again = decode_registers(dt, order, None, &words).expect("and decodes");
            assert_eq!(again, raw, "a string changed on a round trip");
        }
        _ => {
            // Numbers keep every bit, NaN payloads included.
            let words = encode_registers(dt, order, &raw).expect("a decoded number encodes");
            assert_eq!(words, regs, "{dt} {order:?} does not round-trip");
        }
    }
    let value = scale.apply(raw.clone());
    if let Some(x) = value.as_f64() {
        // The write path: an engineering value back to a raw one (may be refused, not panic).
        let _ = scale.unapply(x, dt);
        let _ = edge_driver::value_from_f64(x, dt);
    }
    let _ = value.to_string();
    let mut state = ReportState::default();
    let now = Instant::now();
    assert!(state.offer(rule, &Some(value.clone()), Quality::Good, now));
    let _ = state.offer(rule, &Some(value), Quality::Good, now);
    let _ = state.offer(rule, &None, Quality::Bad, now);
}

/// Tags as the config allows them, planned into reads, and each read's answer (whatever the
/// device sent, possibly short) sliced into tag values as the poller does.
fn planned_reads(u: &mut Unstructured<'_>) -> Result<()> {
    let limits = PlanLimits {
        max_registers: u.int_in_range(0..=130)?,
        max_bits: u.int_in_range(0..=2010)?,
        max_gap_registers: u.int_in_range(0..=130)?,
        max_gap_bits: u.int_in_range(0..=2010)?,
    };
    let n = u.int_in_range(0..=24usize)?;
    let mut tags = Vec::with_capacity(n);
    let mut specs = Vec::with_capacity(n);
    for id in 0..n {
        let area = *u.choose(&AREAS)?;
        let data_type = if area.is_bits() {
            DataType::Bool
        } else {
            data_type(u)?
        };
        let bit = if data_type == DataType::Bool && !area.is_bits() {
            u.arbitrary::<Option<u8>>()?.map(|b| b % 16)
        } else {
            None
        };
        let address = Address {
            area,
            offset: u.arbitrary()?,
            bit,
        };
        let interval = Duration::from_millis(u.int_in_range(1..=3u64)? * 100);
        tags.push(PlanTag {
            id,
            address,
            data_type,
            interval,
        });
        specs.push((data_type, *u.choose(&ByteOrder::ALL)?, bit, scaling(u)?));
    }
    let Ok(read_plan) = plan(&tags, &limits) else {
        return Ok(());
    };
    let mut covered = vec![0usize; n];
    for group in &read_plan.groups {
        for req in &group.requests {
            let _ = req.describe();
            let max = if req.area.is_bits() {
                limits.max_bits
            } else {
                limits.max_registers
            };
            assert!(
                req.count >= 1 && req.count <= max,
                "a read beyond the limits"
            );
            assert!(
                u32::from(req.start) + u32::from(req.count) <= 65_536,
                "a read past the last address"
            );
            let got = u.int_in_range(0..=usize::from(req.count))?;
            let mut regs: Vec<u16> = Vec::with_capacity(got);
            for _ in 0..got {
                regs.push(u.arbitrary()?);
            }
            for item in &req.items {
                assert!(
                    u32::from(item.offset) + u32::from(item.len) <= u32::from(req.count),
                    "a tag outside its read"
                );
                covered[item.id] += 1;
                let (dt, order, bit, scale) = specs[item.id];
                let range =
                    usize::from(item.offset)..usize::from(item.offset) + usize::from(item.len);
                if req.area.is_bits() {
                    let _ = regs.get(range).and_then(|b| b.first()).map(|&r| r != 0);
                } else if let Some(slice) = regs.get(range) {
                    if let Ok(v) = decode_registers(dt, order, bit, slice) {
                        let _ = scale.apply(v);
                    }
                }
            }
        }
    }
    assert!(
        covered.iter().all(|&c| c == 1),
        "a tag read {covered:?} times"
    );
    Ok(())
}

/// A device accepting and refusing reads in any order: the limit stays a usable block size.
fn learner(u: &mut Unstructured<'_>) -> Result<()> {
    let configured: u16 = u.int_in_range(1..=2000)?;
    let floor: u16 = u.arbitrary()?;
    let mut l = if u.arbitrary()? {
        BlockLearner::new(configured, floor)
    } else {
        BlockLearner::learned(configured, floor)
    };
    for _ in 0..u.int_in_range(0..=64u8)? {
        let count: u16 = u.arbitrary()?;
        let next = if u.arbitrary()? {
            l.refused(count)
        } else {
            l.accepted(count)
        };
        if let Some(n) = next {
            assert_eq!(n, l.limit());
        }
        assert!(l.limit() >= 1, "a block size of zero");
        let _ = l.settled();
    }
    Ok(())
}
