//! Scrambled Sobol points: a low-discrepancy sequence in the unit cube, randomised by a seed
//! with a linear matrix scramble and a digital shift, so that different seeds give different,
//! equally even point sets.
//!
//! Direction numbers: S. Joe and F. Y. Kuo, "Constructing Sobol sequences with better
//! two-dimensional projections" (SIAM J. Sci. Comput. 30, 2008), the `new-joe-kuo-6.21201`
//! set, first dimensions. Beyond them, points fall back to the seed's pseudo-random stream.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Bits of each coordinate.
const BITS: usize = 32;

/// Primitive polynomial (with its leading and trailing terms) and initial direction numbers
/// `m_1..m_s` of dimensions 2 onwards; dimension 1 is the van der Corput sequence.
const JOE_KUO: &[(u32, &[u32])] = &[
    (3, &[1]),
    (7, &[1, 3]),
    (11, &[1, 3, 1]),
    (13, &[1, 1, 1]),
    (19, &[1, 1, 3, 3]),
    (25, &[1, 3, 5, 13]),
    (37, &[1, 1, 5, 5, 17]),
    (41, &[1, 1, 5, 5, 5]),
    (47, &[1, 1, 7, 11, 19]),
    (55, &[1, 1, 5, 1, 1]),
    (59, &[1, 1, 1, 3, 11]),
    (61, &[1, 3, 5, 5, 31]),
    (67, &[1, 3, 3, 9, 7, 49]),
    (91, &[1, 1, 1, 15, 21, 21]),
    (97, &[1, 3, 1, 13, 27, 49]),
    (103, &[1, 1, 1, 15, 7, 5]),
    (109, &[1, 3, 1, 15, 13, 25]),
    (115, &[1, 1, 5, 5, 19, 61]),
    (131, &[1, 3, 7, 11, 23, 15, 103]),
    (137, &[1, 3, 7, 13, 13, 15, 69]),
    (143, &[1, 1, 3, 13, 7, 35, 63]),
    (145, &[1, 3, 5, 9, 1, 25, 53]),
    (157, &[1, 3, 1, 13, 9, 35, 107]),
    (167, &[1, 3, 1, 5, 27, 61, 31]),
    (171, &[1, 1, 5, 11, 19, 41, 61]),
    (185, &[1, 3, 5, 3, 3, 13, 69]),
    (191, &[1, 1, 7, 13, 1, 19, 1]),
    (193, &[1, 3, 7, 5, 13, 19, 59]),
    (203, &[1, 1, 3, 9, 25, 29, 41]),
    (211, &[1, 3, 5, 13, 23, 1, 55]),
    (213, &[1, 3, 7, 3, 13, 59, 17]),
    (229, &[1, 3, 1, 3, 5, 53, 69]),
    (239, &[1, 1, 5, 5, 23, 33, 13]),
    (241, &[1, 1, 7, 7, 1, 61, 123]),
    (247, &[1, 1, 7, 9, 13, 61, 49]),
    (253, &[1, 3, 3, 5, 3, 55, 33]),
    (285, &[1, 3, 1, 15, 31, 13, 49, 245]),
    (299, &[1, 3, 5, 15, 31, 59, 63, 97]),
    (301, &[1, 3, 1, 11, 11, 11, 77, 249]),
    (333, &[1, 3, 1, 11, 27, 43, 71, 9]),
    (351, &[1, 1, 7, 15, 21, 11, 81, 45]),
    (355, &[1, 3, 7, 3, 25, 31, 65, 79]),
    (357, &[1, 3, 1, 1, 19, 11, 3, 205]),
    (361, &[1, 1, 5, 9, 19, 21, 29, 157]),
    (369, &[1, 3, 7, 11, 1, 33, 89, 185]),
    (391, &[1, 3, 3, 3, 15, 9, 79, 71]),
    (397, &[1, 3, 7, 11, 15, 39, 119, 27]),
    (425, &[1, 1, 3, 1, 11, 31, 97, 225]),
    (451, &[1, 1, 1, 3, 23, 43, 57, 177]),
    (463, &[1, 3, 7, 7, 17, 17, 37, 71]),
    (487, &[1, 3, 1, 5, 27, 63, 123, 213]),
    (501, &[1, 1, 3, 5, 11, 43, 53, 133]),
    (529, &[1, 3, 5, 5, 29, 17, 47, 173, 479]),
    (539, &[1, 3, 3, 11, 3, 1, 109, 9, 69]),
    (545, &[1, 1, 1, 5, 17, 39, 23, 5, 343]),
    (557, &[1, 3, 1, 5, 25, 15, 31, 103, 499]),
    (563, &[1, 1, 1, 11, 11, 17, 63, 105, 183]),
    (601, &[1, 1, 5, 11, 9, 29, 97, 231, 363]),
    (607, &[1, 1, 5, 15, 19, 45, 41, 7, 383]),
    (617, &[1, 3, 7, 7, 31, 19, 83, 137, 221]),
    (623, &[1, 1, 1, 3, 23, 15, 111, 223, 83]),
    (631, &[1, 1, 5, 13, 31, 15, 55, 25, 161]),
    (637, &[1, 1, 3, 13, 25, 47, 39, 87, 257]),
];

/// Dimensions with Sobol coordinates.
pub const MAX_DIMENSIONS: usize = JOE_KUO.len() + 1;

/// A scrambled Sobol sequence of `dims` dimensions.
#[derive(Debug, Clone)]
pub struct Sobol {
    /// Scrambled direction numbers, `BITS` per dimension.
    directions: Vec<[u32; BITS]>,
    /// Digital shift per dimension.
    shifts: Vec<u32>,
}

impl Sobol {
    /// The sequence for `dims` dimensions, scrambled by `seed`.
    pub fn new(dims: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_50B0_1000_0000);
        let mut directions = Vec::with_capacity(dims);
        let mut shifts = Vec::with_capacity(dims);
        for d in 0..dims.min(MAX_DIMENSIONS) {
            let plain = direction_numbers(d);
            // Linear matrix scramble: output digit i is digit i plus a random combination of
            // the digits before it (a random lower-triangular matrix with a unit diagonal).
            let rows: [u32; BITS] = std::array::from_fn(|i| {
                let diagonal = 1 << (BITS - 1 - i);
                if i == 0 {
                    diagonal
                } else {
                    // Random bits for the digits before i: the row's top i bits.
                    ((rng.next_u32() >> (BITS - i)) << (BITS - i)) | diagonal
                }
            });
            let scrambled = plain.map(|v| {
                rows.iter().enumerate().fold(0u32, |acc, (i, row)| {
                    let digit = (row & v).count_ones() & 1;
                    acc | (digit << (BITS - 1 - i))
                })
            });
            directions.push(scrambled);
            shifts.push(rng.next_u32());
        }
        Self { directions, shifts }
    }

    /// Point `index` of the sequence, each coordinate in `(0, 1)`. Coordinates past the
    /// dimensions with direction numbers are uniform draws from a stream of `index`.
    pub fn point(&self, index: u64, dims: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(dims);
        for (v, shift) in self.directions.iter().zip(&self.shifts) {
            let mut x = *shift;
            let mut i = index;
            let mut bit = 0;
            while i != 0 && bit < BITS {
                if i & 1 == 1 {
                    x ^= v[bit];
                }
                i >>= 1;
                bit += 1;
            }
            out.push((f64::from(x) + 0.5) / 4_294_967_296.0);
        }
        if dims > out.len() {
            let mut rng =
                ChaCha8Rng::seed_from_u64(index ^ u64::from(self.shifts.first().copied().unwrap_or(0)));
            while out.len() < dims {
                out.push((f64::from(rng.next_u32()) + 0.5) / 4_294_967_296.0);
            }
        }
        out
    }
}

/// Unscrambled direction numbers `v_1..v_BITS` of dimension `d` (0-based), as 32-bit fractions.
fn direction_numbers(d: usize) -> [u32; BITS] {
    let mut v = [0u32; BITS];
    if d == 0 {
        for (k, slot) in v.iter_mut().enumerate() {
            *slot = 1 << (BITS - 1 - k);
        }
        return v;
    }
    let (poly, m) = JOE_KUO[d - 1];
    let s = (u32::BITS - poly.leading_zeros() - 1) as usize;
    let a = (poly >> 1) & ((1 << (s - 1)) - 1);
    for k in 0..s.min(BITS) {
        v[k] = m[k] << (BITS - 1 - k);
    }
    for k in s..BITS {
        let mut x = v[k - s] ^ (v[k - s] >> s);
        for j in 1..s {
            if (a >> (s - 1 - j)) & 1 == 1 {
                x ^= v[k - j];
            }
        }
        v[k] = x;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscrambled_points_are_the_known_sequence() {
        // The first points of the 2-D Sobol sequence, in index (not Gray-code) order:
        // (0, 0), (1/2, 1/2), (1/4, 3/4), (3/4, 1/4).
        let v0 = direction_numbers(0);
        let v1 = direction_numbers(1);
        let point = |n: u32| {
            let mut x = [0u32; 2];
            for bit in 0..4 {
                if n >> bit & 1 == 1 {
                    x[0] ^= v0[bit];
                    x[1] ^= v1[bit];
                }
            }
            x.map(|c| f64::from(c) / 4_294_967_296.0)
        };
        assert_eq!(point(0), [0.0, 0.0]);
        assert_eq!(point(1), [0.5, 0.5]);
        assert_eq!(point(2), [0.25, 0.75]);
        assert_eq!(point(3), [0.75, 0.25]);
    }

    #[test]
    fn every_dyadic_box_of_a_scrambled_set_gets_its_share() {
        // Scrambling keeps the (t, m, s)-net property: 64 points, each of the 8 x 8 boxes of
        // any 2-D projection of the first dimensions gets exactly one.
        for seed in [1, 7, 99] {
            let sobol = Sobol::new(4, seed);
            let points: Vec<Vec<f64>> = (0..64).map(|i| sobol.point(i, 4)).collect();
            for (a, b) in [(0, 1), (0, 2), (1, 2)] {
                let mut seen = [[0u32; 8]; 8];
                for p in &points {
                    seen[(p[a] * 8.0) as usize][(p[b] * 8.0) as usize] += 1;
                }
                assert!(
                    seen.iter().flatten().all(|&n| n == 1),
                    "seed {seed} dims {a},{b}: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn seeds_change_the_points() {
        assert_ne!(Sobol::new(3, 1).point(5, 3), Sobol::new(3, 2).point(5, 3));
        assert_eq!(Sobol::new(3, 1).point(5, 3), Sobol::new(3, 1).point(5, 3));
    }
}
