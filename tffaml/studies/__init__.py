"""Research studies built on the run: comparisons, robustness, audits, sweeps, attacks and benchmarks."""
