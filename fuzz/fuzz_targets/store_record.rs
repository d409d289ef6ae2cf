//! Bytes from disk: a stored record (torn, corrupted or from another build) must decode to a
//! batch or an error, never panic; a batch that decodes must round-trip through its stored
//! form unchanged. The MES bridge's stored checkpoint is read back the same way.
#![no_main]

use edge_model::Batch;
use libfuzzer_sys::fuzz_target;
use mes_bridge::MesBridge;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = Batch::decode(data) {
        // Varints may be stored in more bytes than needed, so compare canonical forms; bytes,
        // not values, so that NaN readings compare equal to themselves.
        let bytes = batch.to_bytes();
        let again = Batch::decode(&bytes).expect("an encoded batch decodes");
        assert_eq!(again.to_bytes(), bytes, "a batch changed on a round trip");
        assert_eq!(again.samples.len(), batch.samples.len());
        assert_eq!(again.device, batch.device);
        // A version 1 record is re-encoded as version 2, whose differences can be longer
        // than the absolute values of odd (non-poll) timestamps; only a version 2 input
        // bounds its canonical form.
        assert!(
            data[0] != 2 || bytes.len() <= data.len(),
            "the canonical form is longer than the input"
        );
    }
    // The checkpoint stored with a northbound's cursor is read back at start.
    let mut bridge = MesBridge::new("acme/plant1", Vec::new());
    if bridge.restore(data).is_ok() {
        let _ = bridge.checkpoint();
    }
});
