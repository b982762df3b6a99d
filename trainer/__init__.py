"""The trainer: data sources, windows, Keras model, evaluation, conformal intervals, publishing.

`forecast train` runs `trainer.cli:run`; `forecast models ...` runs `trainer.models_cli:run`.
Only `trainer.model`, `trainer.train` and `trainer.artifact` import TensorFlow (the train
command loads them after checking its data).
"""
