"""The command line: Typer only. Parse, call the library, print. Library errors become one
`error: ...` line on stderr and a non-zero exit; anything else is a bug and shows as one."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from .errors import PyquantizeError

# Commands whose modules are heavy to import (NumPy and the model at import time) are built only
# when invoked, so `pyquantize --help`, `types` and `inspect` start without them.
# name -> (module, function, line shown by --help)
LAZY_COMMANDS = {
    "imatrix": ("quantize_cli.imatrix.command", "imatrix",
                "Compute an importance matrix over calibration text, as llama-imatrix does."),
    "perplexity": ("quantize_cli.eval.command", "perplexity", "Perplexity and KL divergence over a text, as llama-perplexity does."),
    "compare": ("quantize_cli.eval.command", "compare", "Compare quantized models with their base: PPL, KL divergence, size."),
}


class _LazyGroup(TyperGroup):
    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return names + [n for n in LAZY_COMMANDS if n not in names and _lazy_exists(n)]

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS and _lazy_exists(name):
            # for listings: a stand-in with the one-line help; resolve_command builds the real one
            return typer.core.TyperCommand(name=name, help=LAZY_COMMANDS[name][2])
        return command

    def resolve_command(self, ctx, args):
        if args and args[0] in LAZY_COMMANDS and args[0] not in self.commands and _lazy_exists(args[0]):
            self.commands[args[0]] = _build_lazy(args[0], self.rich_markup_mode)
        return super().resolve_command(ctx, args)


def _lazy_exists(name: str) -> bool:
    # a file check, not importlib's find_spec: that imports the command's parent package
    # (quantize_cli.imatrix, quantize_cli.eval), which --help does not need
    parts = LAZY_COMMANDS[name][0].split(".")[1:]
    return Path(__file__).parent.joinpath(*parts).with_suffix(".py").is_file()


def _build_lazy(name: str, rich_markup_mode):
    import importlib

    from typer.models import CommandInfo

    module, function, _ = LAZY_COMMANDS[name]
    callback = getattr(importlib.import_module(module), function)
    return typer.main.get_command_from_info(CommandInfo(name=name, callback=callback, no_args_is_help=True),
                                            pretty_exceptions_short=True, rich_markup_mode=rich_markup_mode)


app = typer.Typer(
    cls=_LazyGroup,
    name="pyquantize",
    help="Quantize models to GGUF: byte-identical to llama.cpp's llama-quantize, from Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> None:
    from .errors import one_line

    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


CONVERT_HELP = """Quantize IN (a GGUF file, or a Hugging Face safetensors folder) to OUT as TYPE.

Positional form as llama-quantize: IN [OUT] TYPE [NTHREADS]. TYPE is a llama.cpp file type by
name (Q4_K_M, q8_0, IQ2_XS, F16, COPY, ...) or numeric id. OUT defaults to ggml-model-TYPE.gguf
beside IN. Run `pyquantize types` for the list.

Several types from one read: IN --types Q4_K_M,Q6_K,Q8_0 -o 'out/{name}-{type}.gguf'."""


@app.command(help=CONVERT_HELP, no_args_is_help=True)
def convert(
    args: List[str] = typer.Argument(..., metavar="IN [OUT] TYPE [NTHREADS]", show_default=False),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Allow requantizing tensors that are already quantized (quality suffers)."),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="Leave output.weight unquantized (bigger, sometimes better)."),
    pure: bool = typer.Option(False, "--pure", help="Every quantizable tensor gets TYPE: no k-quant mixes."),
    imatrix: Optional[str] = typer.Option(None, "--imatrix", metavar="FILE", help="Importance matrix (llama.cpp GGUF imatrix or legacy .dat)."),
    include_weights: List[str] = typer.Option([], "--include-weights", metavar="NAME", help="Use the imatrix only for tensors whose name contains NAME (repeatable)."),
    exclude_weights: List[str] = typer.Option([], "--exclude-weights", metavar="NAME", help="Do not use the imatrix for tensors whose name contains NAME (repeatable)."),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", metavar="TYPE", help="Type of output.weight."),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type", metavar="TYPE", help="Type of token_embd.weight."),
    tensor_type: List[str] = typer.Option([], "--tensor-type", metavar="REGEX=TYPE", help="Type of tensors whose name matches REGEX (repeatable; first match wins)."),
    tensor_type_file: Optional[Path] = typer.Option(None, "--tensor-type-file", metavar="FILE", help="File of REGEX=TYPE lines, as --tensor-type."),
    prune_layers: Optional[str] = typer.Option(None, "--prune-layers", metavar="L0,L1,...", help="Remove these layers (comma-separated block numbers)."),
    keep_split: bool = typer.Option(False, "--keep-split", help="Write as many shards as the input has."),
    override_kv: List[str] = typer.Option([], "--override-kv", metavar="KEY=TYPE:VALUE", help="Set metadata (TYPE int, float, bool or str; repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (every tensor's type and why) and sizes; write nothing."),
    max_buffer_size: Optional[int] = typer.Option(None, "--max-buffer-size", metavar="BYTES", help="Accepted for llama-quantize compatibility; memory is bounded per tensor slab anyway."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Threads (default: all cores; NTHREADS positional also works)."),
    no_vocab: bool = typer.Option(False, "--no-vocab", help="Safetensors input: proceed without tokenizer files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary."),
    json_out: bool = typer.Option(False, "--json", help="Print the result (or the --dry-run plan) as JSON on stdout."),
    types: Optional[str] = typer.Option(None, "--types", metavar="T1,T2,...", help="Several file types from one read of IN (give IN only, and -o with {type})."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="OUT", help="Output name; {type} and {name} (IN's stem) are filled in, e.g. 'out/{name}-{type}.gguf'."),
    manifest: Optional[bool] = typer.Option(None, "--manifest/--no-manifest", help="Write OUT.manifest.json beside each output (sha256, type mix, options, input, version); default on with --types, -o or --skip-unchanged."),
    skip_unchanged: bool = typer.Option(False, "--skip-unchanged", help="Skip an output whose manifest says it was made from the same input and options by this version."),
    target_bpw: Optional[float] = typer.Option(None, "--target-bpw", metavar="BPW", help="Target mode: choose every tensor's type for the least predicted damage with the tensor data at most BPW bits per weight (no TYPE).", rich_help_panel="Target mode"),
    target_size: Optional[str] = typer.Option(None, "--target-size", metavar="SIZE", help="Target mode: the whole output file at most SIZE (B, KB, KiB, MB, MiB, GB, GiB; a plain number is bytes).", rich_help_panel="Target mode"),
    target_types: Optional[str] = typer.Option(None, "--target-types", metavar="T1,T2,...", help="Target mode: the candidate types (default: K-quants, IQ2-IQ4, legacy, Q8_0, F16).", rich_help_panel="Target mode"),
    search_text: Optional[Path] = typer.Option(None, "--search-text", metavar="FILE", help="Target mode: text for calibrating each tensor's sensitivity (KL divergence) on the forward pass; without it the search uses the imatrix-weighted error alone.", rich_help_panel="Target mode"),
    search_cache: Optional[Path] = typer.Option(None, "--search-cache", metavar="DIR", help="Target mode: keep measurements here, so further targets for the same input and imatrix reuse them.", rich_help_panel="Target mode"),
    search_cache_max: Optional[str] = typer.Option(None, "--search-cache-max", metavar="SIZE", help="Target mode: disk the quantized tensors kept in --search-cache may take (default 8GiB; 0 keeps measurements only).", rich_help_panel="Target mode"),
    search_chunks: int = typer.Option(1, "--search-chunks", metavar="N", help="Target mode: chunks of --search-text for the calibration.", rich_help_panel="Target mode"),
    search_ctx: int = typer.Option(128, "--search-ctx", metavar="N", help="Target mode: tokens per calibration chunk.", rich_help_panel="Target mode"),
    search_rows: int = typer.Option(64, "--search-rows", metavar="N", help="Target mode: rows measured per tensor and candidate type (0: every row).", rich_help_panel="Target mode"),
) -> None:
    try:
        if types or output or manifest or skip_unchanged:
            from .batch_cli import convert_batch

            convert_batch(**locals())
            return
        _convert(**locals())
    except PyquantizeError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; no output was written", 130)


def _parse_positional_target(args: list[str], flag: str):
    """Target mode's positional form: IN [OUT] [NTHREADS]; a TYPE would contradict the search."""
    from .plan import parse_file_type

    if not args:
        fail(f"expected IN [OUT] [NTHREADS] with {flag}")
    rest = list(args[1:])
    for arg in rest:
        try:
            parse_file_type(arg)
        except PyquantizeError:
            continue
        if not arg.isdigit():
            fail(f"{flag} chooses every tensor's type: drop the file type {arg!r} (narrow the choice with --target-types)")
    out = Path(rest.pop(0)) if rest and not rest[0].isdigit() else None
    nthreads = int(rest.pop(0)) if rest and rest[0].isdigit() else None
    if rest:
        fail(f"unexpected argument(s): {' '.join(rest)}")
    return Path(args[0]), out, nthreads


def _target_options(target_bpw, target_size, target_types, search_text, search_cache, search_chunks, search_ctx,
                    search_rows, search_cache_max=None):
    from .plan.target import TargetOptions, parse_size, parse_types

    if target_bpw is None and target_size is None:
        if target_types or search_text or search_cache or search_cache_max is not None:
            fail("--target-types/--search-* need --target-bpw or --target-size")
        return None
    target = TargetOptions(bpw=target_bpw, size=parse_size(target_size) if target_size is not None else None,
                           cache_dir=search_cache, text=search_text, chunks=search_chunks, ctx=search_ctx,
                           rows=search_rows)
    if search_cache_max is not None:
        target.cache_max = 0 if search_cache_max.strip() == "0" else parse_size(search_cache_max, "--search-cache-max")
    if target_types:
        target.types = parse_types(target_types)
    return target


def _parse_positional(args: list[str]):
    from .plan import parse_file_type

    if len(args) < 2:
        fail("expected IN [OUT] TYPE [NTHREADS]; e.g. pyquantize convert model-f32.gguf model-q4_k_m.gguf Q4_K_M", 2)
    src = Path(args[0])
    rest = args[1:]
    try:
        ftype, name = parse_file_type(rest[0])
        out = None
        rest = rest[1:]
    except PyquantizeError:
        if len(rest) < 2:
            fail(f"{rest[0]!r} is not a file type, and no TYPE follows it; run `pyquantize types` for the list", 2)
        from .formats.output import check_output_name

        check_output_name(rest[0])
        out = Path(rest[0])
        ftype, name = parse_file_type(rest[1])
        rest = rest[2:]
    nthreads = None
    if rest:
        try:
            nthreads = int(rest[0])
        except ValueError:
            fail(f"NTHREADS must be a number, got {rest[0]!r}", 2)
        rest = rest[1:]
    if rest:
        fail(f"unexpected argument(s): {' '.join(rest)}", 2)
    return src, out, ftype, name, nthreads


def check_weight_filters(include_weights, exclude_weights, imatrix) -> None:
    from .errors import PlanError

    if include_weights and exclude_weights:
        raise PlanError("--include-weights and --exclude-weights cannot be used together")
    if (include_weights or exclude_weights) and not imatrix:
        raise PlanError("--include-weights/--exclude-weights need --imatrix")


def quantize_options(ftype, ftype_name: str, a: dict):
    """QuantizeOptions from the convert command's arguments (`a`: its parameters by name), for a
    single run and for each type of a batch alike."""
    from .plan import (QuantizeOptions, parse_override_kv, parse_prune_layers, parse_tensor_type,
                       parse_tensor_type_option, read_tensor_type_file)

    tensor_types = [parse_tensor_type_option(spec) for spec in a["tensor_type"]]
    if a["tensor_type_file"] is not None:
        tensor_types += read_tensor_type_file(a["tensor_type_file"])
    return QuantizeOptions(
        ftype=ftype,
        only_copy=ftype_name == "COPY",
        allow_requantize=a["allow_requantize"],
        leave_output_tensor=a["leave_output_tensor"],
        pure=a["pure"],
        keep_split=a["keep_split"],
        output_tensor_type=parse_tensor_type(a["output_tensor_type"]) if a["output_tensor_type"] else None,
        token_embedding_type=parse_tensor_type(a["token_embedding_type"]) if a["token_embedding_type"] else None,
        tensor_types=tensor_types,
        prune_layers=parse_prune_layers(a["prune_layers"]) if a["prune_layers"] else [],
        include_weights=list(a["include_weights"]),
        exclude_weights=list(a["exclude_weights"]),
        kv_overrides=[parse_override_kv(t) for t in a["override_kv"]],
    )


def _convert(args, allow_requantize, leave_output_tensor, pure, imatrix, include_weights, exclude_weights,
             output_tensor_type, token_embedding_type, tensor_type, tensor_type_file, prune_layers, keep_split,
             override_kv, dry_run, max_buffer_size, threads, no_vocab, quiet, json_out, target_bpw=None,
             target_size=None, target_types=None, search_text=None, search_cache=None, search_chunks=1, search_ctx=128,
             search_rows=64, search_cache_max=None, **batch_options) -> None:
    _quiet_helper_threads()
    from . import convert as conv
    from .sources import open_source

    target = _target_options(target_bpw, target_size, target_types, search_text, search_cache, search_chunks,
                             search_ctx, search_rows, search_cache_max)
    if target is None:
        src, out, ftype, ftype_name, nthreads = _parse_positional(args)
    else:  # the base plan is Q8_0's: which tensors are quantizable, imatrix entries, --tensor-type pins
        from .plan import FType

        src, out, nthreads = _parse_positional_target(args, target.describe().split()[0])
        ftype, ftype_name = FType.Q8_0, "target-" + (target_size or f"{target_bpw:g}bpw").replace(" ", "")
    check_weight_filters(include_weights, exclude_weights, imatrix)
    options = quantize_options(ftype, ftype_name, locals())
    imatrix_input = conv.load_imatrix_input(imatrix) if imatrix else None
    if target is not None:
        from .plan.target import check_options

        check_options(options, target)
    if out is None:
        out = conv.default_output_path(src, ftype_name)
    log = None if quiet or json_out else (lambda message: typer.echo(message, err=True))

    if dry_run:
        source = open_source(src) if not src.is_dir() else _open_hf(src, no_vocab)
        with source:
            plan = conv.plan_for(source, options, imatrix_input, target, src, log)
            _print_plan(plan, json_out)
        return

    if tensor_type_file is not None:  # convert() guards IN and --imatrix; this input is the CLI's
        from .formats.output import refuse_overwriting_inputs

        refuse_overwriting_inputs([out], [tensor_type_file])
    # --quiet / --json print nothing through rich, so they do not load it (~20 ms)
    console = None if quiet or json_out else _stderr_console()
    show_progress = console is not None and console.is_terminal
    source = _open_hf(src, no_vocab) if src.is_dir() else None
    if show_progress:
        result = _convert_with_progress(conv, src, out, options, imatrix_input, threads or nthreads, console, source,
                                        target=target, log=log)
    else:
        result = conv.convert(src, out, options, imatrix_input, threads or nthreads, source=source, target=target,
                              log=log)
    if json_out:
        import json

        typer.echo(json.dumps(_result_json(result), indent=2))
    elif not quiet:
        _print_summary(result, console)


def _quiet_helper_threads() -> None:
    """Settings for a convert process, made before NumPy and Numba load (the user's own win).
    Numba's OpenMP workers sleep between slabs instead of spinning: on 2 cores a spinning worker
    takes the core the main thread needs for reading, writing and releasing pages. OpenBLAS starts
    no threads (convert does no matrix products)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _open_hf(path: Path, no_vocab: bool):
    try:
        from .sources.hf import HFSource
    except ModuleNotFoundError:
        from .errors import SourceError

        raise SourceError(f"{path}: is a directory; safetensors checkpoints are not supported yet") from None
    return HFSource(path, no_vocab=no_vocab)


def _convert_with_progress(conv, src, out, options, imatrix_input, nthreads, console, source, **extra):
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    progress = Progress(TextColumn("{task.description:<40}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
    task = None

    def on_event(event, tp, nbytes):
        nonlocal task
        if event == "plan":
            task = progress.add_task("", total=nbytes)
        elif event == "start":
            progress.update(task, description=f"{tp.name} -> {tp.type.name}")
        else:
            progress.advance(task, nbytes)

    with progress:
        return conv.convert(src, out, options, imatrix_input, nthreads, progress=on_event, source=source, **extra)


def _mib(n: int) -> str:
    return f"{n / 1048576:.2f} MiB"


def _result_json(result) -> dict:
    return {
        "outputs": [str(p) for p in result.outputs],
        "file_type": result.plan.ftype,
        "n_tensors": len(result.plan.tensors),
        "n_elements": result.n_elements,
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "bpw_in": round(result.bpw_in, 4),
        "bpw_out": round(result.bpw_out, 4),
        "seconds": round(result.seconds, 3),
        "compile_seconds": round(result.compile_seconds, 3),
        "n_fallback": result.plan.n_fallback,
        "tensors": [{"name": tp.name, "type": tp.type.name, "from": tp.ref.type.name} for tp in result.plan.tensors],
    }


def _print_summary(result, console) -> None:
    outs = ", ".join(str(p) for p in result.outputs)
    fallback = f", {result.plan.n_fallback} tensor(s) needed a fallback type" if result.plan.n_fallback else ""
    console.print(f"wrote {outs}: {_mib(result.bytes_in)} -> {_mib(result.bytes_out)} "
                  f"({result.bpw_in:.2f} -> {result.bpw_out:.2f} bpw), {len(result.plan.tensors)} tensors, "
                  f"{result.seconds:.2f} s (of which {result.compile_seconds:.2f} s kernel compile/load){fallback}",
                  highlight=False, soft_wrap=True)
    for note in result.plan.notes:
        if note.startswith("--target-"):
            console.print(note, highlight=False, soft_wrap=True)


def _print_plan(plan, json_out: bool) -> None:
    from .plan import plan_to_json

    doc = plan_to_json(plan)
    if json_out:
        import json

        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.table import Table

    console = _stdout_console()
    table = Table(title="plan (--dry-run)", title_justify="left")
    for col in ("tensor", "shape", "from", "to", "size", "reason"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    for t in doc["tensors"]:
        table.add_row(t["name"], " x ".join(map(str, t["shape"])), t["from"], t["to"], _mib(t["bytes"]), t["reason"])
    console.print(table)
    console.print(f"model size {_mib(doc['bytes_in'])} ({doc['bpw_in']:.2f} bpw) -> quant size {_mib(doc['bytes_out'])} "
                  f"({doc['bpw_out']:.2f} bpw)", highlight=False)
    for line in plan.notes + plan.warnings:
        console.print(f"note: {line}", highlight=False)


@app.command("inspect", no_args_is_help=True)
def inspect_cmd(
    files: List[Path] = typer.Argument(..., metavar="FILE [FILE2]", help="A GGUF file (ours or llama.cpp's), or the first shard of a split model; with a second file, a per-tensor diff of type and size."),
    json_out: bool = typer.Option(False, "--json", help="The same as a stable JSON document."),
    no_tensors: bool = typer.Option(False, "--no-tensors", help="Leave out the tensor table."),
    markdown: bool = typer.Option(False, "--markdown", help="Markdown, like gguf_dump --markdown."),
) -> None:
    """Metadata, tensors, types, sizes and bits per weight of a GGUF file (of two: a per-tensor diff)."""
    if len(files) > 2:
        fail("give one FILE, or two to compare", 2)
    import json

    try:
        from .inspect import describe, diff, render_diff, render_markdown, render_rich

        docs = [describe(f, with_tensors=not no_tensors or len(files) == 2) for f in files]
    except PyquantizeError as exc:
        fail(str(exc), exc.exit_code)
    if len(docs) == 2:
        d = diff(*docs)
        typer.echo(json.dumps(d, indent=2) if json_out else render_diff(d), nl=json_out)
        return
    doc = docs[0]
    if json_out:
        typer.echo(json.dumps(doc, indent=2, default=str))
    elif markdown:
        typer.echo(render_markdown(doc), nl=False)
    else:
        render_rich(doc, _stdout_console())


@app.command("types")
def types_cmd(
    json_out: bool = typer.Option(False, "--json", help="As JSON: a list of {name, ftype, description}."),
) -> None:
    """The file types TYPE can name, as llama-quantize lists them."""
    from .plan import FILE_TYPES

    if json_out:
        import json

        typer.echo(json.dumps([{"name": name, "ftype": ftype, "description": description.strip()}
                               for name, (ftype, description) in FILE_TYPES.items()], indent=2))
        return
    for name, (ftype, description) in FILE_TYPES.items():
        typer.echo(f"{ftype:>4}  {name:<10} {description}")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"pyquantize {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def _stdout_console():
    """A rich Console on stdout whose closed pipe ends the run as click's does (see main), not
    with rich's own exit 1."""
    import errno

    from rich.console import Console

    console = Console()

    def on_broken_pipe() -> None:
        console.quiet = True
        raise BrokenPipeError(errno.EPIPE, "stdout was closed")

    console.on_broken_pipe = on_broken_pipe
    return console


def _stdout_closed() -> bool:
    """Whether the run ended because stdout's reader went away (`pyquantize inspect F | head`):
    click (typer's own copy of it) then swaps in its PacifyFlushWrapper and exits 1."""
    return type(sys.stdout).__name__ == "PacifyFlushWrapper"


def main() -> None:
    # Start-up is mostly imports (Typer, NumPy, gguf, Numba) that allocate many objects: at the
    # default gen-0 threshold (700) the collector runs hundreds of times over them for nothing.
    gc.set_threshold(100_000, 50, 100)
    if "_PYQUANTIZE_COMPLETE" in os.environ:
        # shell completion (README): Typer registers its bash/zsh/fish/powershell scripts only
        # with add_completion, which would cost every start-up its imports; do it when asked
        from typer.completion import completion_init

        completion_init()
    try:
        app()
    except SystemExit as exc:
        if exc.code == 1 and _stdout_closed():
            # a reader that stops early (| head) is not an error: no message, exit 0, and no
            # "Exception ignored ... BrokenPipeError" when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno() if hasattr(sys.stdout, "fileno") else 1)
            raise SystemExit(0) from None
        raise
    finally:
        # At exit CPython collects the whole heap once more (Numba's type objects: ~0.2 s of a
        # 2 s convert); frozen objects are skipped, and the process is ending anyway.
        gc.freeze()


if __name__ == "__main__":
    main()
