"""The command line, ``python -m course_lib``: main (info, eval), prune, ship, bench (a package:
measure, judge, report, plot).
"""
