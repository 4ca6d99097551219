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
}

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
        for round in 1..=self.rounds {
            for (side, runs) in [
                (&self.baseline, &mut baseline_runs),
                (&self.candidate, &mut candidate_runs),
            ] {
                let Run { figure, line } = run(side.setting).await?;
                println!(
                    "round {round}/{} {}={:<4} {figure:>9.0} {}  {line}",
                    self.rounds, self.what, side.label, self.unit
                );
                runs.push(figure);
            }
        }
        let best = |runs: &[f64]| runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (best_baseline, best_candidate) = (best(&baseline_runs), best(&candidate_runs));
        // Positive: the candidate is slower.
        let slower_percent = (best_baseline - best_candidate) / best_baseline * 100.0;
        let pass = slower_percent <= self.budget_percent;
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
        Ok(summary)
    }
}
