//! The Embed worker thread: owns the ONNX Runtime session and the whole marking pipeline
//! (host rate → 44.1 kHz → [`EmbedStream`] → host rate), reads the audio thread's input ring and
//! fills the output ring. Everything here may allocate, lock and take its time; the audio thread
//! never waits for it in real time.
//!
//! Output indexing: the worker writes output-ring frame `o` (counted from activation) as the
//! marked input frame `o − latency`. It never skips a frame, so the ring's frame count is the
//! host timeline of the output, which the audio thread relies on. Where no marked sample exists
//! (before a pipeline's first output, after a seek, without a key, after an error) it writes the
//! delayed dry input from its own history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nice_plug::prelude::*;
use rtrb::{Consumer, Producer};
use stemmark_models::embed_stream::EmbedStream;
use stemmark_models::embedder::Embedder;
use stemmark_models::keys::Key;
use stemmark_models::resample::StreamResampler;
use stemmark_models::runtime::{self, Provider};
use stemmark_models::spec::{BLOCK, SAMPLE_RATE};

use crate::latency::Latency;
use crate::params::{EmbedParams, StoredKey};
use crate::status::{State, Status};

/// Frames the worker takes from the input ring per step.
pub const CHUNK: usize = 4096;

/// "From input frame `seq` of the ring on, the input is host frame `abs`, which sits at timeline
/// sample `timeline`; start a new pipeline there (seek, loop, transport start, reset)."
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    pub seq: u64,
    pub abs: u64,
    pub timeline: i64,
}

/// What the plugin, its audio thread, the worker and the editor share.
pub struct Shared {
    pub status: Status,
    pub shutdown: AtomicBool,
    /// False once the worker thread has exited (or panicked): the audio thread then goes dry.
    pub alive: AtomicBool,
    /// Provider requested by the editor/state ("cpu" or "cuda").
    pub provider: RwLock<Provider>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            status: Status::default(),
            shutdown: AtomicBool::new(false),
            alive: AtomicBool::new(false),
            provider: RwLock::new(Provider::Cpu),
        }
    }
}

/// The settings a pipeline is built for.
#[derive(Clone, PartialEq)]
struct Settings {
    key: Option<StoredKey>,
    payload: u32,
    strength: f32,
}

pub struct Worker {
    pub params: Arc<EmbedParams>,
    pub shared: Arc<Shared>,
    pub rate: u32,
    pub channels: usize,
    pub latency: Latency,
    pub input: Consumer<f32>,
    pub cmds: Consumer<Restart>,
    pub output: Producer<f32>,
}

/// One run of the marking pipeline, from its start frame on.
struct Pipeline {
    to_model: StreamResampler,
    to_host: StreamResampler,
    stream: EmbedStream,
    x44: Vec<Vec<f32>>,
    y44: Vec<Vec<f32>>,
    host: Vec<Vec<f32>>,
    /// Model-rate stream outputs still to drop: the zeros pushed to reach the block grid.
    skip_model: usize,
    /// Host-rate outputs still to drop: the resamplers' delay (and, for a replay, what was
    /// already written).
    skip_host: usize,
}

struct State_ {
    /// Ring frames read so far.
    seq: u64,
    /// Host frame index of the next input frame.
    abs: u64,
    /// Output frames written so far (= host frame index of the next output frame).
    written: u64,
    /// Where the current run of the timeline started: host frame and its timeline position.
    epoch_abs: u64,
    epoch_timeline: i64,
    /// The last `history_len` input frames, interleaved, indexed by host frame.
    history: Vec<f32>,
    history_len: u64,
    planar: Vec<Vec<f32>>,
    pipe: Option<Pipeline>,
    embedder: Option<Embedder>,
    settings: Settings,
}

impl Worker {
    /// Thread body. Returns when `shared.shutdown` is set.
    pub fn run(mut self) {
        let shared = self.shared.clone();
        // A panic must not take the host down with it; the audio thread goes dry when alive is
        // false.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.main()));
        if result.is_err() {
            nice_error!("Stemmark Embed: the worker panicked; audio passes through dry");
            shared.status.set_state(State::Failed);
            shared
                .status
                .edit_text(|t| t.error = "internal error (worker panicked)".into());
        }
        let status = &shared.status;
        let blocks = status.blocks_marked.load(Ordering::Relaxed);
        let busy = status.busy_us.load(Ordering::Relaxed) as f64 / 1e6;
        let audio = status.busy_frames.load(Ordering::Relaxed) as f64 / self.rate as f64;
        nice_log!(
            "Stemmark Embed: worker stopped: {blocks} blocks marked, {} late buffers; worker {:.2} ms per block, {:.2} % of one core",
            status.late_buffers.load(Ordering::Relaxed),
            busy * 1e3 / blocks.max(1) as f64,
            busy / audio.max(1e-9) * 100.0
        );
        shared.alive.store(false, Ordering::Release);
    }

    fn main(&mut self) {
        let embedder = self.load();
        let ch = self.channels;
        // Enough history to replay the current block and everything still in the pipeline.
        let history_len = (self.latency.total
            + 3 * BLOCK * self.rate as usize / SAMPLE_RATE as usize
            + 2 * CHUNK) as u64;
        let mut st = State_ {
            seq: 0,
            abs: 0,
            written: 0,
            epoch_abs: 0,
            epoch_timeline: 0,
            history: vec![0.0; history_len as usize * ch],
            history_len,
            planar: vec![vec![0.0; CHUNK]; ch],
            pipe: None,
            embedder,
            settings: self.wanted(),
        };
        self.restart(
            &mut st,
            Restart {
                seq: 0,
                abs: 0,
                timeline: 0,
            },
        );
        let mut idle_since = Instant::now();
        while !self.shared.shutdown.load(Ordering::Acquire) {
            let wanted = self.wanted();
            if wanted != st.settings {
                st.settings = wanted;
                self.replay(&mut st);
            }
            if self.step(&mut st) {
                idle_since = Instant::now();
            } else {
                // The audio thread unparks us after every buffer; the timeout only matters when
                // it stops calling.
                let wait = if idle_since.elapsed() > Duration::from_millis(200) {
                    20
                } else {
                    2
                };
                std::thread::park_timeout(Duration::from_millis(wait));
            }
        }
    }

    /// Loads ONNX Runtime and the embedder; on failure reports it and returns None (the worker
    /// then passes audio through, delayed).
    fn load(&self) -> Option<Embedder> {
        let status = &self.shared.status;
        status.set_state(State::Loading);
        let dir = crate::locate::plugin_dir();
        let extra: Vec<_> = dir.iter().cloned().collect();
        let models = crate::locate::models_dir(dir.as_ref());
        status.edit_text(|t| {
            t.models = models
                .as_ref()
                .map_or_else(|| "not found".into(), |m| m.display().to_string());
        });
        let fail = |why: String| {
            nice_error!("Stemmark Embed: {why}; audio passes through unmarked");
            status.set_state(State::Failed);
            status.edit_text(|t| t.error = why);
            None
        };
        if let Err(e) = runtime::init(None, &extra) {
            return fail(format!("ONNX Runtime: {e}"));
        }
        let Some(models) = models else {
            return fail(format!(
                "no model folder: put `models/` beside the plugin binary or set {}",
                stemmark_models::modelset::MODELS_ENV
            ));
        };
        let want = self.shared.provider.read().map(|p| *p).unwrap_or_default();
        // One ONNX Runtime thread per instance: a session has many stems, each with its own.
        let opened = match Embedder::open_with_threads(&models, want, 1) {
            Ok(e) => Ok(e),
            Err(e) if want == Provider::Cuda => {
                let why = format!("CUDA unavailable ({e}); running on the CPU");
                nice_warn!("Stemmark Embed: {why}");
                status.edit_text(|t| t.error = why);
                Embedder::open_with_threads(&models, Provider::Cpu, 1)
            }
            Err(e) => Err(e),
        };
        match opened {
            Ok(e) => {
                status.edit_text(|t| t.provider = e.provider().to_string());
                nice_log!(
                    "Stemmark Embed: embedder from {} on {}",
                    models.display(),
                    e.provider()
                );
                status.set_state(State::NoKey);
                Some(e)
            }
            Err(e) => fail(format!(
                "cannot open the embedder in {}: {e}",
                models.display()
            )),
        }
    }

    fn wanted(&self) -> Settings {
        let key = self.params.key.read().ok().and_then(|k| k.clone());
        Settings {
            key,
            payload: self.params.payload.value().max(0) as u32,
            // Quantised so that smoothing steps do not restart the pipeline.
            strength: (self.params.strength.value() * 100.0).round() / 100.0,
        }
    }

    /// Processes what is waiting; false if there was nothing to do.
    fn step(&mut self, st: &mut State_) -> bool {
        // Slots first, then commands: a frame visible here was pushed after any command that
        // precedes it, so the command is visible too.
        let avail = self.input.slots() / self.channels;
        let mut limit = usize::MAX;
        if let Ok(cmd) = self.cmds.peek() {
            if cmd.seq <= st.seq {
                let cmd = *cmd;
                let _ = self.cmds.pop();
                self.restart(st, cmd);
                return true;
            }
            limit = (cmd.seq - st.seq) as usize;
        }
        let n = avail.min(limit).min(CHUNK);
        if n == 0 {
            return false;
        }
        let ch = self.channels;
        let Ok(chunk) = self.input.read_chunk(n * ch) else {
            return false;
        };
        let (a, b) = chunk.as_slices();
        for (i, &x) in a.iter().chain(b).enumerate() {
            let (f, c) = (i / ch, i % ch);
            // The embedder rejects non-finite input; a NaN from the host becomes silence.
            let x = if x.is_finite() { x } else { 0.0 };
            st.planar[c][f] = x;
            let h = ((st.abs + f as u64) % st.history_len) as usize;
            st.history[h * ch + c] = x;
        }
        chunk.commit_all();
        st.seq += n as u64;
        st.abs += n as u64;
        if st.pipe.is_some() {
            self.run_planar(st, n);
        } else {
            self.fill_dry(st, st.abs + self.latency.handoff as u64);
        }
        true
    }

    /// Seek, loop, start or reset: what was in flight is dropped (the audio thread plays its own
    /// dry signal until the new run's first marked frame is due).
    fn restart(&mut self, st: &mut State_, cmd: Restart) {
        nice_log!(
            "Stemmark Embed: new run at host frame {} (timeline {}, {} Hz)",
            cmd.abs,
            cmd.timeline,
            self.rate
        );
        st.abs = cmd.abs;
        st.epoch_abs = cmd.abs;
        st.epoch_timeline = cmd.timeline;
        st.pipe = None;
        self.fill_dry(st, cmd.abs + self.latency.total as u64);
        self.start_pipeline(st, cmd.abs, 0);
    }

    /// Settings changed mid-stream: rebuild the pipeline and replay recent input through it
    /// from the start of the oldest block still in flight, so marked output continues without a
    /// dry gap; output already written is skipped.
    fn replay(&mut self, st: &mut State_) {
        let lat = self.latency.total as u64;
        st.pipe = None;
        // The first input whose output is not written yet.
        let pending = st.written.saturating_sub(lat).max(st.epoch_abs);
        // Back to where the new stream's first sample is a block start (the input resampler's
        // delay included), if history still holds it, so no zeros replace real audio.
        let into_block = self.grid_offset(st, pending) as i64 - self.latency.resampler_in as i64;
        let back44 = into_block.rem_euclid(BLOCK as i64) as u64;
        let back = (back44 * self.rate as u64 / SAMPLE_RATE as u64).min(pending - st.epoch_abs);
        let oldest = st.abs.saturating_sub(st.history_len - CHUNK as u64);
        let from = (pending - back).max(oldest).max(st.epoch_abs);
        let skip = (st.written - (from + lat).min(st.written)) as usize;
        if st.written < from + lat {
            self.fill_dry(st, from + lat);
        }
        self.start_pipeline(st, from, skip);
        if st.pipe.is_none() {
            self.fill_dry(st, st.abs + self.latency.handoff as u64);
            return;
        }
        // Feed the history from `from` up to the present.
        let ch = self.channels;
        let mut at = from;
        while at < st.abs {
            let n = ((st.abs - at) as usize).min(CHUNK);
            for f in 0..n {
                let h = ((at + f as u64) % st.history_len) as usize;
                for c in 0..ch {
                    st.planar[c][f] = st.history[h * ch + c];
                }
            }
            if !self.run_planar(st, n) {
                return;
            }
            at += n as u64;
        }
    }

    /// Offset (model-rate samples) of host frame `abs` into its block on the timeline grid.
    fn grid_offset(&self, st: &State_, abs: u64) -> usize {
        self.pos44(st, abs).rem_euclid(BLOCK as i64) as usize
    }

    /// Model-rate timeline position of host frame `abs`.
    fn pos44(&self, st: &State_, abs: u64) -> i64 {
        let timeline = st.epoch_timeline + (abs as i64 - st.epoch_abs as i64);
        (timeline as f64 * SAMPLE_RATE as f64 / self.rate as f64).round() as i64
    }

    /// Builds a pipeline whose first input is host frame `from`, and whose first `skip` outputs
    /// (after the resampler delay) are dropped. Without a key or model, leaves none.
    fn start_pipeline(&mut self, st: &mut State_, from: u64, skip: usize) {
        let status = &self.shared.status;
        let (Some(stored), Some(_)) = (st.settings.key.clone(), st.embedder.as_ref()) else {
            if st.embedder.is_some() {
                status.set_state(State::NoKey);
            }
            return;
        };
        let Some(key) = Key::from_hex(&stored.hex, stored.name.clone()) else {
            status.set_state(State::Failed);
            status.edit_text(|t| t.error = "the stored key is not 32 hex digits".into());
            return;
        };
        let ch = self.channels;
        // The stream's sample 0 must be a block start: the input resampler's output sample m
        // sits at model-rate timeline position pos44(from) + m − a_in, so prepend the zeros that
        // reach back to the block start (`z`), and drop their output. That block's place on the
        // timeline grid picks the key's block masks.
        let start44 = self.pos44(st, from) - self.latency.resampler_in as i64;
        let z = start44.rem_euclid(BLOCK as i64) as usize;
        let first_block = start44.div_euclid(BLOCK as i64);
        let built = (|| -> Result<Pipeline, String> {
            let stream = EmbedStream::new(ch, &key, st.settings.payload, st.settings.strength, first_block)
                .map_err(|e| e.to_string())?;
            Ok(Pipeline {
                to_model: StreamResampler::new(self.rate, SAMPLE_RATE, ch)
                    .map_err(|e| e.to_string())?,
                to_host: StreamResampler::new(SAMPLE_RATE, self.rate, ch)
                    .map_err(|e| e.to_string())?,
                stream,
                x44: vec![Vec::new(); ch],
                y44: vec![Vec::new(); ch],
                host: vec![Vec::new(); ch],
                skip_model: 0,
                skip_host: self.latency.group + skip,
            })
        })();
        let mut pipe = match built {
            Ok(p) => p,
            Err(e) => {
                status.set_state(State::Failed);
                status.edit_text(|t| t.error = e);
                return;
            }
        };
        pipe.skip_model = z;
        let zeros = vec![0.0f32; z];
        let zin: Vec<&[f32]> = (0..ch).map(|_| &zeros[..]).collect();
        if let Some(emb) = st.embedder.as_mut()
            && let Err(e) = pipe.stream.push(emb, &zin, &mut pipe.y44)
        {
            status.set_state(State::Failed);
            status.edit_text(|t| t.error = e.to_string());
            return;
        }
        let drop = pipe.y44[0].len().min(pipe.skip_model);
        pipe.skip_model -= drop;
        pipe.y44.iter_mut().for_each(|y| drop_front(y, drop));
        status.set_state(State::Marking);
        status.edit_text(|t| t.error.clear());
        st.pipe = Some(pipe);
    }

    /// Pushes one chunk of host input through the pipeline and writes what comes out.
    /// Runs the pipeline on the first `n` frames of `st.planar`; on failure the pipeline is
    /// dropped (audio passes dry) and false is returned.
    fn run_planar(&mut self, st: &mut State_, n: usize) -> bool {
        // Taken out for the call, which needs the rest of the state mutably.
        let planar = std::mem::take(&mut st.planar);
        let input: Vec<&[f32]> = planar.iter().map(|p| &p[..n]).collect();
        let result = self.run_pipeline(st, &input);
        st.planar = planar;
        match result {
            Ok(()) => true,
            Err(e) => {
                self.fail_pipeline(st, e);
                false
            }
        }
    }

    fn run_pipeline(&mut self, st: &mut State_, input: &[&[f32]]) -> Result<(), String> {
        let (Some(pipe), Some(emb)) = (st.pipe.as_mut(), st.embedder.as_mut()) else {
            return Ok(());
        };
        let n = input[0].len();
        let busy = Instant::now();
        let need = pipe.to_model.max_output_len(n);
        pipe.x44
            .iter_mut()
            .for_each(|x| x.resize(need.max(x.len()), 0.0));
        let got = pipe
            .to_model
            .push(input, &mut pipe.x44)
            .map_err(|e| e.to_string())?;
        let x44: Vec<&[f32]> = pipe.x44.iter().map(|x| &x[..got]).collect();
        let before = pipe.stream.blocks_done;
        let t0 = Instant::now();
        pipe.stream
            .push(emb, &x44, &mut pipe.y44)
            .map_err(|e| e.to_string())?;
        let drop = pipe.y44[0].len().min(pipe.skip_model);
        pipe.skip_model -= drop;
        let len = pipe.y44[0].len() - drop;
        let need = pipe.to_host.max_output_len(len);
        pipe.host
            .iter_mut()
            .for_each(|h| h.resize(need.max(h.len()), 0.0));
        let y44: Vec<&[f32]> = pipe.y44.iter().map(|y| &y[drop..]).collect();
        let out = pipe
            .to_host
            .push(&y44, &mut pipe.host)
            .map_err(|e| e.to_string())?;
        pipe.y44.iter_mut().for_each(Vec::clear);
        let marked = pipe.stream.blocks_done - before;
        if marked > 0 {
            let us = t0.elapsed().as_micros() as u64 / marked as u64;
            let status = &self.shared.status;
            status.last_block_us.store(us, Ordering::Relaxed);
            status
                .blocks_marked
                .fetch_add(marked as u64, Ordering::Relaxed);
        }
        let status = &self.shared.status;
        status
            .busy_us
            .fetch_add(busy.elapsed().as_micros() as u64, Ordering::Relaxed);
        status.busy_frames.fetch_add(n as u64, Ordering::Relaxed);
        let drop = out.min(pipe.skip_host);
        pipe.skip_host -= drop;
        let frames = out - drop;
        let ch = self.channels;
        let host = &pipe.host;
        let ok = write_frames(
            &mut self.output,
            &self.shared.shutdown,
            ch,
            frames,
            |f, c| host[c][drop + f],
        );
        if ok {
            st.written += frames as u64;
        }
        Ok(())
    }

    fn fail_pipeline(&mut self, st: &mut State_, why: String) {
        nice_error!("Stemmark Embed: marking failed: {why}; passing audio through");
        let status = &self.shared.status;
        status.set_state(State::Failed);
        status.edit_text(|t| t.error = why);
        st.pipe = None;
        self.fill_dry(st, st.abs + self.latency.handoff as u64);
    }

    /// Writes delayed dry input from the history until `target` frames are written.
    fn fill_dry(&mut self, st: &mut State_, target: u64) {
        if st.written >= target {
            return;
        }
        let lat = self.latency.total as u64;
        let ch = self.channels;
        let (start, abs, len) = (st.written, st.abs, st.history_len);
        let history = &st.history;
        let n = (target - start) as usize;
        let ok = write_frames(&mut self.output, &self.shared.shutdown, ch, n, |f, c| {
            let o = start + f as u64;
            match o.checked_sub(lat) {
                Some(i) if i < abs && i + len > abs => history[(i % len) as usize * ch + c],
                _ => 0.0,
            }
        });
        if ok {
            st.written = target;
        }
    }
}

fn drop_front(v: &mut Vec<f32>, n: usize) {
    if n > 0 {
        v.drain(..n);
    }
}

/// Writes `n` interleaved frames into the ring, waiting for room (the audio thread drains it
/// every buffer). False if shut down before all were written.
fn write_frames(
    out: &mut Producer<f32>,
    shutdown: &AtomicBool,
    ch: usize,
    n: usize,
    value: impl Fn(usize, usize) -> f32,
) -> bool {
    let mut done = 0;
    while done < n {
        let room = out.slots() / ch;
        if room == 0 {
            if shutdown.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let k = room.min(n - done);
        let Ok(mut chunk) = out.write_chunk(k * ch) else {
            continue;
        };
        let (a, b) = chunk.as_mut_slices();
        for (i, s) in a.iter_mut().chain(b.iter_mut()).enumerate() {
            *s = value(done + i / ch, i % ch);
        }
        chunk.commit_all();
        done += k;
    }
    true
}
