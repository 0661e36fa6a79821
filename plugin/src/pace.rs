//! Is the host calling faster than real time? Some hosts render a bounce by running their
//! real-time graph as fast as it returns (Ardour 7's export freewheels) without telling plugins
//! that processing is offline (VST3 `kOffline`, CLAP's render extension). A plugin that then keeps
//! its real-time rule — never wait for the worker, pass late audio dry, drop a backlog — loses
//! marks and analysis in the bounce. Audio that arrives faster than it plays has no deadline to
//! meet, so while it does the plugin may wait for its worker as in offline render.
//!
//! Measured on the audio thread: `Instant::now()` (a vDSO clock read) per host buffer, no
//! allocation, no lock.

use std::time::Instant;

/// Audio per measurement window, seconds: long enough that a real-time host's buffer jitter
/// averages out (a window holds ≥ 4 buffers up to 12 000-frame buffers at 48 kHz).
const WINDOW_SECONDS: f64 = 1.0;
/// Entering: audio arrived at least this many times faster than real time over a window.
const ENTER: f64 = 2.0;
/// Staying: while waiting for the worker the host can only go as fast as the worker, so
/// rendering stays "fast" down to this speed (hysteresis, no flapping at the worker's pace).
const STAY: f64 = 1.25;

#[derive(Debug)]
pub struct Pace {
    rate: f64,
    /// Start of the current window and the frames handed in since (before this buffer).
    since: Option<Instant>,
    frames: u64,
    fast: bool,
}

impl Pace {
    pub fn new(rate: f32) -> Pace {
        Pace { rate: rate.max(1.0) as f64, since: None, frames: 0, fast: false }
    }

    /// A host buffer of `n` frames arrives now: true while the host runs faster than real time.
    pub fn tick(&mut self, n: usize) -> bool {
        self.tick_at(Instant::now(), n)
    }

    /// [`Pace::tick`] at a given time (tests).
    pub fn tick_at(&mut self, now: Instant, n: usize) -> bool {
        let Some(since) = self.since else {
            self.since = Some(now);
            self.frames = n as u64;
            return self.fast;
        };
        // The frames before this buffer arrived over the time since the window began.
        let audio = self.frames as f64 / self.rate;
        if audio >= WINDOW_SECONDS {
            let wall = now.duration_since(since).as_secs_f64();
            let need = if self.fast { STAY } else { ENTER };
            self.fast = wall * need < audio;
            self.since = Some(now);
            self.frames = 0;
        }
        self.frames += n as u64;
        self.fast
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Buffers of `n` frames at 48 kHz, each arriving `every` after the previous one.
    fn run(p: &mut Pace, t: &mut Instant, buffers: usize, n: usize, every: Duration) -> bool {
        let mut fast = false;
        for _ in 0..buffers {
            fast = p.tick_at(*t, n);
            *t += every;
        }
        fast
    }

    #[test]
    fn real_time_stays_real_time_even_with_big_buffers_and_jitter() {
        for n in [64, 512, 4096, 12_000] {
            let mut p = Pace::new(48_000.0);
            let mut t = Instant::now();
            let period = Duration::from_secs_f64(n as f64 / 48_000.0);
            for k in 0..200 {
                // Two buffers back to back, then a double gap: 1× on average.
                let every = if k % 2 == 0 { Duration::from_micros(50) } else { period * 2 - Duration::from_micros(50) };
                assert!(!p.tick_at(t, n), "buffer {n}: called fast at buffer {k}");
                t += every;
            }
        }
    }

    #[test]
    fn a_freewheeling_render_is_fast_within_a_second_of_audio_and_stays_fast_at_the_worker_pace() {
        let mut p = Pace::new(48_000.0);
        let mut t = Instant::now();
        let n = 1024;
        let period = Duration::from_secs_f64(n as f64 / 48_000.0);
        assert!(run(&mut p, &mut t, 60, n, period / 10), "10× real time");
        // Waiting for a worker that manages 1.5× real time: still a render.
        assert!(run(&mut p, &mut t, 200, n, period * 2 / 3));
        // Back to real time (the render ended, playback resumed): real time again.
        assert!(!run(&mut p, &mut t, 200, n, period));
    }
}
