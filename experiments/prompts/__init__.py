"""Prompt sets (`sets`: downloaded and bundled sets, their calibration and evaluation splits) and the bundled
procedural sets with their grammars and weight-free judges (`shapes`, the default model's; `scenes`, the
1024-token scene model's). Imports only `experiments.base`."""
