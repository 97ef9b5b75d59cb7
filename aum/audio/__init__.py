"""Audio in: reading files (:mod:`~aum.audio.io`, soundfile, resampled to 16 kHz), the features the encoders take
(:mod:`~aum.audio.features`: Kaldi fbank and its normalisation presets; :mod:`~aum.audio.frames`: the frame
arithmetic), and the built-in procedural generator (:mod:`~aum.audio.synth`)."""
