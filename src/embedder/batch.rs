//! The pure parts of a request's embedding: identical inputs computed once,
//! and inputs grouped with others of similar length, so a batch pads little.

use std::collections::HashMap;

/// The distinct inputs in first-seen order, and for each input the index of
/// its distinct one.
pub fn dedup(inputs: &[String]) -> (Vec<&str>, Vec<usize>) {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(inputs.len());
    let mut unique = Vec::new();
    let positions = inputs
        .iter()
        .map(|input| {
            *seen.entry(input.as_str()).or_insert_with(|| {
                unique.push(input.as_str());
                unique.len() - 1
            })
        })
        .collect();
    (unique, positions)
}

/// How much longer than its shortest a batch's longest sequence may be:
/// beyond, the short ones would be mostly padding.
pub const MAX_SPREAD: usize = 2;

/// Groups indices into batches of similar length: sorted by length, a batch
/// holds at most `max_batch` sequences and `budget` padded tokens (its size
/// times its longest), or one sequence alone when that is longer, and its
/// longest is at most [`MAX_SPREAD`] times its shortest.
pub fn batches(lengths: &[usize], max_batch: usize, budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&index| lengths[index]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for index in order {
        // Sorted ascending: the first member is the shortest, the newest the longest.
        let padded = (current.len() + 1) * lengths[index].max(1);
        let spread = current.first().is_some_and(|&first| lengths[index] > MAX_SPREAD * lengths[first].max(1));
        if !current.is_empty() && (current.len() >= max_batch || padded > budget || spread) {
            out.push(std::mem::take(&mut current));
        }
        current.push(index);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn identical_inputs_share_one_position() {
        let inputs: Vec<String> = ["a", "b", "a", "c", "b"].iter().map(|s| s.to_string()).collect();
        let (unique, positions) = dedup(&inputs);
        assert_eq!(unique, ["a", "b", "c"]);
        assert_eq!(positions, [0, 1, 0, 2, 1]);
    }

    #[test]
    fn batches_group_similar_lengths() {
        let lengths = [100, 3, 98, 4, 5, 101];
        assert_eq!(batches(&lengths, 3, 10_000), [vec![1, 3, 4], vec![2, 0, 5]]);
        // A budget of 200 padded tokens: two of length ~100 fit, not three.
        assert_eq!(batches(&lengths, 8, 200), [vec![1, 3, 4], vec![2, 0], vec![5]]);
        assert_eq!(batches(&[500], 8, 200), [vec![0]], "too long alone still gets a batch");
        // Room for all, but 7 is more than twice 3: a new batch; 12 is twice 6, it fits.
        assert_eq!(batches(&[3, 5, 6, 7, 12, 30], 8, 10_000), [vec![0, 1, 2], vec![3, 4], vec![5]]);
        assert_eq!(batches(&[0, 1, 2, 3], 8, 10_000), [vec![0, 1, 2], vec![3]], "an empty one counts as 1");
    }

    proptest! {
        #[test]
        fn every_index_is_in_one_batch_within_the_limits(lengths in proptest::collection::vec(0usize..300, 0..80), max_batch in 1usize..40, budget in 1usize..5000) {
            let batches = batches(&lengths, max_batch, budget);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for batch in &batches {
                let longest = batch.iter().map(|&i| lengths[i].max(1)).max().unwrap_or(0);
                prop_assert!(batch.len() <= max_batch);
                prop_assert!(batch.len() == 1 || batch.len() * longest <= budget);
                let shortest = batch.iter().map(|&i| lengths[i].max(1)).min().unwrap_or(0);
                prop_assert!(longest <= MAX_SPREAD * shortest);
            }
        }

        #[test]
        fn dedup_maps_every_input_back_to_itself(inputs in proptest::collection::vec("[ab]{0,2}", 0..20)) {
            let (unique, positions) = dedup(&inputs);
            for (input, position) in inputs.iter().zip(positions) {
                prop_assert_eq!(unique[position], input.as_str());
            }
            let mut distinct = unique.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), unique.len());
        }
    }
}
