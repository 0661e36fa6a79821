//! Stemmark Embed: goes on each stem track and writes that stem's watermark into every 2 s block
//! of the host timeline's grid, with a fixed, reported latency (see [`crate::latency`]).
//!
//! `process()` only moves samples between the host buffers and the [`Engine`]'s rings; the model
//! runs on the engine's worker thread (see [`crate::worker`]).

use std::sync::Arc;
use std::time::Duration;

use nice_plug::prelude::*;

use crate::engine::Engine;
use crate::params::EmbedParams;
use crate::worker::Shared;

/// The Embed plugin instance.
#[derive(Default)]
pub struct StemmarkEmbed {
    params: Arc<EmbedParams>,
    shared: Arc<Shared>,
    /// Built in `activate()`; `None` until the host activates the instance.
    engine: Option<Engine>,
}

impl Plugin for StemmarkEmbed {
    const NAME: &'static str = "Stemmark Embed";
    const VENDOR: &'static str = crate::VENDOR;
    const URL: &'static str = crate::URL;
    const EMAIL: &'static str = crate::EMAIL;
    const VERSION: &'static str = crate::VERSION;

    // Stereo first: it is the default layout hosts pick. Mono stems are common, so offer it too.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[crate::STEREO, crate::MONO];

    type Editor = crate::editor::EmbedEditor;
    type SysExMessage = ();
    type BackgroundTask = ();

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        crate::editor::new(self.params.clone(), self.shared.clone())
    }

    fn activate(
        &mut self,
        audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        context: &mut impl ActivateContext<Self>,
    ) -> bool {
        let channels = audio_io_layout
            .main_output_channels
            .map_or(2, |c| c.get() as usize);
        let offline = buffer_config.process_mode == ProcessMode::Offline;
        let max_buffer = buffer_config.max_buffer_size as usize;
        // Hosts may activate repeatedly (state restore); only rebuild when the setup changed.
        let reusable = self.engine.as_ref().is_some_and(|e| {
            e.rate == buffer_config.sample_rate
                && e.channels == channels
                && e.max_buffer >= max_buffer.max(1)
                && e.offline == offline
        });
        if !reusable {
            // The old worker must be gone before the new one starts (they share the status).
            self.engine = None;
            if let Ok(mut p) = self.shared.provider.write() {
                let want = self
                    .params
                    .provider
                    .read()
                    .map(|s| s.clone())
                    .unwrap_or_default();
                *p = want.parse().unwrap_or_default();
            }
            match Engine::new(
                self.params.clone(),
                self.shared.clone(),
                buffer_config.sample_rate,
                channels,
                max_buffer,
                offline,
            ) {
                Ok(engine) => {
                    // Loading the model takes a moment; waiting here (main thread) means the
                    // first blocks are marked. In real time a slow load just starts dry; an
                    // offline render must not lose a block, so it waits much longer (a loaded
                    // machine can take more than 10 s to open a session).
                    engine.wait_ready(Duration::from_secs(if offline { 120 } else { 10 }));
                    self.engine = Some(engine);
                }
                Err(e) => {
                    nice_error!("Stemmark Embed: {e}");
                    return false;
                }
            }
        }
        if let Some(engine) = &self.engine {
            context.set_latency_samples(engine.latency.total as u32);
        }
        true
    }

    fn reset(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            engine.reset();
        }
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        _aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        let Some(engine) = self.engine.as_mut() else {
            return ProcessStatus::Normal;
        };
        let transport = context.transport();
        let position = if transport.playing {
            transport.pos_samples()
        } else {
            None
        };
        engine.process(buffer.as_slice(), position, self.params.bypass.value());
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
