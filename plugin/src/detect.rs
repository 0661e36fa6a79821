//! Stemmark Detect: goes on the master bus, separates and decodes in the background, and never
//! alters the audio.
//!
//! For now it passes audio through and feeds its [`Tap`]; the separator/detector worker and the
//! editor that shows per-stem results are later issues.

use std::sync::Arc;

use nice_plug::prelude::*;

use crate::params::DetectParams;
use crate::tap::Tap;

/// The Detect plugin instance.
#[derive(Default)]
pub struct StemmarkDetect {
    params: Arc<DetectParams>,
    /// Built in `activate()`; `None` until the host activates the instance.
    tap: Option<Tap>,
}

impl Plugin for StemmarkDetect {
    const NAME: &'static str = "Stemmark Detect";
    const VENDOR: &'static str = crate::VENDOR;
    const URL: &'static str = crate::URL;
    const EMAIL: &'static str = crate::EMAIL;
    const VERSION: &'static str = crate::VERSION;

    // The master bus is stereo.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[crate::STEREO];

    type Editor = ();
    type SysExMessage = ();
    type BackgroundTask = ();

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn activate(
        &mut self,
        _audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        let reusable = self.tap.as_ref().is_some_and(|tap| {
            tap.sample_rate == buffer_config.sample_rate
                && tap.capacity() >= buffer_config.max_buffer_size as usize
        });
        if !reusable {
            self.tap = Some(Tap::new(
                buffer_config.sample_rate,
                buffer_config.max_buffer_size,
            ));
        }
        true
    }

    fn reset(&mut self) {
        if let Some(tap) = self.tap.as_mut() {
            tap.reset();
        }
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        _aux: &mut AuxiliaryBuffers,
        _context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        // Output already equals input (nice-plug copied it); Detect only reads.
        if let Some(tap) = self.tap.as_mut() {
            tap.feed(buffer.as_slice_immutable());
        }
        ProcessStatus::Normal
    }
}

impl ClapPlugin for StemmarkDetect {
    const CLAP_ID: &'static str = "org.stemmark.detect";
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Finds which stems of a mix carry which Stemmark watermark");
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[
        ClapFeature::AudioEffect,
        ClapFeature::Analyzer,
        ClapFeature::Stereo,
        ClapFeature::Mastering,
    ];
}

impl Vst3Plugin for StemmarkDetect {
    const VST3_CLASS_ID: [u8; 16] = *b"StemmarkDetect01";
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] = &[
        Vst3SubCategory::Fx,
        Vst3SubCategory::Analyzer,
        Vst3SubCategory::Stereo,
    ];
}
