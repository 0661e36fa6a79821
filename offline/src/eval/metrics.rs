//! The numbers `stemmark eval` reports: signal-to-noise ratios, bit error rates and a
//! Clopper–Pearson bound for rates measured on a finite number of trials.
//!
//! SDR here is the plain signal-to-distortion ratio of an estimate against its reference,
//! 10·log10(‖s‖² / ‖s − ŝ‖²) (the "SDR" of the MDX challenges and of Demucs' papers); SI-SDR
//! (and SI-SNR, the same formula) first scales the reference optimally, so gain errors are not
//! counted.

/// 10·log10(‖reference‖² / ‖reference − estimate‖²), in dB; +∞ for a perfect estimate.
pub fn sdr(reference: &[f32], estimate: &[f32]) -> f64 {
    let (mut s, mut e) = (0f64, 0f64);
    for (&r, &x) in reference.iter().zip(estimate) {
        s += (r as f64).powi(2);
        e += (r as f64 - x as f64).powi(2);
    }
    ratio_db(s, e)
}

/// Watermark SNR: the same ratio with the original as reference and the marked signal as estimate.
pub fn snr(original: &[f32], marked: &[f32]) -> f64 {
    sdr(original, marked)
}

/// Scale-invariant SDR: the estimate's projection on the reference against the rest, in dB.
pub fn si_sdr(reference: &[f32], estimate: &[f32]) -> f64 {
    let (mut dot, mut rr) = (0f64, 0f64);
    for (&r, &x) in reference.iter().zip(estimate) {
        dot += r as f64 * x as f64;
        rr += (r as f64).powi(2);
    }
    if rr == 0.0 {
        return f64::NAN;
    }
    let alpha = dot / rr;
    let (mut t, mut e) = (0f64, 0f64);
    for (&r, &x) in reference.iter().zip(estimate) {
        let target = alpha * r as f64;
        t += target * target;
        e += (x as f64 - target).powi(2);
    }
    ratio_db(t, e)
}

/// SI-SNR of a marked signal against its original.
pub fn si_snr(original: &[f32], marked: &[f32]) -> f64 {
    si_sdr(original, marked)
}

fn ratio_db(signal: f64, error: f64) -> f64 {
    if error == 0.0 {
        return if signal == 0.0 { f64::NAN } else { f64::INFINITY };
    }
    10.0 * (signal / error).log10()
}

/// Bit errors between two 32-bit words.
pub fn bit_errors(a: u32, b: u32) -> u32 {
    (a ^ b).count_ones()
}

/// One-sided 95 % Clopper–Pearson upper bound on a rate seen `k` times in `n` trials.
pub fn rate_upper_95(k: u64, n: u64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    if k >= n {
        return 1.0;
    }
    // The bound p solves P(X ≤ k | n, p) = 0.05, i.e. I_{1−p}(n−k, k+1) = 0.05.
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if beta_reg(n as f64 - k as f64, k as f64 + 1.0, 1.0 - mid) > 0.05 { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// Regularised incomplete beta I_x(a, b) (continued fraction, Numerical Recipes §6.4).
fn beta_reg(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        (ln_front.exp() * beta_cf(a, b, x) / a).clamp(0.0, 1.0)
    } else {
        (1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b).clamp(0.0, 1.0)
    }
}

fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let s = C[1..].iter().enumerate().fold(C[0], |s, (i, c)| s + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_on_hand_computed_cases() {
        let s = [1.0f32, -1.0, 1.0, -1.0];
        // error 0.1 on every sample: ‖s‖² = 4, ‖e‖² = 0.04 → 20 dB
        let x: Vec<f32> = s.iter().map(|v| v + 0.1).collect();
        assert!((sdr(&s, &x) - 20.0).abs() < 1e-4);
        assert!((snr(&s, &x) - 20.0).abs() < 1e-4);
        // a pure gain change is free for SI-SDR but not for SDR
        let g: Vec<f32> = s.iter().map(|v| v * 0.5).collect();
        assert!((sdr(&s, &g) - 6.0206).abs() < 1e-3);
        assert_eq!(si_sdr(&s, &g), f64::INFINITY);
        // orthogonal error: s = [1,1], ŝ = [1,1] + [1,-1]·0.1 → α = 1, SI-SDR = 10·log10(2/0.02) = 20 dB
        let (r, e) = ([1.0f32, 1.0], [1.1f32, 0.9]);
        assert!((si_sdr(&r, &e) - 20.0).abs() < 1e-4);
        assert!((si_snr(&r, &e) - 20.0).abs() < 1e-4);
        assert!(si_sdr(&[0.0, 0.0], &e).is_nan());
        assert_eq!(bit_errors(0b1011, 0b0001), 2);
    }

    #[test]
    fn clopper_pearson_bound_matches_known_values() {
        // zero events in n trials: 1 − 0.05^(1/n) (the "rule of three" ≈ 3/n)
        for n in [10u64, 100, 1000] {
            let exact = 1.0 - 0.05f64.powf(1.0 / n as f64);
            assert!((rate_upper_95(0, n) - exact).abs() < 1e-9, "{n}");
        }
        // 1 event in 10 trials: 0.3942 (one-sided 95 %, tables)
        assert!((rate_upper_95(1, 10) - 0.3942).abs() < 1e-3, "{}", rate_upper_95(1, 10));
        // 5 in 100: 0.1023
        assert!((rate_upper_95(5, 100) - 0.1023).abs() < 1e-3, "{}", rate_upper_95(5, 100));
        assert_eq!(rate_upper_95(3, 3), 1.0);
        assert_eq!(rate_upper_95(0, 0), 1.0);
    }
}
