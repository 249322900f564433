"""The eval harness: golden sets, ``helpline eval``, calibration, reports and the CI gate.

Modules, one job each:

- :mod:`bot.eval.golden`: read and validate a golden-set JSONL file;
- :mod:`bot.eval.runner`: send every case through the live code path (``open_runtime`` ->
  ``Conversations.receive``) on a throw-away database and read the outcome back from it;
- :mod:`bot.eval.groundedness`: how much of an answer its cited passages support;
- :mod:`bot.eval.metrics`: the numbers (intent accuracy, deflection, wrong-answer rate, ...);
- :mod:`bot.eval.calibrate`: the deflection / wrong-answer curve over confidence thresholds and the
  threshold it picks;
- :mod:`bot.eval.gates`: thresholds from ``config/gates.yaml`` checked against a summary;
- :mod:`bot.eval.report`: the text summary, the JSON line and the Markdown report with plots.

Nothing here changes how a turn is routed: the harness only drives the runtime and reads what it
recorded.
"""
