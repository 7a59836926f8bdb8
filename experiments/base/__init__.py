"""The harness's bottom layer: small helpers with no knowledge of runs, tasks or reports.

files (atomic writes, JSON, locks), devices (device and dtype), config_files (project paths, conf/
settings, `ConfigError`), models (model configs and their token geometry), methods (the config object a
method's conf builds, its knob), secrets (credential scrubbing), intervals (bootstrap intervals over
prompts). Imports nothing of the harness.
"""
