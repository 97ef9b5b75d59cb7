"""Sweeps on SLURM (or locally): ``aum-sweep SWEEP.yaml`` expands stages and grids into jobs, submits them
all at once through submitit with SLURM dependencies, requeues pre-empted jobs so they resume from their
checkpoints, skips finished jobs on re-submission and builds the results tables at the end.

Modules: :mod:`slurm.spec` (sweep files), :mod:`slurm.resources` (requests, partition checks),
:mod:`slurm.kinds` (entry points), :mod:`slurm.jobs` (the job callable), :mod:`slurm.launch` (submission),
:mod:`slurm.status` (states, tables), :mod:`slurm.cli` (the command). ``slurm/local_cluster.sh`` starts a
one-node SLURM cluster on a workstation to try them.
"""
