"""The run folder's plumbing: what every stage reads and writes through.

    paths        every path of a run folder, named once
    tables       the one CSV dialect and the schema of every table
    pinning      analysis.json (the pinned settings, data and inputs), claims on a folder, what a result was made from
    files        atomic writes, JSON, locks, content digests
    sources      what is analysed: the network at each checkpoint, the data spec, the data side
    checkpoints  reading checkpoints, ours and from elsewhere, safely (weights_only)
"""
