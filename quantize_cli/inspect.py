"""inspect: what is in a GGUF file (header, metadata, tensors, sizes, bits per weight).

``describe(path)`` returns a plain dict: the stable JSON document of `inspect --json`; the
text and Markdown views are renderings of it."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from kernels.gguf_compat import GGUFValueType

from .sources import GGUFFileSource, open_source

ARRAY_PREVIEW = 8


def _kv_value(kv) -> Any:
    value = kv.get()
    if kv.vtype == GGUFValueType.ARRAY:
        items = list(value)
        return {"type": f"ARRAY[{kv.item_type.name if kv.item_type else '?'}]", "length": len(items),
                "head": items[:ARRAY_PREVIEW]}
    return value


def describe(path: str | Path, with_tensors: bool = True) -> dict:
    with open_source(path) as src:
        first = src if isinstance(src, GGUFFileSource) else getattr(src, "shards", [src])[0]
        doc: dict[str, Any] = {
            "file": str(path),
            "version": getattr(first, "version", None),
            "alignment": getattr(first, "alignment", None),
            "n_splits": src.n_splits,
            "metadata": OrderedDict((kv.key, _kv_value(kv)) for kv in src.kv),
        }
        by_type: dict[str, dict[str, int]] = {}
        n_elements = 0
        n_bytes = 0
        tensors = []
        for t in src.tensors:
            n_elements += t.n_elements
            n_bytes += t.nbytes
            entry = by_type.setdefault(t.type.name, {"tensors": 0, "elements": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["elements"] += t.n_elements
            entry["bytes"] += t.nbytes
            if with_tensors:
                tensors.append({"name": t.name, "shape": list(t.ne), "type": t.type.name, "bytes": t.nbytes,
                                "offset": t.offset, "split": t.split})
        doc["n_tensors"] = len(src.tensors)
        doc["n_elements"] = n_elements
        doc["tensor_bytes"] = n_bytes
        doc["bpw"] = round(n_bytes * 8 / n_elements, 4) if n_elements else 0.0
        for entry in by_type.values():
            entry["bpw"] = round(entry["bytes"] * 8 / entry["elements"], 4) if entry["elements"] else 0.0
        doc["types"] = dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"]))
        if with_tensors:
            doc["tensors"] = tensors
        return doc


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, dict) and "length" in value:
        head = ", ".join(repr(v) for v in value["head"])
        text = f"{value['type']} ({value['length']}): [{head}{', ...' if value['length'] > len(value['head']) else ''}]"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mib(n: int) -> str:
    return f"{n / 1048576:.2f} MiB"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(doc: dict) -> str:
    lines = [f"# {doc['file']}", "", f"GGUF v{doc['version']}, {doc['n_tensors']} tensors, "
             f"{doc['n_elements']:,} weights, {_mib(doc['tensor_bytes'])}, {doc['bpw']:.2f} bpw", "",
             "## Metadata", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {_md_escape(_short(v))} |" for k, v in doc["metadata"].items()]
    lines += ["", "## Types", "", "| type | tensors | weights | bytes | bpw |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {t} | {e['tensors']} | {e['elements']:,} | {e['bytes']:,} | {e['bpw']:.2f} |" for t, e in doc["types"].items()]
    if "tensors" in doc:
        lines += ["", "## Tensors", "", "| name | shape | type | bytes | offset |", "|---|---|---|---:|---:|"]
        lines += [f"| {t['name']} | {'x'.join(map(str, t['shape']))} | {t['type']} | {t['bytes']:,} | {t['offset']} |"
                  for t in doc["tensors"]]
    return "\n".join(lines) + "\n"


def render_rich(doc: dict, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{doc['file']}[/]: GGUF v{doc['version']}, {doc['n_tensors']} tensors, "
                  f"{doc['n_elements']:,} weights, {_mib(doc['tensor_bytes'])}, [bold]{doc['bpw']:.2f} bpw[/]")
    meta = Table(title="metadata", show_lines=False, title_justify="left")
    meta.add_column("key", style="cyan", no_wrap=True)
    meta.add_column("value", overflow="fold")
    for k, v in doc["metadata"].items():
        meta.add_row(k, _short(v, 100))
    console.print(meta)
    types = Table(title="types", title_justify="left")
    for col in ("type", "tensors", "weights", "size", "bpw"):
        types.add_column(col, justify="left" if col == "type" else "right")
    for t, e in doc["types"].items():
        types.add_row(t, str(e["tensors"]), f"{e['elements']:,}", _mib(e["bytes"]), f"{e['bpw']:.2f}")
    console.print(types)
    if "tensors" in doc:
        table = Table(title="tensors", title_justify="left")
        for col in ("#", "name", "shape", "type", "bytes", "offset"):
            table.add_column(col, justify="right" if col in ("#", "bytes", "offset") else "left")
        for i, t in enumerate(doc["tensors"]):
            table.add_row(str(i), t["name"], " x ".join(map(str, t["shape"])), t["type"], f"{t['bytes']:,}", str(t["offset"]))
        console.print(table)


def diff(doc_a: dict, doc_b: dict) -> dict:
    """Per-tensor differences of type and size between two `describe` documents (for reviewing a
    new mix): tensors in both whose type or size differ, tensors in only one, and the totals."""
    a = {t["name"]: t for t in doc_a["tensors"]}
    b = {t["name"]: t for t in doc_b["tensors"]}
    changed = [{"name": name, "type_a": t["type"], "type_b": b[name]["type"], "bytes_a": t["bytes"],
                "bytes_b": b[name]["bytes"]}
               for name, t in a.items() if name in b and (t["type"] != b[name]["type"] or t["bytes"] != b[name]["bytes"])]
    return {
        "a": doc_a["file"], "b": doc_b["file"],
        "changed": changed,
        "only_a": [{"name": n, "type": t["type"], "bytes": t["bytes"]} for n, t in a.items() if n not in b],
        "only_b": [{"name": n, "type": t["type"], "bytes": t["bytes"]} for n, t in b.items() if n not in a],
        "n_same": sum(1 for n in a if n in b) - len(changed),
        "tensor_bytes_a": doc_a["tensor_bytes"], "tensor_bytes_b": doc_b["tensor_bytes"],
        "bpw_a": doc_a["bpw"], "bpw_b": doc_b["bpw"],
    }


def render_diff(d: dict) -> str:
    """Plain text: one line per differing tensor, then the totals (pipes and diffs read it)."""
    width = max([len(c["name"]) for c in d["changed"] + d["only_a"] + d["only_b"]] + [6])
    lines = [f"--- {d['a']}", f"+++ {d['b']}"]
    for c in d["changed"]:
        lines.append(f"{c['name']:<{width}}  {c['type_a']:>7} -> {c['type_b']:<7}  "
                     f"{c['bytes_a']:>12,} -> {c['bytes_b']:>12,}  ({c['bytes_b'] - c['bytes_a']:+,})")
    for t in d["only_a"]:
        lines.append(f"{t['name']:<{width}}  {t['type']:>7} -> {'-':<7}  {t['bytes']:>12,} -> {'-':>12}  (only in A)")
    for t in d["only_b"]:
        lines.append(f"{t['name']:<{width}}  {'-':>7} -> {t['type']:<7}  {'-':>12} -> {t['bytes']:>12,}  (only in B)")
    delta = d["tensor_bytes_b"] - d["tensor_bytes_a"]
    lines.append(f"{len(d['changed'])} tensor(s) differ, {len(d['only_a'])} only in A, {len(d['only_b'])} only in B, "
                 f"{d['n_same']} the same; {_mib(d['tensor_bytes_a'])} ({d['bpw_a']:.2f} bpw) -> "
                 f"{_mib(d['tensor_bytes_b'])} ({d['bpw_b']:.2f} bpw), {delta:+,} bytes")
    return "\n".join(lines) + "\n"
