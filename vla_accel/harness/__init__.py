"""The evaluation harness: rollouts (with real-time scheduling), `vla-accel eval`, results, videos and
task selection over the simulated suites."""
