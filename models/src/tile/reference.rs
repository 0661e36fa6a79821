//! Whole-signal embedding and reading with the tile channel, in plain Rust: the reference the
//! ONNX models are held to, and the tests' way to exercise the channel end to end.
//!
//! Block k of the signal is grid block k. The embedder's mask comes from the mid's STFT over the
//! whole signal (each block's frames); the detector reads each block on its own (its samples,
//! zeros outside), as the detector model does.

use ndarray::Array2;

use super::embed;
use super::{BlockFeature, Params, Patterns, TileError};
use crate::keys::Key;
use crate::payload;
use crate::spec::{BLOCK, FRAMES_PER_BLOCK};
use crate::stft::Stft;

/// The mid (mean of the channels) of planar audio.
pub fn mid(channels: &[Vec<f32>]) -> Vec<f32> {
    let n = channels[0].len();
    let k = channels.len() as f32;
    (0..n)
        .map(|i| channels.iter().map(|c| c[i]).sum::<f32>() / k)
        .collect()
}

/// `channels` (planar, 44.1 kHz, equal lengths) with every whole block marked with `key` and the
/// stem's `word` (block k carries its payload code bits for k under the key's mask k,
/// [`payload::block_word`]); a trailing partial block is left unmarked.
pub fn embed(
    channels: &[Vec<f32>],
    key: &Key,
    word: u32,
    params: &Params,
) -> Result<Vec<Vec<f32>>, TileError> {
    embed_messages(channels, key, |b| payload::to_bipolar(payload::block_word(word, key, b)), params)
}

/// [`embed`] with block k's ±1 message (already under its mask) given by `message(k)`.
pub fn embed_messages(
    channels: &[Vec<f32>],
    key: &Key,
    message: impl Fn(i64) -> [f32; crate::spec::MESSAGE_BITS],
    params: &Params,
) -> Result<Vec<Vec<f32>>, TileError> {
    let n = channels[0].len();
    let patterns = Patterns::from_key(key);
    let mut stft = Stft::new();
    let spec = stft.forward(&mid(channels));
    let masks = (0..n / BLOCK)
        .map(|b| {
            let frames = b * FRAMES_PER_BLOCK..(b + 1) * FRAMES_PER_BLOCK;
            let mag = spec
                .slice_frames(frames)
                .expect("whole blocks lie inside the spectrogram")
                .magnitude();
            let gains = embed::tile_gains(mag.view(), &message(b as i64), &patterns, b as i64, params)?;
            Ok(embed::mask(&gains))
        })
        .collect::<Result<Vec<_>, TileError>>()?;
    Ok(apply_block_masks(&mut stft, channels, &masks))
}

/// Every channel with mask k applied to block k's frames (its own STFT and phase), resynthesised
/// to its length.
pub(crate) fn apply_block_masks(stft: &mut Stft, channels: &[Vec<f32>], masks: &[Array2<f32>]) -> Vec<Vec<f32>> {
    channels
        .iter()
        .map(|ch| {
            let mut s = stft.forward(ch);
            for (b, m) in masks.iter().enumerate() {
                s.apply_mask_at(b * FRAMES_PER_BLOCK, m.view()).expect("mask fits the block's frames");
            }
            stft.inverse(&s, ch.len())
        })
        .collect()
}

/// The key-independent reading of every whole block of `mid`.
pub fn block_features(mid: &[f32], params: &Params) -> Result<Vec<BlockFeature>, TileError> {
    let mut stft = Stft::new();
    mid.chunks_exact(BLOCK)
        .map(|block| {
            let spec = stft.forward(block);
            let mag = spec
                .slice_frames(0..FRAMES_PER_BLOCK)
                .expect("a block has its frames")
                .magnitude();
            BlockFeature::from_magnitude(mag.view(), params)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{CellSums, block_logits, embed::tile_gains, testsignal};
    use super::*;
    use crate::spec::MESSAGE_BITS;

    fn key(i: u8) -> Key {
        let mut b = [0u8; 16];
        b[0] = i;
        b[15] = 0x5a;
        Key::from_bytes(b, format!("k{i}"))
    }

    /// Per block, the logits with the block's mask taken off (the stem's word as ±1 when read).
    fn unmasked_logits(
        features: &[BlockFeature],
        key: &Key,
        params: &Params,
    ) -> Vec<[f64; MESSAGE_BITS]> {
        let patterns = Patterns::from_key(key);
        let sums: Vec<CellSums> = features
            .iter()
            .enumerate()
            .map(|(b, f)| f.cell_sums(&patterns, b as i64))
            .collect();
        block_logits(&sums, params)
            .iter()
            .enumerate()
            .map(|(b, z)| {
                let mask = key.block_mask(b as i64);
                std::array::from_fn(|i| {
                    if (mask >> (31 - i)) & 1 == 1 {
                        -z[i]
                    } else {
                        z[i]
                    }
                })
            })
            .collect()
    }

    /// The bits block `b` carries for `word`, with its mask taken off.
    fn sent(word: u32, k: &Key, b: usize) -> u32 {
        payload::block_word(word, k, b as i64) ^ k.block_mask(b as i64)
    }

        fn bit_errors(logits: &[f64; MESSAGE_BITS], word: u32) -> usize {
        let sent = payload::to_bipolar(word);
        logits
            .iter()
            .zip(sent)
            .filter(|(z, s)| **z * *s as f64 <= 0.0)
            .count()
    }

    fn snr_db(clean: &[f32], marked: &[f32]) -> f64 {
        let (s, e) = clean
            .iter()
            .zip(marked)
            .fold((0.0, 0.0), |(s, e), (&a, &b)| {
                (s + (a as f64).powi(2), e + (a as f64 - b as f64).powi(2))
            });
        10.0 * (s / e).log10()
    }

    #[test]
    fn marked_stems_read_back_their_word() {
        let params = Params::default();
        for (name, host) in [
            ("music", testsignal::music(8.0, 1)),
            ("speech", testsignal::speech(8.0, 2)),
        ] {
            let k = key(1);
            let word = payload::encode(0x00_51_7e, &k).unwrap();
            let marked = embed(std::slice::from_ref(&host), &k, word, &params)
                .unwrap()
                .remove(0);
            let snr = snr_db(&host, &marked);
            let logits = unmasked_logits(&block_features(&marked, &params).unwrap(), &k, &params);
            let errors: usize = logits.iter().enumerate().map(|(b, z)| bit_errors(z, sent(word, &k, b))).sum();
            let ber = errors as f64 / (logits.len() * MESSAGE_BITS) as f64;
            println!(
                "{name}: SNR {snr:.1} dB, per-block BER {:.1} %",
                100.0 * ber
            );
            // The prototype's stems alone: 28–30 dB, BER ≤ 3 %.
            assert!(snr > 24.0, "{name}: SNR {snr:.1} dB");
            assert!(ber <= 0.03, "{name}: BER {ber}");
            // The payload code over the 4 blocks: the mask back on, then the code's reader.
            let mut soft = crate::code::Soft::default();
            for (b, z) in logits.iter().enumerate() {
                soft.add(b as i64, &payload::unmask(&z.map(|x| x as f32), k.block_mask(b as i64)), &k);
            }
            assert_eq!(soft.viterbi(), word, "{name}: the word over 4 blocks");
        }
    }

    #[test]
    fn other_keys_read_noise_and_unmarked_audio_reads_the_null() {
        let params = Params::default();
        let mut looped = testsignal::music(2.0, 5);
        looped.truncate(BLOCK);
        let looped: Vec<f32> = looped.iter().copied().cycle().take(8 * BLOCK).collect();
        let marked = embed(&[testsignal::music(16.0, 3)], &key(1), 0x1234_5678, &params)
            .unwrap()
            .remove(0);
        let hosts = [
            ("noise", testsignal::noise(16.0, 0.1, 4)),
            ("music", testsignal::music(16.0, 6)),
            ("speech", testsignal::speech(16.0, 7)),
            ("looped music", looped),
            ("marked with another key", marked),
        ];
        for (name, host) in hosts {
            let features = block_features(&host, &params).unwrap();
            let mut z = Vec::new();
            for k in 2..10 {
                unmasked_logits(&features, &key(k), &params)
                    .iter()
                    .for_each(|l| z.extend_from_slice(l));
            }
            // 8 blocks × 32 bits × 8 keys = 2 048 values: the mean's std is 0.022, the std's 0.016.
            let mean = z.iter().sum::<f64>() / z.len() as f64;
            let std = (z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / z.len() as f64).sqrt();
            println!("{name}: null z mean {mean:.3}, std {std:.3}");
            assert!(
                mean.abs() < 0.1 && (0.9..1.1).contains(&std),
                "{name}: mean {mean}, std {std}"
            );
            if name == "marked with another key" {
                let ber = z.iter().filter(|&&x| x <= 0.0).count() as f64 / z.len() as f64;
                assert!((0.45..0.55).contains(&ber), "wrong key BER {ber}");
            }
        }
    }

    #[test]
    fn looped_audio_does_not_add_up_to_a_mark() {
        // A 2 s loop: every block is the same audio. The per-block scramble must keep the window
        // sum Z_b = Σ_k ℓ_kb / √K at N(0, 1) (without it S = Σ Z² reached 150 on looped music).
        let params = Params::default();
        let one = testsignal::music(2.0, 8);
        let looped: Vec<f32> = one.iter().copied().cycle().take(16 * BLOCK).collect();
        let features = block_features(&looped, &params).unwrap();
        let mut s_values = Vec::new();
        for k in 20..36 {
            let l = unmasked_logits(&features, &key(k), &params);
            let big_z: Vec<f64> = (0..MESSAGE_BITS)
                .map(|i| l.iter().map(|z| z[i]).sum::<f64>() / 4.0)
                .collect();
            s_values.push(big_z.iter().map(|z| z * z).sum::<f64>());
        }
        let mean = s_values.iter().sum::<f64>() / s_values.len() as f64;
        println!("looped: S per key {s_values:.1?}, mean {mean:.1} (χ²₃₂: 32)");
        // 16 keys: the mean of χ²₃₂ has std 2; 85.2 is the 1e-6 point of one reading.
        assert!((24.0..40.0).contains(&mean), "{mean}");
        assert!(s_values.iter().all(|&s| s < 85.2), "{s_values:?}");
    }

    #[test]
    fn gain_changes_neither_the_mask_nor_the_reading() {
        let params = Params::default();
        let host = testsignal::music(2.0, 9);
        let patterns = Patterns::from_key(&key(1));
        let message = payload::to_bipolar(0xdead_beef);
        let gains_at = |g: f32| {
            let x: Vec<f32> = host.iter().map(|s| s * g).collect();
            let spec = Stft::new().forward(&x);
            let mag = spec.slice_frames(0..FRAMES_PER_BLOCK).unwrap().magnitude();
            let z = BlockFeature::from_magnitude(mag.view(), &params)
                .unwrap()
                .cell_sums(&patterns, 0)
                .z(&[1.0; 18]);
            (
                tile_gains(mag.view(), &message, &patterns, 0, &params).unwrap(),
                z,
            )
        };
        let (g1, z1) = gains_at(1.0);
        for g in [0.01f32, 8.0] {
            let (gg, zg) = gains_at(g);
            // Only ratios enter; f32 magnitudes and the feature's tiny absolute guards (1e-9 floor,
            // 1e-6 scale) leave differences far below the 0.16 cap and z's unit scale.
            let dg = g1
                .iter()
                .zip(&gg)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let dz = z1
                .iter()
                .zip(&zg)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                dg < 1e-4 && dz < 1e-3,
                "gain {g}: mask differs by {dg}, z by {dz}"
            );
        }
        let cap = params.cell_cap + 1e-12;
        assert!(
            g1.iter().all(|x| x.abs() <= cap),
            "every cell within the cap"
        );
        let at_cap = g1
            .iter()
            .filter(|x| x.abs() >= params.cell_cap - 1e-9)
            .count() as f64
            / g1.len() as f64;
        println!("tiles at the cap: {:.1} %", 100.0 * at_cap);
    }

    #[test]
    fn silence_gets_no_mark_and_reads_nothing() {
        let params = Params::default();
        let silence = vec![vec![0.0f32; 2 * BLOCK]; 2];
        let marked = embed(&silence, &key(1), 0xffff_ffff, &params).unwrap();
        assert!(
            marked.iter().flatten().all(|&x| x == 0.0),
            "exact: the mask multiplies zeros"
        );
        let l = unmasked_logits(
            &block_features(&marked[0], &params).unwrap(),
            &key(1),
            &params,
        );
        assert!(
            l.iter().flatten().all(|&z| z == 0.0),
            "exact: silence has no high-passed level"
        );
    }

    #[test]
    fn stereo_is_marked_from_its_mid_and_bad_input_is_refused() {
        let params = Params::default();
        let l = testsignal::music(4.0, 10);
        let r: Vec<f32> = testsignal::music(4.0, 11)
            .iter()
            .zip(&l)
            .map(|(a, b)| 0.5 * a + 0.5 * b)
            .collect();
        let k = key(3);
        let word = payload::encode(77, &k).unwrap();
        let marked = embed(&[l.clone(), r.clone()], &k, word, &params).unwrap();
        assert!(snr_db(&l, &marked[0]) > 24.0 && snr_db(&r, &marked[1]) > 24.0);
        let logits = unmasked_logits(
            &block_features(&mid(&marked), &params).unwrap(),
            &k,
            &params,
        );
        assert!(
            logits.iter().enumerate().all(|(b, z)| bit_errors(z, sent(word, &k, b)) <= 1),
            "both blocks read from the mid"
        );
        let mut bad = l.clone();
        bad[1000] = f32::NAN;
        assert_eq!(
            block_features(&bad, &params).unwrap_err(),
            TileError::NonFinite
        );
        assert_eq!(
            embed(&[bad], &k, word, &params).unwrap_err(),
            TileError::NonFinite
        );
        assert!(
            block_features(&l[..BLOCK - 1], &params).unwrap().is_empty(),
            "no whole block, nothing to read"
        );
    }
}
