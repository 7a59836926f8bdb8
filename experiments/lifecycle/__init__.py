"""The harness's top layer: a run's lifecycle around its task (`runs`: validation, the run key, the run
folder's lock and status, reuse of finished runs, secrets scrubbed), a run in this process (`launch`), how
conf/ reaches the library (`resolvers`), `run.py`'s command-line checks (`command_line`) and the sweep's
Hydra callback (`sweep_callback`). Imports any layer below it."""
