//! Two settings of the same benchmark compared in one run: rounds of each,
//! alternated, so that whatever else the machine does weighs on both alike,
//! and the best round of each compared against a budget. One run of each
//! says nothing on this machine, whose spread between single runs (about
//! 8 %) is wider than the budgets checked.

use std::future::Future;

use serde_json::{json, Value};

/// One side of a comparison.
pub struct Side<S> {
    /// Its name in the output (`off`, `on`).
    pub label: &'static str,
    pub setting: S,
}

/// What is compared, and how much worse the candidate may be.
pub struct Comparison<S> {
    /// The bench's name, for the output (`dispatch`).
    pub bench: &'static str,
    /// What the two sides differ in (`auth`).
    pub what: &'static str,
    /// The figure compared, higher is better (`tasks_per_sec`).
    pub figure: &'static str,
    /// Its unit, for the summary (`tasks/s`).
    pub unit: &'static str,
    /// Runs first in every round.
    pub baseline: Side<S>,
    pub candidate: Side<S>,
    /// The candidate's best may be this much below the baseline's best, in %.
    pub budget_percent: f64,
    /// Rounds of each side.
    pub rounds: usize,
    /// Figures of the runs' lines where lower is better (a latency), also
    /// held to the budget: the candidate's best (lowest) may be this much
    /// above the baseline's best.
    pub lower_is_better: &'static [&'static str],
    /// Other figures of the runs' lines to summarise (by their median),
    /// for the reader; the verdict is on `figure` alone.
    pub details: &'static [&'static str],
}

/// The field of a run's line that says how much of the machine's CPUs other
/// work used meanwhile, in % (see `machine`), when the bench measures it.
const OTHERS_CPU: &str = "others_cpu_percent";
/// Up to this, a round counts as run on a quiet machine.
const QUIET_PERCENT: f64 = 10.0;

/// One round's run: the figure compared and the run's whole JSON line.
pub struct Run {
    pub figure: f64,
    pub line: Value,
}

impl<S: Copy> Comparison<S> {
    /// Runs `rounds` rounds of baseline then candidate; prints each run as
    /// it ends, then the best of each and the verdict, and returns the
    /// summary (the caller adds its parameters).
    pub async fn run<F, Fut>(self, mut run: F) -> anyhow::Result<Value>
    where
        F: FnMut(S) -> Fut,
        Fut: Future<Output = anyhow::Result<Run>>,
    {
        anyhow::ensure!(self.rounds > 0, "give at least one round");
        let mut baseline_runs = Vec::with_capacity(self.rounds);
        let mut candidate_runs = Vec::with_capacity(self.rounds);
        let mut baseline_lines = Vec::with_capacity(self.rounds);
        let mut candidate_lines = Vec::with_capacity(self.rounds);
        for round in 1..=self.rounds {
            for (side, runs, lines) in [
                (&self.baseline, &mut baseline_runs, &mut baseline_lines),
                (&self.candidate, &mut candidate_runs, &mut candidate_lines),
            ] {
                let Run { figure, line } = run(side.setting).await?;
                println!(
                    "round {round}/{} {}={:<4} {figure:>9.0} {}  {line}",
                    self.rounds, self.what, side.label, self.unit
                );
                runs.push(figure);
                lines.push(line);
            }
        }
        let best = |runs: &[f64]| runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (best_baseline, best_candidate) = (best(&baseline_runs), best(&candidate_runs));
        // Positive: the candidate is slower.
        let slower_percent = (best_baseline - best_candidate) / best_baseline * 100.0;
        let mut pass = slower_percent <= self.budget_percent;
        let lowest = |lines: &[Value], name: &str| {
            lines
                .iter()
                .filter_map(|l| l[name].as_f64())
                .fold(f64::INFINITY, f64::min)
        };
        let mut latencies = serde_json::Map::new();
        for name in self.lower_is_better {
            let (b, c) = (
                lowest(&baseline_lines, name),
                lowest(&candidate_lines, name),
            );
            let higher_percent = (c - b) / b * 100.0;
            let within = higher_percent <= self.budget_percent;
            pass &= within;
            println!(
                "best {name}: {what}={bl} {b}, {what}={cl} {c} ({higher_percent:+.1} %, budget {budget} %): {}",
                if within { "within" } else { "over" },
                what = self.what,
                bl = self.baseline.label,
                cl = self.candidate.label,
                budget = self.budget_percent,
            );
            latencies.insert(
                format!("best_{name}_higher_percent"),
                json!((higher_percent * 10.0).round() / 10.0),
            );
        }
        // The machine is shared: say when the rounds compared ran beside
        // other work, which the best-of cannot be trusted to have avoided.
        let busiest_best = [
            (&baseline_runs, &baseline_lines),
            (&candidate_runs, &candidate_lines),
        ]
        .iter()
        .filter_map(|(runs, lines)| {
            let best_index = (0..runs.len()).max_by(|&i, &j| runs[i].total_cmp(&runs[j]))?;
            lines[best_index][OTHERS_CPU].as_f64()
        })
        .fold(None, |most: Option<f64>, x| {
            Some(most.map_or(x, |m| m.max(x)))
        });
        let verdict = if pass { "PASS" } else { "FAIL" };
        let (b, c) = (self.baseline.label, self.candidate.label);
        println!(
            "best of {} rounds each: {what}={b} {best_baseline:.0} {unit}, {what}={c} {best_candidate:.0} {unit}",
            self.rounds,
            what = self.what,
            unit = self.unit,
        );
        println!(
            "{what}={c} is {} than {what}={b} (budget: at most {budget} % slower): {verdict}",
            if slower_percent >= 0.0 {
                format!("{slower_percent:.1} % slower")
            } else {
                format!("{:.1} % faster", -slower_percent)
            },
            what = self.what,
            budget = self.budget_percent,
        );
        if let Some(busiest) = busiest_best.filter(|&b| b > QUIET_PERCENT) {
            println!(
                "caution: other work used up to {busiest:.0} % of the machine's CPUs during the best rounds (quiet: at most {QUIET_PERCENT:.0} %); the verdict is weak, run again when the machine is quiet"
            );
        }
        let (b_median, c_median) = (median(&baseline_runs), median(&candidate_runs));
        println!(
            "medians, for the spread: {what}={b} {b_median:.0} {unit}, {what}={c} {c_median:.0} {unit}",
            what = self.what,
            unit = self.unit,
        );
        let mut details = serde_json::Map::new();
        for name in self.details {
            let of = |lines: &[Value]| {
                median(
                    &lines
                        .iter()
                        .filter_map(|l| l[*name].as_f64())
                        .collect::<Vec<_>>(),
                )
            };
            let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
            let (b_detail, c_detail) = (round3(of(&baseline_lines)), round3(of(&candidate_lines)));
            let change = if b_detail == 0.0 {
                String::new()
            } else {
                format!(" ({:+.1} %)", (c_detail - b_detail) / b_detail * 100.0)
            };
            println!(
                "median {name}: {what}={b} {b_detail}, {what}={c} {c_detail}{change}",
                what = self.what,
            );
            details.insert(format!("median_{name}_{b}"), json!(b_detail));
            details.insert(format!("median_{name}_{c}"), json!(c_detail));
        }
        let round0 = |runs: &[f64]| runs.iter().map(|f| f.round()).collect::<Vec<_>>();
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        let mut summary = json!({
            "bench": self.bench,
            "compare": self.what,
            "figure": self.figure,
            "rounds": self.rounds,
            "baseline": b,
            "candidate": c,
            "slower_percent": round1(slower_percent),
            "budget_percent": self.budget_percent,
            "verdict": verdict,
        });
        summary[format!("best_{b}")] = json!(best_baseline.round());
        summary[format!("best_{c}")] = json!(best_candidate.round());
        summary[format!("{b}_runs")] = json!(round0(&baseline_runs));
        summary[format!("{c}_runs")] = json!(round0(&candidate_runs));
        if let Some(busiest) = busiest_best {
            summary["best_rounds_others_cpu_percent"] = json!(busiest);
        }
        summary[format!("median_{b}")] = json!(b_median.round());
        summary[format!("median_{c}")] = json!(c_median.round());
        for (name, value) in details.into_iter().chain(latencies) {
            summary[name] = value;
        }
        Ok(summary)
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
