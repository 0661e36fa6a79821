//! The signal contract: the one place for every number that training, export and runtime share.

/// Sample rate the models run at. Other rates are resampled to this and back.
pub const SAMPLE_RATE: u32 = 44_100;
/// One watermark block: 2 s at 44.1 kHz. Block k covers samples [k·BLOCK, (k+1)·BLOCK).
pub const BLOCK: usize = 88_200;
/// STFT size (Hann window of this length, periodic).
pub const N_FFT: usize = 1024;
/// STFT hop. 88 200 = 360 · 245, so every block holds a whole number of frames and frame
/// centres fall on the block grid: frame j of the signal is centred on sample j·HOP.
pub const HOP: usize = 245;
/// Frequency bins of the one-sided spectrum.
pub const BINS: usize = N_FFT / 2 + 1;
/// STFT frames whose centres lie inside one block.
pub const FRAMES_PER_BLOCK: usize = BLOCK / HOP;
/// Message bits per block (payload + integrity check).
pub const MESSAGE_BITS: usize = 32;
/// Bits of the user payload carried in each block.
pub const PAYLOAD_BITS: usize = 24;
/// Bits of the integrity check (CRC-8) that complete the message.
pub const CHECK_BITS: usize = MESSAGE_BITS - PAYLOAD_BITS;
/// Blocks in one cycle of a key's block masks: block k's word is XORed with mask k mod this (see
/// [`crate::keys::Key::block_mask`]). A detector that does not know where the grid started tries
/// every shift of the cycle, so the period trades that search (a factor in the false-positive
/// rate) against how often a consistent misreading repeats.
pub const MASK_PERIOD: usize = 16;
/// Width of the ±1 key vector the networks are conditioned on.
pub const KEY_DIM: usize = 64;
/// Length of a secret key in bytes (128 bits).
pub const KEY_BYTES: usize = 16;
/// Stems the separator produces, in output order.
pub const STEM_NAMES: [&str; 2] = ["foreground", "background"];
/// Loudness every stem is normalised to before mixing (the paper's −16 LUFS).
pub const STEM_LUFS: f64 = -16.0;
/// Length of a training clip in samples (20 s).
pub const CLIP: usize = 20 * SAMPLE_RATE as usize;

const _: () = assert!(BLOCK.is_multiple_of(HOP), "frames must tile a block exactly");
const _: () = assert!(PAYLOAD_BITS + CHECK_BITS == MESSAGE_BITS);

/// The same facts as a value, for manifests and for checking a model against the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignalSpec {
    pub sample_rate: u32,
    pub block: usize,
    pub n_fft: usize,
    pub hop: usize,
    pub message_bits: usize,
    pub payload_bits: usize,
    pub key_dim: usize,
    pub stems: usize,
}

impl SignalSpec {
    /// The spec this build was compiled with.
    pub const CURRENT: SignalSpec = SignalSpec {
        sample_rate: SAMPLE_RATE,
        block: BLOCK,
        n_fft: N_FFT,
        hop: HOP,
        message_bits: MESSAGE_BITS,
        payload_bits: PAYLOAD_BITS,
        key_dim: KEY_DIM,
        stems: STEM_NAMES.len(),
    };
}

/// The tile channel's geometry (the design is described in [`crate::tile`]). The mark
/// lives on the STFT magnitude in bins `TILE_BAND` (0.52–12.0 kHz): below it the host's energy is
/// large and separators and codecs treat it roughly, above it Spleeter zeroes everything and MP3
/// thins it out.
pub const TILE_BAND: std::ops::Range<usize> = 12..279;
/// A tile is this many frames (11 ms) …
pub const TILE_FRAMES: usize = 2;
/// … by this many bins (129 Hz). Smaller tiles read better after resynthesis, single frames lose
/// half the signal to the window's smear.
pub const TILE_BINS: usize = 3;
/// Tile columns (time) per block.
pub const TILE_COLS: usize = FRAMES_PER_BLOCK / TILE_FRAMES;
/// Tile rows (frequency), lowest first.
pub const TILE_ROWS: usize = (TILE_BAND.end - TILE_BAND.start) / TILE_BINS;
/// A unit is two time-adjacent tiles of one row with opposite signs (a patchwork pair); unit
/// `u = j·TILE_ROWS + r` covers tiles `(2j, r)` and `(2j + 1, r)`. Unit columns per block:
pub const TILE_UNIT_COLS: usize = TILE_COLS / 2;
/// Units per block.
pub const TILE_UNITS: usize = TILE_UNIT_COLS * TILE_ROWS;
/// The detector's rows fall into this many band groups (equal row counts) …
pub const CELL_BAND_GROUPS: usize = 6;
/// … and its units into level classes split at these levels (ln units, the unit's level relative
/// to its row's median): quiet, typical, loud.
pub const CELL_LEVEL_EDGES: [f64; 2] = [0.0, 1.0];
/// Cells of the detector's partial sums: band group × level class.
pub const CELLS: usize = CELL_BAND_GROUPS * (CELL_LEVEL_EDGES.len() + 1);

const _: () = assert!(FRAMES_PER_BLOCK.is_multiple_of(2 * TILE_FRAMES), "units must tile a block's columns");
const _: () = assert!((TILE_BAND.end - TILE_BAND.start).is_multiple_of(TILE_BINS), "rows must tile the band");

/// Seconds → samples at the model rate.
pub fn seconds(s: f64) -> usize {
    (s * SAMPLE_RATE as f64).round() as usize
}

/// The separator runs on segments of this many samples (8 s), overlapped and cross-faded, so long
/// inputs need bounded memory and every output sample has context on both sides.
pub const SEPARATOR_SEGMENT: usize = 4 * BLOCK;
/// Overlap between consecutive separator segments (1 s), cross-faded linearly.
pub const SEPARATOR_OVERLAP: usize = BLOCK / 2;
