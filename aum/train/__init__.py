"""The one training engine that pretraining and fine-tuning share: :class:`aum.train.engine.Trainer` and its parts
(:mod:`~aum.train.config` settings, :mod:`~aum.train.optim` schedules and decay groups, :mod:`~aum.train.state`
resumable checkpoints, :mod:`~aum.train.log` logs and TensorBoard, :mod:`~aum.train.run_env` signals and
determinism, :mod:`~aum.train.distributed` DDP and RNG state, :mod:`~aum.train.selection` best-on-validation)."""
