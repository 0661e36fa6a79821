//! The plugin's one fixed latency, in host samples.
//!
//! The worker's pipeline is: host rate → 44.1 kHz ([`StreamResampler`]) → [`EmbedStream`] →
//! 44.1 kHz → host rate. Each stage is exact and time-invariant, so pipeline output sample `k`
//! (host rate) is input sample `k − group` with `group = a_out + a_in·rate/44 100`, an integer:
//! the resampler's delay `a_in = chunk_out/2` is a whole multiple of the reduced ratio's 44.1 kHz
//! term (its chunks are even multiples of it). Output is produced in bursts (resampler chunks,
//! whole 2 s blocks), so after `p` input samples at least `p − backlog` are out. The audio thread
//! can only hand this call's input to the worker after the call, so it reads output made from
//! earlier calls: the latency must cover `group + backlog + one host buffer`, plus time for the
//! worker to run the model once a block is complete ([`WORKER_SLACK_SECONDS`]).
//!
//! [`StreamResampler`]: stemmark_models::resample::StreamResampler
//! [`EmbedStream`]: stemmark_models::embed_stream::EmbedStream

use stemmark_models::embed_stream::LATENCY as STREAM_LATENCY;
use stemmark_models::resample::StreamResampler;
use stemmark_models::spec::SAMPLE_RATE;

/// Time the worker gets to mark a completed block before its first samples are due. The
/// embedder must run well inside this (the target is ~10 ms per block); it also absorbs the
/// worker's wake-up and scheduling jitter.
pub const WORKER_SLACK_SECONDS: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Reported to the host: output sample n is input sample n − total, plus the mark.
    pub total: usize,
    /// The pipeline's own alignment delay (resamplers), host samples; dropped from the start of
    /// every pipeline run.
    pub group: usize,
    /// Input resampler's delay, 44.1 kHz samples (for the block grid).
    pub resampler_in: usize,
    /// How far ahead of its input the worker must have output ready: one host buffer plus the
    /// worker slack. Unmarked output is written only this far ahead, so a key that arrives
    /// later can still mark everything not yet due.
    pub handoff: usize,
}

/// Latency at host `rate` with host buffers of at most `max_buffer` samples.
pub fn latency(rate: u32, max_buffer: usize) -> Result<Latency, String> {
    let to_model = StreamResampler::new(rate, SAMPLE_RATE, 1).map_err(|e| e.to_string())?;
    let to_host = StreamResampler::new(SAMPLE_RATE, rate, 1).map_err(|e| e.to_string())?;
    let a_in = to_model.latency();
    let scaled = a_in as u64 * rate as u64;
    if !scaled.is_multiple_of(SAMPLE_RATE as u64) {
        return Err(format!(
            "resampler delay {a_in} is not a whole number of {rate} Hz samples"
        ));
    }
    let group = to_host.latency() + (scaled / SAMPLE_RATE as u64) as usize;
    // Input resampler: up to chunk − 1 host samples wait for a chunk. Stream: every sample is out
    // STREAM_LATENCY samples after it went in. Output resampler: up to chunk − 1 model-rate
    // samples wait. The +2 covers rounding in the rate conversions.
    let model_side = (STREAM_LATENCY + to_host.input_chunk() - 1) as u64;
    let backlog = to_model.input_chunk() - 1
        + (model_side * rate as u64).div_ceil(SAMPLE_RATE as u64) as usize
        + 2;
    let slack = (WORKER_SLACK_SECONDS * rate as f64).ceil() as usize;
    let handoff = max_buffer.max(1) + slack;
    Ok(Latency {
        total: group + backlog + handoff,
        group,
        resampler_in: a_in,
        handoff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_one_block_plus_lookahead_plus_slack() {
        let l = latency(44_100, 512).unwrap();
        assert_eq!(l.group, 0);
        assert_eq!(l.total, STREAM_LATENCY + 2 + 512 + 4410);
        for rate in [22_050, 32_000, 48_000, 88_200, 96_000, 192_000, 44_101] {
            let l = latency(rate, 1024).unwrap();
            assert!(l.total > l.group + 2 * rate as usize, "{rate}: {l:?}");
        }
    }
}
