"""Tools around the accelerator: `bench` (interleaved latency), `calibrate` (layer ranking), `sweep`
(budgets x methods), plots and Pareto fronts. Nothing in the package imports this room."""
