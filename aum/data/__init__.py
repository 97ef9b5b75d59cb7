"""Data sets and samplers: audio folders and manifests (:mod:`~aum.data.datasets`: random crops, bad files counted
and reported, generated audio) and the resumable distributed batch sampler (:mod:`~aum.data.samplers`)."""
