"""One run: its key (`keys`, `provenance`), its pipeline (`pipelines`), its images (`generate`: batched,
seeded, resumable, the full model's cached and shared), their executed MACs (`macs`), timing (`latency`)
and evaluation (`evaluate`, asking the metric registry). Imports only base, prompts and metrics."""
