//! The host timeline as both plugins' audio threads follow it: the transport's position while
//! it plays, our own count otherwise. A position that does not continue the last buffer is a
//! seek, loop or transport start, and the worker must start a new run there. Real-time safe.

#[derive(Debug, Default)]
pub struct Timeline {
    /// Position expected for the next buffer while the transport plays.
    expected: Option<i64>,
    /// Timeline position of the next frame (our own count when the host gives none).
    counted: i64,
}

impl Timeline {
    /// A buffer of `n` frames at the transport `position` (None when stopped or unknown): true
    /// when it does not continue the previous one; [`Timeline::now`] is then the new position.
    pub fn jumped(&mut self, position: Option<i64>, n: usize) -> bool {
        match position {
            Some(p) => {
                let jumped = self.expected != Some(p);
                if jumped {
                    self.counted = p;
                }
                self.expected = Some(p + n as i64);
                jumped
            }
            None => {
                self.expected = None;
                false
            }
        }
    }

    /// Timeline position of the next frame.
    pub fn now(&self) -> i64 {
        self.counted
    }

    /// `n` frames were processed.
    pub fn advance(&mut self, n: usize) {
        self.counted += n as i64;
    }

    /// Host reset: the next run starts at 0 (or at the next position the transport gives).
    pub fn reset(&mut self) {
        self.counted = 0;
        self.expected = Some(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_are_seeks_loops_and_starts_and_stopped_buffers_count_on() {
        let mut t = Timeline::default();
        assert!(t.jumped(Some(1000), 64), "transport start");
        assert_eq!(t.now(), 1000);
        t.advance(64);
        assert!(!t.jumped(Some(1064), 64));
        t.advance(64);
        assert!(t.jumped(Some(0), 64), "loop back");
        assert_eq!(t.now(), 0);
        t.advance(64);
        assert!(!t.jumped(None, 32), "stopped: our own count");
        t.advance(32);
        assert_eq!(t.now(), 96);
        t.reset();
        assert!(!t.jumped(Some(0), 16), "a reset expects position 0");
    }
}
