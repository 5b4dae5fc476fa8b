"""Two more lenses on a network's checkpoints, beside the information plane.

    hessian     the loss Hessian's spectrum (Li et al., Demystifying ResNet): models in, numbers out
    complexity  norm-based complexity (He, Liu & Tao, Why ResNet Works?): models in, numbers out
    run         the two on a run folder's checkpoints -> DIR/analysis/ (drawn by ibprobe.report.lenses)
"""
