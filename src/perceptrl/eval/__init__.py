"""Evaluation: greedy accuracy during training, ``perceptrl eval``, and statistics for comparisons.

- :mod:`.evaluate`: batched generation (``generate_completions``), ``evaluate_greedy`` (the
  training loops' held-out check), ``PolicyGenerator``;
- :mod:`.runner`: ``run_evaluation`` (greedy, avg@k / pass@k, perception probe, POPE) on samples
  and any generator callable;
- :mod:`.pipeline`: ``evaluate_model(config, settings)``: samples and model from a config;
- :mod:`.report`: ``eval.json``, ``eval.md``, ``predictions.jsonl``;
- :mod:`.stats`: pass@k, avg@k, t and bootstrap intervals, paired differences over seeds;
- :mod:`.commands`: the ``perceptrl eval`` subcommand.

Submodules are imported on demand (``perceptrl.eval.stats`` needs only numpy).
"""
