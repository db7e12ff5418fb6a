"""The command-line side of batch conversion (`convert --types/-o/--manifest/--skip-unchanged`):
arguments to Targets, quantize_cli.batch.convert_types, then the summary, progress or JSON.
Kept out of cli.py so that cli.py stays one Typer table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .errors import UsageError


def _targets(a: dict):
    """(src, [(ftype, name, dst)], nthreads) from IN [OUT] TYPE [NTHREADS] or IN --types ... -o ..."""
    from . import convert as conv
    from .batch import expand_output
    from .cli import _parse_positional
    from .plan import parse_file_type

    args = list(a["args"])
    if a["types"]:
        if len(args) != 1:
            raise UsageError(f"with --types give only IN (got {' '.join(args)}); outputs are named by -o")
        src, nthreads = Path(args[0]), None
        names = [t.strip() for t in a["types"].split(",") if t.strip()]
        if not names:
            raise UsageError("--types needs at least one file type, e.g. --types Q4_K_M,Q8_0")
        parsed = [parse_file_type(n) for n in names]
        template = a["output"]
        if template is None:
            outs = [conv.default_output_path(src, name) for _, name in parsed]
        else:
            outs = [expand_output(template, src, name) for _, name in parsed]
    else:
        src, out, ftype, name, nthreads = _parse_positional(args)
        if out is not None and a["output"] is not None:
            raise UsageError(f"OUT given twice ({out} and -o {a['output']}); keep one")
        parsed = [(ftype, name)]
        if a["output"] is not None:
            out = expand_output(a["output"], src, name)
        outs = [out if out is not None else conv.default_output_path(src, name)]
    return src, [(f, n, o) for (f, n), o in zip(parsed, outs)], nthreads


def convert_batch(**a) -> None:
    from .cli import _open_hf, _quiet_helper_threads, _stderr_console, check_weight_filters, quantize_options

    _quiet_helper_threads()
    from . import convert as conv
    from . import manifest as mf
    from .batch import Target, convert_types

    if a.get("target_bpw") is not None or a.get("target_size") is not None:
        raise UsageError("--target-bpw/--target-size make one file: give IN OUT without --types/-o/--manifest/--skip-unchanged")
    if a["dry_run"]:
        raise UsageError("--dry-run shows one plan: give one TYPE, without --types/-o/--manifest/--skip-unchanged")
    check_weight_filters(a["include_weights"], a["exclude_weights"], a["imatrix"])
    src, specs, nthreads = _targets(a)
    manifests = a["manifest"] is not False
    targets = [Target(name, quantize_options(ftype, name, a), dst) for ftype, name, dst in specs]
    option_docs = [mf.options_doc(t.type_name, t.options, a["imatrix"], a["no_vocab"]) for t in targets]
    imatrix_input = conv.load_imatrix_input(a["imatrix"]) if a["imatrix"] else None

    quiet, json_out = a["quiet"], a["json_out"]
    console = None if quiet or json_out else _stderr_console()
    source = _open_hf(src, a["no_vocab"]) if src.is_dir() else None
    kwargs = dict(imatrix=imatrix_input, nthreads=a["threads"] or nthreads, source=source, manifests=manifests,
                  skip_unchanged=a["skip_unchanged"], option_docs=option_docs, command=sys.argv[1:])
    try:
        if console is not None and console.is_terminal:
            result = _with_progress(convert_types, src, targets, kwargs, console)
        else:
            result = convert_types(src, targets, **kwargs)
    finally:
        if source is not None:
            source.close()
    if json_out:
        typer.echo(json.dumps(result_json(result, option_docs), indent=2))
    elif not quiet:
        _print_summary(result, console)


def _with_progress(convert_types, src, targets, kwargs, console):
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    progress = Progress(TextColumn("{task.description:<56}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
    task = None

    def on_event(event, name, types, nbytes):
        nonlocal task
        if event == "plan":
            task = progress.add_task(f"reading once for {', '.join(types)}", total=nbytes)
        elif event == "start":
            progress.update(task, description=f"{name} -> {', '.join(types)}")
        else:
            progress.advance(task, nbytes)

    with progress:
        return convert_types(src, targets, progress=on_event, **kwargs)


def result_json(result, option_docs) -> dict:
    """`convert --json` of a batch: the run, then one entry per output (from its manifest when
    there is one; a skipped output reports the manifest it was skipped on)."""
    from . import __version__
    from .manifest import type_mix

    outputs = []
    for tr, options in zip(result.targets, option_docs):
        entry = {"type": tr.target.type_name, "output": str(tr.target.dst), "skipped": tr.skipped,
                 "manifest": str(tr.manifest_path) if tr.manifest_path else None}
        doc = tr.manifest
        if tr.result is not None:
            r = tr.result
            sizes = {}
            if doc is not None:
                sizes = {f["file"]: (f["size"], f["sha256"]) for f in doc["outputs"]}
            entry["files"] = [{"path": str(p), "size": sizes.get(p.name, (p.stat().st_size, None))[0],
                               "sha256": sizes.get(p.name, (None, None))[1]} for p in r.outputs]
            entry.update({"file_type": r.plan.ftype, "n_tensors": len(r.plan.tensors), "n_elements": r.n_elements,
                          "bytes_out": r.bytes_out, "bpw_out": round(r.bpw_out, 4), "n_fallback": r.plan.n_fallback,
                          "type_mix": type_mix(r.plan)})
        elif doc is not None:
            entry["files"] = [{"path": str(tr.target.dst.with_name(f["file"])), "size": f["size"], "sha256": f["sha256"]}
                              for f in doc["outputs"]]
            entry.update({"file_type": doc.get("file_type"), "n_tensors": doc.get("n_tensors"),
                          "n_elements": doc.get("n_elements"), "bytes_out": doc.get("tensor_bytes"),
                          "bpw_out": doc.get("bpw"), "type_mix": doc.get("type_mix")})
        entry["options"] = options
        outputs.append(entry)
    return {
        "pyquantize_version": __version__,
        "input": result.input,
        "command": sys.argv[1:],
        "seconds": round(result.seconds, 3),
        "compile_seconds": round(result.compile_seconds, 3),
        "bytes_read": result.bytes_read,
        "outputs": outputs,
    }


def _mib(n: int) -> str:
    return f"{n / 1048576:.2f} MiB"


def _print_summary(result, console) -> None:
    made = 0
    for tr in result.targets:
        if tr.skipped:
            console.print(f"unchanged {tr.target.dst} ({tr.target.type_name}): its manifest matches, skipped",
                          highlight=False, soft_wrap=True)
            continue
        r = tr.result
        made += 1
        fallback = f", {r.plan.n_fallback} fallback" if r.plan.n_fallback else ""
        console.print(f"wrote {', '.join(str(p) for p in r.outputs)} ({tr.target.type_name}): {_mib(r.bytes_out)}, "
                      f"{r.bpw_out:.2f} bpw{fallback}", highlight=False, soft_wrap=True)
    if made:
        console.print(f"{made} output(s) from one read of {_mib(result.bytes_read)} in {result.seconds:.2f} s "
                      f"(of which {result.compile_seconds:.2f} s kernel compile/load)", highlight=False, soft_wrap=True)
