//! `cargo xtask demo`: the main job on real audio.

use anyhow::Result;

pub fn main(_args: &[String]) -> Result<()> {
    crate::setup::install_ort(false)?;
    anyhow::bail!("demo: not wired yet")
}
