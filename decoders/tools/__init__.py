"""Measuring tools for the decoders, kept out of the model package so that its modules are the model alone:
`python -m decoders.tools.bench` (throughput, peak memory, cached vs naive sampling; also run as
`ibprobe bench decoder`) and `python -m decoders.tools.gpu_check` (the paper decoder's GPU checks, run by
bench/gpu_check.sh). Like the rest of `decoders`, they never import `ibprobe`."""
