"""Don't-care minimisation of LUT nodes: the same value on every address the inputs can
produce, fewer ECP5 LUT4s. numpy only; pure functions of the bundle's arrays.

A layer-0 node reads thermometer bits, and bit (f, t) = [q_f > theta(f, t)]: of the 2**n
addresses only those some token produces can occur (`reachable`), about 19 of 64 on the
reference. The others are don't-cares, and `minimise_node` fills them for the cheapest
form it finds:

1. the fewest inputs: the smallest set of inputs that determines the value on every
   reachable address (all 2**n subsets are tried, so this is the minimum, not a greedy
   one); k <= 4 inputs cost 1 LUT4, 5 cost 2;
2. for six inputs, a two-level form value = h(g(bound + shared), free + shared) with g a
   LUT4 and h a LUT4 (cost 2) or a five-input LUT (cost 3), instead of 4 LUT4: the
   don't-cares often leave at most two distinct columns per shared assignment, so g's
   one bit tells h all it needs (a column-multiplicity-2 decomposition; pairwise
   compatible columns are merged, a 2-colouring of the incompatibility graph).

Every result is checked against the table on all reachable addresses before it is
returned. Deeper layers get the same treatment with the don't-cares that follow from the
layer before: constant nodes there and one input read twice.
"""

import itertools
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..contract.bundle import signed_range

INNER = -1  # a Node input that is its inner node's output


@dataclass(frozen=True, eq=False)
class Node:
    """One minimised LUT node: value = table[address], address bit l = input `inputs[l]`
    (an index into the layer's input, or INNER: the output of `inner`); no inputs: a constant."""

    inputs: tuple
    table: np.ndarray  # 2**len(inputs) uint8 0/1
    inner: "Node | None" = field(default=None)

    @property
    def lut4(self):
        """ECP5 LUT4s of this node as Yosys maps it: 2**max(0, k-4) per table of k > 0 inputs."""
        own = 0 if not self.inputs else 2 ** max(0, len(self.inputs) - 4)
        return own + (self.inner.lut4 if self.inner is not None else 0)

    @property
    def fan_in(self):
        """Distinct layer inputs the node reads (its effective fan-in)."""
        return len(self.sources())

    def sources(self):
        own = {x for x in self.inputs if x != INNER}
        return own | (self.inner.sources() if self.inner is not None else set())

    def remap(self, index):
        """The same node reading input index[x] where it read x (INNER stays)."""
        inner = self.inner.remap(index) if self.inner is not None else None
        return Node(tuple(x if x == INNER else int(index[x]) for x in self.inputs), self.table, inner)

    def evaluate(self, xt):
        """The node's value per column of `xt` (in, N) bits, as uint8 (N,)."""
        inner = self.inner.evaluate(xt) if self.inner is not None else None
        address = np.zeros(xt.shape[1], np.int64)
        for l, x in enumerate(self.inputs):
            address |= (inner if x == INNER else xt[x]).astype(np.int64) << l
        return self.table[address]


def full_node(row, table):
    """A bundle node as it is: all n inputs, its whole table."""
    return Node(tuple(int(x) for x in row), np.asarray(table, np.uint8))


# ---- reachable addresses ----

def thermometer_reachable(block, row):
    """The sorted addresses a layer-0 node reading thermometer bits `row` (indices f*T + t)
    can see for some token in the signed b-bit range. Exact: per feature, the bits it reads
    are a step function of q_f that changes only between theta and theta + 1, so q_f = lo
    and every theta + 1 in range give all of its joint values; features are independent."""
    lo, hi = signed_range(block.bits)
    row = np.asarray(row, np.int64)
    features, theta = row // block.T, block.thresholds.ravel()[row].astype(np.int64)
    addresses = np.zeros(1, np.int64)
    for f in np.unique(features):
        reads = np.nonzero(features == f)[0]
        q = np.unique(np.clip(np.concatenate([[lo], theta[reads] + 1]), lo, hi))
        bits = (q[:, None] > theta[reads][None, :]).astype(np.int64)
        part = np.unique((bits << reads[None, :]).sum(axis=1))
        addresses = (addresses[:, None] | part[None, :]).ravel()
    return np.unique(addresses)


def deeper_reachable(row, constants):
    """The sorted addresses a deeper node can see when its inputs are otherwise free:
    an input read twice gives equal bits, an input in `constants` ({index: 0/1}) its value."""
    row = [int(x) for x in row]
    free = list(dict.fromkeys(x for x in row if x not in constants))
    values = np.arange(2 ** len(free), dtype=np.int64)
    addresses = np.zeros(len(values), np.int64)
    for l, x in enumerate(row):
        bit = np.full(len(values), constants[x], np.int64) if x in constants else (values >> free.index(x)) & 1
        addresses |= bit << l
    return np.unique(addresses)


# ---- the minimisation of one node ----

def _bits(k):
    return (np.arange(2 ** k)[:, None] >> np.arange(k)[None, :]) & 1


def _consistent_masks(addresses, values, n):
    """(2**n,) bool: input subset `mask` determines the value on every reachable address."""
    masks = np.arange(2 ** n, dtype=np.int64)
    keys = ((addresses[None, :] & masks[:, None]) + (masks[:, None] << n)).ravel()
    count = np.bincount(keys, minlength=4 ** n)
    ones = np.bincount(keys, weights=np.tile(values, 2 ** n).astype(np.float64), minlength=4 ** n)
    return ((ones == 0) | (ones == count)).reshape(2 ** n, 2 ** n).all(axis=1)


def smallest_support(addresses, values, n):
    """The kept inputs (ascending positions 0..n-1) of a smallest input set on which the
    node's values over `addresses` depend: the minimum over all 2**n subsets."""
    ok = _consistent_masks(addresses, values, n)
    sizes = np.array([bin(m).count("1") for m in range(2 ** n)])
    best = int(np.flatnonzero(ok)[np.argmin(sizes[ok])])  # the full set is always consistent
    return [l for l in range(n) if best >> l & 1]


def project(addresses, values, kept):
    """(addresses, values) over the kept inputs only (renumbered 0..len(kept)-1), deduplicated."""
    reduced = np.zeros(len(addresses), np.int64)
    for new, l in enumerate(kept):
        reduced |= ((addresses >> l) & 1) << new
    reduced, first = np.unique(reduced, return_index=True)
    return reduced, values[first]


@dataclass(frozen=True)
class _Split:
    bound: tuple
    free: tuple
    shared: tuple
    index: np.ndarray  # (2**shared, 2**bound, 2**free) addresses
    cost: int


def _splits(k):
    """The two-level forms of a k-input function cheaper than one k-input table, cheapest first."""
    direct = 2 ** max(0, k - 4)
    out = []
    for labels in itertools.product(range(3), repeat=k):  # 0 bound, 1 free, 2 shared
        parts = [tuple(l for l in range(k) if labels[l] == kind) for kind in range(3)]
        bound, free, shared = parts
        if len(bound) < 2 or not free or len(bound) + len(shared) > 4:
            continue
        cost = 1 + 2 ** max(0, len(free) + len(shared) + 1 - 4)
        if cost >= direct:
            continue

        def spread(vs, count):
            return (_bits(count) << np.array(vs, np.int64)[None, :]).sum(axis=1) if vs else np.zeros(1, np.int64)
        index = (spread(shared, len(shared))[:, None, None] | spread(bound, len(bound))[None, :, None]
                 | spread(free, len(free))[None, None, :])
        out.append(_Split(bound, free, shared, index, cost))
    return sorted(out, key=lambda s: s.cost)


_SPLITS = {}


def _two_colouring(incompatible):
    """A 0/1 colour per column with no incompatible pair alike, or None (not bipartite)."""
    colour = -np.ones(len(incompatible), np.int64)
    for start in range(len(incompatible)):
        if colour[start] >= 0:
            continue
        colour[start], stack = 0, [start]
        while stack:
            u = stack.pop()
            for v in np.flatnonzero(incompatible[u]):
                if colour[v] < 0:
                    colour[v] = 1 - colour[u]
                    stack.append(v)
                elif colour[v] == colour[u]:
                    return None
    return colour


def decompose(addresses, values, k):
    """A two-level form (g, h) of a k-input function given on `addresses`, as
    (split, g table (2**shared, 2**bound), h table (2**shared, 2, 2**free)), or None."""
    if k not in _SPLITS:
        _SPLITS[k] = _splits(k) if k <= 6 else []
    full = np.full(2 ** k, -1, np.int64)
    full[addresses] = values
    for split in _SPLITS[k]:
        m = full[split.index]  # (shared, bound columns, free rows)
        care = m >= 0
        clash = (care[:, :, None, :] & care[:, None, :, :] & (m[:, :, None, :] != m[:, None, :, :])).any(axis=3)
        edges = clash.astype(np.int64)
        if np.einsum("sij,sjk,ski->", edges, edges, edges):  # a triangle: not 2-colourable (quick reject)
            continue
        colours = []
        for s in range(len(m)):
            colour = _two_colouring(clash[s]) if clash[s].any() else np.zeros(len(clash[s]), np.int64)
            if colour is None:
                break
            colours.append(colour)
        else:
            g = np.array(colours, np.uint8)
            h = np.zeros((len(m), 2, m.shape[2]), np.uint8)
            for s in range(len(m)):
                for c in range(2):
                    column = m[s, g[s] == c]
                    if len(column):
                        h[s, c] = np.max(column, axis=0).clip(0)  # the cared value (columns agree), else 0
            return split, g, h
    return None


def minimise_node(row, table, addresses):
    """The cheapest Node found that equals `table` (node inputs `row`) on every address in
    `addresses`; ValueError if the result were wrong on any of them (it never should be)."""
    row, table = [int(x) for x in row], np.asarray(table, np.uint8)
    n, values = len(row), table[addresses]
    kept = smallest_support(addresses, values, n)
    reduced, rvalues = project(addresses, values, kept)
    k = len(kept)
    node = None
    if k >= 5 and len(reduced) < 2 ** k:  # without don't-cares a trained table almost never splits
        found = decompose(reduced, rvalues, k)
        if found is not None:
            split, g, h = found
            inner_inputs = [row[kept[l]] for l in split.bound + split.shared]
            inner = Node(tuple(inner_inputs), g.reshape(-1))  # index: bound + (shared << |bound|)
            outer = (INNER, *(row[kept[l]] for l in split.free + split.shared))
            node = Node(outer, h.transpose(0, 2, 1).reshape(-1), inner)  # index: g + (free << 1) + ...
    if node is None:
        small = np.zeros(2 ** k, np.uint8)
        small[reduced] = rvalues
        node = Node(tuple(row[l] for l in kept), small)
    # the promise: the same value on every reachable address
    xt = ((addresses[None, :] >> np.arange(n)[:, None]) & 1).astype(np.uint8)
    local = np.zeros((max(row) + 1, len(addresses)), np.uint8)
    local[row] = xt
    if not np.array_equal(node.evaluate(local), values):
        raise ValueError(f"don't-care minimisation changed node {row} on a reachable address")
    return node


# ---- whole blocks ----

_CACHE = weakref.WeakKeyDictionary()


def minimise_block(block, skip=()):
    """Per layer of `block`, its minimised Nodes (layer 0 reading thermometer indices f*T + t),
    or None for the layers in `skip` (kept as they are, e.g. ROM layers). Cached per block."""
    key = tuple(sorted(skip))
    cached = _CACHE.setdefault(block, {})
    if key not in cached:
        layers, constants = [], {}
        for index, layer in enumerate(block.layers):
            if index in skip:
                layers.append(None)
                constants = {}
                continue
            nodes = []
            for row, table in zip(layer.mapping, layer.table):
                addresses = thermometer_reachable(block, row) if index == 0 else deeper_reachable(row, constants)
                nodes.append(minimise_node(row, table, addresses))
            layers.append(nodes)
            constants = {j: int(node.table[0]) for j, node in enumerate(nodes) if not node.inputs}
        cached[key] = layers
    return cached[key]


def layer_figures(block, index, nodes, previous=None):
    """Per-layer figures of a minimisation: nodes, reachable addresses per node (mean,
    median), the effective fan-in histogram and LUT4 per node before and after (estimate).
    `previous`: the layer before's minimised Nodes (its constant nodes cut the reachable set)."""
    layer = block.layers[index]
    if index == 0:
        reach = [len(thermometer_reachable(block, row)) for row in layer.mapping]
    else:
        constants = {j: int(node.table[0]) for j, node in enumerate(previous or []) if not node.inputs}
        reach = [len(deeper_reachable(row, constants)) for row in layer.mapping]
    fan_in = np.bincount([node.fan_in for node in nodes], minlength=layer.n + 1)
    forms = {"constant": sum(1 for x in nodes if not x.inputs),
             "two_level": sum(1 for x in nodes if x.inner is not None)}
    return {"layer": index, "nodes": layer.out_features, "n": layer.n,
            "reachable_mean": round(float(np.mean(reach)), 3), "reachable_median": float(np.median(reach)),
            "fan_in_histogram": {str(k): int(c) for k, c in enumerate(fan_in)}, **forms,
            "lut4_per_node_before": 2 ** max(0, layer.n - 4),
            "lut4_per_node_after": round(sum(x.lut4 for x in nodes) / len(nodes), 3)}
