"""The experiment layer: pipelines, prompts, generation, metrics, MACs, latency and result sinks."""
