//! STFT and iSTFT on the signal contract's grid (every number comes from [`crate::spec`]).
//!
//! Framing (the contract): frame `j` is centred on sample `j·HOP` and covers
//! `[j·HOP − N_FFT/2, j·HOP + N_FFT/2)`. Samples outside the signal are zero — no reflect
//! padding, because a stream cannot reflect samples it has not seen, and whole-buffer and
//! streaming must agree. Because `BLOCK = FRAMES_PER_BLOCK · HOP`, block `k` owns frames
//! `[k·FRAMES_PER_BLOCK, (k+1)·FRAMES_PER_BLOCK)`.
//!
//! Window: periodic Hann of length `N_FFT`, at analysis and at synthesis. Synthesis is weighted
//! overlap-add divided by the summed squared window of the frames actually present, so the
//! round trip is exact for any `HOP ≤ N_FFT/2`, including the first and last samples.
//!
//! Streaming and whole-buffer share the per-frame code and add frames in the same order, so
//! their outputs are bit-identical. FFTs and overlap-add run in f64 (storage is f32): with f32
//! FFTs the round-trip error reaches ~4e-7, too close to the 1e-6 contract for comfort, and the
//! cost is negligible next to the models.

use std::ops::Range;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
pub use realfft::num_complex::Complex32;
use realfft::num_complex::Complex64;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::spec::{BINS, FRAMES_PER_BLOCK, HOP, N_FFT};

const HALF: usize = N_FFT / 2;

const _: () = assert!(
    HOP <= HALF,
    "WOLA needs every sample covered by at least two frames"
);

/// Below this summed squared window a sample has (almost) no frame covering it; it is output as
/// zero instead of dividing by a near-zero weight. Inside a signal the sum is ≥ 1.
const MIN_WEIGHT: f64 = 1e-6;

/// Samples a [`StreamingStft`] holds back: a frame centred on sample `c` is emitted once sample
/// `c + N_FFT/2 − 1` has been pushed.
pub const ANALYSIS_LATENCY: usize = HALF;
/// Samples a [`StreamingIstft`] holds back behind the centre of the newest frame it was given:
/// after frame `j`, output is final up to (not including) sample `j·HOP + HOP − N_FFT/2`.
pub const SYNTHESIS_LATENCY: usize = HALF - HOP;
/// Round trip `StreamingStft` → `StreamingIstft`: after `P` samples have been pushed, at least
/// `P − STREAM_LATENCY` output samples have been emitted (analysis look-ahead + synthesis
/// hold-back + up to `HOP − 1` samples waiting for the next frame). A real-time user that delays
/// its output by this constant never runs dry.
pub const STREAM_LATENCY: usize = ANALYSIS_LATENCY + SYNTHESIS_LATENCY + HOP - 1;

/// Errors from shape mismatches; none of these are reachable through correctly sized inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StftError {
    #[error("array has shape [{rows}, {cols}], expected [{}, {frames}]", BINS)]
    Shape {
        rows: usize,
        cols: usize,
        frames: usize,
    },
    #[error("frame range {start}..{end} is outside a spectrogram of {frames} frames")]
    FrameRange {
        start: usize,
        end: usize,
        frames: usize,
    },
    #[error("frame has {got} bins, expected {}", BINS)]
    FrameLength { got: usize },
    #[error("frame {got} pushed out of order, expected frame {expected}")]
    FrameOrder { expected: usize, got: usize },
}

/// Block of the 2 s grid that owns frame `frame` (the block containing the frame's centre).
pub fn block_of_frame(frame: usize) -> usize {
    frame / FRAMES_PER_BLOCK
}

/// Frames owned by block `block`.
pub fn frames_of_block(block: usize) -> Range<usize> {
    block * FRAMES_PER_BLOCK..(block + 1) * FRAMES_PER_BLOCK
}

/// Sample on which frame `frame` is centred.
pub fn frame_centre(frame: usize) -> usize {
    frame * HOP
}

/// Frames [`Stft::forward`] produces for `len` samples: every frame whose window touches the
/// signal and is centred at or after sample 0, so every sample gets all its overlapping frames.
pub fn frames_for_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len - 1 + HALF) / HOP + 1
    }
}

/// Complex spectrogram, `frames × BINS`, stored frame-major (each frame's bins contiguous).
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrogram {
    data: Vec<Complex32>,
    frames: usize,
    first_frame: usize,
}

impl Spectrogram {
    /// All-zero spectrogram of `frames` frames whose first frame has absolute index `first_frame`.
    pub fn zeros(first_frame: usize, frames: usize) -> Self {
        Self {
            data: vec![Complex32::new(0.0, 0.0); frames * BINS],
            frames,
            first_frame,
        }
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Absolute index of the first frame (0 for [`Stft::forward`]; kept through slicing so a
    /// slice still knows its place on the block grid).
    pub fn first_frame(&self) -> usize {
        self.first_frame
    }

    /// Bins of local frame `i`.
    pub fn frame(&self, i: usize) -> Option<&[Complex32]> {
        self.data.get(i * BINS..(i + 1) * BINS)
    }

    /// Mutable bins of local frame `i`.
    pub fn frame_mut(&mut self, i: usize) -> Option<&mut [Complex32]> {
        self.data.get_mut(i * BINS..(i + 1) * BINS)
    }

    /// All values, frame-major.
    pub fn as_slice(&self) -> &[Complex32] {
        &self.data
    }

    /// `|X|` as `[BINS, frames]` (bins-major, the embedder's `magnitude [B, F, T]` layout).
    pub fn magnitude(&self) -> Array2<f32> {
        let mut out = Array2::zeros((BINS, self.frames));
        self.write_magnitude(out.view_mut());
        out
    }

    /// [`Self::magnitude`] into a caller-owned `[BINS, frames]` array (no allocation).
    pub fn magnitude_into(&self, out: ArrayViewMut2<f32>) -> Result<(), StftError> {
        check_shape(out.dim(), self.frames)?;
        self.write_magnitude(out);
        Ok(())
    }

    fn write_magnitude(&self, mut out: ArrayViewMut2<f32>) {
        for (t, frame) in self.data.chunks_exact(BINS).enumerate() {
            for (b, c) in frame.iter().enumerate() {
                out[[b, t]] = magnitude(*c);
            }
        }
    }

    /// Multiplies every bin by the real `mask` `[BINS, frames]`; the phase is kept.
    pub fn apply_mask(&mut self, mask: ArrayView2<f32>) -> Result<(), StftError> {
        check_shape(mask.dim(), self.frames)?;
        self.apply_mask_at(0, mask)
    }

    /// Multiplies local frames `start .. start + mask.ncols()` by `mask` `[BINS, n]` (one block
    /// of a longer spectrogram, say).
    pub fn apply_mask_at(&mut self, start: usize, mask: ArrayView2<f32>) -> Result<(), StftError> {
        let (rows, cols) = mask.dim();
        if rows != BINS {
            return Err(StftError::Shape {
                rows,
                cols,
                frames: cols,
            });
        }
        let end = start
            .checked_add(cols)
            .filter(|&e| e <= self.frames)
            .ok_or(StftError::FrameRange {
                start,
                end: start.saturating_add(cols),
                frames: self.frames,
            })?;
        for (t, frame) in self.data[start * BINS..end * BINS]
            .chunks_exact_mut(BINS)
            .enumerate()
        {
            for (b, c) in frame.iter_mut().enumerate() {
                *c *= mask[[b, t]];
            }
        }
        Ok(())
    }

    /// Copy of local frames `range`; its `first_frame` is this one's plus `range.start`.
    pub fn slice_frames(&self, range: Range<usize>) -> Result<Spectrogram, StftError> {
        let Range { start, end } = range;
        if start > end || end > self.frames {
            return Err(StftError::FrameRange {
                start,
                end,
                frames: self.frames,
            });
        }
        Ok(Spectrogram {
            data: self.data[start * BINS..end * BINS].to_vec(),
            frames: end - start,
            first_frame: self.first_frame + start,
        })
    }

    /// Overwrites local frames `at .. at + src.frames()` with `src` (puts a processed slice back).
    pub fn write_frames(&mut self, at: usize, src: &Spectrogram) -> Result<(), StftError> {
        let end = at
            .checked_add(src.frames)
            .filter(|&e| e <= self.frames)
            .ok_or(StftError::FrameRange {
                start: at,
                end: at.saturating_add(src.frames),
                frames: self.frames,
            })?;
        self.data[at * BINS..end * BINS].copy_from_slice(&src.data);
        Ok(())
    }
}

fn check_shape((rows, cols): (usize, usize), frames: usize) -> Result<(), StftError> {
    if rows == BINS && cols == frames {
        Ok(())
    } else {
        Err(StftError::Shape { rows, cols, frames })
    }
}

fn hann() -> Vec<f64> {
    // Periodic (N, not N−1, in the denominator): shifted copies at HOP sum smoothly.
    (0..N_FFT)
        .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
        .collect()
}

/// Windowed forward FFT of one frame.
struct Analyzer {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    /// Raw samples of the frame to analyse; destroyed by [`Analyzer::run`].
    frame: Vec<f64>,
    spec: Vec<Complex64>,
    scratch: Vec<Complex64>,
}

impl Analyzer {
    fn new(planner: &mut RealFftPlanner<f64>) -> Self {
        let fft = planner.plan_fft_forward(N_FFT);
        let scratch = fft.make_scratch_vec();
        let spec = fft.make_output_vec();
        Self {
            fft,
            window: hann(),
            frame: vec![0.0; N_FFT],
            spec,
            scratch,
        }
    }

    fn load(&mut self, samples: &[f32]) {
        self.frame
            .iter_mut()
            .zip(samples)
            .for_each(|(d, &s)| *d = s as f64);
    }

    fn run(&mut self, out: &mut [Complex32]) {
        for (s, w) in self.frame.iter_mut().zip(&self.window) {
            *s *= w;
        }
        // Lengths are fixed at construction, so realfft cannot fail here.
        self.fft
            .process_with_scratch(&mut self.frame, &mut self.spec, &mut self.scratch)
            .expect("STFT buffers sized at construction");
        for (o, c) in out.iter_mut().zip(&self.spec) {
            *o = Complex32::new(c.re as f32, c.im as f32);
        }
    }
}

/// Inverse FFT of one frame, windowed and scaled, plus the squared window for the WOLA weight.
struct Synthesizer {
    ifft: Arc<dyn ComplexToReal<f64>>,
    /// Hann / N_FFT: realfft's inverse is unnormalised.
    window: Vec<f64>,
    /// Hann², the weight each frame adds to the samples it covers.
    weight: Vec<f64>,
    spec: Vec<Complex64>,
    frame: Vec<f64>,
    scratch: Vec<Complex64>,
}

impl Synthesizer {
    fn new(planner: &mut RealFftPlanner<f64>) -> Self {
        let ifft = planner.plan_fft_inverse(N_FFT);
        let scratch = ifft.make_scratch_vec();
        let hann = hann();
        Self {
            ifft,
            window: hann.iter().map(|w| w / N_FFT as f64).collect(),
            weight: hann.iter().map(|w| w * w).collect(),
            spec: vec![Complex64::new(0.0, 0.0); BINS],
            frame: vec![0.0; N_FFT],
            scratch,
        }
    }

    /// Leaves the windowed time-domain frame in `self.frame`.
    fn run(&mut self, bins: &[Complex32]) {
        for (d, c) in self.spec.iter_mut().zip(bins) {
            *d = Complex64::new(c.re as f64, c.im as f64);
        }
        // A real signal's DC and Nyquist bins are real; edited spectra may not be, and realfft
        // rejects that.
        self.spec[0].im = 0.0;
        self.spec[BINS - 1].im = 0.0;
        self.ifft
            .process_with_scratch(&mut self.spec, &mut self.frame, &mut self.scratch)
            .expect("iSTFT buffers sized at construction");
        for (s, w) in self.frame.iter_mut().zip(&self.window) {
            *s *= w;
        }
    }
}

fn normalise(acc: f64, weight: f64) -> f32 {
    if weight > MIN_WEIGHT {
        (acc / weight) as f32
    } else {
        0.0
    }
}

/// Whole-buffer STFT and iSTFT. Holds FFT plans and scratch; reuse it.
pub struct Stft {
    analyzer: Analyzer,
    synth: Synthesizer,
}

impl Default for Stft {
    fn default() -> Self {
        Self::new()
    }
}

impl Stft {
    pub fn new() -> Self {
        let mut planner = RealFftPlanner::new();
        Self {
            analyzer: Analyzer::new(&mut planner),
            synth: Synthesizer::new(&mut planner),
        }
    }

    /// Frames `0 .. frames_for_len(x.len())` of `x`.
    pub fn forward(&mut self, x: &[f32]) -> Spectrogram {
        let frames = frames_for_len(x.len());
        let mut spec = Spectrogram::zeros(0, frames);
        for (j, out) in spec.data.chunks_exact_mut(BINS).enumerate() {
            // Frame j covers samples [j·HOP − HALF, j·HOP + HALF); `lo` is its first in-signal sample.
            let start = (j * HOP) as isize - HALF as isize;
            let lo = start.max(0) as usize;
            let hi = (j * HOP + HALF).min(x.len());
            let off = (lo as isize - start) as usize;
            let frame = &mut self.analyzer.frame;
            frame.fill(0.0);
            frame[off..off + (hi - lo)]
                .iter_mut()
                .zip(&x[lo..hi])
                .for_each(|(d, &s)| *d = s as f64);
            self.analyzer.run(out);
        }
        spec
    }

    /// `len` samples resynthesised from `s`, whose first frame is taken to be centred on sample 0
    /// (so a slice of block k's frames gives block k's samples). Samples no frame covers are 0.
    pub fn inverse(&mut self, s: &Spectrogram, len: usize) -> Vec<f32> {
        let mut acc = vec![0.0f64; len];
        let mut weight = vec![0.0f64; len];
        for (j, bins) in s.data.chunks_exact(BINS).enumerate() {
            let start = (j * HOP) as isize - HALF as isize;
            if start >= len as isize {
                break;
            }
            self.synth.run(bins);
            let lo = start.max(0) as usize;
            let hi = (j * HOP + HALF).min(len);
            let off = (lo as isize - start) as usize;
            let n = hi - lo;
            for ((a, w), (y, ww)) in acc[lo..hi].iter_mut().zip(&mut weight[lo..hi]).zip(
                self.synth.frame[off..off + n]
                    .iter()
                    .zip(&self.synth.weight[off..off + n]),
            ) {
                *a += y;
                *w += ww;
            }
        }
        acc.iter()
            .zip(&weight)
            .map(|(&a, &w)| normalise(a, w))
            .collect()
    }
}

/// Streaming analysis: push chunks of any size, get each completed frame with its absolute index.
/// Frame 0 is centred on the first sample pushed after construction or [`reset`](Self::reset).
/// Nothing allocates after construction.
pub struct StreamingStft {
    analyzer: Analyzer,
    /// Samples `[next_frame·HOP − HALF, next_frame·HOP − HALF + filled)`.
    buf: Vec<f32>,
    filled: usize,
    next_frame: usize,
    pushed: usize,
    out: Vec<Complex32>,
}

impl Default for StreamingStft {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamingStft {
    pub fn new() -> Self {
        let mut planner = RealFftPlanner::new();
        Self {
            analyzer: Analyzer::new(&mut planner),
            buf: vec![0.0; N_FFT],
            filled: HALF,
            next_frame: 0,
            pushed: 0,
            out: vec![Complex32::new(0.0, 0.0); BINS],
        }
    }

    /// Look-ahead in samples ([`ANALYSIS_LATENCY`]): the frame centred on sample `c` is emitted
    /// by the push that delivers sample `c + latency() − 1`.
    pub fn latency(&self) -> usize {
        ANALYSIS_LATENCY
    }

    /// Index of the next frame to be emitted.
    pub fn next_frame(&self) -> usize {
        self.next_frame
    }

    /// Feeds samples; calls `emit(frame_index, bins)` for every frame completed by them.
    pub fn push(&mut self, mut x: &[f32], mut emit: impl FnMut(usize, &[Complex32])) {
        while !x.is_empty() {
            let take = (N_FFT - self.filled).min(x.len());
            self.buf[self.filled..self.filled + take].copy_from_slice(&x[..take]);
            self.filled += take;
            self.pushed += take;
            x = &x[take..];
            if self.filled == N_FFT {
                self.emit_frame(&mut emit);
            }
        }
    }

    /// End of stream: zero-pads to emit the remaining frames that [`Stft::forward`] would give
    /// for everything pushed so far, then resets.
    pub fn flush(&mut self, mut emit: impl FnMut(usize, &[Complex32])) {
        let total = frames_for_len(self.pushed);
        while self.next_frame < total {
            self.buf[self.filled..].fill(0.0);
            self.filled = N_FFT;
            self.emit_frame(&mut emit);
        }
        self.reset();
    }

    /// Forgets all input (transport stop or seek); the next sample pushed is sample 0 again.
    pub fn reset(&mut self) {
        self.buf.fill(0.0);
        self.filled = HALF;
        self.next_frame = 0;
        self.pushed = 0;
    }

    fn emit_frame(&mut self, emit: &mut impl FnMut(usize, &[Complex32])) {
        self.analyzer.load(&self.buf);
        self.analyzer.run(&mut self.out);
        emit(self.next_frame, &self.out);
        self.next_frame += 1;
        self.buf.copy_within(HOP.., 0);
        self.filled -= HOP;
    }
}

/// Streaming synthesis: push frames in order (0, 1, 2, …), get finished samples with their
/// absolute index. Sample 0 is the centre of frame 0. Nothing allocates after construction.
pub struct StreamingIstft {
    synth: Synthesizer,
    /// Overlap-add of samples `[next_frame·HOP − HALF, … + N_FFT)` and their window weights.
    acc: Vec<f64>,
    weight: Vec<f64>,
    out: Vec<f32>,
    next_frame: usize,
}

impl Default for StreamingIstft {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamingIstft {
    pub fn new() -> Self {
        let mut planner = RealFftPlanner::new();
        Self {
            synth: Synthesizer::new(&mut planner),
            acc: vec![0.0; N_FFT],
            weight: vec![0.0; N_FFT],
            out: vec![0.0; N_FFT],
            next_frame: 0,
        }
    }

    /// Hold-back in samples behind the newest frame's centre ([`SYNTHESIS_LATENCY`]).
    pub fn latency(&self) -> usize {
        SYNTHESIS_LATENCY
    }

    /// Index the next pushed frame must have.
    pub fn next_frame(&self) -> usize {
        self.next_frame
    }

    /// Adds frame `index` (must be [`next_frame`](Self::next_frame)); calls
    /// `emit(first_sample_index, samples)` with the samples it finished (HOP of them once the
    /// stream is past its start).
    pub fn push_frame(
        &mut self,
        index: usize,
        bins: &[Complex32],
        mut emit: impl FnMut(usize, &[f32]),
    ) -> Result<(), StftError> {
        if bins.len() != BINS {
            return Err(StftError::FrameLength { got: bins.len() });
        }
        if index != self.next_frame {
            return Err(StftError::FrameOrder {
                expected: self.next_frame,
                got: index,
            });
        }
        self.synth.run(bins);
        for ((a, w), (y, ww)) in self
            .acc
            .iter_mut()
            .zip(&mut self.weight)
            .zip(self.synth.frame.iter().zip(&self.synth.weight))
        {
            *a += y;
            *w += ww;
        }
        // No later frame reaches below (next_frame + 1)·HOP − HALF: the first HOP are final.
        self.emit_range(HOP, &mut emit);
        self.acc.copy_within(HOP.., 0);
        self.weight.copy_within(HOP.., 0);
        self.acc[N_FFT - HOP..].fill(0.0);
        self.weight[N_FFT - HOP..].fill(0.0);
        self.next_frame += 1;
        Ok(())
    }

    /// End of stream: emits the tail of the last frame's window (samples up to
    /// `last_centre + N_FFT/2`), then resets. Callers truncate to the signal length.
    pub fn flush(&mut self, mut emit: impl FnMut(usize, &[f32])) {
        if self.next_frame > 0 {
            self.emit_range(N_FFT - HOP, &mut emit);
        }
        self.reset();
    }

    /// Forgets all frames; the next pushed frame must be frame 0.
    pub fn reset(&mut self) {
        self.acc.fill(0.0);
        self.weight.fill(0.0);
        self.next_frame = 0;
    }

    /// Emits the first `n` accumulated samples, skipping those before sample 0.
    fn emit_range(&mut self, n: usize, emit: &mut impl FnMut(usize, &[f32])) {
        let base = (self.next_frame * HOP) as isize - HALF as isize;
        let skip = (-base).clamp(0, n as isize) as usize;
        if skip == n {
            return;
        }
        for i in skip..n {
            self.out[i] = normalise(self.acc[i], self.weight[i]);
        }
        emit((base + skip as isize) as usize, &self.out[skip..n]);
    }
}

/// `|z|` as √(re² + im²): a quarter of `hypot`'s cost, and STFT values of finite audio are far
/// from where its overflow care matters (a non-finite result leaves a cell's mask at 1).
#[inline]
pub fn magnitude(z: Complex32) -> f32 {
    (z.re * z.re + z.im * z.im).sqrt()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::BLOCK;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Counts allocations per thread, so no-allocation claims can be tested while other tests run
    /// in parallel.
    struct CountingAlloc;
    thread_local! {
        static ALLOCS: Cell<usize> = const { Cell::new(0) };
    }
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCS.with(|c| c.set(c.get() + 1));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCS.with(|c| c.set(c.get() + 1));
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc;

    /// Allocations made on this thread so far.
    pub(crate) fn allocations() -> usize {
        ALLOCS.with(|c| c.get())
    }

    #[test]
    fn allocation_counter_sees_allocations() {
        let before = allocations();
        let v = std::hint::black_box(vec![1u8; 10]);
        assert_eq!(allocations() - before, 1);
        drop(v);
    }

    pub(crate) fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..=1.0)).collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn frame_count_covers_every_sample() {
        assert_eq!(frames_for_len(0), 0);
        assert_eq!(frames_for_len(1), HALF / HOP + 1);
        for len in [1, 2, HOP, HOP + 1, BLOCK, BLOCK + 1, 3 * BLOCK - 7] {
            let f = frames_for_len(len);
            // The last frame still touches the signal, and the next would not.
            let start = |j: usize| (j * HOP) as isize - HALF as isize;
            assert!(
                start(f - 1) < len as isize,
                "len {len}: frame {} is past the end",
                f - 1
            );
            assert!(
                start(f) >= len as isize,
                "len {len}: frame {f} would still overlap"
            );
        }
    }

    #[test]
    fn roundtrip_reconstructs_every_sample() {
        let mut stft = Stft::new();
        for (len, seed) in [(10 * BLOCK + 1234, 1), (1, 2), (HOP - 1, 3), (N_FFT + 3, 4)] {
            let x = noise(len, seed);
            let s = stft.forward(&x);
            assert_eq!(s.frames(), frames_for_len(len));
            let y = stft.inverse(&s, len);
            let err = max_abs_diff(&x, &y);
            assert!(err < 1e-6, "len {len}: max error {err:e}");
            // Edges are held to the same bound as the interior.
            let edge = len.min(N_FFT);
            assert!(max_abs_diff(&x[..edge], &y[..edge]) < 1e-6);
            assert!(max_abs_diff(&x[len - edge..], &y[len - edge..]) < 1e-6);
        }
        let empty = stft.forward(&[]);
        assert_eq!(empty.frames(), 0);
        assert!(stft.inverse(&empty, 0).is_empty());
    }

    #[test]
    fn window_is_periodic_hann() {
        let w = hann();
        assert_eq!(w.len(), N_FFT);
        // Exact by design: 0.5 − 0.5·cos(0) is 0 in floating point.
        assert_eq!(w[0], 0.0);
        assert!((w[HALF] - 1.0).abs() < 1e-15);
        // Periodic: symmetric about N/2 (a symmetric Hann would be about (N−1)/2).
        for k in 1..HALF {
            assert!((w[k] - w[N_FFT - k]).abs() < 1e-12, "w[{k}]");
        }
    }

    #[test]
    fn forward_matches_direct_dft() {
        let x = noise(3 * HOP + 17, 9);
        let s = Stft::new().forward(&x);
        let w = hann();
        let j = 1; // its window starts before sample 0: checks the zero padding too
        for &k in &[0usize, 1, 37, BINS - 1] {
            let mut acc = (0.0f64, 0.0f64);
            for (n, wn) in w.iter().enumerate() {
                let t = (j * HOP + n) as isize - HALF as isize;
                let v = if t >= 0 && (t as usize) < x.len() {
                    x[t as usize] as f64
                } else {
                    0.0
                };
                let ph = -2.0 * std::f64::consts::PI * (k * n) as f64 / N_FFT as f64;
                acc.0 += v * wn * ph.cos();
                acc.1 += v * wn * ph.sin();
            }
            let got = s.frame(j).unwrap()[k];
            assert!((got.re as f64 - acc.0).abs() < 1e-3 && (got.im as f64 - acc.1).abs() < 1e-3);
        }
    }

    #[test]
    fn unit_mask_is_identity_and_mask_scales() {
        let mut stft = Stft::new();
        let x = noise(2 * BLOCK, 5);
        let mut s = stft.forward(&x);
        let orig = s.clone();
        s.apply_mask(Array2::ones((BINS, s.frames())).view())
            .unwrap();
        assert_eq!(s, orig);
        assert!(max_abs_diff(&stft.inverse(&s, x.len()), &x) < 1e-6);

        let half = Array2::from_elem((BINS, s.frames()), 0.5f32);
        s.apply_mask(half.view()).unwrap();
        let y = stft.inverse(&s, x.len());
        let scaled: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
        assert!(max_abs_diff(&y, &scaled) < 1e-6);

        assert!(matches!(
            s.apply_mask(Array2::ones((BINS, 3)).view()),
            Err(StftError::Shape { .. })
        ));
        assert!(
            s.apply_mask_at(s.frames() - 1, Array2::ones((BINS, 2)).view())
                .is_err()
        );
        assert!(
            s.apply_mask_at(0, Array2::ones((BINS - 1, 2)).view())
                .is_err()
        );
    }

    #[test]
    fn magnitude_is_bins_major() {
        let x = noise(BLOCK, 6);
        let s = Stft::new().forward(&x);
        let m = s.magnitude();
        assert_eq!(m.dim(), (BINS, s.frames()));
        assert_eq!(m[[7, 11]], s.frame(11).unwrap()[7].norm());
        let mut into = Array2::zeros((BINS, s.frames()));
        s.magnitude_into(into.view_mut()).unwrap();
        assert_eq!(into, m);
        assert!(
            s.magnitude_into(Array2::zeros((s.frames(), BINS)).view_mut())
                .is_err()
        );
    }

    #[test]
    fn frames_map_to_blocks_and_block_slices_resynthesise_the_block() {
        for j in [
            0,
            1,
            FRAMES_PER_BLOCK - 1,
            FRAMES_PER_BLOCK,
            5 * FRAMES_PER_BLOCK + 3,
        ] {
            let k = block_of_frame(j);
            let c = frame_centre(j);
            assert!(
                k * BLOCK <= c && c < (k + 1) * BLOCK,
                "frame {j} centre {c} not in block {k}"
            );
            assert!(frames_of_block(k).contains(&j));
        }
        assert_eq!(
            frames_of_block(2),
            2 * FRAMES_PER_BLOCK..3 * FRAMES_PER_BLOCK
        );

        // Block 1's frames, resynthesised on their own, give block 1's samples away from the
        // block edges (where frames of neighbouring blocks also contribute).
        let mut stft = Stft::new();
        let x = noise(3 * BLOCK, 7);
        let s = stft.forward(&x);
        let b1 = s.slice_frames(frames_of_block(1)).unwrap();
        assert_eq!(b1.first_frame(), FRAMES_PER_BLOCK);
        assert_eq!(b1.frames(), FRAMES_PER_BLOCK);
        let y = stft.inverse(&b1, BLOCK);
        assert!(max_abs_diff(&y[HALF..BLOCK - HALF], &x[BLOCK + HALF..2 * BLOCK - HALF]) < 1e-6);

        let mut t = s.clone();
        t.write_frames(FRAMES_PER_BLOCK, &b1).unwrap();
        assert_eq!(t, s);
        assert!(s.slice_frames(0..s.frames() + 1).is_err());
        assert!(t.write_frames(s.frames(), &b1).is_err());
    }

    /// Random chunk sizes including 0 and 1, changing every call.
    fn chunk_sizes(total: usize, seed: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        let mut left = total;
        while left > 0 {
            let n = match rng.random_range(0..10) {
                0 => 0,
                1 => 1,
                2 => rng.random_range(2000..5000),
                _ => rng.random_range(2..600),
            }
            .min(left);
            out.push(n);
            left -= n;
        }
        out
    }

    #[test]
    fn streaming_equals_whole_buffer() {
        let mut stft = Stft::new();
        for (len, seed) in [(2 * BLOCK + 999, 11u64), (HOP + 3, 12), (7, 13)] {
            let x = noise(len, seed);
            let whole = stft.forward(&x);
            let whole_y = stft.inverse(&whole, len);

            let mut ana = StreamingStft::new();
            let mut syn = StreamingIstft::new();
            let mut frames = Spectrogram::zeros(0, whole.frames());
            let mut y = Vec::with_capacity(len + N_FFT);
            let mut pushed = 0;
            let sink = |y: &mut Vec<f32>, i: usize, s: &[f32]| {
                assert_eq!(i, y.len(), "samples must arrive contiguous");
                y.extend_from_slice(s);
            };
            for n in chunk_sizes(len, seed) {
                ana.push(&x[pushed..pushed + n], |j, bins| {
                    frames.frame_mut(j).unwrap().copy_from_slice(bins);
                    syn.push_frame(j, bins, |i, s| sink(&mut y, i, s)).unwrap();
                });
                pushed += n;
                // The documented latency bounds: frames and samples are never held back longer.
                assert!(
                    ana.next_frame() * HOP + HALF > pushed,
                    "a complete frame was held back"
                );
                if ana.next_frame() > 0 {
                    assert!(
                        (ana.next_frame() - 1) * HOP + HALF <= pushed,
                        "frame emitted early"
                    );
                }
                assert!(
                    y.len() + STREAM_LATENCY >= pushed,
                    "{} + {STREAM_LATENCY} < {pushed}",
                    y.len()
                );
            }
            ana.flush(|j, bins| {
                frames.frame_mut(j).unwrap().copy_from_slice(bins);
                syn.push_frame(j, bins, |i, s| sink(&mut y, i, s)).unwrap();
            });
            syn.flush(|i, s| sink(&mut y, i, s));
            assert_eq!(frames, whole, "len {len}");
            assert!(y.len() >= len);
            assert!(max_abs_diff(&y[..len], &whole_y) < 1e-6, "len {len}");
            assert!(max_abs_diff(&y[..len], &x) < 1e-6, "len {len}");
        }
    }

    #[test]
    fn streaming_rejects_bad_frames_and_restarts_after_reset() {
        let mut syn = StreamingIstft::new();
        let bins = vec![Complex32::new(0.0, 0.0); BINS];
        assert_eq!(
            syn.push_frame(1, &bins, |_, _| {}),
            Err(StftError::FrameOrder {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            syn.push_frame(0, &bins[1..], |_, _| {}),
            Err(StftError::FrameLength { got: BINS - 1 })
        );
        syn.push_frame(0, &bins, |_, _| {}).unwrap();
        syn.reset();
        assert_eq!(syn.next_frame(), 0);

        let x = noise(3000, 21);
        let mut ana = StreamingStft::new();
        let mut first = Vec::new();
        ana.push(&x, |j, b| first.push((j, b.to_vec())));
        ana.reset();
        let mut second = Vec::new();
        ana.push(&x, |j, b| second.push((j, b.to_vec())));
        assert_eq!(first, second);
        assert_eq!(ana.latency() + syn.latency() + HOP - 1, STREAM_LATENCY);
    }

    #[test]
    fn streaming_push_does_not_allocate() {
        let x = noise(20_000, 31);
        let mut ana = StreamingStft::new();
        let mut syn = StreamingIstft::new();
        let mut sum = 0.0f32;
        let before = allocations();
        for chunk in x.chunks(333) {
            ana.push(chunk, |j, bins| {
                syn.push_frame(j, bins, |_, s| sum += s.iter().sum::<f32>())
                    .unwrap();
            });
        }
        ana.flush(|j, bins| syn.push_frame(j, bins, |_, s| sum += s[0]).unwrap());
        syn.flush(|_, s| sum += s[0]);
        assert_eq!(allocations() - before, 0);
        assert!(sum.is_finite());
    }
}
