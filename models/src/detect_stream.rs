//! Streaming detection on the shared 2 s grid: the engine of Stemmark Detect's worker.
//!
//! Mix samples (44.1 kHz, stereo or mono) arrive in chunks of any size; block k covers stream
//! samples [k·BLOCK, (k+1)·BLOCK) (the caller starts the stream on the grid) and is grid block
//! `first_block + k` of the timeline, the index Stemmark Embed masked it with. Once a block and
//! [`CONTEXT`] samples after it have arrived, the block is separated with CONTEXT samples of
//! context on both sides, and the mix and every separated stem are decoded with every key. Logits
//! are kept per (path, key) and decided on demand with the payload code's rule ([`crate::tile::window`]), the same rule
//! `stemmark detect` uses on files.

use ndarray::Array3;

use crate::decision::{Calibration, Decision, GridBlock, GridIndex, Verdict};
use crate::detector::{Detector, audible};
use crate::keys::Key;
use crate::modelset::ModelError;
use crate::payload;
use crate::separator::Separator;
use crate::spec::{BLOCK, STEM_NAMES};
use crate::tile::joint;
use crate::tile::window::{GrowingWindow, WindowBlock};
use crate::tile::{Params, Patterns};

/// Separator context on each side of a block (1 s), so the block's stems are not edge-limited.
pub const CONTEXT: usize = BLOCK / 2;
/// Samples the stream holds: context before, the block, context after.
const WINDOW: usize = CONTEXT + BLOCK + CONTEXT;

/// What the mark says about one block on one path and key, judged against the running decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    /// Its bits agree with the decided payload (at most 4 of 32 differ).
    Marked,
    /// Too quiet to carry a mark, or no decision yet.
    Uncertain,
    /// Its bits do not match the decided payload, or nothing was decided.
    NotMarked,
}

/// Decision and recent block states for one path (the mix or a separated stem) and one key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathReading {
    /// "mix" or a stem name.
    pub path: &'static str,
    pub key: String,
    pub fingerprint: String,
    #[serde(flatten)]
    pub decision: Decision,
    /// State of every analysed block, in the order analysed.
    pub blocks: Vec<BlockState>,
}

struct Track {
    path: &'static str,
    key: usize,
    /// Per analysed block: its grid index and whether it was audible on this path.
    blocks: Vec<(i64, bool)>,
    /// The audible blocks' cell sums and logits.
    window: GrowingWindow,
}

pub struct DetectStream {
    keys: Vec<Key>,
    patterns: Vec<Patterns>,
    cal: Calibration,
    channel: Params,
    separate: bool,
    channels: usize,
    /// Ring of the last WINDOW samples per channel (`hist[c][i % WINDOW]` = sample i).
    hist: Vec<Vec<f32>>,
    pushed: usize,
    /// Next block to analyse (stream position), and the grid index of stream block 0.
    next_block: usize,
    first_block: i64,
    tracks: Vec<Track>,
    /// Blocks analysed so far.
    pub blocks_done: usize,
}

impl DetectStream {
    /// A stream over `channels` (1 or 2) reading every key; `separate = false` reads the mix only.
    /// Its first sample starts grid block `first_block`.
    /// `cal` and `channel` are the detector's (its manifest's) unless a caller measures others.
    pub fn new(
        channels: usize,
        keys: Vec<Key>,
        cal: Calibration,
        channel: Params,
        separate: bool,
        first_block: i64,
    ) -> Result<DetectStream, ModelError> {
        if !(1..=2).contains(&channels) {
            return Err(ModelError::Input(format!("{channels} channels: mono or stereo only")));
        }
        let mut paths = vec!["mix"];
        if separate {
            paths.extend(STEM_NAMES);
        }
        let tracks = paths
            .iter()
            .flat_map(|&path| (0..keys.len()).map(move |key| Track { path, key, blocks: Vec::new(), window: GrowingWindow::default() }))
            .collect();
        Ok(DetectStream {
            patterns: keys.iter().map(Patterns::from_key).collect(),
            keys,
            cal,
            channel,
            separate,
            channels,
            hist: vec![vec![0.0; WINDOW]; channels],
            pushed: 0,
            next_block: 0,
            first_block,
            tracks,
            blocks_done: 0,
        })
    }

    /// Feeds mix samples; analyses every block that became complete (with its context).
    pub fn push(&mut self, det: &mut Detector, mut sep: Option<&mut Separator>, input: &[&[f32]]) -> Result<(), ModelError> {
        if input.len() != self.channels || input.iter().any(|c| c.len() != input[0].len()) {
            return Err(ModelError::Input(format!("expected {} equal-length channels", self.channels)));
        }
        for i in 0..input[0].len() {
            let pos = (self.pushed + i) % WINDOW;
            for (c, ch) in input.iter().enumerate() {
                let x = ch[i];
                // A non-finite sample must not poison the analysis; it counts as silence.
                self.hist[c][pos] = if x.is_finite() { x } else { 0.0 };
            }
            // Block k is ready once CONTEXT samples past its end have arrived.
            if self.pushed + i + 1 == (self.next_block + 1) * BLOCK + CONTEXT {
                self.analyse(det, sep.as_deref_mut())?;
            }
        }
        self.pushed += input[0].len();
        Ok(())
    }

    /// End of the stream: analyses the last full block, whose after-context is cut short
    /// (zero-padded). A trailing partial block is too short to decode and is dropped.
    pub fn finish(&mut self, det: &mut Detector, sep: Option<&mut Separator>) -> Result<(), ModelError> {
        if self.pushed >= (self.next_block + 1) * BLOCK {
            let missing = (self.next_block + 1) * BLOCK + CONTEXT - self.pushed;
            let zeros = vec![0.0f32; missing];
            let chunk: Vec<&[f32]> = (0..self.channels).map(|_| zeros.as_slice()).collect();
            self.push(det, sep, &chunk)?;
        }
        Ok(())
    }

    /// A discontinuity (seek, loop, dropped input): the next sample pushed is the start of grid
    /// block `first_block`. Context is cleared; the logits gathered so far keep counting.
    pub fn restart(&mut self, first_block: i64) {
        self.first_block = first_block;
        for h in &mut self.hist {
            h.fill(0.0);
        }
        self.pushed = 0;
        self.next_block = 0;
    }

    /// The keys being read, in reading order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Samples pushed so far.
    pub fn pushed(&self) -> usize {
        self.pushed
    }

    /// Stream samples not yet analysed (the analysis lag).
    pub fn lag(&self) -> usize {
        self.pushed.saturating_sub(self.next_block * BLOCK)
    }

    /// Sample i of channel c (i within the last WINDOW samples pushed).
    fn sample(&self, c: usize, i: isize) -> f32 {
        if i < 0 { 0.0 } else { self.hist[c][i as usize % WINDOW] }
    }

    fn analyse(&mut self, det: &mut Detector, sep: Option<&mut Separator>) -> Result<(), ModelError> {
        let start = (self.next_block * BLOCK) as isize;
        let mid: Vec<f32> = (0..BLOCK)
            .map(|i| (0..self.channels).map(|c| self.sample(c, start + i as isize)).sum::<f32>() / self.channels as f32)
            .collect();
        let mut paths: Vec<(&'static str, Vec<f32>)> = vec![("mix", mid)];
        if let (true, Some(sep)) = (self.separate, sep) {
            let win = Array3::from_shape_fn((1, 2, WINDOW), |(_, c, i)| {
                self.sample(c.min(self.channels - 1), start - CONTEXT as isize + i as isize)
            });
            let stems = sep.run(&win)?;
            for (s, name) in STEM_NAMES.iter().enumerate() {
                let stem_mid = (0..BLOCK).map(|i| 0.5 * (stems[[0, s, 0, CONTEXT + i]] + stems[[0, s, 1, CONTEXT + i]])).collect();
                paths.push((name, stem_mid));
            }
        }
        let index = self.first_block + self.next_block as i64;
        for (path, audio) in paths {
            // The feature is the same for every key: one STFT and one model run per path.
            let feature = if audible(&audio) { det.block_features(&[&audio])?.pop() } else { None };
            for t in self.tracks.iter_mut().filter(|t| t.path == path) {
                t.blocks.push((index, feature.is_some()));
                if let Some(f) = &feature {
                    t.window.push(WindowBlock { index, sums: f.cell_sums(&self.patterns[t.key], index) });
                }
            }
        }
        self.next_block += 1;
        self.blocks_done += 1;
        Ok(())
    }

    /// The current decision on every path and key, and each key's joint reading ([`joint`]:
    /// every candidate charged to the key's rate), with per-block states, key by key. Logits are
    /// kept between calls ([`GrowingWindow`]), so calling this after every block stays cheap.
    pub fn readings(&mut self) -> Vec<PathReading> {
        let channel = self.channel;
        let logits: Vec<Vec<GridBlock>> = self.tracks.iter_mut().map(|t| t.window.logits(&channel).to_vec()).collect();
        let mut out = Vec::with_capacity(self.tracks.len() + self.keys.len());
        for (k, key) in self.keys.iter().enumerate() {
            let mine: Vec<usize> = (0..self.tracks.len()).filter(|&i| self.tracks[i].key == k).collect();
            // One slot per analysed block (every track has one entry per block, in one order; a
            // grid index can come twice after a seek), with each path's logits where audible.
            let mut next: Vec<std::slice::Iter<GridBlock>> = mine.iter().map(|&i| logits[i].iter()).collect();
            let analysed = mine.first().map_or(0, |&i| self.tracks[i].blocks.len());
            let slots: Vec<joint::Slot> = (0..analysed)
                .map(|j| {
                    let index = self.tracks[mine[0]].blocks[j].0;
                    let per_path = mine
                        .iter()
                        .zip(next.iter_mut())
                        .map(|(&i, it)| {
                            let audible = self.tracks[i].blocks[j].1;
                            audible.then(|| it.next()).flatten().map(|b| &b.logits).filter(|l| l.iter().all(|x| x.is_finite()))
                        })
                        .collect();
                    (index, per_path)
                })
                .collect();
            let paths: Vec<(&'static str, &[GridBlock])> = mine.iter().map(|&i| (self.tracks[i].path, logits[i].as_slice())).collect();
            let d = joint::decide_logits(&paths, Some(&slots), key, &self.cal, GridIndex::Known);
            let joint_blocks = (d.candidates.len() > paths.len()).then(|| joint::joint_slots(&slots));
            for (c, (name, decision)) in d.candidates.into_iter().enumerate() {
                let states = match mine.get(c) {
                    Some(&i) => states(&self.tracks[i].blocks, &logits[i], &decision, key),
                    None => {
                        let joint = joint_blocks.as_deref().unwrap_or_default();
                        let blocks: Vec<(i64, bool)> = slots.iter().zip(joint).map(|((index, _), b)| (*index, b.is_some())).collect();
                        let logits: Vec<GridBlock> = joint.iter().flatten().copied().collect();
                        states(&blocks, &logits, &decision, key)
                    }
                };
                out.push(PathReading { path: name, key: key.name().to_string(), fingerprint: key.fingerprint(), decision, blocks: states });
            }
        }
        out
    }
}

/// Each analysed block's state on one path: `blocks` (grid index, audible there) in analysis
/// order, `logits` those of the audible ones in the same order.
fn states(blocks: &[(i64, bool)], logits: &[GridBlock], decision: &Decision, key: &Key) -> Vec<BlockState> {
    let reference = decision.payload.and_then(|p| payload::encode(p, key).ok());
    // A block agrees when its hard bits are within 4 of what the decoded word sends there.
    let mut read = logits.iter();
    blocks
        .iter()
        .map(|(index, audible)| match (audible.then(|| read.next()).flatten(), reference) {
            (None, _) => BlockState::Uncertain,
            (Some(_), None) if decision.verdict == Verdict::Uncertain => BlockState::Uncertain,
            (Some(_), None) => BlockState::NotMarked,
            (Some(b), Some(w)) => {
                let sent = payload::block_word(w, key, *index);
                if (payload::from_logits(&b.logits) ^ sent).count_ones() <= 4 { BlockState::Marked } else { BlockState::NotMarked }
            }
        })
        .collect()
}
