//! Table 1's attack families and Table 2's NMR in the evaluation, from the training pipeline's own
//! code (`train::attacks`, `train::nmr`): the issue asks for the attacks training used, and those are
//! libtorch tensor ops, so this module exists only in the `train` build. Without it the report says
//! which columns are missing and why.

#[cfg(feature = "train")]
mod with_torch {
    use anyhow::Result;
    use rand::Rng;
    use tch::{Kind, Tensor};

    use crate::train::attacks::{Attack, Family, dsp};
    use crate::train::nmr;

    /// Table 1's columns after "Origin", in the paper's order.
    pub const FAMILIES: [(Family, &str); 3] =
        [(Family::BasicNoise, "Basic/Noise"), (Family::Filter, "Filter"), (Family::TimePitch, "Time/Pitch")];

    fn tensor(channels: &[Vec<f32>]) -> Tensor {
        let len = channels[0].len() as i64;
        let flat: Vec<f32> = channels.concat();
        Tensor::from_slice(&flat).reshape([channels.len() as i64, len])
    }

    fn planar(t: &Tensor) -> Result<Vec<Vec<f32>>> {
        let t = t.to_kind(Kind::Float).contiguous();
        let (c, l) = (t.size()[0] as usize, t.size()[1] as usize);
        let flat: Vec<f32> = Vec::<f32>::try_from(t.reshape([-1]))?;
        Ok((0..c).map(|i| flat[i * l..(i + 1) * l].to_vec()).collect())
    }

    /// One attack of `family`, drawn as training draws it (uniform over the family's attacks, then
    /// its parameters), applied to the planar mix; the channels share it and the length is kept
    /// (the speed attacks are cropped or zero-padded at the end, as in training). Returns the
    /// attacked mix and the attack's tag.
    pub fn attack<R: Rng + ?Sized>(mix: &[Vec<f32>], family: Family, rng: &mut R) -> Result<(Vec<Vec<f32>>, &'static str)> {
        let pool: Vec<Attack> = Attack::ALL.into_iter().filter(|a| a.family() == family).collect();
        let params = pool[rng.random_range(0..pool.len())].sample(rng);
        let x = tensor(mix);
        let y = tch::no_grad(|| -> Result<Tensor> { dsp::fit_len(&params.apply(&x)?, x.size()[1]) })?;
        let out = planar(&y)?;
        anyhow::ensure!(out.iter().flatten().all(|v| v.is_finite()), "attack {} gave non-finite samples", params.attack().tag());
        Ok((out, params.attack().tag()))
    }

    /// Total NMR in dB of `marked` against `original` (planar, equal shapes), the BS.1387 ear model
    /// the NMR loss trains with; channels count as items.
    pub fn nmr_db(original: &[Vec<f32>], marked: &[Vec<f32>]) -> Result<f64> {
        nmr::nmr_db(&tensor(original), &tensor(marked))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use rand::SeedableRng;

        #[test]
        fn attacks_keep_the_shape_and_change_the_audio() {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let mix: Vec<Vec<f32>> = (0..2)
                .map(|c| (0..44_100).map(|i| 0.3 * ((i as f32) * 0.05 + c as f32).sin()).collect())
                .collect();
            for (family, _) in FAMILIES {
                for _ in 0..4 {
                    let (out, tag) = attack(&mix, family, &mut rng).unwrap();
                    assert_eq!(out.len(), 2);
                    assert!(out.iter().all(|c| c.len() == 44_100), "{tag}");
                    let diff: f32 = out[0].iter().zip(&mix[0]).map(|(a, b)| (a - b).abs()).sum();
                    // A boost/duck changes every sample; an unchanged mix would mean no attack ran.
                    assert!(diff > 0.0, "{tag} left the mix unchanged");
                }
            }
        }

        #[test]
        fn nmr_grows_by_ten_db_with_the_error() {
            // The NMR is a quadratic form in the error: 10 dB more error, 10 dB more NMR.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
            let orig: Vec<Vec<f32>> = (0..2).map(|_| (0..44_100).map(|_| rng.random_range(-0.3f32..0.3)).collect()).collect();
            let err: Vec<f32> = (0..44_100).map(|_| rng.random_range(-1f32..1.0)).collect();
            let marked = |g: f32| -> Vec<Vec<f32>> { orig.iter().map(|c| c.iter().zip(&err).map(|(x, e)| x + g * e).collect()).collect() };
            let a = nmr_db(&orig, &marked(1e-3)).unwrap();
            let b = nmr_db(&orig, &marked(1e-3 * 10f32.sqrt())).unwrap();
            assert!((b - a - 10.0).abs() < 0.1, "{a:.2} → {b:.2}");
        }
    }
}

#[cfg(feature = "train")]
pub use with_torch::{FAMILIES, attack, nmr_db};

/// Why Table 1's attack columns and the NMR column are empty in this build.
pub const MISSING: Option<&str> = if cfg!(feature = "train") {
    None
} else {
    Some("attack families and NMR use the training pipeline's libtorch code: build with `--features train` (see README, Training)")
};
