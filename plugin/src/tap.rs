//! The audio-thread side of the analysis path, shared by both plugins.
//!
//! [`Tap`] is made in `activate()` and then only reuses its own memory, so feeding it from
//! `process()` never allocates. Today it forms the mid signal of each host buffer and counts the
//! position on the timeline; the later worker issue pushes that mid signal into an `rtrb` ring
//! (also created in `activate()`) that the ONNX worker thread drains.

/// Per-instance state prepared in `activate()` for one sample rate and maximum buffer size.
pub struct Tap {
    /// Host sample rate this tap was prepared for.
    pub sample_rate: f32,
    /// Mid signal of the latest chunk; sized to the host's maximum buffer size.
    mid: Vec<f32>,
    /// Samples fed since the last `reset()`; the block grid falls back to this when the host
    /// gives no transport position.
    position: u64,
}

impl Tap {
    /// Allocates everything the audio thread will need. Call from `activate()` only.
    pub fn new(sample_rate: f32, max_buffer_size: u32) -> Self {
        Self {
            sample_rate,
            // A host reporting 0 would otherwise leave no room to work in.
            mid: vec![0.0; max_buffer_size.max(1) as usize],
            position: 0,
        }
    }

    /// Forget the position (transport jump, preset load). Real-time safe.
    pub fn reset(&mut self) {
        self.position = 0;
        self.mid.fill(0.0);
    }

    /// Largest host buffer this tap takes in one piece.
    pub fn capacity(&self) -> usize {
        self.mid.len()
    }

    /// Reads one host buffer (any channel count, equal lengths). Real-time safe: buffers longer
    /// than the prepared size (a host breaking its promise) are taken in chunks, never by growing.
    pub fn feed(&mut self, channels: &[&mut [f32]]) {
        let Some(first) = channels.first() else {
            return;
        };
        let samples = first.len();
        let scale = 1.0 / channels.len() as f32;
        let mut start = 0;
        while start < samples {
            let len = (samples - start).min(self.mid.len());
            let mid = &mut self.mid[..len];
            mid.copy_from_slice(&first[start..start + len]);
            for channel in &channels[1..] {
                for (m, &x) in mid.iter_mut().zip(&channel[start..start + len]) {
                    *m += x;
                }
            }
            for m in mid.iter_mut() {
                *m *= scale;
            }
            // Hand-off point: the worker issue pushes `mid` into the ring here.
            start += len;
        }
        self.position += samples as u64;
    }
}
