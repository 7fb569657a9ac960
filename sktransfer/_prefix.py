"""Frozen prefix computed once: split a network into a frozen prefix and a tail.

When the first groups of a network are frozen and the training images are not
augmented, their output is the same in every epoch. :func:`plan_split` traces
the network with ``torch.fx`` (layer-group modules kept as leaves), finds the
single activation where everything that must run every step begins (trainable
or random layers), and returns a prefix graph (input -> that activation) and
tail graphs (that activation -> logits) for training and for evaluation. The
graphs share the network's own modules, so training the tail trains the
network. When no such single activation exists (or tracing fails), the caller
runs the whole network as usual.

Tracing costs a few tenths of a second, paid by every fit of a grid search:
the graphs of a named network are kept (:data:`_plans`, keyed by its
structure) and rebound to each new instance of it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.modules.dropout import _DropoutNd

from ._groups import is_under
from ._lru import LRU

_RANDOM_FUNCTIONS = {
    torch.rand,
    torch.randn,
    torch.rand_like,
    torch.randn_like,
    torch.randint,
    torch.randperm,
    torch.bernoulli,
    torch.normal,
    torch.multinomial,
}
_RANDOM_METHODS = {
    "bernoulli",
    "bernoulli_",
    "uniform_",
    "normal_",
    "random_",
    "exponential_",
}


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


class NotSplittableError(Exception):
    """The prefix did not produce one tensor row per image."""


@dataclass
class PrefixSplit:
    """A frozen prefix and the tails that continue from its output: graphs
    over ``module``'s own layers, made into modules on first use (a fit whose
    prefix outputs are all stored never runs its prefix)."""

    module: nn.Module
    graphs: tuple[fx.Graph, fx.Graph, fx.Graph]  # prefix, tail_train, tail_eval
    boundary: str
    # the prefix's output shape of one image, by input size (a probe forward)
    shapes: dict = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def prefix(self) -> fx.GraphModule:
        return _rebind(self.module, self.graphs[0])

    @functools.cached_property
    def tail_train(self) -> fx.GraphModule:
        return _rebind(self.module, self.graphs[1])

    @functools.cached_property
    def tail_eval(self) -> fx.GraphModule:
        return _rebind(self.module, self.graphs[2])

    def tail(self, training: bool) -> fx.GraphModule:
        return self.tail_train if training else self.tail_eval


def _trace(module: nn.Module, leaves: set[str], training: bool) -> fx.GraphModule:
    was_training = {m: m.training for m in module.modules()}
    module.train(training)  # modes baked into traced control flow
    try:
        graph = _LeafTracer(leaves).trace(module)
    finally:
        for m, mode in was_training.items():
            m.training = mode
    return fx.GraphModule(module, graph)


def _is_live(node: fx.Node, module: nn.Module, frozen: list[str]) -> bool:
    """Whether ``node`` must run in every training step."""
    if node.op == "call_module":
        if is_under(node.target, frozen):
            return False
        sub = module.get_submodule(node.target)
        stateless = not any(True for _ in sub.parameters()) and not any(
            True for _ in sub.buffers()
        )
        return not stateless or isinstance(sub, _DropoutNd)
    if node.op == "get_attr":
        try:
            value = module.get_parameter(node.target)
        except AttributeError:
            return False
        return value.requires_grad
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _RANDOM_FUNCTIONS or "dropout" in name
    if node.op == "call_method":
        return node.target in _RANDOM_METHODS or "dropout" in str(node.target)
    return False


def _reachable(roots, step) -> set[fx.Node]:
    """``roots`` and every node reached from them by ``step(node)``."""
    seen: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(step(node))
    return seen


def _descendants(roots) -> set[fx.Node]:
    return _reachable(roots, lambda node: node.users)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    return _reachable([node], lambda current: current.all_input_nodes)


def _find_boundary(
    gm: fx.GraphModule, module: nn.Module, frozen: list[str]
) -> fx.Node | None:
    live = [n for n in gm.graph.nodes if _is_live(n, module, frozen)]
    tail = _descendants(live)
    crossing = {
        node
        for node in gm.graph.nodes
        if node not in tail
        and node.op not in ("get_attr", "output")
        and any(user in tail for user in node.users)
    }
    if len(crossing) != 1:
        return None
    boundary = crossing.pop()
    prefix = _ancestors(boundary)
    if not any(n.op == "call_module" and is_under(n.target, frozen) for n in prefix):
        return None  # nothing worth computing once
    return boundary


def _tail_graph(gm: fx.GraphModule | fx.Graph, boundary_name: str) -> fx.Graph | None:
    """The part of ``gm``'s graph after the node ``boundary_name``, which
    becomes its input; ``None`` when that part needs more than it."""
    traced = gm.graph if isinstance(gm, fx.GraphModule) else gm
    nodes = {node.name: node for node in traced.nodes}
    boundary = nodes.get(boundary_name)
    if boundary is None:
        return None
    keep = _descendants([boundary]) - {boundary}
    graph = fx.Graph()
    env = {boundary: graph.placeholder("frozen_features")}
    for node in traced.nodes:
        if node not in keep:
            continue
        for source in node.all_input_nodes:
            if source in env:
                continue
            if source.op != "get_attr":
                return None  # the tail needs more than the boundary
            env[source] = graph.node_copy(source)
        env[node] = graph.node_copy(node, lambda n: env[n])
    if not any(node.op == "output" for node in graph.nodes):
        return None
    return graph


def segment(upper: PrefixSplit, lower: PrefixSplit) -> fx.GraphModule | None:
    """The part of ``upper``'s prefix that follows ``lower``'s boundary (a cut
    point nearer the input): ``lower``'s output -> ``upper``'s, or ``None``
    when ``upper``'s output needs more than ``lower``'s."""
    if lower.boundary == upper.boundary:
        return None
    graph = _tail_graph(upper.graphs[0], lower.boundary)
    return None if graph is None else _rebind(upper.module, graph)


def _prefix_graph(gm: fx.GraphModule, boundary: fx.Node) -> fx.Graph:
    keep = _ancestors(boundary)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node in keep or node.op == "placeholder":
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[boundary])
    return graph


# Splits of named networks, ((prefix, tail_train, tail_eval) graphs, boundary,
# shapes) or None, by structure: see plan_split's ``structure``.
_plans: LRU[tuple | None] = LRU(max_items=16)


def plan_split(
    module: nn.Module,
    groups: list[list[str]],
    frozen: list[str],
    heads: tuple[str, ...] = (),
    structure: tuple | None = None,
) -> PrefixSplit | None:
    """Split ``module`` after its frozen prefix, or ``None`` when it cannot be.

    Layer groups and ``heads`` stay whole modules in the traced graphs (a
    hook on one of them fires when the tail runs it). ``structure``, a
    hashable identity of the network's architecture (e.g. its model name and
    the family table's version), lets another instance of the same
    architecture reuse the traced graphs instead of tracing again.
    """
    if structure is None:
        plan = _plan(module, groups, frozen, heads)
    else:  # graphs only: a traced instance would stay alive, weights and all
        key = (structure, tuple(map(tuple, groups)), tuple(frozen), tuple(heads))
        plan = _plans.get_or_create(key, lambda: _plan(module, groups, frozen, heads))
    if plan is None:
        return None
    graphs, boundary, shapes = plan
    return PrefixSplit(module, graphs, boundary, shapes)


def _rebind(module: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """A graph module over ``module``'s own layers (a graph belongs to one
    graph module: each gets a copy)."""
    return fx.GraphModule(module, _copy(graph))


def _copy(graph: fx.Graph) -> fx.Graph:
    copy = fx.Graph()
    copy.output(copy.graph_copy(graph, {}))
    return copy


def _plan(module, groups, frozen, heads) -> tuple | None:
    names = dict(module.named_modules())
    leaves = {entry for group in groups for entry in group if entry in names}
    leaves |= {head for head in heads if head in names}
    try:
        train_gm = _trace(module, leaves, training=True)
        eval_gm = _trace(module, leaves, training=False)
    except Exception:  # untraceable control flow: run the whole network instead
        return None
    boundary = _find_boundary(train_gm, module, frozen)
    if boundary is None:
        return None
    eval_nodes = {node.name: node for node in eval_gm.graph.nodes}
    twin = eval_nodes.get(boundary.name)
    if twin is None or (twin.op, twin.target) != (boundary.op, boundary.target):
        return None
    tail_train = _tail_graph(train_gm, boundary.name)
    tail_eval = _tail_graph(eval_gm, boundary.name)
    if tail_train is None or tail_eval is None:
        return None
    graphs = (_prefix_graph(train_gm, boundary), tail_train, tail_eval)
    return graphs, boundary.name, {}
