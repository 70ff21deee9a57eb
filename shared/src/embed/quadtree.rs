//! The Barnes–Hut quadtree for t-SNE's repulsive forces.
//!
//! Nodes are stored in depth-first pre-order, each with the index just past its subtree
//! (`skip`), so a traversal is a forward scan: summarise a node and jump to `skip`, or open it
//! and step to the next node (its first child). Leaves hold up to `LEAF` points (more only for
//! points that coincide to the depth limit); a leaf that is opened is summed point by point.

/// Depth limit; cells of the root width / 2^40 hold points that coincide to ~1e-12.
const MAX_DEPTH: usize = 40;

/// Points a leaf may hold; opened leaves are summed point by point.
const LEAF: usize = 16;

#[derive(Clone, Copy, Debug, Default)]
struct Node {
    /// Centre of mass of the points below.
    com: [f64; 2],
    /// Cell width squared.
    width2: f64,
    /// Points below.
    count: u32,
    /// Index of the first node after this subtree; `index + 1` exactly for leaves (an inner
    /// node has at least one child).
    skip: u32,
}

/// A quadtree over 2-D points, rebuilt in place for every gradient evaluation.
#[derive(Clone, Debug, Default)]
pub(crate) struct QuadTree {
    nodes: Vec<Node>,
    /// Where each node's points start in `perm` / `pts` (only read for leaves).
    starts: Vec<u32>,
    /// Cell centre and half-width of every node (only read for `θ > 1/√2`).
    cells: Vec<[f64; 3]>,
    /// Point indices, grouped so that every node's points are contiguous.
    perm: Vec<u32>,
    /// Coordinates in `perm` order.
    pts: Vec<[f64; 2]>,
}

impl QuadTree {
    /// Rebuild the tree over the `n` points of the row-major `n × 2` `y`.
    pub(crate) fn build(&mut self, y: &[f64]) {
        let n = y.len() / 2;
        self.nodes.clear();
        self.starts.clear();
        self.cells.clear();
        self.perm.clear();
        self.perm.extend(0..n as u32);
        self.pts.clear();
        if n == 0 {
            return;
        }
        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        for p in y.chunks_exact(2) {
            for c in 0..2 {
                lo[c] = lo[c].min(p[c]);
                hi[c] = hi[c].max(p[c]);
            }
        }
        let centre = [0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1])];
        let extent = (hi[0] - lo[0]).max(hi[1] - lo[1]);
        // Slightly larger than the points' extent so that every point is strictly inside.
        let half = 0.5 * extent * (1.0 + 1e-9) + 1e-300;
        let min_half = half * 1e-12;
        self.build_node(y, 0, n, centre, half, min_half, 0);
        self.pts.extend(
            self.perm
                .iter()
                .map(|&i| [y[2 * i as usize], y[2 * i as usize + 1]]),
        );
    }

    /// Build the subtree over `perm[lo..hi]`; returns its centre of mass.
    #[allow(clippy::too_many_arguments)]
    fn build_node(
        &mut self,
        y: &[f64],
        lo: usize,
        hi: usize,
        centre: [f64; 2],
        half: f64,
        min_half: f64,
        depth: usize,
    ) -> [f64; 2] {
        let idx = self.nodes.len();
        let count = hi - lo;
        let width = 2.0 * half;
        self.nodes.push(Node {
            com: [0.0; 2],
            width2: width * width,
            count: count as u32,
            skip: 0,
        });
        self.starts.push(lo as u32);
        self.cells.push([centre[0], centre[1], half]);
        let mut sum = [0.0; 2];
        if count <= LEAF || depth >= MAX_DEPTH || half <= min_half {
            for &i in &self.perm[lo..hi] {
                sum[0] += y[2 * i as usize];
                sum[1] += y[2 * i as usize + 1];
            }
        } else {
            let perm = &mut self.perm[lo..hi];
            let mid = partition(perm, |i| y[2 * i] < centre[0]);
            let m1 = partition(&mut perm[..mid], |i| y[2 * i + 1] < centre[1]);
            let m2 = mid + partition(&mut perm[mid..], |i| y[2 * i + 1] < centre[1]);
            let q = 0.5 * half;
            let quadrants = [
                (0, m1, [centre[0] - q, centre[1] - q]),
                (m1, mid, [centre[0] - q, centre[1] + q]),
                (mid, m2, [centre[0] + q, centre[1] - q]),
                (m2, count, [centre[0] + q, centre[1] + q]),
            ];
            for (a, b, c) in quadrants {
                if b > a {
                    let com = self.build_node(y, lo + a, lo + b, c, q, min_half, depth + 1);
                    sum[0] += com[0] * (b - a) as f64;
                    sum[1] += com[1] * (b - a) as f64;
                }
            }
        }
        let com = [sum[0] / count as f64, sum[1] / count as f64];
        let skip = self.nodes.len() as u32;
        let node = &mut self.nodes[idx];
        node.com = com;
        node.skip = skip;
        com
    }

    /// Barnes–Hut sums for point `i` at `(xi, yi)`: returns `(Σⱼ wᵢⱼ² (yᵢ − yⱼ), Σⱼ wᵢⱼ)` over
    /// `j ≠ i`, `wᵢⱼ = 1 / (1 + ‖yᵢ − yⱼ‖²)`. A cell of width `w` whose centre of mass lies at
    /// distance `r` is summarised when `w < θ·r`; `θ = 0` gives the exact sums.
    pub(crate) fn repulsion(&self, i: usize, xi: f64, yi: f64, theta: f64) -> ([f64; 2], f64) {
        let theta2 = theta * theta;
        // For θ ≤ 1/√2 a cell containing the point can never pass the test (the point is within
        // √2·width of the centre of mass); beyond, such cells are opened explicitly so that the
        // point never repels itself.
        let check_contains = theta2 > 0.5;
        let (mut fx, mut fy, mut z) = (0.0f64, 0.0f64, 0.0f64);
        let nodes = &self.nodes;
        let mut idx = 0usize;
        while idx < nodes.len() {
            let nd = &nodes[idx];
            let dx = xi - nd.com[0];
            let dy = yi - nd.com[1];
            let d2 = dx * dx + dy * dy;
            if nd.width2 < theta2 * d2 && !(check_contains && self.contains(idx, xi, yi)) {
                let w = 1.0 / (1.0 + d2);
                let cw = nd.count as f64 * w;
                z += cw;
                let cw2 = cw * w;
                fx += cw2 * dx;
                fy += cw2 * dy;
                idx = nd.skip as usize;
            } else {
                if nd.skip as usize == idx + 1 {
                    let start = self.starts[idx] as usize;
                    for p in start..start + nd.count as usize {
                        if self.perm[p] as usize == i {
                            continue;
                        }
                        let dx = xi - self.pts[p][0];
                        let dy = yi - self.pts[p][1];
                        let w = 1.0 / (1.0 + dx * dx + dy * dy);
                        z += w;
                        let w2 = w * w;
                        fx += w2 * dx;
                        fy += w2 * dy;
                    }
                }
                idx += 1;
            }
        }
        ([fx, fy], z)
    }

    /// The points in tree order, `(index, coordinates)`: visiting them in this order makes
    /// consecutive traversals touch the same nodes.
    pub(crate) fn points(&self) -> impl Iterator<Item = (usize, [f64; 2])> + '_ {
        self.perm
            .iter()
            .zip(&self.pts)
            .map(|(&i, &p)| (i as usize, p))
    }

    fn contains(&self, idx: usize, x: f64, y: f64) -> bool {
        let [cx, cy, h] = self.cells[idx];
        (x - cx).abs() <= h && (y - cy).abs() <= h
    }
}

/// Move the indices satisfying `pred` to the front; returns how many there are.
fn partition(perm: &mut [u32], pred: impl Fn(usize) -> bool) -> usize {
    let mut k = 0;
    for j in 0..perm.len() {
        if pred(perm[j] as usize) {
            perm.swap(k, j);
            k += 1;
        }
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn exact(y: &[f64], i: usize) -> ([f64; 2], f64) {
        let (mut f, mut z) = ([0.0; 2], 0.0);
        for j in 0..y.len() / 2 {
            if j == i {
                continue;
            }
            let dx = y[2 * i] - y[2 * j];
            let dy = y[2 * i + 1] - y[2 * j + 1];
            let w = 1.0 / (1.0 + dx * dx + dy * dy);
            z += w;
            f[0] += w * w * dx;
            f[1] += w * w * dy;
        }
        (f, z)
    }

    #[test]
    fn embed_quadtree_exact_at_theta_zero_with_duplicates() {
        let mut rng = SplitMix64::new(11);
        let mut y: Vec<f64> = (0..400).map(|_| 3.0 * rng.normal()).collect();
        // Duplicated points and a triple.
        y[2] = y[0];
        y[3] = y[1];
        for c in 0..2 {
            y[10 + c] = y[20 + c];
            y[12 + c] = y[20 + c];
        }
        let mut t = QuadTree::default();
        t.build(&y);
        assert_eq!(t.nodes[0].count, 200);
        for i in 0..200 {
            let (f, z) = t.repulsion(i, y[2 * i], y[2 * i + 1], 0.0);
            let (fe, ze) = exact(&y, i);
            assert!((z - ze).abs() < 1e-12 * ze);
            for c in 0..2 {
                assert!((f[c] - fe[c]).abs() < 1e-12 * (fe[0].abs() + fe[1].abs() + 1e-300));
            }
            // Large θ: still never counts the point itself (so z < n − 1 … loosely finite).
            let (_, zl) = t.repulsion(i, y[2 * i], y[2 * i + 1], 0.99);
            assert!(zl.is_finite() && zl > 0.0);
        }
    }

    #[test]
    fn embed_quadtree_all_points_equal() {
        let y = vec![1.5; 20];
        let mut t = QuadTree::default();
        t.build(&y);
        let (f, z) = t.repulsion(3, 1.5, 1.5, 0.5);
        assert_eq!(z, 9.0);
        assert_eq!(f, [0.0, 0.0]);
    }
}
