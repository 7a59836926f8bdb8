"""The fair comparison (`task=compare`, `sweep=peers`): one method in one variant, at every compute target.

A cell of `sweep=peers` is a (method, variant) pair. Variants:

- `authors`: the method's authors' setting for the model's architecture (`<Config>.authors(family, steps)`,
  applied over the method's YAML), with its compute knob moved to reach each target;
- `shared_warmup`: the same with CAT's warm-up (the authors' 8 of 28 steps, scaled), so that "which tokens
  or steps to skip" can be told apart from "how many early steps to keep"; not applicable to a method
  without a warm-up (fewer steps);
- `tuned`: per target, the best of a grid of second knobs (the YAML's `tune`, e.g. TaylorSeer's order and
  warm-up) by the objective metric (fidelity to the full model) on the calibration prompts, each with its
  compute knob moved to the target.

The modules, bottom up:

- `settings`: the method YAML's plan (knob, its domain, the tuning grid), a variant's base setting and the
  settings it searches;
- `search`: a knob set to a target reduction (continuous: a bracketing search, also on the offline token
  schedule; discrete: the two values that bracket it);
- `bench`: settings run and measured on a fixed prompt list (executed MACs per prompt, the comparison's
  metrics), stored and shared between cells;
- `calibration`: the variant's settings chosen for every target on the calibration prompts;
- `matched`: methods compared at matched compute (a per-prompt mixture of two settings) with paired
  bootstrap verdicts, which the sweep's report (`experiments.reports.targets`) writes.

The task itself (`experiments.tasks.compare`) then runs the chosen settings on the evaluation prompts (the
run's `data`). Nothing is ever chosen on an evaluation prompt. Imports only the layers below it (base,
prompts, metrics, run).
"""
