//! Modbus RTU framing for the master side: requests as bytes with their CRC, and a response
//! scanner that finds the one frame answering a request in whatever arrived on the line,
//! telling a CRC error and stray bytes apart so the bus can count them instead of failing.

use tokio_modbus::ExceptionCode;

use crate::address::Area;

/// One Modbus request, independent of the transport that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read { area: Area, start: u16, count: u16 },
    WriteCoil { address: u16, on: bool },
    WriteRegister { address: u16, value: u16 },
    WriteRegisters { address: u16, words: Vec<u16> },
}

/// What a device answered to an [`Op`] that it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
    Written,
}

impl Op {
    pub fn function_code(&self) -> u8 {
        match self {
            Op::Read { area, .. } => match area {
                Area::Coil => 0x01,
                Area::DiscreteInput => 0x02,
                Area::HoldingRegister => 0x03,
                Area::InputRegister => 0x04,
            },
            Op::WriteCoil { .. } => 0x05,
            Op::WriteRegister { .. } => 0x06,
            Op::WriteRegisters { .. } => 0x10,
        }
    }

    /// The request PDU: function code and data, without unit id or CRC.
    pub fn pdu(&self) -> Vec<u8> {
        let mut pdu = vec![self.function_code()];
        match self {
            Op::Read { start, count, .. } => {
                pdu.extend_from_slice(&start.to_be_bytes());
                pdu.extend_from_slice(&count.to_be_bytes());
            }
            Op::WriteCoil { address, on } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(if *on { &[0xFF, 0x00] } else { &[0x00, 0x00] });
            }
            Op::WriteRegister { address, value } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                pdu.extend_from_slice(&value.to_be_bytes());
            }
            Op::WriteRegisters { address, words } => {
                pdu.extend_from_slice(&address.to_be_bytes());
                // At most 123 words fit a frame; the write path never builds more.
                let n = words.len().min(123) as u16;
                pdu.extend_from_slice(&n.to_be_bytes());
                pdu.push((n * 2) as u8);
                for w in words.iter().take(n as usize) {
                    pdu.extend_from_slice(&w.to_be_bytes());
                }
            }
        }
        pdu
    }

    /// A short text for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Op::Read { area, start, count } => format!("read {area:?} {start}+{count}"),
            Op::WriteCoil { address, on } => format!("write coil {address} = {on}"),
            Op::WriteRegister { address, value } => format!("write register {address} = {value}"),
            Op::WriteRegisters { address, words } => {
                format!("write {} registers at {address}", words.len())
            }
        }
    }
}

/// The Modbus CRC-16 (polynomial 0xA001, initial 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The request frame for `op` to `unit`: unit id, PDU, CRC.
pub fn request_frame(unit: u8, op: &Op) -> Vec<u8> {
    let mut frame = vec![unit];
    frame.extend(op.pdu());
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// What the start of the receive buffer holds, seen as the answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed to decide.
    Incomplete,
    /// A byte that cannot start the awaited answer (another unit, another function, noise):
    /// drop one byte and scan again.
    Stray,
    /// A frame of the right shape whose CRC does not match: drop one byte and scan again
    /// (the real answer may start inside it).
    CrcError,
    /// The answer, `len` bytes long.
    Answer {
        len: usize,
        result: Result<Vec<u8>, ExceptionCode>,
    },
}

/// Looks for the answer of `unit` to a request with function `function` at the start of
/// `buf`. The data of an accepted answer is the PDU after the function code.
pub fn scan_response(buf: &[u8], unit: u8, function: u8) -> Scan {
    let (Some(&u), Some(&f)) = (buf.first(), buf.get(1)) else {
        return match buf.first() {
            Some(&u) if u != unit => Scan::Stray,
            _ => Scan::Incomplete,
        };
    };
    if u != unit {
        return Scan::Stray;
    }
    let len = if f == function | 0x80 {
        5
    } else if f == function {
        match function {
            0x01..=0x04 => match buf.get(2) {
                Some(&n) => 3 + usize::from(n) + 2,
                None => return Scan::Incomplete,
            },
            _ => 8,
        }
    } else {
        return Scan::Stray;
    };
    let Some(frame) = buf.get(..len) else {
        return Scan::Incomplete;
    };
    let body = &frame[..len - 2];
    let crc = u16::from_le_bytes([frame[len - 2], frame[len - 1]]);
    if crc16(body) != crc {
        return Scan::CrcError;
    }
    let result = if f & 0x80 != 0 {
        Err(ExceptionCode::new(frame[2]))
    } else {
        Ok(body[2..].to_vec())
    };
    Scan::Answer { len, result }
}

/// Turns the data of an accepted answer into a [`Reply`], or says why it does not fit `op`.
pub fn decode_reply(op: &Op, data: &[u8]) -> Result<Reply, String> {
    match op {
        Op::Read { area, count, .. } => {
            let (&n, bytes) = data
                .split_first()
                .ok_or_else(|| "empty answer".to_owned())?;
            if usize::from(n) != bytes.len() {
                return Err(format!("byte count {n} but {} data bytes", bytes.len()));
            }
            if area.is_bits() {
                let bits: Vec<bool> = (0..usize::from(*count))
                    .map_while(|i| bytes.get(i / 8).map(|b| b & (1 << (i % 8)) != 0))
                    .collect();
                Ok(Reply::Bits(bits))
            } else {
                Ok(Reply::Registers(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect(),
                ))
            }
        }
        _ => {
            // A write is answered with the echo of its address and value or count.
            let pdu = op.pdu();
            match pdu.get(1..5) {
                Some(echo) if data == echo => Ok(Reply::Written),
                _ => Err("the answer does not echo the write".to_owned()),
            }
        }
    }
}

/// The silence that ends a frame: 3.5 character times, and the fixed 1.75 ms the standard
/// prescribes above 19200 baud. A character is 1 start bit, the data bits, a parity bit if
/// any and the stop bits.
pub fn inter_frame_gap(baud: u32, bits_per_char: u32) -> std::time::Duration {
    if baud > 19_200 || baud == 0 {
        return std::time::Duration::from_micros(1750);
    }
    let micros = u64::from(bits_per_char) * 3_500_000 / u64::from(baud) + 1;
    std::time::Duration::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answer(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = vec![unit];
        f.extend_from_slice(pdu);
        let crc = crc16(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    #[test]
    fn the_crc_matches_the_specification_example() {
        // Read holding registers 0x006B+3 from unit 0x11: CRC 0x8776, sent 76 87.
        let frame = request_frame(
            0x11,
            &Op::Read {
                area: Area::HoldingRegister,
                start: 0x6B,
                count: 3,
            },
        );
        assert_eq!(frame, vec![0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]);
    }

    #[test]
    fn a_register_answer_is_found_and_decoded() {
        let buf = answer(7, &[0x03, 4, 0x12, 0x34, 0xAB, 0xCD]);
        let Scan::Answer { len, result } = scan_response(&buf, 7, 0x03) else {
            panic!("no answer found");
        };
        assert_eq!(len, buf.len());
        let op = Op::Read {
            area: Area::HoldingRegister,
            start: 0,
            count: 2,
        };
        assert_eq!(
            decode_reply(&op, &result.expect("accepted")),
            Ok(Reply::Registers(vec![0x1234, 0xABCD]))
        );
    }

    #[test]
    fn an_exception_answer_carries_its_code() {
        let buf = answer(2, &[0x83, 0x02]);
        assert_eq!(
            scan_response(&buf, 2, 0x03),
            Scan::Answer {
                len: 5,
                result: Err(ExceptionCode::IllegalDataAddress)
            }
        );
    }

    #[test]
    fn a_corrupted_answer_is_a_crc_error_and_noise_is_stray() {
        let mut buf = answer(2, &[0x03, 2, 0, 1]);
        buf[3] ^= 0x40;
        assert_eq!(scan_response(&buf, 2, 0x03), Scan::CrcError);
        assert_eq!(scan_response(&[0x55, 0x02], 2, 0x03), Scan::Stray);
        assert_eq!(scan_response(&[0x02, 0x04], 2, 0x03), Scan::Stray);
        assert_eq!(scan_response(&[0x02], 2, 0x03), Scan::Incomplete);
        assert_eq!(
            scan_response(&[0x02, 0x03, 4, 0], 2, 0x03),
            Scan::Incomplete
        );
    }

    #[test]
    fn bits_are_unpacked_low_bit_first_and_cut_to_the_count() {
        let op = Op::Read {
            area: Area::Coil,
            start: 0,
            count: 10,
        };
        let bits = decode_reply(&op, &[2, 0b0000_0101, 0b0000_0010]).expect("fits");
        let want = vec![
            true, false, true, false, false, false, false, false, false, true,
        ];
        assert_eq!(bits, Reply::Bits(want));
    }

    #[test]
    fn a_write_answer_must_echo_the_request() {
        let op = Op::WriteRegister {
            address: 5,
            value: 0x0102,
        };
        assert_eq!(decode_reply(&op, &[0, 5, 1, 2]), Ok(Reply::Written));
        assert!(decode_reply(&op, &[0, 5, 1, 3]).is_err());
    }

    #[test]
    fn the_gap_is_three_and_a_half_characters_and_fixed_above_19200_baud() {
        assert_eq!(
            inter_frame_gap(9600, 11),
            std::time::Duration::from_micros(4011)
        );
        assert_eq!(
            inter_frame_gap(115_200, 11),
            std::time::Duration::from_micros(1750)
        );
    }

    proptest! {
        #[test]
        fn an_answer_is_found_after_any_noise(noise in proptest::collection::vec(any::<u8>(), 0..40),
                                              regs in proptest::collection::vec(any::<u16>(), 1..60),
                                              unit in 1u8..=247) {
            let mut pdu = vec![0x04, (regs.len() * 2) as u8];
            for r in &regs { pdu.extend_from_slice(&r.to_be_bytes()); }
            let good = answer(unit, &pdu);
            let mut buf = noise.clone();
            buf.extend_from_slice(&good);
            // Scanning drops one byte at a time, as the bus does, and must end on the answer
            // or, rarely, on a frame hidden in the noise that happens to be valid.
            let mut at = 0;
            let mut found = None;
            while at < buf.len() {
                match scan_response(&buf[at..], unit, 0x04) {
                    Scan::Answer { len, result } => { found = Some((at, len, result)); break; }
                    Scan::Incomplete if at >= noise.len() => break,
                    _ => at += 1,
                }
            }
            let (at, len, result) = found.expect("the answer is always found");
            if at == noise.len() {
                prop_assert_eq!(len, good.len());
                let op = Op::Read { area: Area::InputRegister, start: 0, count: regs.len() as u16 };
                prop_assert_eq!(decode_reply(&op, &result.expect("accepted")), Ok(Reply::Registers(regs)));
            }
        }

        #[test]
        fn every_request_frame_ends_with_its_own_crc(unit in any::<u8>(), start in any::<u16>(), count in 1u16..=125) {
            let f = request_frame(unit, &Op::Read { area: Area::HoldingRegister, start, count });
            let n = f.len();
            prop_assert_eq!(crc16(&f[..n - 2]).to_le_bytes(), [f[n - 2], f[n - 1]]);
            prop_assert_eq!(crc16(&f), 0);
        }
    }
}
