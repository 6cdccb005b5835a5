"""FINCH (Sarfraz, Sharma and Stiefelhagen, "Efficient Parameter-free Clustering Using First
Neighbor Relations", CVPR 2019): each point is linked to its first neighbour (cosine), the connected
components are the clusters, and the same is repeated on the clusters' means until nothing merges
(`finch_partitions`, finest first); `finch_clusters` takes the coarsest partition with at least the
required number of clusters and merges the most similar cluster means until that number is left.
EOAL clusters with it (mqnet_fast.strategies.eoal); beside it, mqnet_fast.mixture fits the
two-component mixture LfOSA and EAOA use."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast import ops


def first_neighbours(x: torch.Tensor) -> np.ndarray:
    """For each row, the most similar other row by cosine (ties to the lower row); a single row is its own."""
    if x.shape[0] <= 1:
        return np.zeros(x.shape[0], np.int64)
    rows = x.double()
    return ops.nearest_k(rows, rows, 1, exclude_self=True)[1][:, 0].cpu().numpy()


def _components(neighbours: np.ndarray) -> np.ndarray:
    """Connected components of the graph i - neighbours[i], labelled in order of their lowest row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(neighbours)
    graph = coo_matrix((np.ones(n), (np.arange(n), neighbours)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # each component's lowest row
    relabel = np.empty(len(first), np.int64)
    relabel[np.argsort(first, kind="stable")] = np.arange(len(first))
    return relabel[labels]


def means(x: torch.Tensor, labels: np.ndarray, count: int) -> torch.Tensor:
    """(count, d) float64 mean of the rows of `x` in each cluster of `labels`."""
    index = torch.from_numpy(labels).to(x.device)
    sums = torch.zeros(count, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, index, x.double())
    sizes = torch.bincount(index, minlength=count).double()
    return sums / sizes[:, None]


def finch_partitions(x: torch.Tensor) -> list[np.ndarray]:
    """FINCH's partitions of the rows, finest first: each an (n,) array of cluster labels."""
    n = x.shape[0]
    labels = np.arange(n)
    points = x
    partitions = []
    while points.shape[0] > 1:
        merged = _components(first_neighbours(points))
        count = int(merged.max()) + 1
        if count == points.shape[0]:
            break
        labels = merged[labels]
        partitions.append(labels.copy())
        points = means(x, labels, count)
        if count == 1:
            break
    return partitions


def finch_clusters(x: torch.Tensor, required: int) -> np.ndarray:
    """(n,) labels of `required` clusters (at most n): the coarsest FINCH partition with at least that
    many, then the two most similar cluster means merged until `required` are left."""
    n = x.shape[0]
    required = min(required, n)
    labels = np.arange(n)
    for partition in finch_partitions(x):
        if partition.max() + 1 < required:
            break
        labels = partition
    count = int(labels.max()) + 1
    while count > required:
        centers = F.normalize(means(x, labels, count), dim=1)
        sim = centers @ centers.T
        sim.fill_diagonal_(float("-inf"))
        a, b = divmod(int(torch.argmax(sim)), count)
        a, b = min(a, b), max(a, b)
        labels = np.where(labels == b, a, labels)
        labels = np.where(labels > b, labels - 1, labels)
        count -= 1
    return labels
