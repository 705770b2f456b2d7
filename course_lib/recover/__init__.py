"""Winning quality back after a structured prune: repair (closed-form least-squares refit of the
output projections, seconds) and distil (KL to the dense teacher, a step budget of AdamW).
Both work in place and return an undo handle.
"""
