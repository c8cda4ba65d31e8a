"""The whole model's images/s on this machine's CPU, for the build report beside the chip's
(`contract.throughput`): the golden model (numpy) and torch's integer eval of its checkpoint.
"""

import statistics
import time


def _median_rate(run, images, repeats):
    """Median images/s of `repeats` timed calls of `run()` over `images` images (one warm-up first)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return images / statistics.median(times)


def cpu_images_per_second(program, pixels, *, checkpoint=None, batch=256, repeats=5):
    """Measured on this machine's CPU, medians of `repeats` runs over `pixels` (uint8, B x C x H
    x W) in batches of `batch`: {"golden": images/s of contract.golden_model, "torch_1_thread",
    "torch_default_threads": torch's integer eval of the `checkpoint` model (None without one),
    "torch_default_threads_n", "batch", "images", "repeats"}."""
    from .contract import golden_model

    out = {"batch": batch, "images": len(pixels), "repeats": repeats,
           "golden": _median_rate(lambda: golden_model.logits(program, pixels, chunk=batch), len(pixels), repeats),
           "torch_1_thread": None, "torch_default_threads": None, "torch_default_threads_n": None}
    if checkpoint is None:
        return out
    import torch

    from .model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    x = torch.from_numpy(pixels.copy())

    def torch_eval():
        with torch.no_grad():
            for i in range(0, len(x), batch):
                model(x[i:i + batch])

    default = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out["torch_1_thread"] = _median_rate(torch_eval, len(pixels), repeats)
    finally:
        torch.set_num_threads(default)
    out["torch_default_threads"] = _median_rate(torch_eval, len(pixels), repeats)
    out["torch_default_threads_n"] = default
    return out


def bundle_cpu_figures(bundle_path, *, images=256, repeats=3):
    """`cpu_images_per_second` of a version 2 bundle on its first `images` Fashion-MNIST test
    images: the golden model, and torch's integer eval when the bundle's source checkpoint is
    where its manifest says. For the whole model's build report (a few seconds)."""
    from pathlib import Path

    from .contract.fashion_mnist import fashion_mnist_pixels
    from .contract.model_bundle import load_model_bundle

    program, manifest, _ = load_model_bundle(bundle_path)
    source = Path(manifest.get("source_checkpoint", {}).get("path", ""))
    pixels, _ = fashion_mnist_pixels("test", limit=images)
    return cpu_images_per_second(program, pixels, checkpoint=source if source.is_file() else None,
                                 batch=images, repeats=repeats)

