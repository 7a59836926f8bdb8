"""The experiment harness, in layers: each sub-package imports only those below it (tests/test_layering.py).

    lifecycle   runs, launch, resolvers, command_line, sweep_callback    (run.py calls these)
    tasks       registry, validation, generate, macs, latency, compare
    reports     results, sweeps, targets, paired, contrast, levels, figures, loggers
    compare     settings, search, bench, calibration, matched
    run         keys, provenance, pipelines, generate, macs, latency, evaluate
    metrics     registry, adherence, clip_score, fidelity, fid, imagereward, images
    prompts     sets, shapes/, scenes/
    base        files, devices, config_files, models, methods, secrets, intervals

docs/architecture.md describes each module and how to add a metric, a task or a sweep report.
"""
