//! Who holds what: which destination each checking subscriber reads, how
//! many workers a run needs, and each worker's share.

/// Destination index for each of `subscribers` subscribers spread over
/// `destinations`: `uniform`, or `zipf[:S]` (destination d's share
/// proportional to 1/(d+1)^S, S = 1 by default).
pub fn assign(subscribers: u64, destinations: u32, skew: &str) -> Result<Vec<u32>, String> {
    let dest_count = destinations.max(1) as usize;
    let weights: Vec<f64> = match skew {
        "uniform" => vec![1.0; dest_count],
        zipf if zipf.starts_with("zipf") => {
            let exponent: f64 = match zipf.strip_prefix("zipf:") {
                Some(text) => text
                    .parse()
                    .map_err(|_| format!("bad zipf exponent in {zipf:?}"))?,
                None if zipf == "zipf" => 1.0,
                None => return Err(format!("unknown --skew {zipf:?}")),
            };
            (0..dest_count)
                .map(|d| 1.0 / ((d + 1) as f64).powf(exponent))
                .collect()
        }
        other => return Err(format!("unknown --skew {other:?} (uniform or zipf[:S])")),
    };
    // Largest-remainder apportionment, then subscribers in order.
    let total_weight: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights
        .iter()
        .map(|w| w / total_weight * subscribers as f64)
        .collect();
    let mut counts: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let remainder = |d: usize| exact[d] - exact[d].floor();
    let mut by_remainder: Vec<usize> = (0..dest_count).collect();
    by_remainder.sort_by(|&a, &b| remainder(b).total_cmp(&remainder(a)));
    let short = subscribers - counts.iter().sum::<u64>();
    for &d in by_remainder.iter().take(short as usize) {
        counts[d] += 1;
    }
    // Interleave so that each worker's slice has every destination.
    let mut out = Vec::with_capacity(subscribers as usize);
    while out.len() < subscribers as usize {
        for (d, left) in counts.iter_mut().enumerate() {
            if *left > 0 {
                *left -= 1;
                out.push(d as u32);
            }
        }
    }
    Ok(out)
}

/// How many workers hold `connections`, at most `per_worker` each.
pub fn worker_count(connections: u64, per_worker: u64) -> usize {
    connections.div_ceil(per_worker).max(1) as usize
}

/// Worker `worker`'s slice of `0..total` when it is cut `workers` ways in
/// equal slices (the last ones shorter): `(first, end)`.
pub fn slice(total: usize, workers: usize, worker: usize) -> (usize, usize) {
    let per = total.div_ceil(workers).max(1);
    ((worker * per).min(total), ((worker + 1) * per).min(total))
}

/// Worker `worker`'s share of `total` things dealt out `workers` ways (the
/// first `total % workers` get one more): `(count, how many come before)`.
pub fn share(total: u64, workers: usize, worker: usize) -> (u64, u64) {
    let workers = workers as u64;
    let count_of = |w: u64| total / workers + u64::from(w < total % workers);
    let worker = worker as u64;
    (count_of(worker), (0..worker).map(count_of).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_is_balanced_and_skewed() {
        let uniform = assign(10, 3, "uniform").unwrap();
        assert_eq!(uniform.len(), 10);
        assert_eq!(uniform.iter().filter(|&&d| d == 0).count(), 4);
        let zipf = assign(1000, 10, "zipf").unwrap();
        let first = zipf.iter().filter(|&&d| d == 0).count();
        let last = zipf.iter().filter(|&&d| d == 9).count();
        assert!(first > 5 * last, "{first} {last}");
        assert!(assign(5, 2, "pareto").is_err());
    }

    #[test]
    fn slices_and_shares_cover_everything_once() {
        for (total, workers) in [(0u64, 1usize), (7, 3), (60, 2), (10, 4), (3, 5)] {
            let mut next = 0;
            for worker in 0..workers {
                let (first, end) = slice(total as usize, workers, worker);
                assert_eq!(first, next.min(total as usize), "{total} / {workers}");
                next = end;
                let (count, before) = share(total, workers, worker);
                let all_before: u64 = (0..worker).map(|w| share(total, workers, w).0).sum();
                assert_eq!(before, all_before);
                assert!(count == total / workers as u64 || count == total / workers as u64 + 1);
            }
            assert_eq!(next, total as usize);
            let counts: u64 = (0..workers).map(|w| share(total, workers, w).0).sum();
            assert_eq!(counts, total);
        }
        assert_eq!(worker_count(36_000, 18_000), 2);
        assert_eq!(worker_count(36_001, 18_000), 3);
        assert_eq!(worker_count(0, 18_000), 1);
    }
}
