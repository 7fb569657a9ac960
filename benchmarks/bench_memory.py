"""Peak memory of ``transform`` over 200 vs 2,000 JPEG files.

Each size runs in a fresh subprocess; the peak resident set size (ru_maxrss)
grown during ``transform`` is compared with the growth of the output array.
Floor: growth from 200 to 2,000 images <= 1.2x the output's growth + 50 MB.

    python benchmarks/bench_memory.py [--model mobilenet_v3_small]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
from pathlib import Path
from sktransfer import CNNFeatureExtractor
paths = sorted(str(p) for p in Path(sys.argv[1]).glob("*.jpg"))[: int(sys.argv[2])]
extractor = CNNFeatureExtractor(sys.argv[3], weights=None, batch_size=32).fit(paths[:1])
extractor.transform(paths[:64])  # warm-up: allocator pools, thread pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = extractor.transform(paths)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
growth = (after - before) / 1024
print(json.dumps({"peak_growth_mb": growth, "output_mb": out.nbytes / 2**20}))
"""


def measure(folder: str, n: int, model: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, folder, str(n), model],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_small")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import photos, write_jpegs

    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, 2000, 250):  # write in chunks: bounded memory here too
            images = photos(250, size=(240, 320), seed=start)
            for i, path in enumerate(write_jpegs(images, Path(tmp) / "chunk")):
                Path(path).rename(Path(tmp) / f"{start + i:05d}.jpg")
        small = measure(tmp, 200, args.model)
        large = measure(tmp, 2000, args.model)
    growth = large["peak_growth_mb"] - small["peak_growth_mb"]
    output_growth = large["output_mb"] - small["output_mb"]
    print(f"model={args.model}, JPEG 320x240, batch_size=32")
    print(
        f"peak RSS growth during transform: 200 images {small['peak_growth_mb']:.1f} "
        "MB, "
        f"2,000 images {large['peak_growth_mb']:.1f} MB"
    )
    print(
        f"growth 200 -> 2,000: {growth:.1f} MB; output array grew {output_growth:.1f} "
        "MB; "
        f"limit 1.2 x {output_growth:.1f} + 50 = {1.2 * output_growth + 50:.1f} MB"
    )


if __name__ == "__main__":
    main()
