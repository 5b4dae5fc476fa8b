"""Estimators: arrays in, a frozen result out, no files.

    decoder    Î(X;H) = Ĥ(X) − Ĥ(X|H) from per-image NLLs with a paired 95% CI (`paired_mi`, `paired_difference`),
               and `estimate_mi`, which fits the decoders for arrays in memory (ibprobe.fit)
    reference  the reference density for Ĥ(X): plain q(x), label mixture, code mixture; chosen on validation
    probe      Î(Y;H) from a probe classifier
    binning    the binning baseline (IDNNs), kde: the KDE baseline (ibsgd)
    kid        the Kernel Inception Distance and its feature networks

Every result is a frozen dataclass with its quantity (`bits` for information, `kid` for KID), a CI where there is
one, and `n`.
"""
