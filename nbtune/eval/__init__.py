"""Evaluation: how well a model predicts held-out rows, and what it writes.

* `nbtune.eval.metrics`: loss, perplexity and bits per byte on tokenized rows
  (each row scored on its own, exactly the tokens its loss mask marks);
* `nbtune.eval.generate`: greedy and seeded sampled generations for a few
  prompts, for one model or side by side (a LoRA model and its base).

Torch and transformers are imported inside the functions, so importing this
package stays cheap.
"""
