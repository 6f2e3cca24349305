"""Drivers: Hydra runs, records, sweeps, figures and the reproduce-everything command.

Modules: `schema` (typed configs), `data` (calibration matrices), `bounds` (which theory
bound applies and its check), `run` (one run = one record), `records` (atomic records and
aggregation), `sweep` (expand and run a preset's sweep in-process), `figures` (one builder per
figure), `reproduce` (every sweep, every figure, the summary table).
"""
