//! The audio-thread side of Stemmark Detect: made in `activate()`, then it only copies each host
//! buffer into the worker's ring (and marks timeline jumps). The host's audio is never touched,
//! so output is bit-identical to input with zero latency. In real time a full ring drops the
//! buffer (counted; the worker restarts on the grid); in offline render, and while the host calls
//! faster than real time (a bounce the host does not call offline, [`Pace`]), the audio thread
//! waits for room instead and the worker keeps its backlog, so every block of a bounce is analysed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rtrb::{Producer, RingBuffer};

use crate::detect_worker::{DetectShared, DetectWorker};
use crate::pace::Pace;
use crate::params::DetectParams;
use crate::timeline::Timeline;
use crate::worker::Restart;

/// How long offline render waits for room in the ring before dropping a buffer, so a wedged
/// worker slows a bounce down but never hangs the host.
const OFFLINE_WAIT: Duration = Duration::from_secs(30);
/// Seconds of audio the ring holds (the worker's backlog before anything is dropped).
const RING_SECONDS: f64 = 12.0;
/// How long dropping the plugin waits for a finishing analysis before cutting it short.
const FINISH_WAIT: Duration = Duration::from_secs(120);

pub struct DetectEngine {
    pub rate: f32,
    pub max_buffer: usize,
    pub offline: bool,
    shared: Arc<DetectShared>,
    input: Producer<f32>,
    cmds: Producer<Restart>,
    worker: Option<(JoinHandle<()>, Thread)>,
    /// Frames pushed into the ring.
    seq: u64,
    timeline: Timeline,
    /// A restart (or the input after a full ring) still has to reach the worker.
    pending_restart: bool,
    pace: Pace,
}

impl DetectEngine {
    /// Builds the rings and starts the worker. Main thread only.
    pub fn new(
        params: Arc<DetectParams>,
        shared: Arc<DetectShared>,
        rate: f32,
        max_buffer: usize,
        offline: bool,
        threads: usize,
    ) -> Result<DetectEngine, String> {
        let max_buffer = max_buffer.max(1);
        let frames = (RING_SECONDS * rate as f64) as usize + 4 * max_buffer;
        let (input, in_rx) = RingBuffer::<f32>::new(frames * 2);
        let (cmds, cmd_rx) = RingBuffer::<Restart>::new(64);
        shared.shutdown.store(false, Ordering::Release);
        shared.finish.store(false, Ordering::Release);
        shared.dropped_frames.store(0, Ordering::Relaxed);
        // Set here, not by the thread, so `wait_ready` cannot run before the thread starts.
        shared.alive.store(true, Ordering::Release);
        shared.set_state(crate::detect_worker::State::Loading);
        let worker = DetectWorker {
            params,
            shared: shared.clone(),
            rate: rate.round() as u32,
            offline,
            threads,
            input: in_rx,
            cmds: cmd_rx,
        };
        let handle = std::thread::Builder::new()
            .name("stemmark-detect".into())
            .spawn(move || worker.run())
            .map_err(|e| {
                shared.alive.store(false, Ordering::Release);
                format!("cannot start the analysis thread: {e}")
            })?;
        let thread = handle.thread().clone();
        Ok(DetectEngine {
            rate,
            max_buffer,
            offline,
            shared,
            input,
            cmds,
            worker: Some((handle, thread)),
            seq: 0,
            timeline: Timeline::default(),
            pending_restart: false,
            pace: Pace::new(rate),
        })
    }

    /// Waits (bounded) until the worker has loaded its models.
    pub fn wait_ready(&self, timeout: Duration) {
        let t0 = Instant::now();
        while self.shared.state() == crate::detect_worker::State::Loading
            && self.shared.alive.load(Ordering::Acquire)
            && t0.elapsed() < timeout
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Host reset: a new run at timeline 0 (or the next position the transport gives).
    pub fn reset(&mut self) {
        self.timeline.reset();
        self.restart();
    }

    fn restart(&mut self) {
        let cmd = Restart { seq: self.seq, abs: 0, timeline: self.timeline.now() };
        self.pending_restart = self.cmds.push(cmd).is_err();
    }

    /// Deactivation: the worker analyses what it has, publishes complete results, and stops.
    pub fn finish(&mut self) {
        self.shared.finish.store(true, Ordering::Release);
        if let Some((_, thread)) = &self.worker {
            thread.unpark();
        }
    }

    /// Reads one host buffer (never writes it). `position`: the transport's timeline position
    /// in samples while it plays. Real-time safe.
    pub fn process(&mut self, channels: &[&mut [f32]], position: Option<i64>) {
        let Some(first) = channels.first() else {
            return;
        };
        let total = first.len();
        let fast = self.pace.tick(total);
        self.shared.fast.store(fast, Ordering::Relaxed);
        let mut start = 0;
        let mut position = position;
        while start < total {
            let n = (total - start).min(self.max_buffer);
            self.process_chunk(channels, start, n, position, self.offline || fast);
            position = position.map(|p| p + n as i64);
            start += n;
        }
        if let Some((_, thread)) = &self.worker {
            thread.unpark();
        }
    }

    /// `wait`: offline or faster than real time, so wait for room rather than drop.
    fn process_chunk(&mut self, buf: &[&mut [f32]], start: usize, n: usize, position: Option<i64>, wait: bool) {
        if self.timeline.jumped(position, n) {
            self.restart();
        }
        if self.pending_restart {
            self.restart();
        }
        let ch = buf.len();
        if !self.pending_restart {
            if wait && self.input.slots() < 2 * n {
                // A bounce must not lose a block: wait for the worker to make room.
                let t0 = Instant::now();
                while self.input.slots() < 2 * n
                    && self.shared.alive.load(Ordering::Acquire)
                    && t0.elapsed() < OFFLINE_WAIT
                {
                    if let Some((_, thread)) = &self.worker {
                        thread.unpark();
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            match self.input.write_chunk(2 * n) {
                Ok(mut chunk) => {
                    let (a, b) = chunk.as_mut_slices();
                    for (k, s) in a.iter_mut().chain(b.iter_mut()).enumerate() {
                        *s = buf[(k % 2).min(ch - 1)][start + k / 2];
                    }
                    chunk.commit_all();
                    self.seq += n as u64;
                }
                // The worker is behind: drop this input; it restarts where input resumes.
                Err(_) => {
                    self.shared.dropped_frames.fetch_add(n as u64, Ordering::Relaxed);
                    self.pending_restart = true;
                }
            }
        }
        self.timeline.advance(n);
    }
}

impl Drop for DetectEngine {
    fn drop(&mut self) {
        let Some((handle, thread)) = self.worker.take() else {
            return;
        };
        // A finishing analysis gets time to write its complete results, then is cut short.
        if self.shared.finish.load(Ordering::Acquire) {
            let t0 = Instant::now();
            while self.shared.alive.load(Ordering::Acquire) && t0.elapsed() < FINISH_WAIT {
                thread.unpark();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.shared.shutdown.store(true, Ordering::Release);
        thread.unpark();
        let _ = handle.join();
    }
}
