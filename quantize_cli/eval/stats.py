"""The statistics llama-perplexity's KL-divergence mode accumulates and prints (its
kl_divergence_result, mean_and_uncertainty, covariance and percentile), kept in the same
precisions so that the figures agree with it to the printed digits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..runtime.logprobs import KldRows

f32 = np.float32


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    if count < 1:
        return 0.0, 0.0
    f = total / count
    df = total2 / count - f * f
    df = math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0
    return f, df


def covariance(sum_a: float, sum_b: float, sum_ab: float, count: int) -> float:
    if count < 10:
        return 0.0
    return (sum_ab / count - (sum_a / count) * (sum_b / count)) / (count - 1)


def percentile(values: np.ndarray, fraction: float) -> float:
    """values sorted ascending (float32); linear interpolation in float as the C's lambda."""
    fraction = f32(fraction)
    if fraction <= 0:
        return float(values[0])
    if fraction >= 1:
        return float(values[-1])
    p = fraction * f32(len(values) - 1)
    ip = int(p)
    p = p - f32(ip)
    return float((f32(1) - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)])


def median(values: np.ndarray) -> float:
    n = len(values)
    if n % 2 == 0:
        return float(f32(0.5) * (values[n // 2] + values[n // 2 - 1]))
    return float(values[n // 2])


@dataclass
class KldAccumulator:
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list = field(default_factory=list)
    p_diff_values: list = field(default_factory=list)

    def add(self, r: KldRows) -> None:
        # the C adds float products (nll*nll, p_diff*p_diff) to double sums
        nll, nll_b = r.nll, r.nll_base
        self.sum_nll += float(nll.sum(dtype=np.float64))
        self.sum_nll2 += float((nll * nll).sum(dtype=np.float64))
        self.sum_nll_base += float(nll_b.sum(dtype=np.float64))
        self.sum_nll_base2 += float((nll_b * nll_b).sum(dtype=np.float64))
        self.sum_nll_nll_base += float((nll * nll_b).sum(dtype=np.float64))
        self.sum_kld += float(r.kld.sum())
        self.sum_kld2 += float((r.kld * r.kld).sum())
        p2 = (r.p_diff * r.p_diff).astype(np.float64)
        self.sum_p_diff += float(r.p_diff.sum(dtype=np.float64))
        self.sum_p_diff2 += float(p2.sum())
        self.sum_p_diff4 += float((p2 * p2).sum())
        if len(r.p_diff):
            self.max_p_diff = max(self.max_p_diff, float(np.abs(r.p_diff).max()))
        self.n_same_top += int(r.same_top.sum())
        self.count += len(r.nll)
        self.kld_values.append(r.kld.astype(np.float32))
        self.p_diff_values.append(r.p_diff)

    # the running figures llama-perplexity prints per chunk
    def ppl(self) -> tuple[float, float]:
        m, u = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)
        return math.exp(m), math.exp(m) * u

    def ppl_base(self) -> tuple[float, float]:
        m, u = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)
        return math.exp(m), math.exp(m) * u

    def log_ppl_ratio(self) -> tuple[float, float]:
        m, u = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)
        mb, ub = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)
        cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, self.count)
        return m - mb, math.sqrt(max(0.0, u * u + ub * ub - 2.0 * cov))

    def kld_mean(self) -> tuple[float, float]:
        return mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)

    def rms_dp(self) -> tuple[float, float]:
        m, u = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count)
        v = math.sqrt(m)
        return v, (0.5 / v * u if v > 0 else 0.0)

    def same_top(self) -> tuple[float, float]:
        if not self.count:
            return 0.0, 0.0
        p = self.n_same_top / self.count
        return p, (math.sqrt(p * (1 - p) / (self.count - 1)) if self.count > 1 else 0.0)

    def summary(self) -> Optional[dict]:
        """Every figure of llama-perplexity's final report (which it prints only from 100 tokens on)."""
        if self.count < 1:
            return None
        kv = np.sort(np.concatenate(self.kld_values))
        dp = np.sort(np.concatenate(self.p_diff_values))
        ppl, ppl_unc = self.ppl()
        ppl_b, ppl_b_unc = self.ppl_base()
        m, u = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)
        mb, ub = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)
        cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, self.count)
        ratio, ratio_unc = self.log_ppl_ratio()
        kld_m, kld_u = self.kld_mean()
        dp_m, dp_u = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, self.count)
        rms, rms_u = self.rms_dp()
        top, top_u = self.same_top()
        pct = {"max": float(kv[-1]), "p99.9": percentile(kv, 0.999), "p99": percentile(kv, 0.99),
               "p95": percentile(kv, 0.95), "p90": percentile(kv, 0.90), "median": median(kv),
               "p10": percentile(kv, 0.10), "p5": percentile(kv, 0.05), "p1": percentile(kv, 0.01),
               "p0.1": percentile(kv, 0.001), "min": float(kv[0])}
        dpct = {"max": float(dp[-1]), "p99.9": percentile(dp, 0.999), "p99": percentile(dp, 0.99),
                "p95": percentile(dp, 0.95), "p90": percentile(dp, 0.90), "p75": percentile(dp, 0.75),
                "median": median(dp), "p25": percentile(dp, 0.25), "p10": percentile(dp, 0.10),
                "p5": percentile(dp, 0.05), "p1": percentile(dp, 0.01), "p0.1": percentile(dp, 0.001),
                "min": float(dp[0])}
        return {
            "count": self.count,
            "ppl": ppl, "ppl_err": ppl_unc, "ppl_base": ppl_b, "ppl_base_err": ppl_b_unc,
            "cor": cov / (u * ub) if u > 0 and ub > 0 else 0.0,
            "ln_ppl_ratio": ratio, "ln_ppl_ratio_err": ratio_unc,
            "ppl_ratio": math.exp(ratio), "ppl_ratio_err": math.exp(ratio) * ratio_unc,
            "ppl_diff": ppl - ppl_b,
            "ppl_diff_err": math.sqrt(max(0.0, ppl_unc ** 2 + ppl_b_unc ** 2 - 2.0 * ppl * ppl_b * cov)),
            "kld": {"mean": kld_m, "mean_err": kld_u, **pct},
            "dp": {"mean": dp_m, "mean_err": dp_u, **dpct},
            "rms_dp": rms, "rms_dp_err": rms_u, "same_top_p": top, "same_top_p_err": top_u,
        }


def format_summary(s: dict) -> str:
    """The final report, line for line as llama-perplexity prints it."""
    k, d = s["kld"], s["dp"]
    lines = [
        "====== Perplexity statistics ======",
        f"Mean PPL(Q)                   : {s['ppl']:10.6f} ± {s['ppl_err']:10.6f}",
        f"Mean PPL(base)                : {s['ppl_base']:10.6f} ± {s['ppl_base_err']:10.6f}",
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * s['cor']:6.2f}%",
        f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_ppl_ratio']:10.6f} ± {s['ln_ppl_ratio_err']:10.6f}",
        f"Mean PPL(Q)/PPL(base)         : {s['ppl_ratio']:10.6f} ± {s['ppl_ratio_err']:10.6f}",
        f"Mean PPL(Q)-PPL(base)         : {s['ppl_diff']:10.6f} ± {s['ppl_diff_err']:10.6f}",
        "",
        "====== KL divergence statistics ======",
        f"Mean    KLD: {k['mean']:10.6f} ± {k['mean_err']:10.6f}",
        f"Maximum KLD: {k['max']:10.6f}",
        f"99.9%   KLD: {k['p99.9']:10.6f}",
        f"99.0%   KLD: {k['p99']:10.6f}",
        f"95.0%   KLD: {k['p95']:10.6f}",
        f"90.0%   KLD: {k['p90']:10.6f}",
        f"Median  KLD: {k['median']:10.6f}",
        f"10.0%   KLD: {k['p10']:10.6f}",
        f" 5.0%   KLD: {k['p5']:10.6f}",
        f" 1.0%   KLD: {k['p1']:10.6f}",
        f" 0.1%   KLD: {k['p0.1']:10.6f}",
        f"Minimum KLD: {k['min']:10.6f}",
        "",
        "====== Token probability statistics ======",
        f"Mean    Δp: {100 * d['mean']:6.3f} ± {100 * d['mean_err']:5.3f} %",
        f"Maximum Δp: {100 * d['max']:6.3f}%",
    ]
    for key, label in (("p99.9", "99.9%"), ("p99", "99.0%"), ("p95", "95.0%"), ("p90", "90.0%"),
                       ("p75", "75.0%")):
        lines.append(f"{label}   Δp: {100 * d[key]:6.3f}%")
    lines.append(f"Median  Δp: {100 * d['median']:6.3f}%")
    for key, label in (("p25", "25.0%"), ("p10", "10.0%"), ("p5", " 5.0%"), ("p1", " 1.0%"), ("p0.1", " 0.1%")):
        lines.append(f"{label}   Δp: {100 * d[key]:6.3f}%")
    lines += [f"Minimum Δp: {100 * d['min']:6.3f}%",
              f"RMS Δp    : {100 * s['rms_dp']:6.3f} ± {100 * s['rms_dp_err']:5.3f} %",
              f"Same top p: {100 * s['same_top_p']:6.3f} ± {100 * s['same_top_p_err']:5.3f} %"]
    return "\n".join(lines)
