"""Manifests: a JSON file beside each output that says what it is and what made it.

A manifest (``OUT.manifest.json``) records the output's files (size, sha256), its type mix, the
exact options that decide its bytes, the input's identity and the pyquantize version. It never
goes into the GGUF: outputs stay byte-identical to llama-quantize's. ``--skip-unchanged`` skips
an output whose manifest matches the run about to start; Makefiles and CI caches key on it.

The input's identity is a sampled fingerprint, not a sha256 of the whole input: hashing a
14 GB F16 7B model costs 10-15 s per run (hashlib's sha256 measured 0.4-1.1 GB/s here), more
than the decision is worth. The fingerprint hashes every input file's size, its first 16 MiB
in full (a GGUF's metadata and every tensor's name, shape, type and offset; a safetensors
header; config and tokenizer files whole) and one 4 KiB block in every 4 MiB of the rest: about
1/1000 of the data, milliseconds from the page cache. Any re-export, retrain, merge or metadata
edit changes it; copying the file or restoring it from a CI cache (new mtime) does not. What
it can miss is an in-place edit of a few weights between sampled blocks that keeps the size:
pipelines do not make those; delete the manifest (or pass no --skip-unchanged) after one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .errors import OutputError, SourceError

MANIFEST_SUFFIX = ".manifest.json"
SCHEMA = "pyquantize-manifest/1"
FINGERPRINT_METHOD = "sampled-sha256/1: size, first 16 MiB, 4 KiB of every 4 MiB, last 4 KiB"
HEAD_BYTES = 16 << 20
STRIDE = 4 << 20
BLOCK = 4096
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
HF_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".tiktoken")


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + MANIFEST_SUFFIX)


def input_files(src: Path) -> list[Path]:
    """The files an input consists of: a GGUF, every shard of a split GGUF, or the checkpoint,
    config and tokenizer files of a Hugging Face folder."""
    if src.is_dir():
        return sorted(p for p in src.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.suffix in HF_SUFFIXES)
    m = SPLIT_RE.match(src.name)
    if m:
        count = int(m.group("count"))
        shards = [src.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
        if all(p.exists() for p in shards):
            return shards
    return [src]


def _sample(h, path: Path, size: int) -> None:
    with open(path, "rb") as f:
        h.update(f.read(min(size, HEAD_BYTES)))
        pos = HEAD_BYTES
        while pos < size:
            f.seek(pos)
            h.update(f.read(BLOCK))
            pos += STRIDE
        if size > HEAD_BYTES:
            f.seek(max(HEAD_BYTES, size - BLOCK))
            h.update(f.read(BLOCK))


def input_identity(src: str | Path) -> dict:
    """Path, size and sampled fingerprint of the input (see the module note for why sampled)."""
    src = Path(src)
    files = input_files(src)
    h = hashlib.sha256()
    entries = []
    try:
        for path in files:
            st = path.stat()
            h.update(f"{path.name if src.is_dir() or len(files) > 1 else ''}\0{st.st_size}\0".encode())
            _sample(h, path, st.st_size)
            entries.append({"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    except OSError as exc:
        raise SourceError(f"{src}: cannot read the input ({exc.strerror or exc})") from None
    return {
        "path": str(src),
        "size": sum(e["size"] for e in entries),
        "files": entries,
        "fingerprint": h.hexdigest(),
        "fingerprint_method": FINGERPRINT_METHOD,
    }


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class HashingFile:
    """A file object that hashes everything written through it (the writer writes every byte of
    an output, header and padding included, through write)."""

    def __init__(self, f):
        self.f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        n = self.f.write(data)
        self.size += memoryview(data).nbytes
        return n


def type_mix(plan) -> dict[str, dict[str, int]]:
    """Tensors and bytes per tensor type of a plan's output, largest first."""
    mix: dict[str, dict[str, int]] = {}
    for tp in plan.tensors:
        entry = mix.setdefault(tp.type.name, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += tp.nbytes
    return dict(sorted(mix.items(), key=lambda kv: -kv[1]["bytes"]))


def options_doc(type_name: str, options, imatrix_path: str | None, no_vocab: bool = False) -> dict:
    """Every option that decides the output's bytes, normalized (thread count and output names
    do not), with the imatrix named by its content."""
    imatrix = None
    if imatrix_path:
        try:
            imatrix = {"path": imatrix_path, "size": os.path.getsize(imatrix_path), "sha256": file_sha256(imatrix_path)}
        except OSError as exc:
            raise SourceError(f"{imatrix_path}: cannot read the imatrix ({exc.strerror or exc})") from None
    return {
        "type": type_name,
        "allow_requantize": options.allow_requantize,
        "leave_output_tensor": options.leave_output_tensor,
        "pure": options.pure,
        "keep_split": options.keep_split,
        "output_tensor_type": options.output_tensor_type.name if options.output_tensor_type is not None else None,
        "token_embedding_type": options.token_embedding_type.name if options.token_embedding_type is not None else None,
        "tensor_types": [[pattern, t.name] for pattern, t in options.tensor_types],
        "prune_layers": sorted(set(options.prune_layers)),
        "imatrix": imatrix,
        "include_weights": list(options.include_weights),
        "exclude_weights": list(options.exclude_weights),
        "override_kv": [[kv.key, kv.vtype.name, _plain(kv.get())] for kv in options.kv_overrides],
        "no_vocab": bool(no_vocab),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def make_manifest(outputs: list[tuple[Path, int, str]], plan, options: dict, input_id: dict,
                  command: list[str] | None) -> dict:
    """The manifest document. `outputs`: (path, size, sha256) of every file of this output."""
    n = plan.n_elements
    bytes_out = sum(tp.nbytes for tp in plan.tensors)
    return {
        "schema": SCHEMA,
        "pyquantize_version": __version__,
        "outputs": [{"file": p.name, "size": size, "sha256": digest} for p, size, digest in outputs],
        "file_type": options["type"],
        "n_tensors": len(plan.tensors),
        "n_elements": n,
        "tensor_bytes": bytes_out,
        "bpw": round(bytes_out * 8 / n, 4) if n else 0.0,
        "type_mix": type_mix(plan),
        "options": options,
        "input": input_id,
        "command": list(command) if command is not None else None,
    }


def read_manifest(output: Path) -> dict | None:
    try:
        doc = json.loads(manifest_path(output).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None


def is_unchanged(output: Path, options: dict, input_id: dict) -> bool:
    """Whether OUT's manifest says it was made from this input (same size and fingerprint), with
    these options, by this version, and its files are still there at their recorded sizes."""
    doc = read_manifest(output)
    if doc is None:
        return False
    old = doc.get("input") or {}
    if (doc.get("pyquantize_version") != __version__ or doc.get("options") != options
            or old.get("fingerprint") != input_id["fingerprint"] or old.get("size") != input_id["size"]
            or old.get("fingerprint_method") != input_id["fingerprint_method"]):
        return False
    files = doc.get("outputs") or []
    if not files:
        return False
    for entry in files:
        path = output.with_name(str(entry.get("file", "")))
        try:
            if path.stat().st_size != entry.get("size"):
                return False
        except OSError:
            return False
    return True


def remove_manifest(output: Path) -> None:
    """Drop a manifest that is about to be outdated (before its output is replaced)."""
    try:
        manifest_path(output).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OutputError(f"{manifest_path(output)}: cannot remove the old manifest ({exc.strerror or exc})") from None


def write_manifest(output: Path, doc: dict) -> Path:
    """Write OUT.manifest.json atomically (temp file beside it, then rename)."""
    target = manifest_path(output)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.resolve().parent)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(name, 0o644 & ~mask)
        os.replace(name, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write the manifest ({exc.strerror or exc})") from None
    return target
