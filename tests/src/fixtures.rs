//! Audio fixtures, raw audio files for child hosts, and where the built bundles are.

use std::path::{Path, PathBuf};

use stemmark_offline::testkit;

/// The workspace root (tests/ is one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `target/<dir>/Stemmark.clap` (honouring `CARGO_TARGET_DIR`); panics with the command that
/// builds it when it is missing.
pub fn bundle(dir: &str, command: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| workspace_root().join(t))
        .unwrap_or_else(|| workspace_root().join("target"));
    let b = target.join(dir).join("Stemmark.clap");
    assert!(b.is_file(), "{} is missing: build it with `{command}`", b.display());
    b
}

/// Wesnoth's music (Debian `wesnoth-1.16-music`, installed by the corpus set-up).
const WESNOTH: &str = "/usr/share/games/wesnoth/1.16/data/core/music";

/// `seconds` of real music at 44.1 kHz stereo from the named Wesnoth track (skipping its first
/// second of fade-in) if it is installed, else synthetic music-like audio.
pub fn wesnoth_44k(track: &str, seconds: usize, fallback_seed: u32) -> Vec<Vec<f32>> {
    let frames = seconds * 44_100;
    let real = Path::new(WESNOTH).join(track);
    if let Ok(a) = stemmark_offline::audio::read(&real)
        && let Ok(a) = a.to_stereo()
    {
        let mut ch = if a.rate == 44_100 {
            a.channels
        } else {
            stemmark_models::resample::resample_planar(&a.channels, a.rate, 44_100).unwrap()
        };
        if ch[0].len() >= frames + 44_100 {
            for c in &mut ch {
                c.drain(..44_100);
                c.truncate(frames);
            }
            return ch;
        }
    }
    testkit::music_like(44_100, seconds as f64, fallback_seed).channels
}

/// 30 s (15 blocks) of real music if the Debian wesnoth music is installed, else synthetic.
pub fn music_44k(seconds: usize) -> Vec<Vec<f32>> {
    wesnoth_44k("transience.ogg", seconds, 3)
}

/// Planar audio as one raw little-endian f32 file, channel after channel.
pub fn write_raw(path: &Path, channels: &[Vec<f32>]) {
    let mut bytes = Vec::with_capacity(channels.len() * channels[0].len() * 4);
    for c in channels {
        for x in c {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// The inverse of [`write_raw`].
pub fn read_raw(path: &Path, channels: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let all: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let n = all.len() / channels;
    (0..channels).map(|c| all[c * n..(c + 1) * n].to_vec()).collect()
}

/// The last `n` bytes of `s` (on a character boundary), for logs in failure messages.
pub fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    &s[start..]
}

/// A private Xvfb display for editor screenshots, stopped (cleanly, so it removes its lock
/// file) when dropped.
pub struct Xvfb {
    child: std::process::Child,
    pub display: String,
}

impl Xvfb {
    /// Starts Xvfb on the first display number without a lock file; None if Xvfb is missing.
    pub fn start(width: u32, height: u32) -> Option<Xvfb> {
        let n = (90..200).find(|n| !Path::new(&format!("/tmp/.X{n}-lock")).exists())?;
        let display = format!(":{n}");
        let child = std::process::Command::new("Xvfb")
            .args([&display, "-screen", "0", &format!("{width}x{height}x24"), "-nolisten", "tcp"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // Ready once its socket exists.
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
        let t0 = std::time::Instant::now();
        while !socket.exists() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        Some(Xvfb { child, display })
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove /tmp/.X<n>-lock; a SIGKILL would leave it behind.
        let _ = std::process::Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}
