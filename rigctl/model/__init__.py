"""The free-energy model of Isomura et al. (2023); equations in ../shared/spec/isomura2023.md, guide in
docs/model.md.

Core (numpy only, no I/O): `data` (input checks), `normalise` (spec 2.1, 2.3), `ensembles` (spec 2.2, 2.4),
`network` (spec 3.2-3.4), `trajectory` (spec 3.4-3.5), `metrics` (spec 3.6), `published` and
`online_batch` (the two modes), `online` (the per-trial hook `OnlineFreeEnergy`), `result`, `batch`,
`table`, `synthetic` (ground-truth data from the canonical network).
With I/O: `loading` (.mat files and run directories), `plots` (PNGs), `report` (summary.json part).
"""
