"""Per-token log-probability arithmetic of llama-perplexity (tools/perplexity/perplexity.cpp),
vectorized over the rows of one chunk's logits.

Each function mirrors one of the C's `log_softmax` overloads: the maximum and differences in
float32, exp in float32 (expf), the normalizer summed in double and its log cast back to float
where the C declares a float. Rows go in blocks, so a 150k vocabulary costs tens of MB, not GB.

It sits in runtime/, below both of its users: eval/ (perplexity, compare) and the target search's
sensitivities (plan/target_sensitivity.py), so the KL divergence the search calibrates on is the
one `compare` and llama-perplexity report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROWS = 32  # rows per block: bounded temporaries for large vocabularies

f32 = np.float32


def row_width(n_vocab: int) -> int:
    """uint16 values per token in a KL-divergence base file: scale and minimum (two floats), then
    one value per vocabulary entry, padded to an even count."""
    return 2 * ((n_vocab + 1) // 2) + 4


def _max_and_lse(lg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row maximum (float32) and log(sum(expf(l - max))) with the sum in double (float64)."""
    mx = lg.max(axis=1)
    sum_exp = np.exp(lg - mx[:, None]).sum(axis=1, dtype=np.float64)
    return mx, np.log(sum_exp)


def nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row (float64), as perplexity mode computes it without a base file:
    logits[tok] - max in float, minus log(sum_exp) in double."""
    out = np.empty(len(targets), dtype=np.float64)
    for r0 in range(0, len(targets), ROWS):
        lg = logits[r0:r0 + ROWS]
        t = targets[r0:r0 + ROWS]
        mx, lse = _max_and_lse(lg)
        out[r0:r0 + len(t)] = -((lg[np.arange(len(t)), t] - mx).astype(np.float64) - lse)
    return out


def pack(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The base file's rows for a chunk's logits, and -log p(target) per row.

    Per row: min_logit = max(min, max - 16); scale = (max - min_logit) / 65535; each logit above
    min_logit becomes nearest_int((l - min_logit) / scale) as uint16 (so log p = scale * q +
    min_log_prob), others 0. The returned nll is the C's float max + log_sum_exp - l[tok]."""
    n, n_vocab = logits.shape
    rows = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    out = np.empty(n, dtype=np.float64)
    for r0 in range(0, n, ROWS):
        lg = logits[r0:r0 + ROWS]
        t = targets[r0:r0 + ROWS]
        b = len(t)
        mx = lg.max(axis=1)
        mn = np.maximum(lg.min(axis=1), mx - f32(16))
        sum_exp = np.exp(lg - mx[:, None]).sum(axis=1, dtype=np.float64)
        lse = np.log(sum_exp).astype(np.float32)
        min_log_prob = (mn - mx) - lse
        scale = (mx - mn) / f32(65535)
        head = rows[r0:r0 + b, :4].view(np.float32)  # (b, 2): scale, min_log_prob
        head[:, 0] = scale
        head[:, 1] = min_log_prob
        with np.errstate(divide="ignore"):
            inv = np.where(scale != 0, f32(1) / scale, f32(0)).astype(np.float32)
        # nearest_int rounds half to even, as np.rint; a value of 65536 wraps to 0 in the C's uint16
        q = np.rint(inv[:, None] * (lg - mn[:, None])).astype(np.int64)
        q = np.where(lg > mn[:, None], q, 0)
        q[scale == 0] = 0
        rows[r0:r0 + b, 4:4 + n_vocab] = q.astype(np.uint16)
        out[r0:r0 + b] = ((mx + lse) - lg[np.arange(b), t]).astype(np.float64)
    return rows, out


@dataclass
class KldRows:
    """One chunk's per-token results of the KL-divergence mode (all float32 as the C keeps them,
    except kld, a double sum)."""

    nll: np.ndarray        # -log q(target), float32
    nll_base: np.ndarray   # -log p(target) from the base file, float32
    kld: np.ndarray        # sum_i p_i (log p_i - log q_i) over p_i > e^-16, float64
    p_diff: np.ndarray     # q(target) - p(target), float32
    same_top: np.ndarray   # bool: argmax q == argmax p


def kld(logits: np.ndarray, base_rows: np.ndarray, targets: np.ndarray) -> KldRows:
    """The candidate's logits against the base file's packed log-probs (the C's third log_softmax)."""
    n, n_vocab = logits.shape
    res = KldRows(np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float64),
                  np.empty(n, np.float32), np.empty(n, bool))
    for r0 in range(0, n, ROWS):
        lg = logits[r0:r0 + ROWS]
        t = targets[r0:r0 + ROWS]
        b = len(t)
        br = np.ascontiguousarray(base_rows[r0:r0 + b])
        head = br[:, :4].view(np.float32)
        scale, min_log_prob = head[:, 0:1], head[:, 1:2]  # (b, 1)
        q = br[:, 4:4 + n_vocab]
        imax = lg.argmax(axis=1)  # first maximum, as the C's strict '>'
        mx = lg[np.arange(b), imax]
        sum_exp = np.exp(lg - mx[:, None]).sum(axis=1, dtype=np.float64)
        lse = np.log(sum_exp).astype(np.float32)
        nll_q = (mx + lse) - lg[np.arange(b), t]
        log_p = scale * q.astype(np.float32) + min_log_prob  # (b, V) float32
        nll_p = -log_p[np.arange(b), t]
        imax_base = log_p.argmax(axis=1)
        mx_lse = (mx + lse)[:, None]
        keep = log_p > f32(-16)
        terms = np.where(keep, np.exp(log_p) * ((log_p - lg) + mx_lse), f32(0))
        res.kld[r0:r0 + b] = terms.sum(axis=1, dtype=np.float64)
        res.nll[r0:r0 + b] = nll_q
        res.nll_base[r0:r0 + b] = nll_p
        res.p_diff[r0:r0 + b] = np.exp(-nll_q) - np.exp(-nll_p)
        res.same_top[r0:r0 + b] = imax == imax_base
    return res
