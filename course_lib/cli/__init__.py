"""The command line, ``python -m course_lib``: main (info, eval), prune, bench.
"""
