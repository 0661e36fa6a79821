//! Batches drawn on a background thread, a few steps ahead of training.
//!
//! Reading and loudness-normalising corpus clips costs about a third of a CPU step; on its own
//! thread it overlaps with the step. Each batch is a function of its step number alone (the
//! maker gets the step), so resuming at step s draws exactly the batches a straight run would.

use std::sync::mpsc::{Receiver, sync_channel};

use anyhow::{Result, anyhow, bail};

/// Batches made ahead of the one in use.
const AHEAD: usize = 3;

type Maker<T> = Box<dyn FnMut(u64) -> Result<T> + Send>;

pub struct Prefetch<T: Send + 'static> {
    maker: Option<Maker<T>>,
    rx: Option<Receiver<(u64, Result<T>)>>,
    next: u64,
}

impl<T: Send + 'static> Prefetch<T> {
    /// `make(step)` builds the batch of `step`; it starts running at the first [`Prefetch::get`].
    pub fn new(make: impl FnMut(u64) -> Result<T> + Send + 'static) -> Self {
        Prefetch { maker: Some(Box::new(make)), rx: None, next: 0 }
    }

    /// The batch of `step`. Steps must be asked for in order, starting anywhere.
    pub fn get(&mut self, step: u64) -> Result<T> {
        if self.rx.is_none() {
            let mut make = self.maker.take().ok_or_else(|| anyhow!("the batch thread has stopped"))?;
            let (tx, rx) = sync_channel(AHEAD);
            std::thread::Builder::new().name("batches".into()).spawn(move || {
                for s in step.. {
                    if tx.send((s, make(s))).is_err() {
                        break;
                    }
                }
            })?;
            self.rx = Some(rx);
            self.next = step;
        }
        if step != self.next {
            bail!("batch of step {step} asked for, but the thread is at step {}", self.next);
        }
        let (s, batch) = self.rx.as_ref().expect("started").recv().map_err(|_| anyhow!("the batch thread died"))?;
        debug_assert_eq!(s, step);
        self.next += 1;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_follow_the_step_from_wherever_it_starts() {
        let mut p = Prefetch::new(|s| Ok(s * 10));
        assert_eq!(p.get(5).unwrap(), 50);
        assert_eq!(p.get(6).unwrap(), 60);
        assert!(p.get(9).is_err(), "out of order is an error");
        let mut failing = Prefetch::new(|s| if s == 1 { bail!("unreadable clip") } else { Ok(s) });
        assert_eq!(failing.get(0).unwrap(), 0);
        assert!(failing.get(1).unwrap_err().to_string().contains("unreadable"));
        assert_eq!(failing.get(2).unwrap(), 2, "one bad batch does not stop the thread");
    }
}
