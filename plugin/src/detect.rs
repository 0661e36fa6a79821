//! Stemmark Detect: goes on the master bus, passes audio through untouched (zero latency), and in
//! the background separates the mix and reads every separated stem with every key on its ring
//! (see [`crate::detect_worker`]). Results show in the editor and, on request, in a JSON file.

use std::sync::Arc;
use std::time::Duration;

use nice_plug::prelude::*;

use crate::detect_engine::DetectEngine;
use crate::detect_worker::DetectShared;
use crate::params::DetectParams;

/// ONNX Runtime threads of one Detect instance (`STEMMARK_DETECT_THREADS` overrides): the
/// separator dominates, and a mastering session has one Detect but many other plugins.
const DEFAULT_THREADS: usize = 1;

/// The Detect plugin instance.
#[derive(Default)]
pub struct StemmarkDetect {
    params: Arc<DetectParams>,
    shared: Arc<DetectShared>,
    /// Built in `activate()`; `None` until the host activates the instance.
    engine: Option<DetectEngine>,
}

fn threads() -> usize {
    std::env::var("STEMMARK_DETECT_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|&t| (1..=64).contains(&t))
        .unwrap_or(DEFAULT_THREADS)
}

impl Plugin for StemmarkDetect {
    const NAME: &'static str = "Stemmark Detect";
    const VENDOR: &'static str = crate::VENDOR;
    const URL: &'static str = crate::URL;
    const EMAIL: &'static str = crate::EMAIL;
    const VERSION: &'static str = crate::VERSION;

    // The master bus is stereo.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[crate::STEREO];

    type Editor = crate::detect_editor::DetectEditor;
    type SysExMessage = ();
    type BackgroundTask = ();

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        crate::detect_editor::new(self.params.clone(), self.shared.clone())
    }

    fn activate(
        &mut self,
        _audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        let offline = buffer_config.process_mode == ProcessMode::Offline;
        let max_buffer = buffer_config.max_buffer_size as usize;
        let reusable = self.engine.as_ref().is_some_and(|e| {
            e.rate == buffer_config.sample_rate
                && e.max_buffer >= max_buffer.max(1)
                && e.offline == offline
                && !self.shared.finish.load(std::sync::atomic::Ordering::Acquire)
        });
        if !reusable {
            // The old worker (perhaps finishing a render's analysis) must be gone first.
            self.engine = None;
            if let Ok(mut p) = self.shared.provider.write() {
                let want = self.params.provider.read().map(|s| s.clone()).unwrap_or_default();
                *p = want.parse().unwrap_or_default();
            }
            match DetectEngine::new(
                self.params.clone(),
                self.shared.clone(),
                buffer_config.sample_rate,
                max_buffer,
                offline,
                threads(),
            ) {
                Ok(engine) => {
                    engine.wait_ready(Duration::from_secs(if offline { 120 } else { 10 }));
                    self.engine = Some(engine);
                }
                Err(e) => {
                    // Audio still passes (nice-plug copies input to output); nothing is analysed.
                    nice_error!("Stemmark Detect: {e}");
                    return false;
                }
            }
        }
        true
    }

    fn deactivate(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            engine.finish();
        }
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
        // Output already equals input (nice-plug processes in place); Detect only reads.
        if let Some(engine) = self.engine.as_mut() {
            let transport = context.transport();
            let position = if transport.playing { transport.pos_samples() } else { None };
            engine.process(buffer.as_slice_immutable(), position);
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
