//! The evaluation report: per model set, collected numbers, written as JSON and Markdown.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::BitCount;
use super::metrics::rate_upper_95;

const STEMS: [&str; 2] = ["foreground", "background"];

#[derive(Debug, Default, Clone, Serialize)]
pub struct Quality {
    pub snr: Vec<f64>,
    pub si_snr: Vec<f64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Separation {
    pub sdr: Vec<f64>,
    pub si_sdr: Vec<f64>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PayloadCount {
    pub items: u64,
    pub correct: u64,
    /// Reported payloads that were not the embedded one (must stay 0).
    pub wrong: u64,
}

impl PayloadCount {
    /// Counts one item whose readings reported `found` (None: nothing) for `embedded`: wrong if
    /// any reading gave another payload, else correct if one gave this one.
    pub fn tally(&mut self, embedded: u32, found: &[Option<u32>]) {
        self.items += 1;
        if found.iter().flatten().any(|&p| p != embedded) {
            self.wrong += 1;
        } else if found.iter().flatten().any(|&p| p == embedded) {
            self.correct += 1;
        }
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct FalsePositives {
    /// Stems (or files) read with a key that did not mark them.
    pub trials: u64,
    /// Of those, reported as marked.
    pub found: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub models: PathBuf,
    pub blocks: u64,
    pub ber_separated: [BitCount; 2],
    pub ber_mix: [BitCount; 2],
    /// BER on each marked stem alone (no mix, no separation): what the embedder/detector pair
    /// does before the separator is involved.
    pub ber_alone: [BitCount; 2],
    /// Payload over the whole item, read from each marked stem alone.
    pub payload_alone: [PayloadCount; 2],
    pub ber_wrong_key: BitCount,
    /// BER after separation of a codec-attacked mix, per codec and stem.
    pub ber_codec: std::collections::BTreeMap<String, [BitCount; 2]>,
    pub quality: [Quality; 2],
    pub separation: [Separation; 2],
    /// Payload over the whole item, read from the separated stem.
    pub payload: [PayloadCount; 2],
    /// Payload read from the mix itself with the stem's key.
    pub payload_mix: [PayloadCount; 2],
    /// What Stemmark Detect reports: the payload found on the mix or on a separated stem
    /// (wrong if either reading gave a wrong one).
    pub payload_detect: [PayloadCount; 2],
    pub false_positives: FalsePositives,
    /// WAKE: foreground stems marked twice, one key after the other; [first key, second key].
    pub double_mark: [PayloadCount; 2],
    /// BER of each of the two marks on the double-marked stem (no separation).
    pub double_mark_ber: [BitCount; 2],
}

impl SetReport {
    pub fn new(models: &Path) -> SetReport {
        SetReport {
            models: models.to_path_buf(),
            blocks: 0,
            ber_separated: Default::default(),
            ber_mix: Default::default(),
            ber_alone: Default::default(),
            payload_alone: Default::default(),
            ber_wrong_key: BitCount::default(),
            ber_codec: Default::default(),
            quality: Default::default(),
            separation: Default::default(),
            payload: Default::default(),
            payload_mix: Default::default(),
            payload_detect: Default::default(),
            false_positives: FalsePositives::default(),
            double_mark: Default::default(),
            double_mark_ber: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub data: PathBuf,
    pub seed: u64,
    pub items: usize,
    pub sets: Vec<SetReport>,
}

/// Mean of the finite values (an identical signal's +∞ dB would swamp it), NaN if none.
fn mean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() { f64::NAN } else { f.iter().sum::<f64>() / f.len() as f64 }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Stemmark evaluation\n\ndata: `{}`, {} items, seed {}\n\n",
            self.data.display(),
            self.items,
            self.seed
        );
        s += "## BER (%) per stem, no attack\n\n| models | stem | stem alone | after separation | on the mix | blocks | payload from the stem alone |\n|---|---|---:|---:|---:|---:|---:|\n";
        for r in &self.sets {
            for (i, stem) in STEMS.iter().enumerate() {
                let p = r.payload_alone[i];
                s += &format!(
                    "| {} | {stem} | {:.2} | {:.2} | {:.2} | {} | {}/{} ({} wrong) |\n",
                    r.models.display(),
                    r.ber_alone[i].percent(),
                    r.ber_separated[i].percent(),
                    r.ber_mix[i].percent(),
                    r.ber_separated[i].bits / 32,
                    p.correct,
                    p.items,
                    p.wrong
                );
            }
        }
        if self.sets.iter().any(|r| !r.ber_codec.is_empty()) {
            s += "\n## BER (%) after separation of a codec-attacked mix\n\n| models | codec | foreground | background |\n|---|---|---:|---:|\n";
            for r in &self.sets {
                for (codec, b) in &r.ber_codec {
                    s += &format!("| {} | {codec} | {:.2} | {:.2} |\n", r.models.display(), b[0].percent(), b[1].percent());
                }
            }
        }
        s += "\n## Quality of the marked stems (no separation)\n\n| models | stem | SNR dB | SI-SNR dB |\n|---|---|---:|---:|\n";
        for r in &self.sets {
            for (i, stem) in STEMS.iter().enumerate() {
                s += &format!("| {} | {stem} | {:.2} | {:.2} |\n", r.models.display(), mean(&r.quality[i].snr), mean(&r.quality[i].si_snr));
            }
        }
        s += "\n## Separator on the original stems\n\n| models | stem | SDR dB | SI-SDR dB |\n|---|---|---:|---:|\n";
        for r in &self.sets {
            for (i, stem) in STEMS.iter().enumerate() {
                s += &format!("| {} | {stem} | {:.2} | {:.2} |\n", r.models.display(), mean(&r.separation[i].sdr), mean(&r.separation[i].si_sdr));
            }
        }
        s += "\n## Payloads and keys\n\nPayload correct / items (wrong payloads), per item, read after separation, on the mix, and as Stemmark Detect reports it (either).\n\n| models | stem | after separation | on the mix | Stemmark Detect | BER wrong key % | false positives (95 % bound) |\n|---|---|---:|---:|---:|---:|---:|\n";
        let count = |p: PayloadCount| format!("{}/{} ({})", p.correct, p.items, p.wrong);
        for r in &self.sets {
            let fp = r.false_positives;
            for (i, stem) in STEMS.iter().enumerate() {
                s += &format!(
                    "| {} | {stem} | {} | {} | {} | {:.1} | {}/{} (≤ {:.2e}) |\n",
                    r.models.display(),
                    count(r.payload[i]),
                    count(r.payload_mix[i]),
                    count(r.payload_detect[i]),
                    r.ber_wrong_key.percent(),
                    fp.found,
                    fp.trials,
                    rate_upper_95(fp.found, fp.trials)
                );
            }
        }
        s += "\n## Two marks on one stem (WAKE: embedded one after the other with two keys)\n\n| models | mark | payload correct | wrong payload | BER % |\n|---|---|---:|---:|---:|\n";
        for r in &self.sets {
            for (i, mark) in ["first", "second"].iter().enumerate() {
                let p = r.double_mark[i];
                s += &format!("| {} | {mark} | {}/{} | {} | {:.2} |\n", r.models.display(), p.correct, p.items, p.wrong, r.double_mark_ber[i].percent());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::PayloadCount;

    #[test]
    fn a_wrong_reading_outweighs_a_right_one() {
        let mut c = PayloadCount::default();
        c.tally(7, &[Some(7), None]);
        c.tally(7, &[None, None]);
        c.tally(7, &[Some(7), Some(8)]);
        assert_eq!((c.items, c.correct, c.wrong), (3, 1, 1));
    }
}
