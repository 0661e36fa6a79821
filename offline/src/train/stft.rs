//! Training-side STFT/iSTFT in libtorch, on the runtime's framing (`stemmark_models::stft`):
//! frame `j` centred on sample `j·HOP`, zeros outside the signal, periodic Hann, unnormalised
//! forward transform, and synthesis by weighted overlap-add divided by the summed squared window.
//! Everything is differentiable and stays on the tensors' device.
//!
//! `Tensor::stft` with `center=true` errors in libtorch 2.11, so the signal is zero-padded here
//! and transformed with `center=false`.

use stemmark_models::spec::{HOP, N_FFT};
use stemmark_models::stft::frames_for_len;
use tch::{Kind, Tensor};

const HALF: i64 = (N_FFT / 2) as i64;
/// Below this summed squared window a sample counts as uncovered (as in the runtime).
const MIN_WEIGHT: f64 = 1e-6;

fn window(x: &Tensor) -> Tensor {
    Tensor::hann_window_periodic(N_FFT as i64, true, (Kind::Float, x.device()))
}

/// Complex spectrogram `[B, BINS, frames]` of `x` `[B, len]`, with the runtime's frame count
/// (`frames_for_len(len)`).
pub fn stft(x: &Tensor) -> Tensor {
    let len = x.size().last().copied().unwrap_or(0) as usize;
    let frames = frames_for_len(len) as i64;
    let total = (frames - 1) * HOP as i64 + N_FFT as i64;
    let right = total - HALF - len as i64;
    let padded = x.constant_pad_nd([HALF, right]);
    padded.stft(
        N_FFT as i64,
        HOP as i64,
        N_FFT as i64,
        Some(window(x)),
        false,
        true,
        true,
        false,
    )
}

/// Magnitude `[B, BINS, frames]` of `x` `[B, len]`.
pub fn magnitude(x: &Tensor) -> Tensor {
    stft(x).abs()
}

/// `len` samples `[B, len]` from a complex spectrogram `[B, BINS, frames]` whose first frame is
/// centred on sample 0. Samples no frame covers are 0.
pub fn istft(spec: &Tensor, len: i64) -> Tensor {
    let frames = spec.size()[2];
    let w = window(spec);
    // [B, N_FFT, frames] of windowed time-domain frames.
    let y = spec.fft_irfft(N_FFT as i64, 1, "backward") * w.view([1, -1, 1]);
    let total = (frames - 1) * HOP as i64 + N_FFT as i64;
    let fold = |cols: &Tensor| {
        // [B, N_FFT, frames] columns → [B, 1, 1, total], summing overlaps.
        cols.contiguous()
            .col2im(
                [1, total],
                [1, N_FFT as i64],
                [1, 1],
                [0, 0],
                [1, HOP as i64],
            )
            .flatten(1, -1)
    };
    let acc = fold(&y);
    let weight = fold(
        &(&w * &w)
            .view([1, -1, 1])
            .expand([1, N_FFT as i64, frames], false),
    );
    let covered = weight.gt(MIN_WEIGHT);
    let out = acc / weight.clamp_min(MIN_WEIGHT) * covered.to_kind(Kind::Float);
    let avail = (total - HALF).min(len);
    let out = out.narrow(1, HALF, avail.max(0));
    if avail < len {
        out.constant_pad_nd([0, len - avail])
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stemmark_models::spec::BINS;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn stft_matches_runtime() {
        for len in [5000usize, 4321] {
            let x = noise(len, len as u64);
            let spec = stemmark_models::stft::Stft::new().forward(&x);
            let t = stft(&Tensor::from_slice(&x).view([1, -1]));
            assert_eq!(t.size(), [1, BINS as i64, spec.frames() as i64]);
            let t = t.squeeze_dim(0).transpose(0, 1).contiguous(); // [frames, BINS]
            let re = Vec::<f32>::try_from(t.real().flatten(0, -1)).unwrap();
            let im = Vec::<f32>::try_from(t.imag().flatten(0, -1)).unwrap();
            let mut worst = 0f32;
            for (i, c) in spec.as_slice().iter().enumerate() {
                worst = worst.max((c.re - re[i]).abs()).max((c.im - im[i]).abs());
            }
            let peak = spec
                .as_slice()
                .iter()
                .map(|c| c.norm())
                .fold(0f32, f32::max);
            eprintln!(
                "len {len}: STFT max diff {worst:.2e}, relative to the peak {:.2e}",
                worst / peak
            );
            assert!(worst < 1e-5, "len {len}: max diff {worst} (peak {peak})");
        }
    }

    #[test]
    fn istft_reconstructs() {
        let len = 6000;
        let x = Tensor::from_slice(&noise(2 * len, 7)).view([2, len as i64]);
        let y = istft(&stft(&x), len as i64);
        let diff = f64::try_from((&y - &x).abs().max()).unwrap();
        assert!(diff < 1e-5, "round trip max diff {diff}");
        // Same as the runtime's iSTFT of the same spectrum.
        let row = Vec::<f32>::try_from(x.get(0)).unwrap();
        let mut rt = stemmark_models::stft::Stft::new();
        let spec = rt.forward(&row);
        let back = rt.inverse(&spec, len);
        let ours = Vec::<f32>::try_from(y.get(0)).unwrap();
        let worst = back
            .iter()
            .zip(&ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "vs runtime iSTFT: {worst}");
    }

    #[test]
    fn stft_has_gradients() {
        let x = Tensor::from_slice(&noise(3000, 3))
            .view([1, -1])
            .set_requires_grad(true);
        let y = istft(&(stft(&x) * 0.5), 3000);
        y.sum(Kind::Float).backward();
        let g = f64::try_from(x.grad().abs().sum(Kind::Float)).unwrap();
        assert!(g > 0.0);
    }
}
