//! Rounds: the store, no-op and server sections run several times in turn, and each row
//! keeps its median round. The VM this is measured on has phases (a neighbour's load, the
//! host's I/O) that last seconds and move every figure by 2x or more; measured one section
//! after the other, a phase that hits only the no-op or only the server makes their ratio
//! say nothing. In rounds, each is measured in every phase, and the median drops the
//! round a phase spoiled.

use crate::grpc_bench::{AppendLoads, Load, ServerLoads};
use crate::store_bench::Measurement;

/// The round whose `rate` is the median (the lower of the two middle ones for an even
/// count): its figures (rate, p50, p99) stay those of one real measurement.
fn median_by<T: Clone>(rounds: &[T], rate: impl Fn(&T) -> f64) -> T {
    let mut sorted: Vec<&T> = rounds.iter().collect();
    sorted.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    sorted[(sorted.len() - 1) / 2].clone()
}

/// Row `i` of every round, its median kept; `rounds` all have the same rows.
fn median_rows<T: Clone>(rounds: &[Vec<T>], rate: impl Fn(&T) -> f64 + Copy) -> Vec<T> {
    (0..rounds[0].len())
        .map(|i| {
            let row: Vec<T> = rounds.iter().map(|r| r[i].clone()).collect();
            median_by(&row, rate)
        })
        .collect()
}

/// The store section's median rows; `None` if it did not run.
pub fn store(rounds: &[Vec<Measurement>]) -> Option<Vec<Measurement>> {
    (!rounds.is_empty()).then(|| median_rows(rounds, Measurement::records_per_sec))
}

fn append_loads(rounds: &[&AppendLoads]) -> AppendLoads {
    let appends: Vec<Vec<Load>> = rounds.iter().map(|r| r.appends.clone()).collect();
    let per_call: Vec<Load> = rounds.iter().map(|r| r.per_call.clone()).collect();
    AppendLoads {
        appends: median_rows(&appends, Load::calls_per_sec),
        per_call: median_by(&per_call, Load::calls_per_sec),
    }
}

/// The no-op section's median rows; `None` if it did not run.
pub fn noop(rounds: &[AppendLoads]) -> Option<AppendLoads> {
    (!rounds.is_empty()).then(|| append_loads(&rounds.iter().collect::<Vec<_>>()))
}

/// The server section's median rows; `None` if it did not run.
pub fn server(rounds: &[ServerLoads]) -> Option<ServerLoads> {
    if rounds.is_empty() {
        return None;
    }
    let appends: Vec<&AppendLoads> = rounds.iter().map(|r| &r.appends).collect();
    let batch: Vec<Load> = rounds.iter().map(|r| r.batch.clone()).collect();
    let writer: Vec<Vec<Load>> = rounds.iter().map(|r| r.writer.clone()).collect();
    Some(ServerLoads {
        appends: append_loads(&appends),
        batch: median_by(&batch, Load::records_per_sec),
        writer: median_rows(&writer, Load::calls_per_sec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_is_kept_whole() {
        let rounds = [(3.0, "c"), (1.0, "a"), (100.0, "spoiled"), (2.0, "b")];
        assert_eq!(median_by(&rounds, |r| r.0), (2.0, "b"));
        assert_eq!(median_by(&rounds[..3], |r| r.0), (3.0, "c"));
        assert_eq!(median_by(&rounds[..1], |r| r.0), (3.0, "c"));
        let rows = [
            vec![(1.0, 'x'), (9.0, 'p')],
            vec![(5.0, 'y'), (8.0, 'q')],
            vec![(3.0, 'z'), (7.0, 'r')],
        ];
        assert_eq!(median_rows(&rows, |r| r.0), vec![(3.0, 'z'), (8.0, 'q')]);
    }
}
