//! The Detect worker thread: owns the ONNX Runtime sessions (separator and detector) and the
//! analysis (host rate → 44.1 kHz → [`DetectStream`]), reads the audio thread's input ring and
//! publishes [`Results`] for the editor and the results file. Everything here may allocate, lock
//! and take its time; the audio thread never waits for it in real time.
//!
//! Grid: a run starts at host frame `abs` at timeline position `timeline` (transport start, seek,
//! loop, reset). The input resampler's output sample m sits at 44.1 kHz timeline position
//! pos44(timeline) + m − a_in; outputs before the next block boundary are dropped, so the stream's
//! sample 0 is the start of a block of the shared grid, as for every Stemmark Embed instance.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nice_plug::prelude::*;
use rtrb::Consumer;
use stemmark_models::decision::Calibration;
use stemmark_models::detect_stream::{DetectStream, PathReading};
use stemmark_models::detector::{self, Detector, Found};
use stemmark_models::keys::Key;
use stemmark_models::resample::StreamResampler;
use stemmark_models::runtime::{self, Provider};
use stemmark_models::separator::Separator;
use stemmark_models::spec::{BLOCK, SAMPLE_RATE};

use crate::params::{DetectParams, StoredKey};
use crate::worker::Restart;

/// Frames the worker takes from the input ring per step.
pub const CHUNK: usize = 8192;
/// The environment variable naming a results file (used when the editor sets none).
pub const RESULTS_ENV: &str = "STEMMARK_DETECT_RESULTS";
/// In real time, a backlog longer than this is dropped (and counted) so analysis stays current.
const MAX_BACKLOG_SECONDS: f64 = 6.0;

/// Where the worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    Idle = 0,
    Loading = 1,
    NoKeys = 2,
    Analysing = 3,
    Failed = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Loading,
            2 => State::NoKeys,
            3 => State::Analysing,
            4 => State::Failed,
            _ => State::Idle,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Idle => "not active",
            State::Loading => "loading models",
            State::NoKeys => "no keys on the ring",
            State::Analysing => "analysing",
            State::Failed => "error: audio passes through, no analysis",
        }
    }
}

/// What the analysis says now: published by the worker after every block, read by the editor and
/// written to the results file. Never touched by the audio thread.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Results {
    pub state: Option<State>,
    pub provider: String,
    pub host_rate: f32,
    /// 2 s blocks analysed (each separated and read with every key).
    pub blocks_analysed: usize,
    /// Blocks not analysed because analysis fell behind real time or input was dropped.
    pub blocks_skipped: u64,
    /// Audio received but not analysed yet, seconds.
    pub lag_seconds: f64,
    /// Worker time per analysed block, milliseconds (separation + every stem × key).
    pub ms_per_block: f64,
    /// True once the host deactivated the plugin and everything it played was analysed.
    pub complete: bool,
    pub found: Vec<Found>,
    pub readings: Vec<PathReading>,
    pub error: Option<String>,
}

/// Shared by the plugin, its audio thread, the worker and the editor.
pub struct DetectShared {
    state: AtomicU8,
    pub shutdown: AtomicBool,
    /// Set at deactivation: analyse what is left, publish complete results, then stop.
    pub finish: AtomicBool,
    pub alive: AtomicBool,
    /// Input frames the audio thread had to drop (ring full in real time).
    pub dropped_frames: AtomicU64,
    /// The host calls faster than real time (a bounce not called offline): keep the backlog.
    pub fast: AtomicBool,
    pub provider: RwLock<Provider>,
    pub results: Mutex<Arc<Results>>,
}

impl Default for DetectShared {
    fn default() -> Self {
        DetectShared {
            state: AtomicU8::new(State::Idle as u8),
            shutdown: AtomicBool::new(false),
            finish: AtomicBool::new(false),
            alive: AtomicBool::new(false),
            dropped_frames: AtomicU64::new(0),
            fast: AtomicBool::new(false),
            provider: RwLock::new(Provider::Cpu),
            results: Mutex::new(Arc::new(Results::default())),
        }
    }
}

impl DetectShared {
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// The latest results (a cheap clone of an `Arc`). Not for the audio thread.
    pub fn results(&self) -> Arc<Results> {
        self.results.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The models, once loaded.
struct Models {
    detector: Detector,
    separator: Separator,
    calibration: Calibration,
}

/// One continuous run of input (between restarts).
struct Run {
    resampler: StreamResampler,
    /// 44.1 kHz timeline position of the resampler's next output sample.
    next_pos44: i64,
    /// Model-rate samples still to drop before the stream's next block starts.
    skip: usize,
}

impl Run {
    /// Samples from the next output to the next block boundary of the grid.
    fn to_boundary(&self) -> usize {
        (-self.next_pos44).rem_euclid(BLOCK as i64) as usize
    }

    /// Grid index of the block that starts once `skip` samples are dropped (skip set to
    /// [`Run::to_boundary`]): the index Stemmark Embed masked that block with.
    fn block_after_skip(&self) -> i64 {
        (self.next_pos44 + self.skip as i64).div_euclid(BLOCK as i64)
    }
}

pub struct DetectWorker {
    pub params: Arc<DetectParams>,
    pub shared: Arc<DetectShared>,
    pub rate: u32,
    pub offline: bool,
    pub threads: usize,
    pub input: Consumer<f32>,
    pub cmds: Consumer<Restart>,
}

/// Stereo: Detect sits on the master bus.
const CH: usize = 2;

struct Work {
    models: Option<Models>,
    keys: Vec<StoredKey>,
    stream: Option<DetectStream>,
    run: Option<Run>,
    seq: u64,
    /// Timeline position (host samples) of the next input frame.
    timeline: i64,
    planar: Vec<Vec<f32>>,
    x44: Vec<Vec<f32>>,
    skipped: u64,
    busy: Duration,
    error: Option<String>,
    last_write: Option<Instant>,
}

impl DetectWorker {
    /// Thread body. Returns on `shutdown`, or after `finish` once the input is drained.
    pub fn run(mut self) {
        let shared = self.shared.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.main()));
        if result.is_err() {
            nice_error!("Stemmark Detect: the analysis worker panicked; audio passes through");
            shared.set_state(State::Failed);
        }
        shared.alive.store(false, Ordering::Release);
    }

    fn main(&mut self) {
        self.shared.set_state(State::Loading);
        let mut w = Work {
            models: None,
            keys: Vec::new(),
            stream: None,
            run: None,
            seq: 0,
            timeline: 0,
            planar: vec![vec![0.0; CHUNK]; CH],
            x44: vec![Vec::new(); CH],
            skipped: 0,
            busy: Duration::ZERO,
            error: None,
            last_write: None,
        };
        w.models = self.load(&mut w);
        w.keys = self.wanted_keys();
        self.rebuild_stream(&mut w);
        self.start_run(&mut w, Restart { seq: 0, abs: 0, timeline: 0 });
        self.publish(&mut w, false);
        let mut idle_since = Instant::now();
        loop {
            if self.shared.shutdown.load(Ordering::Acquire) {
                break;
            }
            let keys = self.wanted_keys();
            if keys != w.keys {
                w.keys = keys;
                self.rebuild_stream(&mut w);
                self.publish(&mut w, false);
            }
            if self.step(&mut w) {
                idle_since = Instant::now();
                continue;
            }
            if self.shared.finish.load(Ordering::Acquire) {
                self.finish(&mut w);
                break;
            }
            // The audio thread unparks us after every buffer.
            let wait = if idle_since.elapsed() > Duration::from_millis(200) { 20 } else { 2 };
            std::thread::park_timeout(Duration::from_millis(wait));
        }
    }

    /// Loads ONNX Runtime, the separator and the detector; on failure records why.
    fn load(&self, w: &mut Work) -> Option<Models> {
        self.shared.set_state(State::Loading);
        let dir = crate::locate::plugin_dir();
        let extra: Vec<_> = dir.iter().cloned().collect();
        let fail = |w: &mut Work, why: String| {
            nice_error!("Stemmark Detect: {why}; audio passes through, nothing is analysed");
            self.shared.set_state(State::Failed);
            w.error = Some(why);
            None
        };
        if let Err(e) = runtime::init(None, &extra) {
            return fail(w, format!("ONNX Runtime: {e}"));
        }
        let Some(models) = crate::locate::models_dir(dir.as_ref()) else {
            return fail(
                w,
                format!(
                    "no model folder: put `models/` beside the plugin binary or set {}",
                    stemmark_models::modelset::MODELS_ENV
                ),
            );
        };
        let want = self.shared.provider.read().map(|p| *p).unwrap_or_default();
        let open = |p: Provider| -> Result<(Detector, Separator), String> {
            let d = Detector::open_with_threads(&models, p, self.threads).map_err(|e| e.to_string())?;
            let s = Separator::open_with_threads(&models, p, self.threads).map_err(|e| e.to_string())?;
            Ok((d, s))
        };
        let opened = match open(want) {
            Err(e) if want == Provider::Cuda => {
                let why = format!("CUDA unavailable ({e}); running on the CPU");
                nice_warn!("Stemmark Detect: {why}");
                w.error = Some(why);
                open(Provider::Cpu)
            }
            other => other,
        };
        match opened {
            Ok((detector, separator)) => {
                nice_log!(
                    "Stemmark Detect: models from {} on {}, {} thread(s)",
                    models.display(),
                    detector.provider(),
                    self.threads
                );
                let calibration = detector.calibration();
                Some(Models { detector, separator, calibration })
            }
            Err(e) => fail(w, format!("cannot open the models in {}: {e}", models.display())),
        }
    }

    fn wanted_keys(&self) -> Vec<StoredKey> {
        self.params.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// A new analysis for the current key ring; it starts at the next block boundary.
    fn rebuild_stream(&self, w: &mut Work) {
        w.stream = None;
        let Some(m) = &w.models else {
            return;
        };
        let keys: Vec<Key> = w.keys.iter().filter_map(|k| Key::from_hex(&k.hex, k.name.clone())).collect();
        if keys.len() != w.keys.len() {
            w.error = Some("a stored key is not 32 hex digits; it is left out".into());
        }
        if keys.is_empty() {
            self.shared.set_state(State::NoKeys);
            return;
        }
        // The current run continues, but the new stream starts on the grid.
        let first_block = w.run.as_mut().map_or(0, |run| {
            run.skip = run.to_boundary();
            run.block_after_skip()
        });
        match DetectStream::new(CH, keys, m.calibration, *m.detector.channel(), true, first_block) {
            Ok(s) => {
                w.stream = Some(s);
                self.shared.set_state(State::Analysing);
            }
            Err(e) => {
                self.shared.set_state(State::Failed);
                w.error = Some(e.to_string());
            }
        }
    }

    /// Processes what is waiting; false if there was nothing to do.
    fn step(&mut self, w: &mut Work) -> bool {
        // Slots first, then commands: a frame visible here was pushed after any command that
        // precedes it, so the command is visible too.
        let mut avail = self.input.slots() / CH;
        let mut limit = usize::MAX;
        if let Ok(cmd) = self.cmds.peek() {
            if cmd.seq <= w.seq {
                let cmd = *cmd;
                let _ = self.cmds.pop();
                self.start_run(w, cmd);
                return true;
            }
            limit = (cmd.seq - w.seq) as usize;
        }
        // Real time: rather than fall ever further behind, drop the backlog and say so.
        let backlog_max = (MAX_BACKLOG_SECONDS * self.rate as f64) as usize;
        if !self.offline && !self.shared.fast.load(Ordering::Relaxed) && avail.min(limit) > backlog_max {
            let drop = avail.min(limit) - CHUNK.min(avail.min(limit));
            if let Ok(chunk) = self.input.read_chunk(drop * CH) {
                chunk.commit_all();
                w.seq += drop as u64;
                w.skipped += (drop as u64 * SAMPLE_RATE as u64 / self.rate as u64).div_ceil(BLOCK as u64);
                // Input resumes later on the timeline: a new run, on the grid again.
                let timeline = w.timeline + drop as i64;
                self.start_run(w, Restart { seq: w.seq, abs: 0, timeline });
                nice_warn!("Stemmark Detect: analysis fell behind; skipped {drop} frames");
            }
            avail = self.input.slots() / CH;
        }
        let n = avail.min(limit).min(CHUNK);
        if n == 0 {
            return false;
        }
        let Ok(chunk) = self.input.read_chunk(n * CH) else {
            return false;
        };
        let (a, b) = chunk.as_slices();
        for (i, &x) in a.iter().chain(b).enumerate() {
            w.planar[i % CH][i / CH] = x;
        }
        chunk.commit_all();
        w.seq += n as u64;
        w.timeline += n as i64;
        self.analyse(w, n);
        true
    }

    /// A new run of the timeline (transport start, seek, loop, reset, dropped input).
    fn start_run(&mut self, w: &mut Work, cmd: Restart) {
        w.seq = w.seq.max(cmd.seq);
        w.timeline = cmd.timeline;
        let resampler = match StreamResampler::new(self.rate, SAMPLE_RATE, CH) {
            Ok(r) => r,
            Err(e) => {
                self.shared.set_state(State::Failed);
                w.error = Some(format!("host rate {} Hz: {e}", self.rate));
                w.run = None;
                return;
            }
        };
        let pos44 = (cmd.timeline as f64 * SAMPLE_RATE as f64 / self.rate as f64).round() as i64;
        let run = Run { next_pos44: pos44 - resampler.latency() as i64, resampler, skip: 0 };
        let run = Run { skip: run.to_boundary(), ..run };
        if let Some(stream) = &mut w.stream {
            stream.restart(run.block_after_skip());
        }
        w.run = Some(run);
    }

    /// Resamples `n` planar frames and feeds the grid-aligned part to the stream.
    fn analyse(&mut self, w: &mut Work, n: usize) {
        let (Some(run), Some(stream), Some(m)) = (&mut w.run, &mut w.stream, &mut w.models) else {
            return;
        };
        let t0 = Instant::now();
        let out_len = run.resampler.output_len_for(n);
        for x in &mut w.x44 {
            x.resize(out_len, 0.0);
        }
        let input: Vec<&[f32]> = w.planar.iter().map(|c| &c[..n]).collect();
        let got = match run.resampler.push(&input, &mut w.x44) {
            Ok(got) => got,
            Err(e) => {
                w.error = Some(format!("resampling: {e}"));
                return;
            }
        };
        let drop = run.skip.min(got);
        run.skip -= drop;
        run.next_pos44 += got as i64;
        if drop == got {
            return;
        }
        let before = stream.blocks_done;
        let slices: Vec<&[f32]> = w.x44.iter().map(|c| &c[drop..got]).collect();
        if let Err(e) = stream.push(&mut m.detector, Some(&mut m.separator), &slices) {
            w.error = Some(format!("analysis: {e}"));
            self.shared.set_state(State::Failed);
            w.stream = None;
            return;
        }
        w.busy += t0.elapsed();
        if stream.blocks_done > before {
            self.publish(w, false);
        }
    }

    /// Deactivation: analyse the last full block (its after-context cut short), publish the
    /// complete results.
    fn finish(&mut self, w: &mut Work) {
        // What the resampler still holds (its delay) belongs to the end of the render.
        if let (Some(run), Some(_)) = (&mut w.run, &w.stream) {
            let n = run.resampler.flush_len();
            for x in &mut w.x44 {
                x.resize(n, 0.0);
            }
            if let Ok(got) = run.resampler.flush(&mut w.x44) {
                let drop = run.skip.min(got);
                run.skip -= drop;
                run.next_pos44 += got as i64;
                let slices: Vec<&[f32]> = w.x44.iter().map(|c| &c[drop..got]).collect();
                if let (Some(stream), Some(m)) = (&mut w.stream, &mut w.models)
                    && let Err(e) = stream.push(&mut m.detector, Some(&mut m.separator), &slices)
                {
                    w.error = Some(format!("analysis: {e}"));
                }
            }
        }
        if let (Some(stream), Some(m)) = (&mut w.stream, &mut w.models)
            && let Err(e) = stream.finish(&mut m.detector, Some(&mut m.separator))
        {
            w.error = Some(format!("analysis: {e}"));
        }
        self.publish(w, true);
        nice_log!(
            "Stemmark Detect: analysis finished: {} blocks, {} skipped",
            w.stream.as_ref().map_or(0, |s| s.blocks_done),
            w.skipped
        );
    }

    /// Publishes the current results to the editor and, if a file is named, writes them there.
    fn publish(&self, w: &mut Work, complete: bool) {
        let dropped = self.shared.dropped_frames.load(Ordering::Relaxed);
        let lost_blocks = (dropped * SAMPLE_RATE as u64 / self.rate.max(1) as u64).div_ceil(BLOCK as u64);
        let (readings, blocks, lag) = match &mut w.stream {
            Some(s) => (s.readings(), s.blocks_done, s.lag() as f64 / SAMPLE_RATE as f64),
            None => (Vec::new(), 0, 0.0),
        };
        let backlog = (self.input.slots() / CH) as f64 / self.rate.max(1) as f64;
        let found = detector::summarise(
            readings.iter().map(|r| (r.path, r.key.as_str(), r.fingerprint.as_str(), &r.decision)),
        );
        let results = Results {
            state: Some(self.shared.state()),
            provider: w.models.as_ref().map_or_else(String::new, |m| m.detector.provider().to_string()),
            host_rate: self.rate as f32,
            blocks_analysed: blocks,
            blocks_skipped: w.skipped + lost_blocks,
            lag_seconds: if complete { 0.0 } else { lag + backlog },
            ms_per_block: w.busy.as_secs_f64() * 1e3 / blocks.max(1) as f64,
            complete,
            found,
            readings,
            error: w.error.clone(),
        };
        let results = Arc::new(results);
        if let Ok(mut r) = self.shared.results.lock() {
            *r = results.clone();
        }
        // Writing after every block is cheap (a few kB every 2 s), but a flood of blocks in an
        // offline render is limited to one write per 100 ms; the final write always happens.
        let due = complete || w.last_write.is_none_or(|t| t.elapsed() > Duration::from_millis(100));
        // A run that analysed nothing has nothing to say: a DAW that reactivates the plugin after
        // an export (Ardour does, and runs it on a moment of silence before closing) must not
        // replace the export's results with an empty analysis.
        let heard = blocks > 0 || w.skipped + lost_blocks > 0 || w.error.is_some();
        if due && heard && let Some(path) = self.results_file() {
            w.last_write = Some(Instant::now());
            if let Err(e) = write_json(&path, &results) {
                nice_warn!("Stemmark Detect: cannot write {}: {e}", path.display());
            }
        }
    }

    /// The file named in the editor, else `$STEMMARK_DETECT_RESULTS`.
    fn results_file(&self) -> Option<PathBuf> {
        let chosen = self.params.results_path.read().map(|p| p.trim().to_string()).unwrap_or_default();
        if chosen.is_empty() { std::env::var_os(RESULTS_ENV).map(PathBuf::from) } else { Some(PathBuf::from(chosen)) }
    }
}

/// Writes `results` as pretty JSON, atomically (a reader never sees half a file).
pub fn write_json(path: &Path, results: &Results) -> std::io::Result<()> {
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, serde_json::to_vec_pretty(results).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}
