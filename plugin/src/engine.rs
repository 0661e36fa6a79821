//! The audio-thread side of Stemmark Embed: made in `activate()`, then it only copies samples.
//!
//! Each host buffer goes into the worker's input ring and into a dry delay line; the output is
//! read from the worker's output ring, whose frame `o` is the marked input frame `o − latency`.
//! In real time, when that frame is not there yet the buffer goes out as the delayed dry input
//! and is counted as late; in offline render, and while the host calls faster than real time (a
//! bounce the host does not call offline, [`Pace`]), the audio thread waits for the worker instead. The
//! first `latency` frames after a restart (seek, loop, transport start, reset) are dry too: the
//! new pipeline's output starts exactly there. Nothing here allocates, locks or blocks in real
//! time (`unpark` is one atomic and at most a futex wake).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rtrb::{Consumer, Producer, RingBuffer};

use crate::latency::Latency;
use crate::pace::Pace;
use crate::params::EmbedParams;
use crate::timeline::Timeline;
use crate::worker::{CHUNK, Restart, Shared, Worker};

/// How long offline render waits for one buffer before giving up on it (and passing it dry),
/// so a wedged worker can slow a bounce down but never hang the host.
const OFFLINE_WAIT: Duration = Duration::from_secs(30);

pub struct Engine {
    pub rate: f32,
    pub channels: usize,
    pub max_buffer: usize,
    pub offline: bool,
    pub latency: Latency,
    shared: Arc<Shared>,
    input: Producer<f32>,
    cmds: Producer<Restart>,
    output: Consumer<f32>,
    worker: Option<(JoinHandle<()>, Thread)>,
    /// Interleaved delay line of the input, indexed by host frame modulo its length.
    dry: Vec<f32>,
    dry_len: u64,
    /// Input frames before this one (from before a reset) read as silence.
    dry_from: u64,
    /// Host frames processed since activation.
    abs: u64,
    /// Frames pushed into the input ring.
    seq: u64,
    /// Host frame index of the next frame in the output ring.
    out_read: u64,
    /// Frames before this one are played from the dry line (a restart is warming up).
    dry_until: u64,
    timeline: Timeline,
    /// A restart (or the input after a full ring) still has to reach the worker.
    pending_restart: bool,
    /// Whether the host calls faster than real time (then it is waited for like offline).
    pace: Pace,
    fast: bool,
}

impl Engine {
    /// Builds the rings, the delay line and the worker thread. Main thread only.
    pub fn new(
        params: Arc<EmbedParams>,
        shared: Arc<Shared>,
        rate: f32,
        channels: usize,
        max_buffer: usize,
        offline: bool,
    ) -> Result<Engine, String> {
        let max_buffer = max_buffer.max(1);
        let latency = crate::latency::latency(rate.round() as u32, max_buffer)?;
        let lat = latency.total;
        // Input: whatever the worker has not read yet; a few seconds of headroom before the
        // audio thread has to drop input and resynchronise.
        let in_frames = lat + 8 * max_buffer + 4 * CHUNK + 5 * rate as usize;
        // Output: up to `latency` frames ahead of the reader, plus what a restart writes.
        let out_frames = 2 * lat + 8 * max_buffer + 4 * CHUNK;
        let (input, in_rx) = RingBuffer::<f32>::new(in_frames * channels);
        let (out_tx, output) = RingBuffer::<f32>::new(out_frames * channels);
        let (cmds, cmd_rx) = RingBuffer::<Restart>::new(64);
        shared.shutdown.store(false, Ordering::Release);
        shared.status.latency.store(lat as u32, Ordering::Relaxed);
        // Set here, not by the thread, so `wait_ready` cannot look before the thread starts (it
        // would see a stopped worker, or the state of the previous activation, and not wait).
        shared.alive.store(true, Ordering::Release);
        shared.status.set_state(crate::status::State::Loading);
        let worker = Worker {
            params,
            shared: shared.clone(),
            rate: rate.round() as u32,
            channels,
            latency,
            input: in_rx,
            cmds: cmd_rx,
            output: out_tx,
        };
        let handle = std::thread::Builder::new()
            .name("stemmark-embed".into())
            .spawn(move || worker.run())
            .map_err(|e| {
                shared.alive.store(false, Ordering::Release);
                format!("cannot start the worker thread: {e}")
            })?;
        let thread = handle.thread().clone();
        let dry_len = (lat + 2 * max_buffer) as u64;
        Ok(Engine {
            rate,
            channels,
            max_buffer,
            offline,
            latency,
            shared,
            input,
            cmds,
            output,
            worker: Some((handle, thread)),
            dry: vec![0.0; dry_len as usize * channels],
            dry_len,
            dry_from: 0,
            abs: 0,
            seq: 0,
            out_read: 0,
            dry_until: 0,
            timeline: Timeline::default(),
            pending_restart: false,
            pace: Pace::new(rate),
            fast: false,
        })
    }

    /// Waits (bounded) until the worker has loaded its model, so processing starts marked.
    pub fn wait_ready(&self, timeout: Duration) {
        let t0 = Instant::now();
        while self.shared.status.state() == crate::status::State::Loading
            && self.shared.alive.load(Ordering::Acquire)
            && t0.elapsed() < timeout
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Host reset: forget the audio in flight and start a new run at timeline 0 (or the next
    /// position the transport gives). Real-time safe.
    pub fn reset(&mut self) {
        // Older input reads as silence from now on (cheaper than clearing the line here).
        self.dry_from = self.abs;
        self.timeline.reset();
        self.restart();
    }

    fn restart(&mut self) {
        self.dry_until = self.abs + self.latency.total as u64;
        let cmd = Restart {
            seq: self.seq,
            abs: self.abs,
            timeline: self.timeline.now(),
        };
        self.pending_restart = self.cmds.push(cmd).is_err();
    }

    /// One host buffer, in place. `position`: the transport's timeline position in samples while
    /// it plays, None otherwise. `bypass`: output the delayed dry signal (latency unchanged).
    pub fn process(&mut self, channels: &mut [&mut [f32]], position: Option<i64>, bypass: bool) {
        let Some(first) = channels.first() else {
            return;
        };
        let total = first.len();
        self.fast = self.pace.tick(total);
        // Hosts must not exceed the announced maximum, but if one does, take it in pieces.
        let mut start = 0;
        let mut position = position;
        while start < total {
            let n = (total - start).min(self.max_buffer);
            self.process_chunk(channels, start, n, position, bypass);
            position = position.map(|p| p + n as i64);
            start += n;
        }
    }

    fn process_chunk(
        &mut self,
        buf: &mut [&mut [f32]],
        start: usize,
        n: usize,
        position: Option<i64>,
        bypass: bool,
    ) {
        let ch = self.channels.min(buf.len());
        if self.timeline.jumped(position, n) {
            self.restart();
        }

        // Input: delay line and worker ring.
        for i in 0..n {
            let d = ((self.abs + i as u64) % self.dry_len) as usize * self.channels;
            for c in 0..self.channels {
                self.dry[d + c] = buf[c.min(ch - 1)][start + i];
            }
        }
        if self.pending_restart {
            self.restart();
        }
        if !self.pending_restart {
            match self.input.write_chunk(n * self.channels) {
                Ok(mut chunk) => {
                    let (a, b) = chunk.as_mut_slices();
                    for (k, s) in a.iter_mut().chain(b.iter_mut()).enumerate() {
                        *s = buf[(k % self.channels).min(ch - 1)][start + k / self.channels];
                    }
                    chunk.commit_all();
                    self.seq += n as u64;
                }
                // The worker stalled: drop this input and restart it where input resumes.
                Err(_) => self.pending_restart = true,
            }
        }
        if let Some((_, thread)) = &self.worker {
            thread.unpark();
        }

        // Output.
        let alive = self.shared.alive.load(Ordering::Acquire);
        let dry_frames = if bypass || !alive {
            n
        } else {
            (self.dry_until.saturating_sub(self.abs) as usize).min(n)
        };
        let want = self.abs + dry_frames as u64;
        let need = n - dry_frames;
        // Frames for times already played (late ones, a restart's warm-up) are dropped.
        self.discard_until(want);
        let wait = self.offline || self.fast;
        if need > 0 && wait {
            let t0 = Instant::now();
            while self.out_read < want || self.output.slots() < need * self.channels {
                if !self.shared.alive.load(Ordering::Acquire) || t0.elapsed() > OFFLINE_WAIT {
                    break;
                }
                if let Some((_, thread)) = &self.worker {
                    thread.unpark();
                }
                std::thread::sleep(Duration::from_micros(100));
                self.discard_until(want);
            }
        }
        let marked = need > 0
            && self.out_read == want
            && match self.output.read_chunk(need * self.channels) {
                Ok(chunk) => {
                    let (a, b) = chunk.as_slices();
                    for (k, &s) in a.iter().chain(b).enumerate() {
                        let c = k % self.channels;
                        if c < ch {
                            buf[c][start + dry_frames + k / self.channels] = s;
                        }
                    }
                    chunk.commit_all();
                    self.out_read += need as u64;
                    true
                }
                Err(_) => false,
            };
        let dry_to = if marked || need == 0 { dry_frames } else { n };
        // Only a missed marked buffer is "late"; without a key or model dry is the plan.
        if dry_to > dry_frames
            && !wait
            && self.shared.status.state() == crate::status::State::Marking
        {
            self.shared
                .status
                .late_buffers
                .fetch_add(1, Ordering::Relaxed);
        }
        let lat = self.latency.total as u64;
        for i in 0..dry_to {
            let t = self.abs + i as u64;
            for (c, out) in buf.iter_mut().enumerate().take(ch) {
                out[start + i] = match t.checked_sub(lat) {
                    Some(src) if src >= self.dry_from => {
                        self.dry[(src % self.dry_len) as usize * self.channels + c]
                    }
                    _ => 0.0,
                };
            }
        }
        self.abs += n as u64;
        self.timeline.advance(n);
    }

    fn discard_until(&mut self, want: u64) {
        if self.out_read >= want {
            return;
        }
        let frames = ((want - self.out_read) as usize).min(self.output.slots() / self.channels);
        if frames > 0
            && let Ok(chunk) = self.output.read_chunk(frames * self.channels)
        {
            chunk.commit_all();
            self.out_read += frames as u64;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        if let Some((handle, thread)) = self.worker.take() {
            thread.unpark();
            let _ = handle.join();
        }
        self.shared.status.set_state(crate::status::State::Idle);
    }
}
