//! The binary form a batch is stored as. Compact (flash wears out: every stored byte counts),
//! versioned, and decoded defensively: a torn or corrupted record is an error, never a panic.
//!
//! Layout, version 1: `0x01`, device (len-prefixed UTF-8), sample count, then per sample:
//! tag, flags (quality in bits 0–1, has-value bit 2, has-source-timestamp bit 3), value (a type
//! byte and its payload, little-endian), read timestamp, source timestamp, seq. Lengths,
//! counts, timestamps and seq are LEB128 varints.

use crate::{Batch, DeviceId, Quality, Sample, TagName, Value};

const VERSION: u8 = 1;
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
    /// Appends the stored form of this batch to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        put_str(out, &self.device.0);
        put_varint(out, self.samples.len() as u64);
        for s in &self.samples {
            put_str(out, &s.tag.0);
            let quality = match s.quality {
                Quality::Good => 0,
                Quality::Uncertain => 1,
                Quality::Bad => 2,
            };
            let flags = quality
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

    /// Decodes a stored batch; any malformed input is an error.
    pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let device = DeviceId(r.string()?);
        let count = r.varint()?;
        if count > MAX_SAMPLES {
            return Err(r.invalid("sample count"));
        }
        // Each sample takes at least 4 bytes; never reserve more than the input could hold.
        let mut samples = Vec::with_capacity((count as usize).min(bytes.len() / 4));
        for _ in 0..count {
            let tag = TagName(r.string()?);
            let flags = r.u8()?;
            if flags & !0b1111 != 0 {
                return Err(r.invalid("sample flags"));
            }
            let quality = match flags & 0b11 {
                0 => Quality::Good,
                1 => Quality::Uncertain,
                2 => Quality::Bad,
                _ => return Err(r.invalid("quality")),
            };
            let value = if flags & (1 << 2) != 0 {
                Some(r.value()?)
            } else {
                None
            };
            let read_ts_ms = r.varint()?;
            let source_ts_ms = if flags & (1 << 3) != 0 {
                Some(r.varint()?)
            } else {
                None
            };
            let seq = r.varint()?;
            samples.push(Sample {
                tag,
                value,
                quality,
                read_ts_ms,
                source_ts_ms,
                seq,
            });
        }
        if r.at != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - r.at));
        }
        Ok(Batch { device, samples })
    }
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
    fn an_unknown_version_is_named() {
        assert_eq!(Batch::decode(&[7]), Err(DecodeError::UnknownVersion(7)));
    }
}
