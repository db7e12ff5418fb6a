"""The size-constrained choice of one type per tensor: a multiple-choice knapsack.

Each item (tensor) has candidates (bytes, predicted error); pick one per item so that the bytes
add up to at most `capacity` and the errors add up to as little as possible. Two solvers run and
the better feasible answer wins:

- dynamic programming over byte *units* (bytes rounded up to capacity / max_units): exact when a
  unit is one byte (small instances, the brute-force tests), otherwise it can lose at most one
  unit per item of slack, which the greedy fill below takes back;
- a Lagrangian sweep (each item takes argmin error + lambda * bytes, lambda bisected to the
  smallest value that fits), which is optimal for the capacity it happens to use.

Both answers are then topped up greedily with the best error-per-byte upgrades that still fit.
Everything is plain float64/int64 NumPy with fixed tie-breaking (lowest index wins), so the same
inputs give the same choice on any machine and thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Item:
    """One tensor's candidates: bytes (int) and predicted error (float), same length."""

    nbytes: tuple[int, ...]
    error: tuple[float, ...]


class Infeasible(ValueError):
    """Even the smallest candidate of every item does not fit."""


def total(items: list[Item], choice: list[int]) -> tuple[int, float]:
    return (sum(it.nbytes[k] for it, k in zip(items, choice)),
            float(sum(it.error[k] for it, k in zip(items, choice))))


def solve(items: list[Item], capacity: int, max_units: int = 10_000, max_cells: int = 40_000_000) -> list[int]:
    """Index of the chosen candidate per item; total bytes <= capacity (or Infeasible)."""
    if not items:
        return []
    smallest = sum(min(it.nbytes) for it in items)
    if smallest > capacity:
        raise Infeasible(f"the smallest choice takes {smallest} bytes, more than the {capacity} available")
    answers = [_fill(items, capacity, _lagrangian(items, capacity))]
    units = max(1, min(max_units, max_cells // len(items)))
    answers.append(_fill(items, capacity, _dp(items, capacity, units)))
    best = min(answers, key=lambda c: (total(items, c)[1], total(items, c)[0]))
    assert total(items, best)[0] <= capacity
    return best


def _dp(items: list[Item], capacity: int, max_units: int) -> list[int]:
    """Exact knapsack over bytes rounded up to units of ceil(capacity / max_units)."""
    unit = max(1, -(-capacity // max_units))
    cap = capacity // unit
    n = len(items)
    best = np.zeros(cap + 1)  # best[c]: least error of the items so far within c units
    picks = np.empty((n, cap + 1), dtype=np.int16)
    for i, it in enumerate(items):
        new = np.full(cap + 1, np.inf)
        pick = np.full(cap + 1, -1, dtype=np.int16)
        for k, (b, e) in enumerate(zip(it.nbytes, it.error)):
            w = -(-b // unit)
            if w > cap:
                continue
            cand = best[:cap + 1 - w] + e
            better = cand < new[w:]  # strict: the lower index keeps ties
            new[w:][better] = cand[better]
            pick[w:][better] = k
        best, picks[i] = new, pick
    if not np.isfinite(best[cap]):
        return _smallest(items)
    choice = [0] * n
    c = cap
    for i in range(n - 1, -1, -1):
        k = int(picks[i, c])
        choice[i] = k
        c -= -(-items[i].nbytes[k] // unit)
    return choice


def _pick(items: list[Item], lam: float) -> list[int]:
    nbytes, error = _padded(items)
    cost = error + lam * nbytes
    # least cost, ties to fewer bytes, then to the lower index (lexsort is stable)
    order = np.lexsort((nbytes, cost), axis=1)
    return [int(k) for k in order[:, 0]]


def _padded(items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) bytes and errors; missing candidates cost infinite bytes and error."""
    width = max(len(it.nbytes) for it in items)
    nbytes = np.full((len(items), width), 1e30)
    error = np.full((len(items), width), np.inf)
    for i, it in enumerate(items):
        nbytes[i, :len(it.nbytes)] = it.nbytes
        error[i, :len(it.error)] = it.error
    return nbytes, error


def _lagrangian(items: list[Item], capacity: int) -> list[int]:
    if total(items, _pick(items, 0.0))[0] <= capacity:
        return _pick(items, 0.0)
    lo, hi = 0.0, 1.0
    while total(items, _pick(items, hi))[0] > capacity and hi < 1e300:
        hi *= 4.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if total(items, _pick(items, mid))[0] <= capacity:
            hi = mid
        else:
            lo = mid
    choice = _pick(items, hi)
    return choice if total(items, choice)[0] <= capacity else _smallest(items)


def _smallest(items: list[Item]) -> list[int]:
    return [min(range(len(it.nbytes)), key=lambda k: (it.nbytes[k], it.error[k])) for it in items]


def _fill(items: list[Item], capacity: int, choice: list[int]) -> list[int]:
    """Greedy top-up: take the upgrade with the most error saved per extra byte that still fits,
    until none does (an upgrade costing no bytes counts as infinitely good)."""
    choice = list(choice)
    used = total(items, choice)[0]
    while True:
        best = None  # (ratio, item, candidate)
        for i, it in enumerate(items):
            b0, e0 = it.nbytes[choice[i]], it.error[choice[i]]
            for k, (b, e) in enumerate(zip(it.nbytes, it.error)):
                gain = e0 - e
                extra = b - b0
                if gain <= 0 or used + extra > capacity:
                    continue
                ratio = np.inf if extra <= 0 else gain / extra
                if best is None or ratio > best[0]:
                    best = (ratio, i, k)
        if best is None:
            return choice
        _, i, k = best
        used += items[i].nbytes[k] - items[i].nbytes[choice[i]]
        choice[i] = k
