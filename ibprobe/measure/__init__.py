"""The measure stage -> DIR/analysis/: one module per table it writes.

    mi         analysis/mi.csv and changes.csv: Î(X;H) of every (checkpoint, layer) against the run's one reference,
               with paired CIs, Î(Y;H), the self-checks (checks) and the changes between checkpoints and layers
    baselines  analysis/baselines.csv and binning_sensitivity.csv: binning and KDE on the same test images
    kid        analysis/kid.csv: the KID of every decoder's samples
"""
