//! What a UNS northbound sends for a stored record: the telemetry (`mes_bridge::UnsEncoder`)
//! and, with machines configured, the MES events derived from it (`mes_bridge::MesBridge`),
//! with the MES checkpoint as of the end of the record. No MQTT and no store here: the
//! publisher hands the messages to its window.

use std::sync::{Arc, Mutex};

use edge_model::Batch;
use mes_bridge::{MesBridge, Message, UnsEncoder};

/// Where a config reload leaves a publisher's next telemetry encoder; it is taken before the
/// next record is encoded, so a record is never encoded half with the old units.
pub type EncoderSlot = Arc<Mutex<Option<UnsEncoder>>>;

/// The messages of one record.
#[derive(Debug, Default)]
pub struct Encoded {
    /// Telemetry first, then the MES events, in the order they are to be published.
    pub messages: Vec<Message>,
    /// The MES bridge's checkpoint after this record, when the record concerned a machine.
    pub checkpoint: Option<Vec<u8>>,
    /// How many of the messages are MES events.
    pub mes_events: usize,
}

/// The encoders of one UNS northbound.
#[derive(Debug)]
pub struct RecordEncoder {
    uns: UnsEncoder,
    mes: Option<MesBridge>,
    updates: Option<EncoderSlot>,
}

impl RecordEncoder {
    pub fn new(uns: UnsEncoder) -> RecordEncoder {
        RecordEncoder {
            uns,
            mes: None,
            updates: None,
        }
    }

    pub fn set_mes(&mut self, bridge: MesBridge) {
        self.mes = Some(bridge);
    }

    pub fn set_updates(&mut self, slot: EncoderSlot) {
        self.updates = Some(slot);
    }

    /// The telemetry encoder (status messages are its too).
    pub fn uns(&self) -> &UnsEncoder {
        &self.uns
    }

    /// The MES bridge, when machines are configured.
    pub fn mes_mut(&mut self) -> Option<&mut MesBridge> {
        self.mes.as_mut()
    }

    pub fn has_mes(&self) -> bool {
        self.mes.is_some()
    }

    /// The messages of `batch`; `replay` marks a record of the backlog.
    pub fn encode(&mut self, batch: &Batch, replay: bool) -> Encoded {
        if let Some(uns) = self
            .updates
            .as_ref()
            .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take())
        {
            self.uns = uns;
        }
        let mut messages = Vec::with_capacity(self.uns.message_count(batch));
        self.uns.encode(batch, replay, &mut messages);
        let telemetry = messages.len();
        let mut checkpoint = None;
        if let Some(bridge) = self.mes.as_mut() {
            if bridge.encode(batch, replay, &mut messages) {
                checkpoint = Some(bridge.checkpoint());
            }
        }
        Encoded {
            mes_events: messages.len() - telemetry,
            messages,
            checkpoint,
        }
    }
}
