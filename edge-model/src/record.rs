//! The binary form a batch is stored as. Compact (flash wears out: every stored byte counts),
//! versioned, and decoded defensively: a torn or corrupted record is an error, never a panic.
//!
//! Layout, version 2 (what is written): `0x02`, device (len-prefixed UTF-8), sample count, the
//! first sample's read timestamp and seq, then per sample: tag, flags, value (a type byte and
//! its payload, little-endian), and only what differs from the sample before: the read
//! timestamp as a difference from the previous one (flag bit 4), the source timestamp as a
//! difference from the read timestamp (bit 3), the seq as a difference from the previous seq
//! plus one (bit 5). Flags: quality in bits 0–1, has-value bit 2. A batch from one poll shares
//! its read times and has consecutive seqs, so a sample costs its tag, its value and two bytes.
//! Differences are zigzag varints of the wrapping difference (any u64 pair round-trips); a
//! difference flag with a zero difference is rejected, so one batch has one encoding.
//!
//! Version 1 (still read): `0x01`, device, sample count, then per sample: tag, flags (quality
//! bits 0–1, has-value bit 2, has-source-timestamp bit 3), value, read timestamp, source
//! timestamp, seq. Lengths, counts, timestamps and seq are LEB128 varints.

use crate::{Batch, DeviceId, Quality, Sample, TagName, Value};

const VERSION_1: u8 = 1;
const VERSION: u8 = 2;
/// Version 2 flags beyond quality and has-value.
const HAS_SOURCE_TS: u8 = 1 << 3;
const READ_TS_CHANGES: u8 = 1 << 4;
const SEQ_JUMPS: u8 = 1 << 5;
/// No real batch has more samples than this; a count above it means corruption, and checking
/// it first keeps a corrupted count from asking for gigabytes.
const MAX_SAMPLES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early, at byte {0}")]
    Truncated(usize),
    #[error("record format version {0} is not known to this build")]
    UnknownVersion(u8),
    #[error("invalid {what} at byte {at}")]
    Invalid { what: &'static str, at: usize },
    #[error("{0} unexpected bytes after the record")]
    TrailingBytes(usize),
}

impl Batch {
    /// Appends the stored form of this batch to `out` (version 2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        put_str(out, &self.device.0);
        put_varint(out, self.samples.len() as u64);
        let first = self.samples.first();
        let mut read_ts = first.map_or(0, |s| s.read_ts_ms);
        let mut next_seq = first.map_or(0, |s| s.seq);
        put_varint(out, read_ts);
        put_varint(out, next_seq);
        for s in &self.samples {
            put_str(out, &s.tag.0);
            let flags = quality_bits(s.quality)
                | if s.value.is_some() { 1 << 2 } else { 0 }
                | if s.source_ts_ms.is_some() {
                    HAS_SOURCE_TS
                } else {
                    0
                }
                | if s.read_ts_ms != read_ts {
                    READ_TS_CHANGES
                } else {
                    0
                }
                | if s.seq != next_seq { SEQ_JUMPS } else { 0 };
            out.push(flags);
            if let Some(v) = &s.value {
                put_value(out, v);
            }
            if s.read_ts_ms != read_ts {
                put_delta(out, s.read_ts_ms, read_ts);
                read_ts = s.read_ts_ms;
            }
            if let Some(ts) = s.source_ts_ms {
                put_delta(out, ts, s.read_ts_ms);
            }
            if s.seq != next_seq {
                put_delta(out, s.seq, next_seq);
            }
            next_seq = s.seq.wrapping_add(1);
        }
    }

    /// The version 1 form, which older stores hold.
    #[cfg(test)]
    fn encode_v1(&self, out: &mut Vec<u8>) {
        out.push(VERSION_1);
        put_str(out, &self.device.0);
        put_varint(out, self.samples.len() as u64);
        for s in &self.samples {
            put_str(out, &s.tag.0);
            let flags = quality_bits(s.quality)
                | if s.value.is_some() { 1 << 2 } else { 0 }
                | if s.source_ts_ms.is_some() { 1 << 3 } else { 0 };
            out.push(flags);
            if let Some(v) = &s.value {
                put_value(out, v);
            }
            put_varint(out, s.read_ts_ms);
            if let Some(ts) = s.source_ts_ms {
                put_varint(out, ts);
            }
            put_varint(out, s.seq);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.samples.len() * 24);
        self.encode(&mut out);
        out
    }

    /// Decodes a stored batch (version 1 or 2); any malformed input is an error.
    pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8()?;
        if version != VERSION && version != VERSION_1 {
            return Err(DecodeError::UnknownVersion(version));
        }
        let device = DeviceId(r.string()?);
        let count = r.varint()?;
        if count > MAX_SAMPLES {
            return Err(r.invalid("sample count"));
        }
        // Each sample takes at least 4 bytes; never reserve more than the input could hold.
        let mut samples = Vec::with_capacity((count as usize).min(bytes.len() / 4));
        if version == VERSION_1 {
            for _ in 0..count {
                samples.push(r.sample_v1()?);
            }
        } else {
            let mut read_ts = r.varint()?;
            let mut next_seq = r.varint()?;
            for _ in 0..count {
                let s = r.sample_v2(read_ts, next_seq)?;
                read_ts = s.read_ts_ms;
                next_seq = s.seq.wrapping_add(1);
                samples.push(s);
            }
        }
        if r.at != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - r.at));
        }
        Ok(Batch { device, samples })
    }
}

fn quality_bits(q: Quality) -> u8 {
    match q {
        Quality::Good => 0,
        Quality::Uncertain => 1,
        Quality::Bad => 2,
    }
}

/// `value - base` (wrapping), zigzag-encoded so that small differences either way are short.
fn put_delta(out: &mut Vec<u8>, value: u64, base: u64) {
    let d = value.wrapping_sub(base) as i64;
    put_varint(out, ((d << 1) ^ (d >> 63)) as u64);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => out.extend_from_slice(&[0, *b as u8]),
        Value::I16(x) => {
            out.push(1);
            out.extend_from_slice(&x.to_le_bytes())
        }
        Value::U16(x) => {
            out.push(2);
            out.extend_from_slice(&x.to_le_bytes())
        }
        Value::I32(x) => {
            out.push(3);
            out.extend_from_slice(&x.to_le_bytes())
        }
        Value::U32(x) => {
            out.push(4);
            out.extend_from_slice(&x.to_le_bytes())
        }
        Value::I64(x) => {
            out.push(5);
            out.extend_from_slice(&x.to_le_bytes())
        }
        Value::U64(x) => {
            out.push(6);
            out.extend_from_slice(&x.to_le_bytes())
        }
        Value::F32(x) => {
            out.push(7);
            out.extend_from_slice(&x.to_le_bytes())
        }
        Value::F64(x) => {
            out.push(8);
            out.extend_from_slice(&x.to_le_bytes())
        }
        Value::String(s) => {
            out.push(9);
            put_str(out, s)
        }
    }
}

fn unzigzag(z: u64) -> u64 {
    ((z >> 1) as i64 ^ -((z & 1) as i64)) as u64
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn invalid(&self, what: &'static str) -> DecodeError {
        DecodeError::Invalid { what, at: self.at }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self
            .at
            .checked_add(N)
            .ok_or(DecodeError::Truncated(self.at))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(DecodeError::Truncated(self.at))?;
        self.at = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn quality(&self, flags: u8) -> Result<Quality, DecodeError> {
        match flags & 0b11 {
            0 => Ok(Quality::Good),
            1 => Ok(Quality::Uncertain),
            2 => Ok(Quality::Bad),
            _ => Err(self.invalid("quality")),
        }
    }

    fn sample_v1(&mut self) -> Result<Sample, DecodeError> {
        let tag = TagName(self.string()?);
        let flags = self.u8()?;
        if flags & !0b1111 != 0 {
            return Err(self.invalid("sample flags"));
        }
        let quality = self.quality(flags)?;
        let value = if flags & (1 << 2) != 0 {
            Some(self.value()?)
        } else {
            None
        };
        let read_ts_ms = self.varint()?;
        let source_ts_ms = if flags & (1 << 3) != 0 {
            Some(self.varint()?)
        } else {
            None
        };
        let seq = self.varint()?;
        Ok(Sample {
            tag,
            value,
            quality,
            read_ts_ms,
            source_ts_ms,
            seq,
        })
    }

    /// A version 2 sample, given the previous sample's read time and seq + 1.
    fn sample_v2(&mut self, read_ts: u64, next_seq: u64) -> Result<Sample, DecodeError> {
        let tag = TagName(self.string()?);
        let flags = self.u8()?;
        if flags & !0b11_1111 != 0 {
            return Err(self.invalid("sample flags"));
        }
        let quality = self.quality(flags)?;
        let value = if flags & (1 << 2) != 0 {
            Some(self.value()?)
        } else {
            None
        };
        let read_ts_ms = if flags & READ_TS_CHANGES != 0 {
            self.delta(read_ts)?
        } else {
            read_ts
        };
        let source_ts_ms = if flags & HAS_SOURCE_TS != 0 {
            // Zero is a valid difference here: a source time equal to the read time.
            let z = self.varint()?;
            Some(read_ts_ms.wrapping_add(unzigzag(z)))
        } else {
            None
        };
        let seq = if flags & SEQ_JUMPS != 0 {
            self.delta(next_seq)?
        } else {
            next_seq
        };
        Ok(Sample {
            tag,
            value,
            quality,
            read_ts_ms,
            source_ts_ms,
            seq,
        })
    }

    /// A flagged difference from `base`; zero would have been left out, so it is malformed.
    fn delta(&mut self, base: u64) -> Result<u64, DecodeError> {
        let z = self.varint()?;
        if z == 0 {
            return Err(self.invalid("zero difference"));
        }
        Ok(base.wrapping_add(unzigzag(z)))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = (b & 0x7f) as u64;
            if shift == 63 && part > 1 {
                return Err(self.invalid("varint"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.invalid("varint"))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.invalid("length"))?;
        let end = self
            .at
            .checked_add(len)
            .ok_or(DecodeError::Truncated(self.at))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(DecodeError::Truncated(self.at))?;
        let s = std::str::from_utf8(slice).map_err(|_| self.invalid("UTF-8 text"))?;
        self.at = end;
        Ok(s.to_owned())
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        Ok(match self.u8()? {
            0 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(self.invalid("bool")),
            },
            1 => Value::I16(i16::from_le_bytes(self.take()?)),
            2 => Value::U16(u16::from_le_bytes(self.take()?)),
            3 => Value::I32(i32::from_le_bytes(self.take()?)),
            4 => Value::U32(u32::from_le_bytes(self.take()?)),
            5 => Value::I64(i64::from_le_bytes(self.take()?)),
            6 => Value::U64(u64::from_le_bytes(self.take()?)),
            7 => Value::F32(f32::from_le_bytes(self.take()?)),
            8 => Value::F64(f64::from_le_bytes(self.take()?)),
            9 => Value::String(self.string()?),
            _ => return Err(self.invalid("value type")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i16>().prop_map(Value::I16),
            any::<u16>().prop_map(Value::U16),
            any::<i32>().prop_map(Value::I32),
            any::<u32>().prop_map(Value::U32),
            any::<i64>().prop_map(Value::I64),
            any::<u64>().prop_map(Value::U64),
            any::<f32>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Value::F32),
            any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Value::F64),
            ".{0,40}".prop_map(Value::String),
        ]
    }

    fn sample_strategy() -> impl Strategy<Value = Sample> {
        (
            "[a-z_]{1,12}",
            proptest::option::of(value_strategy()),
            0u8..3,
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
        )
            .prop_map(|(tag, value, q, read_ts_ms, source_ts_ms, seq)| Sample {
                tag: TagName(tag),
                value,
                quality: [Quality::Good, Quality::Uncertain, Quality::Bad][q as usize],
                read_ts_ms,
                source_ts_ms,
                seq,
            })
    }

    proptest! {
        #[test]
        fn every_batch_decodes_to_itself(device in ".{0,20}", samples in proptest::collection::vec(sample_strategy(), 0..20)) {
            let batch = Batch { device: DeviceId(device), samples };
            prop_assert_eq!(Batch::decode(&batch.to_bytes()), Ok(batch));
        }

        #[test]
        fn a_version_1_record_decodes_to_the_same_batch(device in ".{0,20}", samples in proptest::collection::vec(sample_strategy(), 0..20)) {
            let batch = Batch { device: DeviceId(device), samples };
            let mut v1 = Vec::new();
            batch.encode_v1(&mut v1);
            prop_assert_eq!(Batch::decode(&v1), Ok(batch));
        }

        #[test]
        fn a_decoded_version_2_record_has_one_canonical_form_no_longer_than_itself(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut record = vec![VERSION];
            record.extend_from_slice(&bytes);
            if let Ok(batch) = Batch::decode(&record) {
                // Bytes, not batches: NaN readings compare equal to themselves this way.
                let canonical = batch.to_bytes();
                prop_assert!(canonical.len() <= record.len());
                let again = Batch::decode(&canonical).map(|b| b.to_bytes());
                prop_assert_eq!(again, Ok(canonical));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Batch::decode(&bytes);
        }

        #[test]
        fn every_strict_prefix_of_a_record_is_rejected(samples in proptest::collection::vec(sample_strategy(), 1..5)) {
            let bytes = Batch { device: DeviceId("plc1".into()), samples }.to_bytes();
            for cut in 0..bytes.len() {
                prop_assert!(Batch::decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn a_corrupted_sample_count_does_not_allocate_wildly() {
        let mut bytes = vec![VERSION];
        put_str(&mut bytes, "plc");
        put_varint(&mut bytes, u64::MAX);
        assert_eq!(
            Batch::decode(&bytes),
            Err(DecodeError::Invalid {
                what: "sample count",
                at: bytes.len()
            })
        );
    }

    #[test]
    fn a_sample_of_a_poll_costs_its_tag_its_value_and_one_flag_byte() {
        // One poll: every sample read at the same time, seqs consecutive.
        let samples: Vec<Sample> = (0..1000u64)
            .map(|i| Sample {
                seq: 5000 + i,
                ..Sample::good(
                    TagName(format!("u{:03}", i % 1000)),
                    Value::U16(7),
                    1_767_000_000_000,
                )
            })
            .collect();
        let batch = Batch {
            device: DeviceId("plc01".into()),
            samples,
        };
        let bytes = batch.to_bytes();
        // 5 bytes of tag, 3 of value, 1 of flags per sample; a 17-byte header.
        assert_eq!(bytes.len(), 17 + 1000 * 9);
        let mut v1 = Vec::new();
        batch.encode_v1(&mut v1);
        assert_eq!(
            v1.len(),
            9 + 1000 * 17,
            "version 1: 6 bytes of read time, 2 of seq"
        );
    }

    #[test]
    fn a_difference_flag_with_no_difference_is_rejected() {
        let batch = Batch {
            device: DeviceId("p".into()),
            samples: vec![Sample::good(TagName("t".into()), Value::Bool(true), 9)],
        };
        let mut bytes = batch.to_bytes();
        let flags_at = bytes.len() - 3;
        assert_eq!(bytes[flags_at], 1 << 2);
        bytes[flags_at] |= READ_TS_CHANGES;
        bytes.push(0);
        assert!(matches!(
            Batch::decode(&bytes),
            Err(DecodeError::Invalid {
                what: "zero difference",
                ..
            })
        ));
    }

    #[test]
    fn an_unknown_version_is_named() {
        assert_eq!(Batch::decode(&[7]), Err(DecodeError::UnknownVersion(7)));
    }
}
