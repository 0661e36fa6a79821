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
    /// Total NMR in dB (BS.1387 ear model; `train` build only).
    pub nmr: Vec<f64>,
    /// ViSQOL audio-mode MOS-LQO of the mid channel (when visqol-python is available).
    pub visqol: Vec<f64>,
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

/// One scenario's numbers per stem [foreground, background]: what the channel is judged by.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScenarioReport {
    pub items: u64,
    /// SNR of each marked stem (mean of its channels), dB.
    pub snr: [Vec<f64>; 2],
    pub ber_alone: [BitCount; 2],
    pub ber_mix: [BitCount; 2],
    /// Payload per item from the stem alone, the mix, the separated stem, and the key's one
    /// reading over the mix and both separated stems (what Stemmark Detect reports).
    pub payload_alone: [PayloadCount; 2],
    pub payload_mix: [PayloadCount; 2],
    pub payload_separated: [PayloadCount; 2],
    pub payload_detect: [PayloadCount; 2],
    /// Of the key's readings that gave the right payload: which candidate carried it ("mix", a
    /// separated stem, "joint").
    pub carried_by: [std::collections::BTreeMap<String, u64>; 2],
    /// Payload per item read from the codec-attacked mix, per codec.
    pub payload_codec: std::collections::BTreeMap<String, [PayloadCount; 2]>,
    /// Payload per item after the external separator (when it ran).
    pub payload_external: [PayloadCount; 2],
    /// SDR (dB) per item of our separator's stems against the original stems, and of the
    /// external separator's (when it ran).
    pub sdr: [Vec<f64>; 2],
    pub sdr_external: [Vec<f64>; 2],
    /// Re-use: the separated marked foreground mixed into another item's background, read as
    /// Stemmark Detect reads (the key's one reading over that mix and its separated stems).
    pub payload_reuse: PayloadCount,
    /// Of those re-use readings that gave the right payload, which candidate carried it.
    pub reuse_carried_by: std::collections::BTreeMap<String, u64>,
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
    /// Table 1: BER after separation per scenario, then per column ("Origin" = no attack, then
    /// the attack families), per stem.
    pub table1: std::collections::BTreeMap<String, std::collections::BTreeMap<String, [BitCount; 2]>>,
    /// BER after the external separator (Spleeter), per scenario and stem.
    pub ber_external: std::collections::BTreeMap<String, [BitCount; 2]>,
    /// Payload over the whole item after the external separator.
    pub payload_external: [PayloadCount; 2],
    /// How often each attack (paper's tag) was drawn for Table 1.
    pub attacks_applied: std::collections::BTreeMap<String, u64>,
    /// BER after separation of a codec-attacked mix, per codec and stem.
    pub ber_codec: std::collections::BTreeMap<String, [BitCount; 2]>,
    pub quality: [Quality; 2],
    pub separation: [Separation; 2],
    /// Payload over the whole item, read from the separated stem.
    pub payload: [PayloadCount; 2],
    /// Payload read from the mix itself with the stem's key.
    pub payload_mix: [PayloadCount; 2],
    /// What Stemmark Detect reports: the key's one reading over the mix and both separated
    /// stems, its rate counting each path and the joint.
    pub payload_detect: [PayloadCount; 2],
    pub false_positives: FalsePositives,
    /// WAKE: foreground stems marked twice, one key after the other; [first key, second key].
    pub double_mark: [PayloadCount; 2],
    /// BER of each of the two marks on the double-marked stem (no separation).
    pub double_mark_ber: [BitCount; 2],
    /// Calibrated z of every reading with the stem's own key (separated stem and mix).
    pub z_marked: Vec<f64>,
    /// Calibrated z of every reading with a key that did not mark the audio.
    pub z_unmarked: Vec<f64>,
    /// The decision threshold on z.
    pub threshold: f64,
    /// Per scenario: SNR, BER and payloads per item.
    pub scenarios: std::collections::BTreeMap<String, ScenarioReport>,
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
            table1: Default::default(),
            attacks_applied: Default::default(),
            ber_external: Default::default(),
            payload_external: Default::default(),
            ber_codec: Default::default(),
            quality: Default::default(),
            separation: Default::default(),
            payload: Default::default(),
            payload_mix: Default::default(),
            payload_detect: Default::default(),
            false_positives: FalsePositives::default(),
            double_mark: Default::default(),
            double_mark_ber: Default::default(),
            z_marked: Vec::new(),
            z_unmarked: Vec::new(),
            threshold: f64::NAN,
            scenarios: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub data: PathBuf,
    pub seed: u64,
    pub items: usize,
    pub sets: Vec<SetReport>,
    /// What was left out of this run and why (a missing tool, a build without libtorch).
    pub notes: Vec<String>,
}

/// Mean of the finite values (an identical signal's +∞ dB would swamp it), NaN if none.
fn mean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() { f64::NAN } else { f.iter().sum::<f64>() / f.len() as f64 }
}

/// The mean to `digits` places, or "–" when nothing was measured.
fn cell(v: &[f64], digits: usize) -> String {
    let m = mean(v);
    if m.is_nan() { "–".into() } else { format!("{m:.digits$}") }
}

/// A bit error rate to two places, or "–" when no bits were read.
fn percent(b: BitCount) -> String {
    if b.bits == 0 { "–".into() } else { format!("{:.2}", b.percent()) }
}

/// Table 1's columns in the paper's order; a family that did not run is left out.
const TABLE1_COLUMNS: [&str; 4] = ["Origin", "Basic/Noise", "Filter", "Time/Pitch"];

impl Report {
    /// Table 1 as in the paper: mean BER after separation of both stems, per scenario and attack
    /// family (foreground / background in brackets).
    fn table1(&self) -> String {
        let columns: Vec<&str> = TABLE1_COLUMNS
            .into_iter()
            .filter(|c| self.sets.iter().any(|r| r.table1.values().any(|t| t.contains_key(*c))))
            .collect();
        if columns.is_empty() {
            return String::new();
        }
        let mut s = "## Table 1: BER (%) after separation, per attack family\n\nMean of both stems (foreground / background). The attacks are applied to the mix before separation, one drawn per item and family as training draws them.\n\n| models | scenario |".to_string();
        for c in &columns {
            s += &format!(" {c} |");
        }
        s += "\n|---|---|";
        s += &"---:|".repeat(columns.len());
        s += "\n";
        for r in &self.sets {
            for (scenario, t) in &r.table1 {
                s += &format!("| {} | {scenario} |", r.models.display());
                for c in &columns {
                    s += &match t.get(*c) {
                        Some([f, b]) => {
                            let both = BitCount { errors: f.errors + b.errors, bits: f.bits + b.bits };
                            format!(" {:.2} ({:.1} / {:.1}) |", both.percent(), f.percent(), b.percent())
                        }
                        None => " – |".into(),
                    };
                }
                s += "\n";
            }
        }
        if let Some(r) = self.sets.first().filter(|r| !r.attacks_applied.is_empty()) {
            let drawn: Vec<String> = r.attacks_applied.iter().map(|(tag, n)| format!("{tag} {n}")).collect();
            s += &format!("\nAttacks drawn ({}): {}.\n", r.models.display(), drawn.join(", "));
        }
        s + "\n"
    }

    /// Per scenario and stem: SNR, BER and the payload read per item on every path.
    fn scenarios(&self) -> String {
        let codecs: std::collections::BTreeSet<&String> =
            self.sets.iter().flat_map(|r| r.scenarios.values().flat_map(|c| c.payload_codec.keys())).collect();
        let external = self.sets.iter().any(|r| r.scenarios.values().any(|c| c.payload_external[0].items > 0));
        let mut s = "## Per scenario: payloads per item\n\nCorrect / items (wrong payloads). BER per block, on the blocks where the stem has content (audible alone); SNR mean of the marked stems. Codec columns read the payload from the coded mix itself. Stemmark Detect: the key's one reading over the mix, both separated stems and their joint, each charged for all four; in brackets which of them carried the right payloads.\n\n| models | scenario | stem | SNR dB | BER alone % | BER on the mix % | stem alone | on the mix | after separation | Stemmark Detect |".to_string();
        for c in &codecs {
            s += &format!(" {c} mix |");
        }
        if external {
            s += " after Spleeter |";
        }
        s += "\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|";
        s += &"---:|".repeat(codecs.len() + external as usize);
        s += "\n";
        let count = |p: PayloadCount| format!("{}/{} ({})", p.correct, p.items, p.wrong);
        for r in &self.sets {
            for (scenario, c) in &r.scenarios {
                for (i, stem) in STEMS.iter().enumerate() {
                    s += &format!(
                        "| {} | {scenario} | {stem} | {} | {} | {} | {} | {} | {} | {} |",
                        r.models.display(),
                        cell(&c.snr[i], 1),
                        percent(c.ber_alone[i]),
                        percent(c.ber_mix[i]),
                        count(c.payload_alone[i]),
                        count(c.payload_mix[i]),
                        count(c.payload_separated[i]),
                        count(c.payload_detect[i]),
                    );
                    let carriers: Vec<String> = c.carried_by[i].iter().map(|(k, n)| format!("{k} {n}")).collect();
                    if !carriers.is_empty() {
                        s.truncate(s.trim_end_matches(['|', ' ']).len());
                        s += &format!(" ({}) |", carriers.join(", "));
                    }
                    for codec in &codecs {
                        s += &match c.payload_codec.get(*codec) {
                            Some(p) => format!(" {} |", count(p[i])),
                            None => " – |".into(),
                        };
                    }
                    if external {
                        s += &format!(" {} |", count(c.payload_external[i]));
                    }
                    s += "\n";
                }
            }
        }
        s + "\n"
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Stemmark evaluation\n\ndata: `{}`, {} items, seed {}\n\n",
            self.data.display(),
            self.items,
            self.seed
        );
        for n in &self.notes {
            s += &format!("Note: {n}\n\n");
        }
        s += &self.scenarios();
        s += &self.table1();
        s += "## BER (%) per stem, no attack\n\nEvery BER in this report counts the blocks where the marked stem has content (audible alone): where it is silent it carries no mark.\n\n| models | stem | stem alone | after separation | on the mix | blocks | payload from the stem alone |\n|---|---|---:|---:|---:|---:|---:|\n";
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
        if self.sets.iter().any(|r| !r.ber_external.is_empty()) {
            s += "\n## BER (%) after a separator we did not train: Spleeter 2-stem\n\nIts vocals stem is read with the foreground's key, its accompaniment with the background's. Spleeter separates sung or spoken vocals only and cuts everything above 11 kHz; an instrumental lead stays in its accompaniment.\n\n| models | scenario | foreground | background |\n|---|---|---:|---:|\n";
            for r in &self.sets {
                for (scenario, b) in &r.ber_external {
                    s += &format!("| {} | {scenario} | {:.2} | {:.2} |\n", r.models.display(), b[0].percent(), b[1].percent());
                }
                let p = r.payload_external;
                s += &format!(
                    "| {} | payload per item (wrong) | {}/{} ({}) | {}/{} ({}) |\n",
                    r.models.display(),
                    p[0].correct,
                    p[0].items,
                    p[0].wrong,
                    p[1].correct,
                    p[1].items,
                    p[1].wrong
                );
            }
        }
        s += "\n## Quality of the marked stems (no separation)\n\nNMR: total noise-to-mask ratio (BS.1387 ear model; below 0 dB the mark sits under the masking threshold). ViSQOL: audio mode, MOS-LQO of the mid channel.\n\n| models | stem | SNR dB | SI-SNR dB | ViSQOL | NMR dB |\n|---|---|---:|---:|---:|---:|\n";
        for r in &self.sets {
            for (i, stem) in STEMS.iter().enumerate() {
                let q = &r.quality[i];
                s += &format!(
                    "| {} | {stem} | {:.2} | {:.2} | {} | {} |\n",
                    r.models.display(),
                    mean(&q.snr),
                    mean(&q.si_snr),
                    cell(&q.visqol, 2),
                    cell(&q.nmr, 2)
                );
            }
        }
        s += "\n## Separator on the original stems\n\nMean over items of the SDR of each separated stem (mid) against the unmarked original, separated from the marked mix. The models' separator per scenario, then all items with SI-SDR; the external separator (when it ran) on the same mixes.\n\n| models | separator | scenario | foreground SDR dB | background SDR dB |\n|---|---|---|---:|---:|\n";
        for r in &self.sets {
            for (which, external) in [("the models'", false), ("external (Spleeter 2-stem)", true)] {
                for (scenario, sc) in &r.scenarios {
                    let v = if external { &sc.sdr_external } else { &sc.sdr };
                    if v[0].is_empty() {
                        continue;
                    }
                    s += &format!("| {} | {which} | {scenario} | {:.2} | {:.2} |\n", r.models.display(), mean(&v[0]), mean(&v[1]));
                }
            }
        }
        s += "\n| models | stem | SDR dB | SI-SDR dB |\n|---|---|---:|---:|\n";
        for r in &self.sets {
            for (i, stem) in STEMS.iter().enumerate() {
                s += &format!("| {} | {stem} (all items) | {:.2} | {:.2} |\n", r.models.display(), mean(&r.separation[i].sdr), mean(&r.separation[i].si_sdr));
            }
        }
        if self.sets.iter().any(|r| r.scenarios.values().any(|c| c.payload_reuse.items > 0)) {
            s += "\n## Re-use: a separated marked foreground in another song\n\nEach item's foreground as the models' separator pulled it out of the marked mix, mixed into the next item's unmarked background (same scenario, both as they were in their mixes), then read as Stemmark Detect reads (the key's one reading over that mix, its separated stems and their joint). Correct / items (wrong payloads), and which reading carried the right payloads.\n\n| models | scenario | re-used foreground | carried by |\n|---|---|---:|---|\n";
            for r in &self.sets {
                for (scenario, c) in &r.scenarios {
                    let carriers = c.reuse_carried_by.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
                    let p = c.payload_reuse;
                    s += &format!("| {} | {scenario} | {}/{} ({}) | {carriers} |\n", r.models.display(), p.correct, p.items, p.wrong);
                }
            }
        }
        s += "\n## Payloads and keys\n\nPayload correct / items (wrong payloads), per item, read after separation, on the mix, and as Stemmark Detect reports it (the key's one reading over the mix, both separated stems and their joint).\n\n| models | stem | after separation | on the mix | Stemmark Detect | BER wrong key % | false positives (95 % bound) |\n|---|---|---:|---:|---:|---:|---:|\n";
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
    use super::*;

    #[test]
    fn table1_pools_both_stems_per_scenario_and_family() {
        // 20 % and 30 % BER over equal bit counts pool to 25 %; a family that did not run is
        // left out of the table.
        let mut r = SetReport::new(Path::new("set"));
        let mut row = std::collections::BTreeMap::new();
        row.insert("Origin".to_string(), [BitCount { errors: 64, bits: 320 }, BitCount { errors: 96, bits: 320 }]);
        row.insert("Filter".to_string(), [BitCount { errors: 0, bits: 320 }, BitCount { errors: 32, bits: 320 }]);
        r.table1.insert("speech+music".to_string(), row);
        let report = Report { data: "d".into(), seed: 0, items: 1, sets: vec![r], notes: vec![] };
        let md = report.markdown();
        assert!(md.contains("| set | speech+music | 25.00 (20.0 / 30.0) | 5.00 (0.0 / 10.0) |"), "{md}");
        assert!(md.contains("| models | scenario | Origin | Filter |"), "{md}");
    }

    #[test]
    fn per_scenario_rows_hold_each_path_and_only_the_codecs_that_ran() {
        let mut r = SetReport::new(Path::new("set"));
        let mut c = ScenarioReport { items: 2, ..Default::default() };
        c.snr = [vec![28.0, 30.0], vec![29.0, 29.0]];
        for p in [&mut c.payload_alone, &mut c.payload_mix, &mut c.payload_separated, &mut c.payload_detect] {
            p[0].tally(5, &[Some(5)]);
            p[0].tally(5, &[None]);
        }
        c.payload_codec.insert("MP3 128 kbit/s".into(), [PayloadCount { items: 2, correct: 1, wrong: 0 }, PayloadCount::default()]);
        c.carried_by[0].insert("joint".into(), 1);
        r.scenarios.insert("speech+music".into(), c);
        let md = Report { data: "d".into(), seed: 0, items: 2, sets: vec![r], notes: vec![] }.markdown();
        assert!(md.contains("| MP3 128 kbit/s mix |") && !md.contains("Spleeter |"), "{md}");
        assert!(md.contains("| set | speech+music | foreground | 29.0 | – | – | 1/2 (0) | 1/2 (0) | 1/2 (0) | 1/2 (0) (joint 1) | 1/2 (0) |"), "{md}");
    }

    #[test]
    fn a_wrong_reading_outweighs_a_right_one() {
        let mut c = PayloadCount::default();
        c.tally(7, &[Some(7), None]);
        c.tally(7, &[None, None]);
        c.tally(7, &[Some(7), Some(8)]);
        assert_eq!((c.items, c.correct, c.wrong), (3, 1, 1));
    }
}
