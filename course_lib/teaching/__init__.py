"""The course around the kernels: lesson (what every notebook does first), widgets (the
live explorer), plots, checks (exercises with hints), student (the student edition),
presenter (the live dashboard), summary and run_all (`make run`).
"""
