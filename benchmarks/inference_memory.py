"""Peak memory of PredictionWriter vs MONAI sliding_window_inference on 240x240x155, 4 classes.

python benchmarks/inference_memory.py make DIR, then: ... radiobject|monai DIR PATCH [labels]
"""

import os
import resource
import sys
import time
import tracemalloc

import numpy as np
import torch

from radiobject import VolumeCollection
from radiobject.ml import PredictionWriter, create_inference_dataloader

which, d = sys.argv[1], sys.argv[2]
if which == "make":
    vol = np.random.default_rng(0).normal(size=(240, 240, 155)).astype(np.float32)
    VolumeCollection.from_numpy(os.path.join(d, "img"), {"s0": vol})
    sys.exit()
patch = int(sys.argv[3])
output = sys.argv[4] if len(sys.argv) > 4 else "probabilities"
img = VolumeCollection(os.path.join(d, "img"))
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Softmax(1)).eval()
with torch.no_grad():
    model(torch.zeros(2, 1, patch, patch, patch))  # warm-up: allocator pools for the patches


def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


before = rss()
t = time.perf_counter()
tracemalloc.start()
if which == "radiobject":
    loader = create_inference_dataloader(img, patch_size=patch, overlap=0.5, batch_size=2)
    target = os.path.join(d, f"pred-{os.getpid()}")
    PredictionWriter(loader, target, output=output, mode="gaussian").run(model)
else:
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        x = torch.from_numpy(img.iloc[0].to_numpy())[None, None]
        out = sliding_window_inference(x, (patch,) * 3, 2, model, overlap=0.5, mode="gaussian")
        if output == "labels":
            out = out.argmax(1)
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(
    f"{which:10s} patch={patch} {output:13s}: numpy peak (tracemalloc) {peak / 2**20:6.1f} MiB, "
    f"max RSS {before:.0f} -> {rss():.0f} MiB (+{rss() - before:.0f}), "
    f"{time.perf_counter() - t:.1f} s"
)
