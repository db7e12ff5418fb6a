"""`pyquantize imatrix MODEL -f TEXT -o OUT`: llama-imatrix without building llama.cpp.

The command is a plain function with Typer annotations; cli.py registers it with
through LAZY_COMMANDS. The work is in ``compute_imatrix`` (a library
function), the forward pass in runtime/model.py, the collector in collector.py, the files in
formats/imatrix_file.py.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import typer

from ..errors import ImatrixError, PyquantizeError
from ..formats.text import read_text


@dataclass
class ImatrixOptions:
    """llama-imatrix's options, with its defaults."""

    text_file: Optional[Path] = None
    output: Path = Path("imatrix.gguf")
    output_format: Optional[str] = None  # None: gguf (llama-imatrix's default), warning on another suffix
    ctx_size: int = 512
    chunks: int = -1
    from_chunk: int = 0
    output_frequency: int = 10
    save_frequency: int = 0
    process_output: bool = False
    compute_ppl: bool = True
    parse_special: bool = False
    in_files: List[Path] = field(default_factory=list)
    threads: Optional[int] = None
    kv_f16: bool = False
    batch_size: int = 2048
    ubatch_size: int = 512


@dataclass
class ChunkResult:
    index: int          # 1-based, as llama-imatrix prints it
    n_chunks: int
    seconds: float
    tokens: int
    ppl: Optional[float]  # running perplexity after this chunk


@dataclass
class ImatrixResult:
    output: Optional[Path]
    n_chunks: int
    n_tokens: int
    seconds: float
    ppl: Optional[float] = None
    ppl_error: Optional[float] = None
    chunk_ppl: List[float] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row, in double as llama-imatrix's log_softmax."""
    out = np.empty(len(targets), dtype=np.float64)
    for r0 in range(0, len(targets), 32):  # row blocks: bounded memory for big vocabularies
        lg = logits[r0:r0 + 32].astype(np.float64)
        mx = lg.max(axis=1, keepdims=True)
        lse = np.log(np.exp(lg - mx).sum(axis=1))
        t = targets[r0:r0 + 32]
        out[r0:r0 + len(t)] = -(lg[np.arange(len(t)), t] - mx[:, 0] - lse)
    return out


def collected_rows(n_ctx: int, n_batch: int, n_ubatch: int, n_seq_batch: int) -> np.ndarray:
    """The positions of a chunk whose activations llama-imatrix records.

    llama-imatrix evaluates max(1, n_batch // n_ctx) chunks per batch as parallel sequences, and
    llama.cpp cuts each batch into micro-batches: with one sequence per batch, runs of n_ubatch
    tokens (split_simple); with several, n_ubatch // n_seqs tokens of each sequence at a time
    (split_equal). The collector ignores micro-batches of fewer than 16 rows, so the tail of a
    chunk can go unrecorded (e.g. 3 chunks in a batch: 170 + 170 + 170 + 2 tokens each, and the
    last 2 are dropped). Returns a boolean mask over the chunk's positions."""
    n_seq = max(1, n_batch // n_ctx)
    n_kv = n_seq * n_ctx
    n_batch = min(n_batch, n_kv)
    n_ubatch = min(n_ubatch, n_batch)
    keep = np.zeros(n_ctx, dtype=bool)
    if n_seq == 1:  # one KV stream: split_simple inside each batch of n_batch tokens
        for b0 in range(0, n_ctx, n_batch):
            b1 = min(n_ctx, b0 + n_batch)
            for u0 in range(b0, b1, n_ubatch):
                u1 = min(b1, u0 + n_ubatch)
                keep[u0:u1] = u1 - u0 >= 16
    else:  # one stream per sequence: split_equal, the same share of every sequence per micro-batch
        per = max(1, n_ubatch // n_seq_batch)
        for u0 in range(0, n_ctx, per):
            u1 = min(n_ctx, u0 + per)
            keep[u0:u1] = (u1 - u0) * n_seq_batch >= 16
    return keep


def compute_imatrix(model_path: Optional[Path], opts: ImatrixOptions,
                    on_chunk: Optional[Callable[[ChunkResult], None]] = None,
                    on_start: Optional[Callable[[int, int], None]] = None) -> ImatrixResult:
    """Collect an imatrix over the text (and/or merge --in-file files) and write it."""
    from ..formats.imatrix_file import save_imatrix
    from .collector import Collector

    fmt = opts.output_format or "gguf"
    if fmt not in ("gguf", "dat"):
        raise ImatrixError(f"--output-format {fmt!r}: use gguf or dat")
    if opts.ctx_size <= 0:
        raise ImatrixError("--ctx-size must be > 0")
    if opts.output_frequency <= 0:
        raise ImatrixError("--output-frequency must be > 0")
    if opts.batch_size <= 0 or opts.ubatch_size <= 0:
        raise ImatrixError("--batch-size and --ubatch-size must be > 0")
    if not (opts.batch_size < opts.ctx_size or opts.batch_size % opts.ctx_size == 0):
        raise ImatrixError(f"--batch-size {opts.batch_size} must be below --ctx-size {opts.ctx_size} or a multiple "
                           "of it (as llama-imatrix requires)")
    warnings: list[str] = []
    if opts.output_format is None and not str(opts.output).endswith(".gguf"):
        warnings.append(f"saving imatrix using GGUF format with a different suffix than .gguf ({opts.output}); "
                        "for the previous format use --output-format dat")
    # the output guard first: a bad -o is found before the model loads, not after the computation
    from ..formats.output import check_output_name, check_writable, refuse_overwriting_inputs

    check_output_name(str(opts.output))
    check_writable(Path(opts.output))
    inputs = [model_path, opts.text_file, *opts.in_files]
    refuse_overwriting_inputs([Path(opts.output)], inputs)
    if opts.text_file is not None:
        read_text(Path(opts.text_file))  # refuse a FIFO, a directory or bad UTF-8 now, not after the model loads
    collector = Collector(chunk_size=opts.ctx_size, process_output=opts.process_output,
                          prompt_file=str(opts.text_file) if opts.text_file else "")
    t0 = time.perf_counter()

    model = None
    known_shapes = None
    if model_path is not None and opts.text_file is not None:
        from ..runtime.model import Model

        model = Model(model_path)
        known_shapes = {n: int(t.ne[0]) for n, t in model.tensors.items()}
    for f in opts.in_files:
        if known_shapes is not None:
            _check_fits(Path(f), known_shapes)
        collector.merge_file(f, known_shapes)

    if opts.text_file is None:
        if not opts.in_files:
            raise ImatrixError("no text (-f) and no --in-file to combine: give calibration text or files to merge")
        out = save_imatrix(opts.output, collector, fmt, inputs)
        return ImatrixResult(out, collector.last_chunk, 0, time.perf_counter() - t0, warnings=warnings)
    if model is None:
        raise ImatrixError("a MODEL is needed to compute an imatrix from text")

    try:
        from ..runtime.tokenizer import tokenizer_from_gguf

        text = read_text(Path(opts.text_file))
        if not text:
            raise ImatrixError(f"{opts.text_file}: the text is empty; give calibration text of at least "
                               f"{2 * opts.ctx_size} tokens")
        tok = tokenizer_from_gguf(model_path)
        tokens = tok.encode(text, add_special=True, parse_special=opts.parse_special)
        n_ctx = opts.ctx_size
        if opts.from_chunk > 0:
            if (opts.from_chunk + 2) * n_ctx >= len(tokens):
                raise ImatrixError(f"there will be not enough tokens left after removing {opts.from_chunk} chunks "
                                   f"(the text has {len(tokens)} tokens, chunks are {n_ctx})")
            tokens = tokens[opts.from_chunk * n_ctx:]
        if len(tokens) < 2 * n_ctx:
            raise ImatrixError(f"the text tokenizes to only {len(tokens)} tokens; llama-imatrix needs at least "
                               f"{2 * n_ctx} for a context of {n_ctx} (give more text or a smaller --ctx-size)")
        if n_ctx > model.cfg.n_ctx_train > 0:
            warnings.append(f"model was trained on only {model.cfg.n_ctx_train} context tokens ({n_ctx} specified)")
        tokens = np.asarray(tokens, dtype=np.int64)
        n_chunk_max = len(tokens) // n_ctx
        n_chunk = n_chunk_max if opts.chunks < 0 else min(opts.chunks, n_chunk_max)
        model.kv_f16 = opts.kv_f16
        add_bos = tok.add_bos
        first = n_ctx // 2
        nll = nll2 = 0.0
        count = 0
        chunk_ppl: list[float] = []
        if on_start is not None:
            on_start(n_chunk, n_ctx)
        n_seq = max(1, opts.batch_size // n_ctx)
        for i in range(n_chunk):
            tc = time.perf_counter()
            chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
            if add_bos:
                chunk[0] = tok.bos_id  # llama-imatrix overwrites the first token of each chunk with BOS
            n_seq_batch = min(n_seq, n_chunk - (i // n_seq) * n_seq)
            keep = collected_rows(n_ctx, opts.batch_size, opts.ubatch_size, n_seq_batch)
            if keep.all():
                observe = collector.observe
            else:
                def observe(name, x, expert=None, keep=keep):
                    # expert rows are not cut into micro-batches: llama-imatrix keeps them all
                    collector.observe(name, x if expert is not None else x[keep], expert, check_rows=False)
            logits = model.forward(chunk, observe=observe, process_output=opts.process_output,
                                   logits=opts.compute_ppl, logits_from=first)
            ppl = None
            if opts.compute_ppl:
                # positions first .. n_ctx-2 predict the next token (llama-imatrix's process_logits)
                v = _log_softmax_nll(logits[:n_ctx - 1 - first], tokens[i * n_ctx + first + 1:(i + 1) * n_ctx])
                nll += float(v.sum())
                nll2 += float((v * v).sum())
                count += len(v)
                ppl = math.exp(nll / count)
                chunk_ppl.append(ppl)
            last, step = collector.chunk_done()
            if step > 0:
                if (last % opts.output_frequency) // step == 0:
                    save_imatrix(opts.output, collector, fmt, inputs)
                if opts.save_frequency > 0 and (last % opts.save_frequency) // step == 0:
                    save_imatrix(Path(f"{opts.output}.at_{last}"), collector, fmt, inputs)
            if on_chunk is not None:
                on_chunk(ChunkResult(i + 1, n_chunk, time.perf_counter() - tc, n_ctx, ppl))
        out = save_imatrix(opts.output, collector, fmt, inputs)
        result = ImatrixResult(out, n_chunk, n_chunk * n_ctx, time.perf_counter() - t0, chunk_ppl=chunk_ppl,
                               warnings=warnings)
        if opts.compute_ppl and count:
            mean, mean2 = nll / count, nll2 / count
            result.ppl = math.exp(mean)
            var = mean2 - mean * mean
            result.ppl_error = math.sqrt(var / (count - 1)) * result.ppl if var > 0 and count > 1 else None
        return result
    finally:
        model.close()


def _check_fits(path: Path, known_shapes: dict[str, int]) -> None:
    from ..formats.imatrix_file import _read_raw

    raw = _read_raw(path)
    for name, sums in raw.sums.items():
        if name not in known_shapes:
            raise ImatrixError(f"{path}: tensor {name} is not in the model; the file was made for another model")
        if sums.size % known_shapes[name]:
            raise ImatrixError(f"{path}: {name} has {sums.size} values, the model's rows have {known_shapes[name]}; "
                               "the file was made for another model")


def show_statistics(in_files: List[Path], ctx_size: int = 512) -> str:
    from .collector import Collector, compute_statistics, format_statistics

    if len(in_files) != 1:
        raise ImatrixError("--show-statistics needs exactly one imatrix file (--in-file FILE)")
    collector = Collector(chunk_size=ctx_size)
    collector.merge_file(in_files[0])
    stats = compute_statistics(collector.stats)
    if not stats:
        raise ImatrixError(f"{in_files[0]}: cannot compute statistics (no entry has data)")
    return format_statistics(str(in_files[0]), stats)


def set_threads(n: Optional[int]) -> int:
    """Threads for the matrix products (default: all cores); see runtime/blas.py's set_threads."""
    from ..runtime.blas import set_threads as model_set_threads

    return model_set_threads(n)


IMATRIX_HELP = """Compute an importance matrix for MODEL over calibration text (-f), as llama-imatrix does.

For every blk.* matrix multiplication it sums the squared input activations per column over all
tokens (in_sum2) and counts the tokens, running a NumPy forward pass chunk by chunk (--ctx-size
tokens each, first token replaced by BOS). Output: llama.cpp's GGUF imatrix (default) or the
legacy .dat (--output-format dat). With --in-file and no text, files are merged or converted."""


def imatrix(
    model: Optional[Path] = typer.Argument(None, metavar="MODEL", help="Model GGUF (a family of the README's supported architectures).", show_default=False),
    model_opt: Optional[Path] = typer.Option(None, "-m", "--model", metavar="FNAME", help="Model GGUF (same as MODEL)."),
    text_file: Optional[Path] = typer.Option(None, "-f", "--file", metavar="FNAME", help="Calibration text (UTF-8)."),
    output: str = typer.Option("imatrix.gguf", "-o", "--output", "--output-file", metavar="FNAME", help="Output file."),
    output_format: Optional[str] = typer.Option(None, "--output-format", metavar="{gguf,dat}", help="Output format [default: gguf]."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", metavar="N", help="Tokens per chunk."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", metavar="N", help="Logical batch, as llama-imatrix (decides which tokens it records; see docs)."),
    ubatch_size: int = typer.Option(512, "-ub", "--ubatch-size", metavar="N", help="Physical batch, as llama-imatrix (micro-batches under 16 tokens are not recorded)."),
    chunks: int = typer.Option(-1, "--chunks", metavar="N", help="Process at most N chunks (-1: all)."),
    from_chunk: int = typer.Option(0, "--chunk", "--from-chunk", metavar="N", help="Start from chunk N (skip N chunks of text)."),
    output_frequency: int = typer.Option(10, "-ofreq", "--output-frequency", metavar="N", help="Write the output every N chunks."),
    save_frequency: int = typer.Option(0, "--save-frequency", metavar="N", help="Also save a copy OUT.at_K every N chunks (0: never)."),
    process_output: bool = typer.Option(False, "--process-output", help="Also collect data for output.weight."),
    ppl: bool = typer.Option(True, "--ppl/--no-ppl", help="Compute perplexity (second half of each chunk)."),
    parse_special: bool = typer.Option(False, "--parse-special", help="Parse special tokens (<s>, <|im_start|>, ...) in the text."),
    in_file: List[str] = typer.Option([], "--in-file", metavar="FNAME", help="Existing imatrix to merge (repeatable or comma-separated)."),
    show_stats: bool = typer.Option(False, "--show-statistics", help="Print statistics of one --in-file and exit."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", metavar="N", help="Threads for the matrix products (default: all cores)."),
    kv_f16: bool = typer.Option(False, "--kv-f16", help="Round K and V to f16 as llama.cpp's default F16 KV cache does (compare with a default llama-imatrix run)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar, no summary lines (perplexities still print)."),
) -> None:
    try:
        _run(model if model is not None else model_opt, text_file, output, output_format, ctx_size, chunks,
             from_chunk, output_frequency, save_frequency, process_output, ppl, parse_special, in_file,
             show_stats, threads, kv_f16, quiet, batch_size, ubatch_size)
    except PyquantizeError as exc:
        from ..errors import one_line

        typer.echo(f"error: {one_line(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130)


def _run(model, text_file, output, output_format, ctx_size, chunks, from_chunk, output_frequency, save_frequency,
         process_output, ppl, parse_special, in_file, show_stats, threads, kv_f16, quiet, batch_size=2048,
         ubatch_size=512) -> None:
    in_files = [Path(p) for item in in_file for p in item.split(",") if p]
    from ..formats.output import check_input_file

    for p in in_files:
        check_input_file(p, "imatrix file (--in-file)", ImatrixError, missing="no such imatrix file (--in-file)")
    if show_stats:
        typer.echo(show_statistics(in_files, ctx_size))
        return
    if text_file is not None and model is None:
        raise ImatrixError("give the MODEL to run the text through")
    n_threads = set_threads(threads)
    opts = ImatrixOptions(text_file=text_file, output=output, output_format=output_format, ctx_size=ctx_size,
                          chunks=chunks, from_chunk=from_chunk, output_frequency=output_frequency,
                          save_frequency=save_frequency, process_output=process_output, compute_ppl=ppl,
                          parse_special=parse_special, in_files=in_files, threads=n_threads, kv_f16=kv_f16,
                          batch_size=batch_size, ubatch_size=ubatch_size)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    show_bar = not quiet and sys.stderr.isatty()
    progress = Progress(TextColumn("imatrix"), BarColumn(), TextColumn("{task.completed}/{task.total} chunks"),
                        TextColumn("{task.fields[speed]}"), TextColumn("{task.fields[ppl]}"), TimeRemainingColumn(),
                        transient=True, disable=not show_bar)
    task = None
    state = {"tokens": 0, "seconds": 0.0}
    ppl_items: list[str] = []

    def on_start(n_chunk: int, n_ctx: int) -> None:
        nonlocal task
        if not quiet:
            typer.echo(f"computing over {n_chunk} chunks, n_ctx={n_ctx}, threads={n_threads}", err=True)
        task = progress.add_task("imatrix", total=n_chunk, speed="", ppl="")

    def on_chunk(r: ChunkResult) -> None:
        state["tokens"] += r.tokens
        state["seconds"] += r.seconds
        speed = f"{state['tokens'] / state['seconds']:.0f} tok/s" if state["seconds"] > 0 else ""
        if r.ppl is not None:
            item = f"[{r.index}]{r.ppl:.4f},"
            if show_bar:  # the live bar owns the terminal: the list is printed whole at the end
                ppl_items.append(item)
            else:
                sys.stdout.write(item)
                sys.stdout.flush()
        progress.update(task, advance=1, speed=speed, ppl=f"ppl {r.ppl:.4f}" if r.ppl is not None else "")

    with progress:
        result = compute_imatrix(model, opts, on_chunk=on_chunk, on_start=on_start)
    if result.chunk_ppl:
        sys.stdout.write("".join(ppl_items) + "\n")
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    if result.ppl is not None:
        err = f" +/- {result.ppl_error:.5f}" if result.ppl_error is not None else ""
        typer.echo(f"Final estimate: PPL = {result.ppl:.4f}{err}")
    if quiet:
        return
    if state["seconds"] > 0:
        typer.echo(f"{result.n_tokens} tokens in {state['seconds']:.2f} s: "
                   f"{result.n_tokens / state['seconds']:.0f} tokens/s", err=True)
    typer.echo(f"wrote {result.output} ({result.n_chunks} chunks)", err=True)
