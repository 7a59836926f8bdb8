"""Image metrics: CLIP score, FID, fidelity to the full model (PSNR, SSIM, LPIPS), ImageReward.

Each is a function over decoded images (uint8 arrays or PIL images) and also a command-line tool over
folders: `python -m experiments.metrics.<name> --help`.
"""
