"""`pyquantize perplexity` and `pyquantize compare`: thin Typer shells over perplexity.evaluate()
and compare.compare(). cli.py registers them in LAZY_COMMANDS."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import PyquantizeError

PERPLEXITY_HELP = """Perplexity of MODEL over a text (-f), as llama-perplexity computes it.

Chunks of --ctx-size tokens, BOS first, the second half of each chunk scored; prints the running
[i]PPL per chunk and the final PPL +/- its uncertainty. With --kl-divergence-base FILE it also saves
the log-probabilities in llama-perplexity's base-file format; with --kl-divergence and
--kl-divergence-base FILE it compares MODEL with that base (the tokens come from the file) and
prints llama-perplexity's KL-divergence statistics."""

COMPARE_HELP = """Compare quantized CANDIDATEs with their BASE model over a text (-f).

One row per candidate: type mix, size, bits per weight, PPL, delta PPL, mean and 99th-percentile
KL divergence, same top token. The base runs once; the candidates stream through the same chunks."""


def _threads(n: Optional[int]) -> int:
    from ..runtime.blas import set_threads

    return set_threads(n)


def _progress(label: str, enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} chunks"),
                    TextColumn("{task.fields[speed]}"), TextColumn("{task.fields[ppl]}"), TimeRemainingColumn(),
                    transient=True, disable=not enabled)


class _Reporter:
    """Progress bar (on a terminal) and tokens/s, shared by both commands."""

    def __init__(self, quiet: bool, label: str):
        self.show_bar = not quiet and sys.stderr.isatty()
        self.progress = _progress(label, self.show_bar)
        self.label = label
        self.task = None
        self.tokens = 0
        self.seconds = 0.0

    def on_start(self, n_chunk: int, n_ctx: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(self.label, total=n_chunk, speed="", ppl="")

    def on_chunk(self, r) -> None:
        self.tokens += r.tokens
        self.seconds += r.seconds
        speed = f"{self.tokens / self.seconds:.0f} tok/s" if self.seconds > 0 else ""
        self.progress.update(self.task, advance=1, speed=speed, ppl=f"ppl {r.ppl:.4f}")

    def speed_line(self) -> Optional[str]:
        if self.seconds <= 0:
            return None
        return f"{self.tokens} tokens in {self.seconds:.2f} s: {self.tokens / self.seconds:.0f} tokens/s"


def _fail(exc: PyquantizeError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def perplexity(
    model: Optional[Path] = typer.Argument(None, metavar="MODEL", help="Model GGUF.", show_default=False),
    model_opt: Optional[Path] = typer.Option(None, "-m", "--model", metavar="FNAME", help="Model GGUF (same as MODEL)."),
    text_file: Optional[Path] = typer.Option(None, "-f", "--file", metavar="FNAME", help="Text (UTF-8)."),
    ctx_size: Optional[int] = typer.Option(None, "-c", "--ctx-size", metavar="N", help="Tokens per chunk [default: 512, or the base file's]."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", metavar="N", help="Logical batch, checked as llama-perplexity does (results do not depend on it)."),
    chunks: int = typer.Option(-1, "--chunks", metavar="N", help="Process at most N chunks (-1: all)."),
    kl_base: Optional[Path] = typer.Option(None, "--kl-divergence-base", "--save-all-logits", metavar="FNAME", help="Base file: written (alone) or read (with --kl-divergence), llama-perplexity's format."),
    kl_divergence: bool = typer.Option(False, "--kl-divergence", help="Compare MODEL with the base file's log-probabilities."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", metavar="N", help="Threads for the matrix products (default: all cores)."),
    parse_special: bool = typer.Option(False, "--parse-special", help="Parse special tokens in the text."),
    kv_f16: bool = typer.Option(False, "--kv-f16", help="Round K and V to f16 as llama.cpp's default F16 KV cache does."),
    float_activations: bool = typer.Option(False, "--float-activations", help="Do not round matmul inputs to the weight's dot-product type (llama.cpp's CPU backend does)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar, no summary lines."),
) -> None:
    from .perplexity import PerplexityOptions, evaluate
    from .stats import format_summary

    try:
        path = model if model is not None else model_opt
        if path is None:
            raise _eval_error("give the MODEL to measure")
        n_threads = _threads(threads)
        opts = PerplexityOptions(text_file=text_file, ctx_size=ctx_size, chunks=chunks, batch_size=batch_size,
                                 kl_base=kl_base, kl_divergence=kl_divergence, parse_special=parse_special,
                                 kv_f16=kv_f16, round_activations=not float_activations)
        rep = _Reporter(quiet or as_json, "kl-divergence" if kl_divergence else "perplexity")
        items: list[str] = []

        def on_chunk(r) -> None:
            rep.on_chunk(r)
            if as_json:
                return
            if r.kld is not None:
                line = _kld_chunk_line(r)
                if rep.show_bar:
                    items.append(line)
                else:
                    typer.echo(line)
            else:
                item = f"[{r.index}]{r.ppl:.4f},"
                if rep.show_bar:
                    items.append(item)
                else:
                    sys.stdout.write(item)
                    sys.stdout.flush()

        if kl_divergence and not quiet and not as_json:
            typer.echo("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
                       "              Δp RMS            Same top p")
        with rep.progress:
            result = evaluate(path, opts, on_chunk=on_chunk, on_start=rep.on_start)
    except PyquantizeError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130)
    if as_json:
        doc = result.to_json()
        doc["threads"] = n_threads
        doc["tokens_per_s"] = round(rep.tokens / rep.seconds, 1) if rep.seconds else None
        typer.echo(json.dumps(doc, indent=2))
        return
    if result.kld is None:
        sys.stdout.write("".join(items) + "\n")  # the [i]PPL list (printed live when no bar holds the terminal)
    elif items:
        typer.echo("\n".join(items))
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    if result.kld is not None:
        typer.echo("")
        typer.echo(format_summary(result.kld))
    elif result.ppl_err is not None:
        typer.echo(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.ppl_err:.5f}")
    else:
        typer.echo(f"Final estimate: PPL = {result.ppl:.4f}")
    if not quiet:
        line = rep.speed_line()
        if line:
            typer.echo(line + f" ({n_threads} threads)", err=True)
        if result.base_written is not None:
            typer.echo(f"wrote {result.base_written} ({result.n_chunks} chunks of {result.n_ctx} tokens)", err=True)


def _kld_chunk_line(r) -> str:
    acc = r.kld
    ppl, ppl_unc = acc.ppl()
    ratio, ratio_unc = acc.log_ppl_ratio()
    k, k_unc = acc.kld_mean()
    rms, rms_unc = acc.rms_dp()
    top, top_unc = acc.same_top()
    return (f"{r.index:4d}    {ppl:9.4f} ± {ppl_unc:9.4f}    {ratio:10.5f} ± {ratio_unc:10.5f}    "
            f"{k:10.5f} ± {k_unc:10.5f}    {100 * rms:6.3f} ± {100 * rms_unc:6.3f} %    "
            f"{100 * top:6.3f} ± {100 * top_unc:6.3f} %")


def _eval_error(message: str):
    from .errors import EvalError

    return EvalError(message)


def compare(
    base: Path = typer.Argument(..., metavar="BASE", help="The reference model GGUF (F32/F16/BF16 or any type).", show_default=False),
    candidates: List[Path] = typer.Argument(..., metavar="CANDIDATE...", help="Quantized models of the same vocabulary.", show_default=False),
    text_file: Optional[Path] = typer.Option(None, "-f", "--file", metavar="FNAME", help="Text (UTF-8)."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", metavar="N", help="Tokens per chunk."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", metavar="N", help="Logical batch, checked as llama-perplexity does."),
    chunks: int = typer.Option(-1, "--chunks", metavar="N", help="Process at most N chunks (-1: all)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", metavar="N", help="Threads for the matrix products (default: all cores)."),
    parse_special: bool = typer.Option(False, "--parse-special", help="Parse special tokens in the text."),
    kv_f16: bool = typer.Option(False, "--kv-f16", help="Round K and V to f16 as llama.cpp's default F16 KV cache does."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="PNG", help="Also plot mean KLD against size (needs pyquantize[plot])."),
    tmp_dir: Optional[Path] = typer.Option(None, "--tmp-dir", metavar="DIR", help="Where the base's temporary log-probs go (n_chunk x n_ctx/2 x n_vocab x 2 bytes) [default: the system's]."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar, no summary lines."),
) -> None:
    from .compare import compare as run_compare
    from .perplexity import PerplexityOptions

    try:
        if plot is not None:
            from .plot import check_available

            check_available(plot)
        n_threads = _threads(threads)
        opts = PerplexityOptions(text_file=text_file, ctx_size=ctx_size, chunks=chunks, batch_size=batch_size,
                                 parse_special=parse_special, kv_f16=kv_f16)
        rep = _Reporter(quiet or as_json, "base")

        def on_model(kind: str, path: Path) -> None:
            rep.label = f"{kind} {path.name}"
            if rep.show_bar is False and not quiet and not as_json:
                typer.echo(f"{kind}: {path}", err=True)

        def on_start(n_chunk: int, n_ctx: int) -> None:
            rep.on_start(n_chunk, n_ctx)
            rep.progress.update(rep.task, description=rep.label)

        with rep.progress:
            result = run_compare(base, candidates, opts, on_model=on_model, on_chunk=rep.on_chunk, on_start=on_start,
                                 tmp_dir=tmp_dir)
        if plot is not None:
            from .plot import plot_kld_vs_size

            plot_kld_vs_size(result, plot)
    except PyquantizeError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130)
    if as_json:
        doc = result.to_json()
        doc["threads"] = n_threads
        typer.echo(json.dumps(doc, indent=2))
        return
    if markdown:
        typer.echo(result.markdown(), nl=False)
    else:
        _print_rich(result)
    if not quiet:
        line = rep.speed_line()
        if line:
            typer.echo(line + f" ({n_threads} threads)", err=True)
        if plot is not None:
            typer.echo(f"wrote {plot}", err=True)


def _print_rich(result) -> None:
    from rich.console import Console
    from rich.table import Table

    b = result.base
    console = Console()
    console.print(f"base {b.path}: {b.size_bytes / 1048576:.2f} MiB, {b.bpw:.2f} bpw, PPL {b.result.ppl:.4f}; "
                  f"{result.n_chunks} chunks of {result.n_ctx} tokens ({result.n_tokens} scored)")
    table = Table()
    for col in ("candidate", "types", "size MiB", "bpw", "PPL", "ΔPPL", "mean KLD", "99% KLD", "same top"):
        table.add_column(col, justify="left" if col in ("candidate", "types") else "right")
    for r, c in zip(result.rows(), result.candidates):
        table.add_row(c.path.name, r["types"], f"{r['size_bytes'] / 1048576:.2f}", f"{r['bpw']:.2f}",
                      f"{r['ppl']:.4f}", f"{r['dppl']:+.4f}", f"{r['kld_mean']:.6f}", f"{r['kld_p99']:.6f}",
                      f"{100 * r['same_top_p']:.2f}%")
    console.print(table)
