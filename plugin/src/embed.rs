//! Stemmark Embed: goes on each stem track and writes that stem's watermark.
//!
//! For now it passes audio through unchanged; the embedder (worker thread, rings, latency) is a
//! later issue and slots into [`Tap`] and `process()` without changing this structure.

use std::sync::Arc;

use nice_plug::prelude::*;

use crate::params::EmbedParams;
use crate::tap::Tap;

/// The Embed plugin instance.
#[derive(Default)]
pub struct StemmarkEmbed {
    params: Arc<EmbedParams>,
    /// Built in `activate()`; `None` until the host activates the instance.
    tap: Option<Tap>,
}

impl Plugin for StemmarkEmbed {
    const NAME: &'static str = "Stemmark Embed";
    const VENDOR: &'static str = crate::VENDOR;
    const URL: &'static str = crate::URL;
    const EMAIL: &'static str = crate::EMAIL;
    const VERSION: &'static str = crate::VERSION;

    // Stereo first: it is the default layout hosts pick. Mono stems are common, so offer it too.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[crate::STEREO, crate::MONO];

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
        // Hosts may activate repeatedly (state restore); only rebuild when the setup changed.
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
        // nice-plug has already copied input to output, so doing nothing is a bit-exact
        // pass-through; that is also what bypass and "not activated yet" mean.
        if self.params.bypass.value() {
            return ProcessStatus::Normal;
        }
        if let Some(tap) = self.tap.as_mut() {
            tap.feed(buffer.as_slice_immutable());
        }
        ProcessStatus::Normal
    }
}

impl ClapPlugin for StemmarkEmbed {
    const CLAP_ID: &'static str = "org.stemmark.embed";
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Writes an inaudible, keyed watermark into a stem");
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[
        ClapFeature::AudioEffect,
        ClapFeature::Stereo,
        ClapFeature::Mono,
        ClapFeature::Utility,
    ];
}

impl Vst3Plugin for StemmarkEmbed {
    const VST3_CLASS_ID: [u8; 16] = *b"StemmarkEmbed001";
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Fx, Vst3SubCategory::Tools];
}
