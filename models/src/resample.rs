//! Sample-rate conversion between a host rate and the model rate ([`crate::spec::SAMPLE_RATE`]).
//!
//! Engine: rubato's synchronous FFT resampler (`FftFixedInOut`). It filters with a windowed
//! sinc (Blackman-Harris²) as long as one processing chunk, in the frequency domain, so a long,
//! high-rejection anti-aliasing filter costs a few FFTs per chunk. Chunks are whole multiples of
//! the rate pair's reduced ratio, so the conversion is exact (no drift) and the delay is a whole
//! number of output samples:
//!
//! * chunk: `input_chunk()` samples in, `output_chunk()` samples out; each is at least
//!   [`FILTER_LEN`] (sets the filter length, hence the transition band) and even;
//! * delay: the sinc is centred half a chunk in, so output sample `m` of a stream sits at input
//!   time `(m − latency()) / to` seconds with `latency() = output_chunk() / 2`, exactly.
//!
//! Rate pairs with a large reduced ratio (e.g. 44 101 Hz) still work, with chunks (and delay) of
//! up to about one second.

use rubato::{FftFixedInOut, Resampler};

/// Lowest host rate accepted.
pub const MIN_RATE: u32 = 8_000;
/// Highest host rate accepted.
pub const MAX_RATE: u32 = 192_000;
/// Minimum chunk length on the slower side, in samples: the anti-aliasing sinc spans one input
/// chunk. 1024 puts the −3 dB point near 0.99 of the lower Nyquist with deep stop-band rejection,
/// at a delay of about 12 ms at 44.1 kHz.
pub const FILTER_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("sample rate {0} Hz is not supported (must be {MIN_RATE}..={MAX_RATE} Hz)")]
    UnsupportedRate(u32),
    #[error("a resampler needs at least one channel")]
    NoChannels,
    #[error("expected {expected} channels, got {got}")]
    ChannelCount { expected: usize, got: usize },
    #[error("channel buffers differ in length")]
    RaggedInput,
    #[error("output buffer holds {got} samples per channel, {needed} needed")]
    OutputTooSmall { needed: usize, got: usize },
    #[error("resampler engine: {0}")]
    Engine(String),
}

fn check_rate(rate: u32) -> Result<(), ResampleError> {
    if (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(ResampleError::UnsupportedRate(rate))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `round(len · to / from)`, the length of a resampled buffer.
pub fn resampled_len(len: usize, from: u32, to: u32) -> usize {
    ((len as u128 * to as u128 + from as u128 / 2) / from as u128) as usize
}

/// Streaming resampler for host buffers of any (changing) size, planar channels.
///
/// Input is collected into fixed chunks; each completed chunk yields `output_chunk()` samples
/// per channel. Output stream sample `m` (counted from construction or the last
/// [`reset`](Self::reset)/[`flush`](Self::flush)) is aligned with input time
/// `(m − latency()) / to`. In real time, output arrives in bursts: after `P` input samples,
/// `floor(P / input_chunk()) · output_chunk()` are out, so a consumer that must never run dry
/// should delay by `latency() + output_chunk()` output samples. Pushing never allocates.
pub struct StreamResampler {
    from: u32,
    to: u32,
    channels: usize,
    /// None when `from == to` (plain copy, no delay).
    engine: Option<FftFixedInOut<f32>>,
    chunk_in: usize,
    chunk_out: usize,
    in_buf: Vec<Vec<f32>>,
    out_buf: Vec<Vec<f32>>,
    filled: usize,
    pushed: u64,
    emitted: u64,
}

impl StreamResampler {
    /// Converts `from` Hz to `to` Hz for `channels` channels; both rates must be in
    /// [`MIN_RATE`]`..=`[`MAX_RATE`].
    pub fn new(from: u32, to: u32, channels: usize) -> Result<Self, ResampleError> {
        check_rate(from)?;
        check_rate(to)?;
        if channels == 0 {
            return Err(ResampleError::NoChannels);
        }
        let (engine, chunk_in, chunk_out) = if from == to {
            (None, 1, 1)
        } else {
            let g = gcd(from as u64, to as u64) as usize;
            let (in_g, out_g) = (from as usize / g, to as usize / g);
            let mut k = FILTER_LEN.div_ceil(in_g.min(out_g));
            // Both chunks even: the sinc's centre (input chunk / 2) then maps to a whole
            // output sample (output chunk / 2).
            if (k * in_g) % 2 == 1 || (k * out_g) % 2 == 1 {
                k += 1;
            }
            let (chunk_in, chunk_out) = (k * in_g, k * out_g);
            let engine = FftFixedInOut::<f32>::new(from as usize, to as usize, chunk_in, channels)
                .map_err(|e| ResampleError::Engine(e.to_string()))?;
            if engine.input_frames_next() != chunk_in || engine.output_frames_next() != chunk_out {
                return Err(ResampleError::Engine(format!(
                    "engine chose chunks {}/{}, expected {chunk_in}/{chunk_out}",
                    engine.input_frames_next(),
                    engine.output_frames_next()
                )));
            }
            (Some(engine), chunk_in, chunk_out)
        };
        Ok(Self {
            from,
            to,
            channels,
            engine,
            chunk_in,
            chunk_out,
            in_buf: vec![vec![0.0; chunk_in]; channels],
            out_buf: vec![vec![0.0; chunk_out]; channels],
            filled: 0,
            pushed: 0,
            emitted: 0,
        })
    }

    pub fn from_rate(&self) -> u32 {
        self.from
    }

    pub fn to_rate(&self) -> u32 {
        self.to
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Filter delay in output samples (see the type's docs); 0 when the rates are equal.
    pub fn latency(&self) -> usize {
        if self.engine.is_some() {
            self.chunk_out / 2
        } else {
            0
        }
    }

    /// Input samples per channel consumed by each engine run.
    pub fn input_chunk(&self) -> usize {
        self.chunk_in
    }

    /// Output samples per channel produced by each engine run.
    pub fn output_chunk(&self) -> usize {
        self.chunk_out
    }

    /// Exactly how many samples per channel the next [`push`](Self::push) of `input_len`
    /// samples writes.
    pub fn output_len_for(&self, input_len: usize) -> usize {
        (self.filled + input_len) / self.chunk_in * self.chunk_out
    }

    /// Upper bound on what one push of at most `max_input` samples writes, whatever the state:
    /// size output buffers with this once.
    pub fn max_output_len(&self, max_input: usize) -> usize {
        // At most chunk_in − 1 samples wait from earlier pushes.
        max_input.div_ceil(self.chunk_in) * self.chunk_out
    }

    /// Exactly how many samples per channel [`flush`](Self::flush) writes now.
    pub fn flush_len(&self) -> usize {
        let target = self.flush_target();
        (target.saturating_sub(self.emitted)).div_ceil(self.chunk_out as u64) as usize
            * self.chunk_out
    }

    /// Upper bound on [`flush_len`](Self::flush_len) in any state: half a chunk of delay plus
    /// at most one chunk of pending input, rounded up to whole chunks.
    pub fn max_flush_len(&self) -> usize {
        if self.engine.is_some() {
            2 * self.chunk_out
        } else {
            0
        }
    }

    /// Output count (since reset) that covers every pushed input sample, delay included.
    fn flush_target(&self) -> u64 {
        if self.engine.is_none() || self.pushed == 0 {
            return 0;
        }
        let aligned = (self.pushed as u128 * self.to as u128).div_ceil(self.from as u128) as u64;
        self.latency() as u64 + aligned
    }

    /// Feeds `input` (one slice per channel, equal lengths, any length including 0) and writes
    /// the finished output to the front of each `output` channel, returning how many samples per
    /// channel were written ([`output_len_for`](Self::output_len_for)). Nothing is consumed on
    /// error.
    pub fn push<I: AsRef<[f32]>, O: AsMut<[f32]>>(
        &mut self,
        input: &[I],
        output: &mut [O],
    ) -> Result<usize, ResampleError> {
        let n = self.check_input(input)?;
        let needed = self.output_len_for(n);
        self.check_output(output, needed)?;
        if self.engine.is_none() {
            for (i, o) in input.iter().zip(output.iter_mut()) {
                o.as_mut()[..n].copy_from_slice(i.as_ref());
            }
            return Ok(n);
        }
        let (mut consumed, mut written) = (0, 0);
        while consumed < n {
            let take = (self.chunk_in - self.filled).min(n - consumed);
            for (buf, i) in self.in_buf.iter_mut().zip(input) {
                buf[self.filled..self.filled + take]
                    .copy_from_slice(&i.as_ref()[consumed..consumed + take]);
            }
            self.filled += take;
            consumed += take;
            if self.filled == self.chunk_in {
                self.run_chunk(output, written)?;
                written += self.chunk_out;
            }
        }
        self.pushed += n as u64;
        Ok(written)
    }

    /// End of stream: zero-pads and writes out everything still inside the filter
    /// ([`flush_len`](Self::flush_len) samples per channel, covering every pushed sample), then
    /// resets. Returns the count written.
    pub fn flush<O: AsMut<[f32]>>(&mut self, output: &mut [O]) -> Result<usize, ResampleError> {
        let needed = self.flush_len();
        self.check_output(output, needed)?;
        let mut written = 0;
        while written < needed {
            for buf in &mut self.in_buf {
                buf[self.filled..].fill(0.0);
            }
            self.filled = self.chunk_in;
            self.run_chunk(output, written)?;
            written += self.chunk_out;
        }
        self.reset();
        Ok(written)
    }

    /// Drops all buffered audio and filter state (transport stop or seek).
    pub fn reset(&mut self) {
        if let Some(engine) = &mut self.engine {
            engine.reset();
        }
        self.in_buf.iter_mut().for_each(|b| b.fill(0.0));
        self.filled = 0;
        self.pushed = 0;
        self.emitted = 0;
    }

    fn run_chunk<O: AsMut<[f32]>>(
        &mut self,
        output: &mut [O],
        at: usize,
    ) -> Result<(), ResampleError> {
        if let Some(engine) = &mut self.engine {
            engine
                .process_into_buffer(&self.in_buf, &mut self.out_buf, None)
                .map_err(|e| ResampleError::Engine(e.to_string()))?;
        }
        for (o, b) in output.iter_mut().zip(&self.out_buf) {
            o.as_mut()[at..at + self.chunk_out].copy_from_slice(b);
        }
        self.filled = 0;
        self.emitted += self.chunk_out as u64;
        Ok(())
    }

    fn check_input<I: AsRef<[f32]>>(&self, input: &[I]) -> Result<usize, ResampleError> {
        if input.len() != self.channels {
            return Err(ResampleError::ChannelCount {
                expected: self.channels,
                got: input.len(),
            });
        }
        let n = input[0].as_ref().len();
        if input.iter().any(|c| c.as_ref().len() != n) {
            return Err(ResampleError::RaggedInput);
        }
        Ok(n)
    }

    fn check_output<O: AsMut<[f32]>>(
        &self,
        output: &mut [O],
        needed: usize,
    ) -> Result<(), ResampleError> {
        if output.len() != self.channels {
            return Err(ResampleError::ChannelCount {
                expected: self.channels,
                got: output.len(),
            });
        }
        if let Some(got) = output
            .iter_mut()
            .map(|o| o.as_mut().len())
            .find(|&l| l < needed)
        {
            return Err(ResampleError::OutputTooSmall { needed, got });
        }
        Ok(())
    }
}

/// Resamples planar channels from `from` Hz to `to` Hz. Each output channel has
/// [`resampled_len`] samples and is time-aligned with its input (the filter delay removed).
pub fn resample_planar<C: AsRef<[f32]>>(
    channels: &[C],
    from: u32,
    to: u32,
) -> Result<Vec<Vec<f32>>, ResampleError> {
    let mut rs = StreamResampler::new(from, to, channels.len())?;
    let n = rs.check_input(channels)?;
    if from == to {
        return Ok(channels.iter().map(|c| c.as_ref().to_vec()).collect());
    }
    let pushed = rs.output_len_for(n);
    let mut out = vec![vec![0.0f32; pushed]; channels.len()];
    rs.push(channels, &mut out)?;
    let tail = rs.flush_len();
    out.iter_mut().for_each(|o| o.resize(pushed + tail, 0.0));
    let mut tails: Vec<&mut [f32]> = out.iter_mut().map(|o| &mut o[pushed..]).collect();
    rs.flush(&mut tails)?;
    let (delay, len) = (rs.latency(), resampled_len(n, from, to));
    for o in &mut out {
        o.drain(..delay.min(o.len()));
        o.truncate(len);
    }
    Ok(out)
}

/// Resamples one channel; see [`resample_planar`].
pub fn resample(x: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    Ok(resample_planar(&[x], from, to)?.pop().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SAMPLE_RATE;
    use crate::stft::tests::{allocations, noise};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const HOSTS: [u32; 7] = [8_000, 16_000, 22_050, 32_000, 48_000, 96_000, 192_000];

    fn sine(freq: f64, amp: f64, rate: u32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|n| {
                (amp * (2.0 * std::f64::consts::PI * freq * n as f64 / rate as f64).sin()) as f32
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    /// Middle 80 %, away from the start/end transients of a sine switched on and off.
    fn middle(x: &[f32]) -> &[f32] {
        &x[x.len() / 10..x.len() * 9 / 10]
    }

    /// Frequency from the interpolated positions of the first and last rising zero crossings.
    fn zero_crossing_freq(x: &[f32], rate: u32) -> f64 {
        let crossings: Vec<f64> = x
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
            .map(|(i, w)| i as f64 + w[0] as f64 / (w[0] as f64 - w[1] as f64))
            .collect();
        let (first, last) = (crossings[0], crossings[crossings.len() - 1]);
        (crossings.len() - 1) as f64 * rate as f64 / (last - first)
    }

    fn pairs() -> Vec<(u32, u32)> {
        HOSTS
            .iter()
            .flat_map(|&h| [(h, SAMPLE_RATE), (SAMPLE_RATE, h)])
            .collect()
    }

    #[test]
    fn sine_keeps_frequency_level_and_time_alignment() {
        for (from, to) in pairs() {
            let (freq, amp) = (997.0, 0.5);
            let x = sine(freq, amp, from, from as usize); // 1 s
            let y = resample(&x, from, to).unwrap();
            assert_eq!(y.len(), to as usize);
            let ideal = sine(freq, amp, to, y.len());
            let (ym, im) = (middle(&y), middle(&ideal));
            let f = zero_crossing_freq(ym, to);
            assert!((f / freq - 1.0).abs() < 1e-4, "{from}->{to}: frequency {f}");
            let level = db(rms(ym) / rms(im));
            assert!(level.abs() < 0.1, "{from}->{to}: level {level} dB");
            // Sample-by-sample match with the ideal sine: the delay is compensated exactly.
            let err = ym
                .iter()
                .zip(im)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                err < 1e-4,
                "{from}->{to}: max error {err} against the ideal sine"
            );
        }
    }

    #[test]
    fn downsampling_rejects_aliases_and_keeps_the_passband() {
        for (from, keep, alias) in [
            (48_000, 19_000.0, 23_000.0),
            (96_000, 19_000.0, 30_000.0),
            (192_000, 19_000.0, 70_000.0),
        ] {
            let x = sine(keep, 0.5, from, from as usize);
            let y = resample(&x, from, SAMPLE_RATE).unwrap();
            let level = db(rms(middle(&y)) / rms(middle(&x)));
            assert!(level.abs() < 0.1, "{from}: {keep} Hz changed by {level} dB");

            let x = sine(alias, 0.5, from, from as usize);
            let y = resample(&x, from, SAMPLE_RATE).unwrap();
            let level = db(rms(middle(&y)) / rms(middle(&x)));
            assert!(level < -100.0, "{from}: {alias} Hz aliases at {level} dB");
        }
        // Upsampling adds no images: white noise at 22.05 kHz keeps its level at 48 kHz.
        let x = noise(SAMPLE_RATE as usize, 3);
        let y = resample(&x, SAMPLE_RATE, 48_000).unwrap();
        let level = db(rms(middle(&y)) / rms(middle(&x)));
        assert!(level.abs() < 0.2, "noise level changed by {level} dB");
    }

    #[test]
    fn impulse_comes_out_exactly_latency_late() {
        for (from, to) in [
            (48_000u32, SAMPLE_RATE),
            (SAMPLE_RATE, 96_000),
            (SAMPLE_RATE, 8_000),
        ] {
            let g = gcd(from as u64, to as u64) as usize;
            // An input sample that lands exactly on an output sample.
            let at_in = 7 * from as usize / g;
            let at_out = 7 * to as usize / g;
            let mut x = vec![0.0f32; 4 * from as usize / 10];
            x[at_in] = 1.0;
            let mut rs = StreamResampler::new(from, to, 1).unwrap();
            let mut raw = vec![0.0f32; rs.output_len_for(x.len())];
            let n = rs.push(&[&x], &mut [&mut raw]).unwrap();
            assert_eq!(n, raw.len());
            let peak = raw
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(peak, at_out + rs.latency(), "{from}->{to}");
            // Symmetric around the peak: the filter is linear-phase and centred there.
            for d in 1..20 {
                assert!(
                    (raw[peak - d] - raw[peak + d]).abs() < 1e-4,
                    "{from}->{to}: asymmetric at {d}"
                );
            }
        }
    }

    #[test]
    fn lengths_and_identity() {
        for (from, to) in pairs() {
            for len in [0usize, 1, 2, 999, 44_101] {
                let y = resample(&vec![0.25; len], from, to).unwrap();
                assert_eq!(
                    y.len(),
                    resampled_len(len, from, to),
                    "{from}->{to} len {len}"
                );
            }
        }
        assert_eq!(resampled_len(3, 48_000, 44_100), 3); // 2.756 rounds up
        assert_eq!(resampled_len(1000, 44_100, 8_000), 181); // 181.4 rounds down
        let x = noise(5000, 8);
        assert_eq!(resample(&x, 48_000, 48_000).unwrap(), x);
        let mut rs = StreamResampler::new(96_000, 96_000, 1).unwrap();
        assert_eq!(rs.latency(), 0);
        let mut out = vec![0.0; 100];
        assert_eq!(rs.push(&[&x[..100]], &mut [&mut out]).unwrap(), 100);
        assert_eq!(out, x[..100]);
        // Roundtrip through the model rate is transparent for band-limited audio.
        let s = sine(3000.0, 0.7, 48_000, 48_000);
        let back = resample(
            &resample(&s, 48_000, SAMPLE_RATE).unwrap(),
            SAMPLE_RATE,
            48_000,
        )
        .unwrap();
        let err = middle(&back)
            .iter()
            .zip(middle(&s))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-4, "48k->44.1k->48k error {err}");
    }

    #[test]
    fn streaming_equals_whole_buffer_for_random_chunks() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        for (from, to) in [
            (48_000, SAMPLE_RATE),
            (SAMPLE_RATE, 48_000),
            (192_000, SAMPLE_RATE),
            (SAMPLE_RATE, 22_050),
            (8_000, SAMPLE_RATE),
        ] {
            let len = from as usize / 2 + 77;
            let (l, r) = (noise(len, 1), noise(len, 2));
            let whole = resample_planar(&[&l, &r], from, to).unwrap();

            let mut rs = StreamResampler::new(from, to, 2).unwrap();
            let max_push = 5000;
            let mut buf =
                vec![vec![0.0f32; rs.max_output_len(max_push).max(rs.output_chunk() * 2)]; 2];
            let mut got = [Vec::new(), Vec::new()];
            let mut pos = 0;
            while pos < len {
                let n = match rng.random_range(0..8) {
                    0 => 0,
                    1 => 1,
                    _ => rng.random_range(2..=max_push),
                }
                .min(len - pos);
                let expect = rs.output_len_for(n);
                assert!(expect <= rs.max_output_len(max_push));
                let w = rs
                    .push(&[&l[pos..pos + n], &r[pos..pos + n]], &mut buf)
                    .unwrap();
                assert_eq!(w, expect);
                for c in 0..2 {
                    got[c].extend_from_slice(&buf[c][..w]);
                }
                pos += n;
            }
            let tail = rs.flush_len();
            assert!(tail <= rs.max_flush_len());
            buf.iter_mut()
                .for_each(|b| b.resize(tail.max(b.len()), 0.0));
            let w = rs.flush(&mut buf).unwrap();
            assert_eq!(w, tail);
            for c in 0..2 {
                got[c].extend_from_slice(&buf[c][..w]);
                let lat = rs.latency();
                let aligned = &got[c][lat..lat + whole[c].len()];
                let err = aligned
                    .iter()
                    .zip(&whole[c])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(err <= 1e-7, "{from}->{to} channel {c}: {err}");
            }
            // flush reset the stream: the same input gives the same output again.
            let mut again = vec![vec![0.0f32; rs.output_len_for(len)]; 2];
            rs.push(&[&l, &r], &mut again).unwrap();
            // Exact by design: a reset stream runs the same arithmetic on the same samples.
            assert_eq!(again[0][..], got[0][..again[0].len()]);
        }
    }

    #[test]
    fn bad_rates_and_buffers_are_errors() {
        for (from, to) in [
            (0, SAMPLE_RATE),
            (7_999, SAMPLE_RATE),
            (SAMPLE_RATE, 192_001),
            (SAMPLE_RATE, 384_000),
        ] {
            assert!(matches!(
                resample(&[0.0; 10], from, to),
                Err(ResampleError::UnsupportedRate(_))
            ));
            assert!(matches!(
                StreamResampler::new(from, to, 2),
                Err(ResampleError::UnsupportedRate(_))
            ));
        }
        assert!(matches!(
            StreamResampler::new(48_000, SAMPLE_RATE, 0),
            Err(ResampleError::NoChannels)
        ));
        let mut rs = StreamResampler::new(48_000, SAMPLE_RATE, 2).unwrap();
        let x = vec![0.0f32; 4000];
        let mut out = vec![vec![0.0f32; 4000]; 2];
        assert!(matches!(
            rs.push(&[&x], &mut out),
            Err(ResampleError::ChannelCount { .. })
        ));
        assert!(matches!(
            rs.push(&[&x[..], &x[..10]], &mut out),
            Err(ResampleError::RaggedInput)
        ));
        let mut small = vec![vec![0.0f32; 10]; 2];
        assert!(matches!(
            rs.push(&[&x, &x], &mut small),
            Err(ResampleError::OutputTooSmall { .. })
        ));
        // Nothing was consumed by the failed calls.
        assert_eq!(rs.output_len_for(0), 0);
        // An odd host rate works, with a long chunk.
        let odd = StreamResampler::new(44_101, SAMPLE_RATE, 1).unwrap();
        assert!(odd.latency() > 0);
    }

    #[test]
    fn push_and_flush_do_not_allocate() {
        let x = noise(48_000, 4);
        let mut rs = StreamResampler::new(48_000, SAMPLE_RATE, 2).unwrap();
        let mut out = vec![vec![0.0f32; rs.max_output_len(1000).max(rs.max_flush_len())]; 2];
        let before = allocations();
        for chunk in x.chunks(997) {
            rs.push(&[chunk, chunk], &mut out).unwrap();
        }
        rs.flush(&mut out).unwrap();
        assert_eq!(allocations() - before, 0);
    }
}
