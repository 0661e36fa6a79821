//! What the Embed worker tells the editor (and tests, through the log): lock-free counters for
//! the audio thread's side, and small mutex-guarded strings that only the worker and the GUI
//! touch (never the audio thread).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Where the worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Loading ONNX Runtime and the embedder.
    Loading = 0,
    /// Marking every block.
    Marking = 1,
    /// Ready, but no key is set: audio passes through delayed.
    NoKey = 2,
    /// The model could not be loaded: audio passes through delayed (see `error`).
    Failed = 3,
    /// Not activated.
    Idle = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Loading,
            1 => State::Marking,
            2 => State::NoKey,
            3 => State::Failed,
            _ => State::Idle,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Loading => "loading model",
            State::Marking => "marking",
            State::NoKey => "no key",
            State::Failed => "error: passing audio through",
            State::Idle => "not active",
        }
    }
}

/// Shared between the plugin, its worker and its editor.
pub struct Status {
    state: AtomicU8,
    /// Blocks the embedder has marked since activation.
    pub blocks_marked: AtomicU64,
    /// Host buffers that went out dry in real time because the worker was late.
    pub late_buffers: AtomicU64,
    /// Worker time for the last marked block (model + STFT/iSTFT + resampling), microseconds.
    pub last_block_us: AtomicU64,
    /// Worker time spent in the marking pipeline (resampling, STFT/iSTFT, model), microseconds,
    /// and the host frames it covered: their ratio is the instance's CPU share.
    pub busy_us: AtomicU64,
    pub busy_frames: AtomicU64,
    /// Reported latency in host samples.
    pub latency: AtomicU32,
    /// Provider the session runs on, as text ("CPU"/"CUDA"), and the last error, if any.
    text: Mutex<StatusText>,
}

#[derive(Default, Clone)]
pub struct StatusText {
    pub provider: String,
    pub error: String,
    pub models: String,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            state: AtomicU8::new(State::Idle as u8),
            blocks_marked: AtomicU64::new(0),
            late_buffers: AtomicU64::new(0),
            last_block_us: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            busy_frames: AtomicU64::new(0),
            latency: AtomicU32::new(0),
            text: Mutex::new(StatusText::default()),
        }
    }
}

impl Status {
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Not for the audio thread.
    pub fn text(&self) -> StatusText {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Not for the audio thread.
    pub fn edit_text(&self, f: impl FnOnce(&mut StatusText)) {
        if let Ok(mut t) = self.text.lock() {
            f(&mut t);
        }
    }
}
