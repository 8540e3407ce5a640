"""Transferability estimation: which pretrained source to fine-tune from, without training.

Scores (numpy / scipy / scikit-learn only): :mod:`.logme` (LogME), :mod:`.tmi` (intra-class
feature variance), :mod:`.probe` (cross-validated k-NN / linear probes), :mod:`.select` (ranks,
Kendall's tau, OSBORN-style greedy ensemble selection); :mod:`.rank` runs ``medtransfer rank``.
"""
