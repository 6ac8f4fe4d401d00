"""The model stage: a new model from scratch, or a pretrained one prepared for fine-tuning.

Both paths end in the same `LoadedModel` (see `nbtune.models.base`), so the
training engine never needs to know which path the user took.
"""
