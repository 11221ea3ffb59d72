"""Random graphs -> layered DAGs -> masked recurrent wirings (thesis ch. 5, "Sparse-RNNs").

Generation is our own seeded numpy code, not networkx's, so a (generator, n, seed) gives the same edge list under
every networkx version (networkx's BA seed graph changed between 2.x and 3.x). Only ``Generator.random()`` is
drawn (the PCG64 bit stream and its float conversion are stable across numpy versions); choices are derived
from it here. Thesis parameters (``arbitrary_structure.py``): n uniform in [10, 50]; Barabási–Albert with
m = n // 10; connected Watts–Strogatz with k = n // 5 and rewiring p = 1. Erdős–Rényi, new here, uses
p = max(n // 5, 4) / (n - 1) (mean degree as WS, at least 4 so connected draws are common).
Graphs that must be connected are redrawn up to ``TRIES`` times (the next draws of the same stream).

From graph to network: every undirected edge {u, v} is oriented u -> v with u < v (a DAG; node order is a
topological order). A node's layer is the length of the longest path reaching it, so sources (no in-edges) form
layer 0 and every edge goes from a lower to a higher layer -- no edges inside a layer. Layer k becomes one
recurrent layer with one unit per node (in node order); its input is the concatenation of the outputs of every
earlier layer with an edge into it, and its input mask is exactly those edges, the same for every gate.
Layer 0 reads the embedding densely (the embedding is not part of the graph). The head reads the sink nodes
(no out-edges), wherever they sit.

Recurrent (hidden-to-hidden) weights within a layer, ``recurrent``:
``self`` (default) -- each unit keeps only its own previous state (a self-loop per node): the graph has no edges
inside a layer, so any other hidden-to-hidden weight would add connections the graph lacks, and the number of
weights would depend on how wide the layers happen to be rather than on the graph; a self-loop is the least
recurrence that keeps each node a recurrent unit with memory (with none, an RNN-tanh/ReLU layer sees only the
current letter). ``dense`` -- the thesis's choice (unmasked ``weight_hh``). ``none`` -- no recurrence.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from selfish_deploy.errors import UserError

from .classifier import EMBEDDING, Wiring, gate_tile

GENERATORS = ("barabasi_albert", "watts_strogatz", "erdos_renyi")
RECURRENT = ("self", "dense", "none")
TRIES = 100


def _below(rng: np.random.Generator, n: int) -> int:
    """Uniform integer in [0, n) from one ``random()`` draw."""
    return min(int(rng.random() * n), n - 1)


def barabasi_albert(n: int, m: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    """Preferential attachment: nodes 0..m-1 start unconnected, node m links to all of them, every later node
    links to m distinct earlier nodes drawn with probability proportional to degree."""
    if not 1 <= m < n:
        raise UserError(f"Barabási–Albert needs 1 <= m < n, got m={m}, n={n}")
    edges = {(t, m) for t in range(m)}
    ends = list(range(m)) + [m] * m  # each node once per incident edge
    for v in range(m + 1, n):
        targets: set[int] = set()
        while len(targets) < m:
            targets.add(ends[_below(rng, len(ends))])
        for t in sorted(targets):
            edges.add((t, v))
            ends += [t, v]
    return edges


def watts_strogatz(n: int, k: int, p: float, rng: np.random.Generator) -> set[tuple[int, int]]:
    """Ring lattice (each node linked to k // 2 neighbours per side), each edge (u, u+j) rewired with
    probability p to (u, w), w uniform among nodes neither u nor already linked to u."""
    if not 2 <= k < n:
        raise UserError(f"Watts–Strogatz needs 2 <= k < n, got k={k}, n={n}")
    adj = {u: set() for u in range(n)}
    for u in range(n):
        for j in range(1, k // 2 + 1):
            adj[u].add((u + j) % n)
            adj[(u + j) % n].add(u)
    for j in range(1, k // 2 + 1):
        for u in range(n):
            v = (u + j) % n
            if rng.random() < p and v in adj[u]:
                free = [w for w in range(n) if w != u and w not in adj[u]]
                if free:
                    w = free[_below(rng, len(free))]
                    adj[u].discard(v)
                    adj[v].discard(u)
                    adj[u].add(w)
                    adj[w].add(u)
    return {(min(u, v), max(u, v)) for u in adj for v in adj[u]}


def erdos_renyi(n: int, p: float, rng: np.random.Generator) -> set[tuple[int, int]]:
    """G(n, p): each of the n(n-1)/2 pairs independently."""
    return {(u, v) for u in range(n) for v in range(u + 1, n) if rng.random() < p}


def connected(n: int, edges: set[tuple[int, int]]) -> bool:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    return nx.is_connected(g)


def generate(generator: str, n: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    """Edges (u < v) of one connected graph on nodes 0..n-1, with the thesis's parameters for n."""
    if generator not in GENERATORS:
        raise UserError(f"unknown graph generator {generator!r}; choose from {', '.join(GENERATORS)}")
    if n < 4:
        raise UserError(f"graphs need at least 4 nodes, got {n}")
    for _ in range(TRIES):
        if generator == "barabasi_albert":
            return barabasi_albert(n, max(1, n // 10), rng)  # connected by construction
        if generator == "watts_strogatz":
            edges = watts_strogatz(n, max(2, n // 5), 1.0, rng)
        else:
            edges = erdos_renyi(n, min(1.0, max(n // 5, 4) / (n - 1)), rng)
        if connected(n, edges):
            return edges
    raise UserError(f"no connected {generator} graph with {n} nodes in {TRIES} draws")


@dataclass(frozen=True)
class LayeredGraph:
    n: int
    edges: frozenset[tuple[int, int]]  # oriented u -> v, u < v
    layer_of: tuple[int, ...]  # longest-path layer of every node

    @classmethod
    def of(cls, n: int, edges: set[tuple[int, int]]) -> "LayeredGraph":
        if any(not 0 <= u < v < n for u, v in edges):
            raise UserError("edges must be (u, v) with 0 <= u < v < n")
        layer = [0] * n
        for u, v in sorted(edges):  # sorted by u: node order is a topological order
            layer[v] = max(layer[v], layer[u] + 1)
        return cls(n, frozenset(edges), tuple(layer))

    @property
    def depth(self) -> int:
        return max(self.layer_of) + 1

    def units(self, k: int) -> list[int]:
        """Nodes of layer k, in node order: unit i of recurrent layer k is ``units(k)[i]``."""
        return [v for v in range(self.n) if self.layer_of[v] == k]

    @property
    def sources(self) -> list[int]:
        return [v for v in range(self.n) if not any(e[1] == v for e in self.edges)]

    @property
    def sinks(self) -> list[int]:
        return [v for v in range(self.n) if not any(e[0] == v for e in self.edges)]


@dataclass(frozen=True)
class GraphNetwork:
    wiring: Wiring
    masks: dict[str, torch.Tensor]  # explicit masks by parameter name, for ``install_masks``
    columns: tuple[tuple[int, ...], ...]  # per layer: the node behind each input column (-1: embedding)


def to_network(g: LayeredGraph, arch: str, emb: int = 0, recurrent: str = "self") -> GraphNetwork:
    """The masked wiring of ``g`` (module docstring); ``emb`` 0 = one embedding unit per source (thesis)."""
    if recurrent not in RECURRENT:
        raise UserError(f"unknown recurrent mode {recurrent!r}; choose from {', '.join(RECURRENT)}")
    emb = emb or len(g.sources)
    layers = [g.units(k) for k in range(g.depth)]
    inputs, masks, columns = [], {}, []
    for k, units in enumerate(layers):
        if k == 0:
            srcs, cols = (EMBEDDING,), [-1] * emb
            conn = torch.ones(len(units), emb, dtype=torch.bool)
        else:
            srcs = tuple(j for j in range(k) if any((u, v) in g.edges for u in layers[j] for v in units))
            cols = [u for j in srcs for u in layers[j]]
            conn = torch.tensor([[(u, v) in g.edges for u in cols] for v in units], dtype=torch.bool)
        inputs.append(srcs)
        columns.append(tuple(cols))
        h = len(units)
        hh = {"self": torch.eye(h, dtype=torch.bool), "dense": torch.ones(h, h, dtype=torch.bool),
              "none": torch.zeros(h, h, dtype=torch.bool)}[recurrent]
        masks[f"rnns.{k}.weight_ih_l0"] = gate_tile(conn, arch)
        masks[f"rnns.{k}.weight_hh_l0"] = gate_tile(hh, arch)
    sinks = set(g.sinks)
    readout = tuple(k for k, units in enumerate(layers) if sinks & set(units))
    head_cols = [v for k in readout for v in layers[k]]
    masks["head.weight"] = torch.tensor([v in sinks for v in head_cols], dtype=torch.bool).expand(2, -1).clone()
    wiring = Wiring(arch, emb, tuple(len(u) for u in layers), tuple(inputs), readout)
    return GraphNetwork(wiring, masks, tuple(columns))


def graph_seed(seed: int, generator: str, index: int) -> np.random.Generator:
    """The stream of graph ``index`` of ``generator``: independent of every other graph and of the cell."""
    return np.random.default_rng([seed, GENERATORS.index(generator), index])


def draw(generator: str, index: int, seed: int, n_min: int, n_max: int) -> LayeredGraph:
    """Graph ``index`` of a study: n uniform in [n_min, n_max], then the generator, from one seeded stream."""
    rng = graph_seed(seed, generator, index)
    n = n_min + _below(rng, n_max - n_min + 1)
    return LayeredGraph.of(n, generate(generator, n, rng))


def n_weights(net: GraphNetwork) -> int:
    """Live weights in the recurrent layers (all gates)."""
    return sum(int(m.sum()) for name, m in net.masks.items() if name.startswith("rnns."))

