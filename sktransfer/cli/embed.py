"""``sktransfer embed``: image embeddings to .npy, .csv or .parquet."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ._shared import add_common, collect, weights

OUTPUT_FORMATS = (".npy", ".csv", ".parquet")


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "embed",
        help="write image embeddings to .npy, .csv or .parquet",
        description="Embed images with a pretrained CNN and write one row per image. "
        "INPUT is image files, a folder of images, or an image folder "
        "root/<class>/<image> (then the class is written too). .npy files get a "
        "sidecar <name>.files.csv with the file names (and classes).",
        epilog="example: sktransfer embed photos/ --model efficientnet_lite0 -o e.npy",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files or a folder"
    )
    parser.add_argument(
        "-o", "--output", required=True, help="output file: .npy, .csv or .parquet"
    )
    parser.add_argument(
        "--layer", default=None, help="module to tap (default: embedding)"
    )
    parser.add_argument(
        "--pooling",
        default="avg",
        choices=["avg", "max", "avgmax"],
        help="spatial pooling",
    )
    add_common(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from .._extractor import CNNFeatureExtractor

    output = Path(args.output)
    _check_output(output)
    filenames, target, target_names = collect(args.inputs)
    extractor = CNNFeatureExtractor(
        args.model,
        weights=weights(args),
        layer=args.layer,
        pooling=args.pooling,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
    )
    embeddings = extractor.fit_transform(filenames)
    labels = None if target is None else np.asarray(target_names)[target]
    columns = [str(c) for c in extractor.get_feature_names_out()]
    _write(output, embeddings, filenames, labels, columns)
    print(
        f"Wrote {embeddings.shape[0]} embeddings of width {embeddings.shape[1]} "
        f"({extractor.backbone_.name}) to {output}",
        file=sys.stderr,
    )
    return 0


def _check_output(output: Path) -> None:
    """Fail before embedding: unknown format, missing folder, missing pyarrow."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"Cannot write {str(output)!r}: unknown format "
            f"{suffix or '(no extension)'!r}; use one of {', '.join(OUTPUT_FORMATS)}."
        )
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"Output folder {str(parent)!r} does not exist.")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ImportError(
                "Writing .parquet needs pyarrow, which is not installed: "
                "pip install pyarrow, or write .npy or .csv instead."
            ) from None


def sidecar_path(output: Path) -> Path:
    """``emb.npy`` -> ``emb.files.csv``: the file names (and classes) of the rows."""
    return output.with_name(output.stem + ".files.csv")


def _write(output: Path, embeddings, filenames, labels, columns) -> None:
    import csv

    suffix = output.suffix.lower()
    meta = {"filename": [str(f) for f in filenames]}
    if labels is not None:
        meta["label"] = [str(label) for label in labels]
    if suffix == ".npy":
        np.save(output, embeddings)
        with open(sidecar_path(output), "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(meta))
            writer.writerows(zip(*meta.values(), strict=True))
    elif suffix == ".csv":
        with open(output, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*meta, *columns])
            for i, row in enumerate(embeddings):
                writer.writerow(
                    [*(v[i] for v in meta.values()), *map(repr, row.tolist())]
                )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = {key: pa.array(values) for key, values in meta.items()}
        data.update(
            {name: pa.array(embeddings[:, j]) for j, name in enumerate(columns)}
        )
        pq.write_table(pa.table(data), output)
