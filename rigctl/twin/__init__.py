"""The digital twin (issue 16, item 4): a simulated culture (`rigctl.sim.culture.Culture`) fitted to one
released culture of Isomura et al. (2023) and scored against it with the free-energy model's err_x.

A composition-root package (tests/test_layers.py): it drives the simulator. The pure scoring (loss, the
twin's x, err_x, the table) lives in the core module `rigctl.model.twin_score`. docs/twin.md describes it.

- `rigctl.twin.params`: the free parameters (one table) and how they become a `CultureConfig` + efficacies;
- `rigctl.twin.drive`: run a culture through a released stimulus sequence, counts in the data's columns;
- `rigctl.twin.fit`: the optimiser (CMA-ES), parallel evaluations, the log, the final 100-session run.
"""
