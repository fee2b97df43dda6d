"""fwdbwd: forward gradients vs backpropagation.

The main entry points:

- ``fwdbwd_lib.gradients``: ``Backprop`` and ``ForwardGradient`` behind one interface;
- ``fwdbwd_lib.training.train`` / ``train_sweep``: the training loop that records every run;
- ``fwdbwd_lib.config.compose_sweep``: Hydra configs and comma-list sweeps;
- ``fwdbwd_lib.records.load_runs``: run records as pandas DataFrames;
- ``fwdbwd_lib.registry``: register your own datasets, models and losses by name.
"""

__version__ = "0.1.0"
