"""Lab scripts, apart from the product bench (``fer-bench``): one-off measurements behind decisions, and the test video.

They may need the training extra (torch, ``fer_train``, ``fer_export``), which fer-bench does not, and are not installed
with the package: run them from a checkout, ``python -m benchmarks.scripts.NAME --help``.
"""
