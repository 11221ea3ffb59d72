"""Graph properties of a random structure, the regressors of the graph study (thesis sec. 3.7.2 and 5.3).

Directed (on the oriented DAG u -> v, u < v): ``sources``, ``sinks``, ``layers`` (longest path + 1),
``max_layer_width``, ``in_degree_std``, ``out_degree_std``. Everything else is computed on the undirected
graph -- as the thesis does, and necessarily so: a DAG has no directed cycles, so directed distances are
infinite for most pairs and eccentricity, diameter, average shortest path and closeness are undefined.
Graphs are connected (``graphs.generate``). Statistics over nodes are mean and population std (ddof 0).
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from .graphs import LayeredGraph

PROPERTIES = (
    "nodes", "edges", "sources", "sinks", "layers", "max_layer_width", "density",
    "degree_mean", "degree_std", "degree_max", "in_degree_std", "out_degree_std",
    "clustering", "transitivity", "avg_shortest_path", "diameter", "eccentricity_mean", "eccentricity_std",
    "closeness_mean", "closeness_std", "betweenness_mean", "betweenness_std", "edge_betweenness_mean",
    "edge_betweenness_std",
)


def _stats(values) -> tuple[float, float]:
    a = np.fromiter(values, dtype=float)
    return float(a.mean()), float(a.std())


def graph_properties(g: LayeredGraph) -> dict[str, float]:
    """Every property in ``PROPERTIES`` for one layered graph."""
    und = nx.Graph()
    und.add_nodes_from(range(g.n))
    und.add_edges_from(g.edges)
    dag = nx.DiGraph()
    dag.add_nodes_from(range(g.n))
    dag.add_edges_from(g.edges)
    degrees = [d for _, d in und.degree()]
    ecc = nx.eccentricity(und)
    out = {
        "nodes": g.n,
        "edges": len(g.edges),
        "sources": len(g.sources),
        "sinks": len(g.sinks),
        "layers": g.depth,
        "max_layer_width": max(len(g.units(k)) for k in range(g.depth)),
        "density": nx.density(und),
        "degree_mean": float(np.mean(degrees)),
        "degree_std": float(np.std(degrees)),
        "degree_max": max(degrees),
        "in_degree_std": float(np.std([d for _, d in dag.in_degree()])),
        "out_degree_std": float(np.std([d for _, d in dag.out_degree()])),
        "clustering": nx.average_clustering(und),
        "transitivity": nx.transitivity(und),
        "avg_shortest_path": nx.average_shortest_path_length(und),
        "diameter": max(ecc.values()),
    }
    out["eccentricity_mean"], out["eccentricity_std"] = _stats(ecc.values())
    out["closeness_mean"], out["closeness_std"] = _stats(nx.closeness_centrality(und).values())
    out["betweenness_mean"], out["betweenness_std"] = _stats(nx.betweenness_centrality(und).values())
    out["edge_betweenness_mean"], out["edge_betweenness_std"] = _stats(
        nx.edge_betweenness_centrality(und).values())
    return {k: float(out[k]) for k in PROPERTIES}
