//! One reading per key across the paths a detection reads: the mix and each separated stem.
//!
//! Every path's logits are N(0, 1) per bit without a mark, but the paths are not independent (a
//! separated stem is a function of the mix), so summing them does not keep the null. The *joint*
//! candidate sums a block's logits over the paths that have that block and divides the sum by its
//! standard deviation √(Σ_{p,q} C_pq), where C_pq is the mean product of path p's and q's logits
//! over the window: the paths' covariance, which the theory gives without a mark (1 on the
//! diagonal). With a mark each product also carries the mark's share, so the estimate only errs
//! large: a mark makes the joint weaker than an oracle's, never a null stronger than N(0, 1).
//! Measuring C on the reading's own logits is what keeps the null: the normaliser moves with the
//! numerator. (Tried and dropped: C from probe keys with weights C⁻¹μ from the other blocks; its
//! normaliser's sampling error is independent of the numerator, and with 15 blocks the joint's
//! null reached the 1e-2 presence level 2–3× as often as the bound allows.)
//!
//! The key's one reading is the best of its candidates — each path alone and the joint — and
//! every candidate is charged: each candidate's false-payload bound counts shifts × candidates
//! hypotheses, so whichever one names the payload, the stated rate covers all of them.

use super::window::{self, ShiftSearch};
use super::{BlockFeature, Params, Patterns};
use crate::decision::{Calibration, Decision, GridBlock, GridIndex, Verdict};
use crate::keys::Key;
use crate::spec::MESSAGE_BITS;

/// The joint candidate's name, beside the paths' own ("mix", stem names).
pub const JOINT: &str = "joint";

/// A key's reading over several paths.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDecision {
    /// The candidate whose reading is the key's: a path's name or [`JOINT`].
    pub carried_by: &'static str,
    /// That candidate's decision: the key's one reading.
    pub decision: Decision,
    /// Every candidate's decision, the paths in the order given, then the joint (with two paths
    /// or more), each charged to the same hypothesis count.
    pub candidates: Vec<(&'static str, Decision)>,
}

/// One block of a reading on several paths: its grid index and its logits on each path (`None`
/// where that path has no block there).
pub type Slot<'a> = (i64, Vec<Option<&'a [f32; MESSAGE_BITS]>>);

/// How many candidates `paths` paths give: each path, and the joint when there are two or more.
pub fn candidates(paths: usize) -> usize {
    paths + usize::from(paths >= 2)
}

/// The joint logits of blocks read on several paths on one grid. `slots[j]` is one block: its
/// grid index and its logits on each path (`None` where that path has no block there, or a
/// non-finite logit). A slot with no path is left out.
pub fn joint_logits(slots: &[Slot<'_>]) -> Vec<GridBlock> {
    joint_slots(slots).into_iter().flatten().collect()
}

/// [`joint_logits`] slot by slot: `None` where no path has the block.
pub fn joint_slots(slots: &[Slot<'_>]) -> Vec<Option<GridBlock>> {
    let paths = slots.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    // C_pq: mean product over the bits of the blocks both paths have.
    let mut sum = vec![vec![0.0f64; paths]; paths];
    let mut count = vec![vec![0usize; paths]; paths];
    for (_, s) in slots {
        for (p, lp) in s.iter().enumerate() {
            for (q, lq) in s.iter().enumerate().skip(p) {
                if let (Some(a), Some(b)) = (lp, lq) {
                    sum[p][q] += a
                        .iter()
                        .zip(b.iter())
                        .map(|(&x, &y)| x as f64 * y as f64)
                        .sum::<f64>();
                    count[p][q] += MESSAGE_BITS;
                }
            }
        }
    }
    let var: Vec<f64> = (0..paths)
        .map(|p| {
            if count[p][p] > 0 {
                sum[p][p] / count[p][p] as f64
            } else {
                1.0
            }
        })
        .collect();
    let cov = |p: usize, q: usize| {
        let (p, q) = (p.min(q), p.max(q));
        // Two paths that never share a block: take them as fully correlated (the largest sum).
        if count[p][q] > 0 {
            sum[p][q] / count[p][q] as f64
        } else {
            (var[p] * var[q]).sqrt()
        }
    };
    slots
        .iter()
        .map(|(index, s)| {
            let present: Vec<usize> = (0..s.len()).filter(|&p| s[p].is_some()).collect();
            let v: f64 = present
                .iter()
                .flat_map(|&p| present.iter().map(move |&q| (p, q)))
                .map(|(p, q)| cov(p, q))
                .sum();
            (!present.is_empty() && v > 0.0).then(|| {
                let scale = v.sqrt().recip();
                GridBlock {
                    index: *index,
                    logits: std::array::from_fn(|b| {
                        (present
                            .iter()
                            .map(|&p| s[p].expect("present")[b] as f64)
                            .sum::<f64>()
                            * scale) as f32
                    }),
                }
            })
        })
        .collect()
}

/// Lines up paths' blocks by grid index (each path's indices distinct, as on a file's grid) into
/// the slots of [`joint_logits`], in index order; non-finite blocks count as absent.
pub fn slots_by_index<'a>(paths: &[&'a [GridBlock]]) -> Vec<Slot<'a>> {
    let mut slots: std::collections::BTreeMap<i64, Vec<Option<&'a [f32; MESSAGE_BITS]>>> =
        Default::default();
    for (p, blocks) in paths.iter().enumerate() {
        for b in blocks
            .iter()
            .filter(|b| b.logits.iter().all(|x| x.is_finite()))
        {
            slots
                .entry(b.index)
                .or_insert_with(|| vec![None; paths.len()])[p] = Some(&b.logits);
        }
    }
    slots.into_iter().collect()
}

/// A key's reading of block features on several paths on one grid (`paths`: name and the
/// reader's grid index and feature of each audible block). With a searched grid, every shift of
/// the cycle is tried on every candidate.
pub fn decide(
    paths: &[(&'static str, Vec<(i64, &BlockFeature)>)],
    patterns: &Patterns,
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
    params: &Params,
) -> KeyDecision {
    let names: Vec<&'static str> = paths.iter().map(|(name, _)| *name).collect();
    // [path][shift]: each path's logits at each shift (the costly part, computed once).
    let by_path: Vec<Vec<Vec<GridBlock>>> = paths
        .iter()
        .map(|(_, blocks)| {
            (0..grid.hypotheses())
                .map(|shift| window::shifted_logits(blocks, patterns, shift, params))
                .collect()
        })
        .collect();
    let joint: Option<Vec<Vec<GridBlock>>> = (paths.len() >= 2).then(|| {
        (0..grid.hypotheses())
            .map(|shift| {
                let at_shift: Vec<&[GridBlock]> =
                    by_path.iter().map(|p| p[shift].as_slice()).collect();
                joint_logits(&slots_by_index(&at_shift))
            })
            .collect()
    });
    let searches: Vec<ShiftSearch> = by_path
        .into_iter()
        .chain(joint)
        .map(|by_shift| window::search(by_shift, key))
        .collect();
    conclude(&names, &searches, key, cal, grid)
}

/// [`decide`] for logits that do not depend on the grid shift (Stemmark Detect's running reading
/// on its known grid), one list per path on a common grid. `slots`, when given, lines the paths'
/// blocks up for the joint (a stream can read one grid index twice, after a seek); without it
/// they are lined up by index ([`slots_by_index`]).
pub fn decide_logits(
    paths: &[(&'static str, &[GridBlock])],
    slots: Option<&[Slot<'_>]>,
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
) -> KeyDecision {
    let names: Vec<&'static str> = paths.iter().map(|(n, _)| *n).collect();
    let joint = (paths.len() >= 2).then(|| match slots {
        Some(s) => joint_logits(s),
        None => joint_logits(&slots_by_index(
            &paths.iter().map(|(_, b)| *b).collect::<Vec<_>>(),
        )),
    });
    let searches: Vec<ShiftSearch> = paths
        .iter()
        .map(|(_, b)| b.to_vec())
        .chain(joint)
        .map(|logits| window::search(std::iter::repeat_n(logits, grid.hypotheses()), key))
        .collect();
    conclude(&names, &searches, key, cal, grid)
}

/// Every candidate's decision, charged to all of them, and the key's: the Found candidate with
/// the smallest false-payload bound, else the one with the largest correlation.
fn conclude(
    names: &[&'static str],
    searches: &[ShiftSearch],
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
) -> KeyDecision {
    let n = searches.len();
    let candidates: Vec<(&'static str, Decision)> = names
        .iter()
        .copied()
        .chain((n > names.len()).then_some(JOINT))
        .zip(searches)
        .map(|(name, s)| (name, s.decide(key, cal, grid, n)))
        .collect();
    let rank = |d: &Decision| (d.verdict == Verdict::Found, -d.false_positive_rate, d.z);
    let best = candidates
        .iter()
        .enumerate()
        .max_by(|(_, (_, a)), (_, (_, b))| {
            rank(a)
                .partial_cmp(&rank(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(i, _)| i);
    match best {
        Some(i) => KeyDecision {
            carried_by: candidates[i].0,
            decision: candidates[i].1.clone(),
            candidates,
        },
        None => KeyDecision {
            carried_by: "",
            decision: window::decide_logits(&[], key, cal, grid),
            candidates,
        },
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::code;
    use crate::payload;
    use crate::tile::testsignal::gauss;

    fn key(i: u8) -> Key {
        Key::from_bytes([i; 16], format!("k{i}"))
    }

    /// Three paths of n blocks: noise of unit variance whose paths correlate (path 0 =
    /// (a + c + 2d)/√6, paths 1 and 2 = a and c: ρ = 1/√6 between 0 and the others), plus μ_p ×
    /// the stem's bits on path p.
    fn paths(
        rng: &mut ChaCha8Rng,
        word: Option<(u32, &Key)>,
        n: usize,
        mu: [f64; 3],
    ) -> [Vec<GridBlock>; 3] {
        let mut out: [Vec<GridBlock>; 3] = Default::default();
        for index in 0..n as i64 {
            let bits = word.map_or([0.0; MESSAGE_BITS], |(w, k)| {
                payload::to_bipolar(payload::block_word(w, k, index))
            });
            let (mut l0, mut l1, mut l2) = (
                [0f32; MESSAGE_BITS],
                [0f32; MESSAGE_BITS],
                [0f32; MESSAGE_BITS],
            );
            for b in 0..MESSAGE_BITS {
                let (a, c, d) = (gauss(rng), gauss(rng), gauss(rng));
                let s = bits[b] as f64;
                l0[b] = ((a + c + 2.0 * d) / 6f64.sqrt() + mu[0] * s) as f32;
                l1[b] = (a + mu[1] * s) as f32;
                l2[b] = (c + mu[2] * s) as f32;
            }
            for (p, l) in [l0, l1, l2].into_iter().enumerate() {
                out[p].push(GridBlock { index, logits: l });
            }
        }
        out
    }

    fn read(p: &[Vec<GridBlock>; 3], k: &Key, grid: GridIndex) -> KeyDecision {
        let named = [
            ("mix", p[0].as_slice()),
            ("a", p[1].as_slice()),
            ("b", p[2].as_slice()),
        ];
        decide_logits(&named, None, k, &Calibration::default(), grid)
    }

    #[test]
    fn joint_logits_of_correlated_paths_stay_unit_normal() {
        // Without a mark the joint of correlated paths has unit variance (the naive sum of these
        // three has 3 + 2·(0.41 + 0.41) ≈ 4.6), also where a path lacks blocks.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let p = paths(&mut rng, None, 400, [0.0; 3]);
        let mut b = p[2].clone();
        b.retain(|x| x.index % 3 != 0);
        let joint = joint_logits(&slots_by_index(&[&p[0], &p[1], &b]));
        assert_eq!(joint.len(), 400);
        let x: Vec<f64> = joint
            .iter()
            .flat_map(|g| g.logits.iter().map(|&v| v as f64))
            .collect();
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        // 12 800 values: the mean's sd is 0.009 and the variance's 0.0125.
        assert!(
            mean.abs() < 0.04 && (var - 1.0).abs() < 0.05,
            "mean {mean}, variance {var}"
        );
        // The naive sum is not.
        let naive: Vec<f64> = (0..400)
            .flat_map(|j| (0..MESSAGE_BITS).map(move |b| (j, b)))
            .map(|(j, b)| (p[0][j].logits[b] + p[1][j].logits[b] + p[2][j].logits[b]) as f64)
            .collect();
        let nv = naive.iter().map(|v| v * v).sum::<f64>() / naive.len() as f64;
        assert!(nv > 4.0 && nv < 5.3, "naive variance {nv}");
    }

    #[test]
    fn the_null_of_the_key_reading_stays_under_its_bound() {
        // Unmarked correlated paths: no payload, and the key's reading (best of 4 candidates,
        // each charged 4×) reaches presence level p at most about p of the time.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut found, mut presence) = (0, Vec::new());
        for t in 0..600u32 {
            let k = key((t % 100) as u8);
            let p = paths(&mut rng, None, 15, [0.0; 3]);
            let d = read(&p, &k, GridIndex::Known);
            assert_eq!(d.candidates.len(), 4);
            found += usize::from(d.decision.verdict == Verdict::Found);
            presence.push(code::presence_bound(d.decision.z, 4));
        }
        assert_eq!(found, 0);
        let n = presence.len() as f64;
        for p in [0.3, 0.1, 0.03] {
            let under = presence.iter().filter(|&&x| x <= p).count() as f64;
            println!("presence bound ≤ {p}: {under} of {n}");
            assert!(
                under <= 1.5 * p * n + 4.0 * (p * n).sqrt(),
                "{under} readings at ≤ {p}"
            );
        }
    }

    #[test]
    fn the_joint_reads_what_no_path_reads_alone_and_says_so() {
        // The mark split over the paths, each weak alone (T ≈ 7.0 over 17 blocks, the threshold
        // at 64 hypotheses is 8.0): the joint names it most times, charged 4× (T ≈ 9.0: the
        // mark's share in the covariance estimate costs it 0.8 of the oracle's 9.8). Measured:
        // joint 35 of 40, some path alone 15.
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let k = key(3);
        let word = payload::encode(0x00_c0_de, &k).unwrap();
        let (mut joint, mut alone) = (0, 0);
        for _ in 0..40 {
            let p = paths(&mut rng, Some((word, &k)), 17, [0.3, 0.3, 0.3]);
            let d = read(&p, &k, GridIndex::Search);
            assert!(
                d.decision.payload.is_none_or(|x| x == 0xc0de),
                "wrong payload {:?}",
                d.decision.payload
            );
            let hyp = GridIndex::Search.hypotheses() * 4;
            assert!(
                (d.decision.false_positive_rate - code::false_payload_bound(d.decision.z, hyp))
                    .abs()
                    < 1e-12
            );
            joint += usize::from(d.carried_by == JOINT && d.decision.payload == Some(0xc0de));
            alone += usize::from(d.candidates[..3].iter().any(|(_, c)| c.payload.is_some()));
        }
        println!("of 40: the joint named it {joint} times, some path alone {alone} times");
        assert!(
            joint >= 30 && joint >= alone + 12,
            "joint {joint}, alone {alone}"
        );
        // A mark on one path only: that path carries it.
        let p = paths(&mut rng, Some((word, &k)), 15, [0.0, 1.0, 0.0]);
        let d = read(&p, &k, GridIndex::Search);
        assert_eq!((d.carried_by, d.decision.payload), ("a", Some(0xc0de)));
    }

    #[test]
    fn one_path_is_read_as_before() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let k = key(8);
        let word = payload::encode(0x00_0f_0f, &k).unwrap();
        let p = paths(&mut rng, Some((word, &k)), 10, [0.8, 0.0, 0.0]);
        let d = decide_logits(
            &[("mix", &p[0])],
            None,
            &k,
            &Calibration::default(),
            GridIndex::Search,
        );
        let single = window::decide_logits(&p[0], &k, &Calibration::default(), GridIndex::Search);
        assert_eq!((d.carried_by, d.candidates.len()), ("mix", 1));
        assert_eq!(d.decision, single);
        // No blocks at all: nothing found, no panic.
        let d = decide_logits(
            &[("mix", &[][..]), ("a", &[][..])],
            None,
            &k,
            &Calibration::default(),
            GridIndex::Search,
        );
        assert_eq!(
            (d.decision.verdict, d.decision.blocks),
            (Verdict::NotFound, 0)
        );
    }
}
