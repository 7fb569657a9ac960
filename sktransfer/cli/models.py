"""``sktransfer models``: the backbones, their embedding widths, offline weights."""

from __future__ import annotations

from ._shared import add_common, print_table


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "models",
        help="list backbones, embedding widths and offline weights",
        description="List the backbone names accepted by --model, the width of "
        "their default embedding and whether their pretrained weights are "
        "available offline. Any timm model is also accepted as 'timm/<name>'.",
    )
    parser.add_argument(
        "--offline", action="store_true", help="only backbones usable without network"
    )
    add_common(parser, model=False)
    parser.set_defaults(run=run)


def run(args) -> int:
    from .._backbones import list_backbones, weights_available

    rows = []
    for name in list_backbones(offline=args.offline):
        offline = "yes" if weights_available(name) else "no"
        rows.append((name, str(_embedding_width(name)), offline))
    print_table(("backbone", "embedding", "offline weights"), rows)
    print("\nAlso: any timm model as 'timm/<name>'.")
    return 0


def _embedding_width(name: str) -> int | str:
    """Width of the default embedding, from a build without memory or weights."""
    from torch import nn

    from .._backbones import build_structure
    from .._tap import find_layer

    try:
        backbone = build_structure(name)
    except Exception:
        return "?"
    head = find_layer(backbone.module, backbone.head)
    if isinstance(head, nn.Linear):
        return head.in_features
    return getattr(head, "in_channels", "?")
