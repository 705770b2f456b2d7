# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# <!-- The presenter dashboard. `make present` serves it with Voilà: this code is
# hidden there, only the widgets show. Everything it does is in course_lib/presenter.py. -->

# %%
import os

# Set by `make present` already; here too for a run in JupyterLab (before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle CPU threads sleep, never spin
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded model needs no network

from course_lib.teaching.presenter import Dashboard

dashboard = Dashboard()
dashboard.precompute()  # every tab's grid, in the background (progress bar on top)
dashboard
