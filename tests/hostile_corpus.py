"""A generated adversarial corpus: bad GGUF models, bad imatrix files, bad text and bad command
lines, all derived from the real stories260K model and the calibration text.

Each case is a ``Case``: an id, a class, and ``build(dir) -> argv`` that writes whatever files it
needs into ``dir`` and returns the pyquantize arguments to run. The tests (test_hostile*.py)
run every case and check the same guarantees; the reference tier feeds every bad GGUF to
llama.cpp's gguf_init_from_file. A new class is a few lines: a function yielding cases.

The GGUF editing here is deliberately independent of pyquantize's reader (``Model`` below
parses and re-serializes the file on its own), so a bug in the reader cannot hide itself.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

DATA = Path(__file__).parent / "data"
STORIES = DATA / "stories260K.gguf"
TEXT = DATA / "calibration-en.txt"

# value type codes of the GGUF format
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
           U64: "<Q", I64: "<q", F64: "<d"}


def gstr(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv_bytes(key: bytes | str, vtype: int, value) -> bytes:
    """One serialized metadata pair (scalars and strings; arrays as (item_type, [values]))."""
    out = gstr(key) + struct.pack("<I", vtype)
    if vtype == STR:
        return out + gstr(value)
    if vtype == ARR:
        item, values = value
        body = b"".join(gstr(v) if item == STR else struct.pack(_SCALAR[item], v) for v in values)
        return out + struct.pack("<IQ", item, len(values)) + body
    return out + struct.pack(_SCALAR[vtype], value)


@dataclass
class Info:
    name: bytes
    ne: list[int]
    type: int
    offset: int
    n_dims: int | None = None  # written n_dims, when it should lie about len(ne)

    def to_bytes(self) -> bytes:
        n = len(self.ne) if self.n_dims is None else self.n_dims
        return (gstr(self.name) + struct.pack("<I", n) + b"".join(struct.pack("<q", d) for d in self.ne)
                + struct.pack("<iQ", self.type, self.offset))


@dataclass
class Model:
    """A GGUF file taken apart: edit the parts, then ``to_bytes()``."""

    version: int
    kvs: list[tuple[bytes, bytes]]  # (key, whole serialized pair)
    infos: list[Info]
    data: bytes  # the data section, from its aligned start to the end of the file
    alignment: int = 32
    n_tensors: int | None = None  # header counts, when they should lie
    n_kv: int | None = None

    @classmethod
    def parse(cls, blob: bytes) -> "Model":
        pos = 24
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)

        def string(p):
            (n,) = struct.unpack_from("<Q", blob, p)
            return blob[p + 8:p + 8 + n], p + 8 + n

        def skip(vtype, p):
            if vtype == STR:
                return string(p)[1]
            if vtype == ARR:
                item, count = struct.unpack_from("<IQ", blob, p)
                p += 12
                for _ in range(count):
                    p = skip(item, p)
                return p
            return p + struct.calcsize(_SCALAR[vtype])

        kvs = []
        for _ in range(n_kv):
            start = pos
            key, pos = string(pos)
            (vtype,) = struct.unpack_from("<I", blob, pos)
            pos = skip(vtype, pos + 4)
            kvs.append((key, blob[start:pos]))
        infos = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", blob, pos)
            ne = list(struct.unpack_from(f"<{n_dims}q", blob, pos + 4))
            ttype, offset = struct.unpack_from("<iQ", blob, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append(Info(name, ne, ttype, offset))
        data_start = (pos + 31) // 32 * 32
        return cls(version, kvs, infos, blob[data_start:])

    def copy(self) -> "Model":
        return Model(self.version, list(self.kvs), [Info(i.name, list(i.ne), i.type, i.offset, i.n_dims)
                                                     for i in self.infos], self.data, self.alignment,
                     self.n_tensors, self.n_kv)

    def info(self, name: str) -> Info:
        return next(i for i in self.infos if i.name == name.encode())

    def set_kv(self, key: str, vtype: int, value) -> None:
        pair = kv_bytes(key, vtype, value)
        for i, (k, _) in enumerate(self.kvs):
            if k == key.encode():
                self.kvs[i] = (k, pair)
                return
        self.kvs.append((key.encode(), pair))

    def tensor_bytes(self, info: Info, nbytes: int) -> bytes:
        return self.data[info.offset:info.offset + nbytes]

    def relayout(self, tensors: list[tuple[Info, bytes]]) -> None:
        """Replace the tensors (infos and data), with offsets laid out as gguf.cpp requires."""
        self.infos, data = [], b""
        for info, blob in tensors:
            info.offset = len(data)
            self.infos.append(info)
            data += blob + bytes(-len(blob) % self.alignment)
        self.data = data

    def head_bytes(self) -> bytes:
        n_t = len(self.infos) if self.n_tensors is None else self.n_tensors
        n_kv = len(self.kvs) if self.n_kv is None else self.n_kv
        return (b"GGUF" + struct.pack("<Iqq", self.version, n_t, n_kv) + b"".join(p for _, p in self.kvs)
                + b"".join(i.to_bytes() for i in self.infos))

    def to_bytes(self) -> bytes:
        head = self.head_bytes()
        pad = -len(head) % self.alignment
        return head + bytes(pad) + self.data

    def boundaries(self) -> dict[str, int]:
        """Byte offsets of every structural boundary (for truncation cases)."""
        out = {"magic": 4, "version": 8, "n_tensors": 16, "n_kv": 24}
        pos = 24
        for k, pair in self.kvs:
            out[f"kv {k.decode(errors='replace')} key"] = pos + 8
            out[f"kv {k.decode(errors='replace')} value"] = pos + len(gstr(k)) + 4
            pos += len(pair)
            out[f"kv {k.decode(errors='replace')} end"] = pos
        for info in self.infos:
            b = info.to_bytes()
            out[f"info {info.name.decode()} dims"] = pos + len(gstr(info.name)) + 4
            out[f"info {info.name.decode()} offset"] = pos + len(b) - 8
            pos += len(b)
        data_start = (pos + 31) // 32 * 32
        out["data start"] = data_start
        for info in self.infos:
            out[f"data {info.name.decode()}"] = data_start + info.offset + 1
        return out


_STORIES_CACHE: list[bytes] = []


def stories_bytes() -> bytes:
    if not _STORIES_CACHE:
        _STORIES_CACHE.append(STORIES.read_bytes())
    return _STORIES_CACHE[0]


def stories() -> Model:
    return Model.parse(stories_bytes())


def f32_at(m: Model, tensor: str, index: int, value: float) -> Model:
    """Set element `index` of an F32 tensor."""
    info = m.info(tensor)
    data = bytearray(m.data)
    data[info.offset + 4 * index:info.offset + 4 * index + 4] = struct.pack("<f", value)
    m.data = bytes(data)
    return m


# --- cases -----------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    klass: str
    build: Callable[[Path], list[str]]  # writes its files into the directory, returns argv
    exit_code: int | None = None  # None: any non-zero
    fragments: tuple[str, ...] = ()  # text the error line must contain
    usage: bool = False  # a usage error: Typer's usage text may accompany the line
    gguf: bytes | None = field(default=None, repr=False)  # the bad model, for the reference tier
    subprocess: bool = False  # run as a real process (FIFOs: a hang must be killable)


def _model_case(cid: str, klass: str, blob: bytes, *fragments: str, command: str = "convert",
                ftype: str = "Q8_0", extra: tuple[str, ...] = ()) -> Case:
    def build(d: Path) -> list[str]:
        p = d / "in.gguf"
        p.write_bytes(blob)
        if command == "inspect":
            return ["inspect", str(p), "--no-tensors"]
        return ["convert", str(p), str(d / "out.gguf"), ftype, "--quiet", *extra]
    return Case(cid, klass, build, fragments=fragments, gguf=blob)


def gguf_cases() -> Iterator[tuple[str, str, bytes, tuple[str, ...]]]:
    """(id, class, bytes, fragments of the expected error) for every malformed GGUF."""
    good = stories()
    blob = stories_bytes()

    # header
    yield "magic", "header", b"GGML" + blob[4:], ("not a GGUF file",)
    for v, frag in ((0, "version 0"), (1, "version 1"), (4, "version 4"), (0x03000000, "endian")):
        yield f"version-{v}", "header", blob[:4] + struct.pack("<I", v) + blob[8:], (frag,)
    yield "empty", "truncation", b"", ("empty",)

    # truncation at every structural boundary of the header and metadata, and of the first and
    # last tensors' infos and data (the ones between are the same kind of boundary)
    names = [i.name.decode() for i in good.infos]
    ends = set(names[:3] + names[-2:])
    for where, off in good.boundaries().items():
        kind, _, rest = where.partition(" ")
        if kind in ("info", "data") and rest.rsplit(" ", 1)[0] not in ends and rest not in ends:
            continue
        yield f"cut {where}", "truncation", blob[:off], ("truncated",)
    for off in (5, 13, 23, 100, 1000, 11346, len(blob) - 40):
        yield f"cut at {off}", "truncation", blob[:off], ("truncated",)

    # lying counts
    m = good.copy(); m.n_tensors = len(m.infos) + 1
    yield "n_tensors +1", "counts", m.to_bytes(), ()
    m = good.copy(); m.n_tensors = -1
    yield "n_tensors -1", "counts", m.to_bytes(), ("number of tensors",)
    m = good.copy(); m.n_tensors = 1 << 62
    yield "n_tensors huge", "counts", m.to_bytes(), ()
    m = good.copy(); m.n_kv = len(m.kvs) + 1
    yield "n_kv +1", "counts", m.to_bytes(), ()
    m = good.copy(); m.n_kv = len(m.kvs) + 1000
    yield "n_kv +1000", "counts", m.to_bytes(), ()
    m = good.copy(); m.n_kv = -5
    yield "n_kv negative", "counts", m.to_bytes(), ("number of key-value pairs",)

    # lying lengths
    m = good.copy()
    k, pair = m.kvs[4]
    m.kvs[4] = (k, struct.pack("<Q", 1 << 40) + pair[8:])
    yield "key length huge", "lengths", m.to_bytes(), ()
    m = good.copy()
    m.kvs[3] = (m.kvs[3][0], kv_bytes(m.kvs[3][0], STR, "llama")[:-13] + struct.pack("<Q", 1 << 31) + b"llama")
    yield "string length 2 GiB", "lengths", m.to_bytes(), ()
    m = good.copy()
    m.kvs[0] = (m.kvs[0][0], gstr(m.kvs[0][0]) + struct.pack("<IIQ", ARR, STR, 1 << 40))
    yield "array count huge", "lengths", m.to_bytes(), ()
    m = good.copy()
    m.kvs[1] = (m.kvs[1][0], gstr(m.kvs[1][0]) + struct.pack("<IIQ", ARR, F32, (1 << 30) + 1))
    yield "array count over 2^30", "lengths", m.to_bytes(), ()
    m = good.copy()
    i = m.infos[5]
    m.infos[5] = Info(b"x" * 10, i.ne, i.type, i.offset)
    raw = bytearray(m.to_bytes())
    pos = raw.find(gstr(b"x" * 10))
    raw[pos:pos + 8] = struct.pack("<Q", 1 << 50)
    yield "tensor name length huge", "lengths", bytes(raw), ()

    # metadata
    m = good.copy(); m.kvs.insert(5, (b"", kv_bytes(b"", U32, 1)))
    yield "empty key", "metadata", m.to_bytes(), ("empty",)
    m = good.copy(); m.kvs.append(m.kvs[6])
    yield "duplicate key", "metadata", m.to_bytes(), (m.kvs[6][0].decode(), "twice")
    for code in (13, 99, 0xFFFFFFFF):
        m = good.copy(); m.kvs.insert(5, (b"bad.type", gstr("bad.type") + struct.pack("<I", code) + b"\0" * 8))
        yield f"value type {code}", "metadata", m.to_bytes(), ("bad.type", "type")
    m = good.copy(); m.kvs.insert(5, (b"bad.nested", gstr("bad.nested") + struct.pack("<IIQ", ARR, ARR, 1)
                                      + struct.pack("<IQ", U8, 1) + b"\1"))
    yield "array of arrays", "metadata", m.to_bytes(), ("bad.nested",)
    for label, vtype, value in (("0", U32, 0), ("3", U32, 3), ("48", U32, 48), ("string", STR, "32"),
                                ("uint64", U64, 32), ("int32", I32, 32)):
        m = good.copy(); m.set_kv("general.alignment", vtype, value)
        yield f"alignment {label}", "metadata", m.to_bytes(), ("general.alignment",)
    m = good.copy(); m.set_kv("llama.block_count", STR, "five")
    yield "block_count as string", "metadata", m.to_bytes(), ("llama.block_count",)
    m = good.copy(); m.set_kv("llama.embedding_length", F32, 64.0)
    yield "embedding_length as float", "metadata", m.to_bytes(), ("llama.embedding_length",)
    m = good.copy(); m.set_kv("general.architecture", U32, 7)
    yield "architecture as number", "metadata", m.to_bytes(), ("general.architecture",)

    # tensor infos
    m = good.copy(); m.infos[3].name = b"blk.0." + b"a" * 58
    yield "tensor name 64 bytes", "tensor info", m.to_bytes(), ("too long",)
    m = good.copy(); m.infos[4].name = m.infos[3].name
    yield "duplicate tensor name", "tensor info", m.to_bytes(), ("blk.0.attn_q.weight", "twice")
    m = good.copy(); m.infos[3].ne = [64, 64, 1, 1, 1]
    yield "5 dimensions", "tensor info", m.to_bytes(), ("dimensions",)
    m = good.copy(); m.infos[3].ne = [64, -64]
    yield "negative dimension", "tensor info", m.to_bytes(), ("negative",)
    m = good.copy(); m.infos[3].ne = [64, 1 << 40, 1 << 30]
    yield "element count overflows int64", "tensor info", m.to_bytes(), ("overflow",)
    m = good.copy(); m.infos[3].ne = [64, 1 << 40, 1 << 10]
    yield "element count 2^56", "tensor info", m.to_bytes(), ()
    for code in (43, 4, 1000, -1):
        m = good.copy(); m.infos[3].type = code
        yield f"ggml type {code}", "tensor info", m.to_bytes(), ("type",)
    m = good.copy(); m.infos[3].type = 39  # MXFP4: a valid type whose size does not fit the slot
    yield "ggml type 39", "tensor info", m.to_bytes(), ("offset",)
    m = good.copy(); m.infos[3].type = 8  # Q8_0: rows of 64 are blocks of 32, but the size differs
    yield "type changed, sizes lie", "tensor info", m.to_bytes(), ("offset",)
    m = good.copy(); m.infos[1].type = 12; m.infos[1].ne = [64]  # Q4_K: 64 is not a multiple of 256
    yield "row not a multiple of block", "tensor info", m.to_bytes(), ("block",)
    # offsets
    m = good.copy(); m.infos[4].offset = m.infos[3].offset
    yield "offsets overlap", "offsets", m.to_bytes(), ("offset",)
    m = good.copy(); m.infos[4].offset += 1
    yield "offset unaligned", "offsets", m.to_bytes(), ("offset",)
    m = good.copy(); m.infos[4].offset += 32
    yield "offset gap", "offsets", m.to_bytes(), ("offset",)
    m = good.copy(); m.infos[4].offset -= 32
    yield "offset runs into previous", "offsets", m.to_bytes(), ("offset",)
    m = good.copy(); m.infos[0].offset = 1 << 62
    yield "offset huge", "offsets", m.to_bytes(), ("offset",)
    m = good.copy(); m.infos[3], m.infos[4] = m.infos[4], m.infos[3]
    yield "offsets out of order", "offsets", m.to_bytes(), ("offset",)
    m = good.copy(); m.infos[2].ne = [64, 513]
    yield "tensor bigger than its slot", "offsets", m.to_bytes(), ("offset",)

    # data
    m = good.copy(); m.data = m.data[:len(m.data) - 300]
    yield "last tensor cut", "truncation", m.to_bytes(), ("truncated",)


def weight_cases() -> Iterator[Case]:
    """Finite inputs whose quantized form llama.cpp rejects (Inf scales), and NaN/Inf inputs."""
    specs = [
        ("huge weight Q8_0", "blk.1.attn_q.weight", 100, 3e38, "Q8_0", ("blk.1.attn_q.weight", "row 1")),
        ("1e7 weight Q8_0", "blk.1.ffn_up.weight", 64 * 5 + 3, 1e7, "Q8_0", ("blk.1.ffn_up.weight", "row 5")),
        ("1e5 weight F16", "blk.0.attn_k.weight", 64 * 7, 1e5, "F16", ("blk.0.attn_k.weight", "row 7")),
        ("huge weight Q4_0", "blk.2.attn_v.weight", 9, -3e38, "Q4_0", ("blk.2.attn_v.weight", "row 0")),
        ("nan weight", "blk.2.attn_k.weight", 10, float("nan"), "Q8_0", ("blk.2.attn_k.weight", "NaN")),
        ("inf in a kept F32 tensor", "output_norm.weight", 3, float("inf"), "Q8_0", ("output_norm.weight",)),
    ]
    m = f32_at(stories(), "blk.2.attn_k.weight", 10, float("nan"))
    m.info("blk.2.attn_k.weight").name = "blk.2.attn_k\n\u2028.weight".encode()
    yield _model_case("nan weight in a tensor named with line breaks", "weights", m.to_bytes(), "NaN")
    for cid, tensor, index, value, ftype, frags in specs:
        blob = f32_at(stories(), tensor, index, value).to_bytes()
        yield _model_case(cid, "weights", blob, *frags, ftype=ftype)


# --- imatrix files ------------------------------------------------------------------------------

def imatrix_gguf(entries: dict[str, tuple[list[float], float]], *, metadata: bool = True) -> bytes:
    """A GGUF imatrix: per weight (sums, count) as <name>.in_sum2 [n, 1] and <name>.counts [1, 1]."""
    import numpy as np

    m = Model(3, [], [], b"")
    if metadata:
        m.kvs = [(b"general.type", kv_bytes("general.type", STR, "imatrix")),
                 (b"imatrix.datasets", kv_bytes("imatrix.datasets", ARR, (STR, ["calibration-en.txt"]))),
                 (b"imatrix.chunk_count", kv_bytes("imatrix.chunk_count", U32, 4)),
                 (b"imatrix.chunk_size", kv_bytes("imatrix.chunk_size", U32, 128))]
    data = b""
    for name in sorted(entries):
        sums, count = entries[name]
        for tname, ne, arr in ((f"{name}.in_sum2", [len(sums), 1], sums), (f"{name}.counts", [1, 1], [count])):
            blob = np.asarray(arr, dtype="<f4").tobytes()
            m.infos.append(Info(tname.encode(), ne[:1] if ne[1] == 1 else ne, 0, len(data)))
            data += blob + bytes(-len(blob) % 32)
    m.data = data
    return m.to_bytes()


def good_imatrix_entries() -> dict[str, tuple[list[float], float]]:
    """Plausible sums for every blk.* matrix of stories260K (rows of 64 or 172)."""
    out = {}
    for info in stories().infos:
        name = info.name.decode()
        if name.startswith("blk.") and len(info.ne) == 2:
            out[name] = ([1.0 + (i % 7) for i in range(info.ne[0])], 512.0)
    return out


def imatrix_cases() -> Iterator[Case]:
    good = good_imatrix_entries()
    blob = imatrix_gguf(good)

    def convert_with(cid: str, data: bytes, *fragments: str, name: str = "im.gguf") -> Case:
        def build(d: Path) -> list[str]:
            (d / "in.gguf").write_bytes(stories_bytes())
            (d / name).write_bytes(data)
            return ["convert", str(d / "in.gguf"), str(d / "out.gguf"), "Q4_0", "--quiet", "--imatrix", str(d / name)]
        return Case(cid, "imatrix file", build, fragments=fragments)

    for off in (0, 3, 20, 200, len(blob) // 2, len(blob) - 10):
        yield convert_with(f"imatrix cut at {off}", blob[:off])
    e = dict(good); e["blk.0.attn_q.weight"] = ([float("nan")] + e["blk.0.attn_q.weight"][0][1:], 512.0)
    yield convert_with("imatrix NaN", imatrix_gguf(e), "blk.0.attn_q.weight")
    e = dict(good); e["blk.1.ffn_down.weight"] = ([float("inf")] * 172, 512.0)
    yield convert_with("imatrix Inf", imatrix_gguf(e), "blk.1.ffn_down.weight")
    e = dict(good); e["blk.0.attn_q.weight"] = ([1.0] * 32, 512.0)
    yield convert_with("imatrix wrong size", imatrix_gguf(e), "blk.0.attn_q.weight")
    other = {k.replace("blk.", "blk."): ([1.0] * 128, 10.0) for k in good}
    yield convert_with("imatrix of another model", imatrix_gguf(other), "another model")
    e = dict(good); e["blk.0.attn_k.weight"] = (e["blk.0.attn_k.weight"][0], 3e38)
    e["blk.0.attn_k.weight"] = (e["blk.0.attn_k.weight"][0], float("inf"))
    yield convert_with("imatrix count Inf", imatrix_gguf(e), "count")
    e = dict(good); e["blk.0.attn_v.weight"] = (e["blk.0.attn_v.weight"][0], 1e30)
    yield convert_with("imatrix count too large for an int", imatrix_gguf(e), "count")
    yield convert_with("imatrix without metadata", imatrix_gguf(good, metadata=False), "metadata")
    yield convert_with("imatrix is a model", stories_bytes(), "imatrix")
    legacy = struct.pack("<i", 2) + struct.pack("<i", 19) + b"blk.0.attn_q.weight" + struct.pack("<ii", 1, 64)
    yield convert_with("legacy imatrix truncated", legacy + b"\0" * 100, "truncated", name="im.dat")
    yield convert_with("legacy imatrix entry count huge", struct.pack("<i", 1 << 30) + legacy[4:], name="im.dat")
    yield convert_with("legacy imatrix negative name length",
                       struct.pack("<ii", 1, -5) + b"x" * 64, name="im.dat")
    yield convert_with("imatrix empty file", b"", name="im.dat")
    long_name = b"blk." + b"\xe2\x80\xa8x" * 30000  # 90 KB of name (with U+2028 line separators)
    yield convert_with("legacy imatrix with a 90 KB name", struct.pack("<ii", 1, len(long_name)) + long_name
                       + struct.pack("<ii", 1, 0), "0 values", name="im.dat")


# --- command lines -------------------------------------------------------------------------------

def put(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _with_model(argv_of: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        (d / "in.gguf").write_bytes(stories_bytes())
        return argv_of(d)
    return build


def cli_cases() -> Iterator[Case]:
    def case(cid, argv_of, *fragments, usage=False, exit_code=None):
        return Case(cid, "cli", _with_model(argv_of), exit_code=exit_code, fragments=fragments, usage=usage)

    def linked(kind: str):
        def argv_of(d: Path) -> list[str]:
            if kind == "symlink":
                os.symlink(d / "in.gguf", d / "link.gguf")
                out = d / "link.gguf"
            elif kind == "hardlink":
                os.link(d / "in.gguf", d / "hard.gguf")
                out = d / "hard.gguf"
            elif kind == "dotdot":
                (d / "sub").mkdir()
                out = d / "sub" / ".." / "in.gguf"
            else:
                out = Path(os.path.relpath(d / "in.gguf"))
            return ["convert", str(d / "in.gguf"), str(out), "Q8_0", "--quiet"]
        return argv_of

    for kind in ("symlink", "hardlink", "dotdot", "relative"):
        yield case(f"convert OUT is IN ({kind})", linked(kind), "output is the input")
    yield case("convert OUT is a directory", lambda d: (d / "o").mkdir() or
               ["convert", str(d / "in.gguf"), str(d / "o"), "Q8_0"], "is a directory")
    yield case("convert OUT with trailing slash", lambda d: ["convert", str(d / "in.gguf"), str(d / "new") + "/", "Q8_0"],
               "directory")
    yield case("convert OUT in a missing directory",
               lambda d: ["convert", str(d / "in.gguf"), str(d / "no" / "o.gguf"), "Q8_0"], "does not exist")
    yield case("convert OUT is the imatrix", lambda d: put(d / "im.gguf", imatrix_gguf(good_imatrix_entries()))
               or ["convert", str(d / "in.gguf"), str(d / "im.gguf"), "Q4_0", "--imatrix", str(d / "im.gguf")],
               "output is the input")
    yield case("convert OUT is the tensor-type-file", lambda d: put(d / "tt.txt", b"attn_v=q8_0\n") or
               ["convert", str(d / "in.gguf"), str(d / "tt.txt"), "Q8_0", "--tensor-type-file", str(d / "tt.txt")],
               "output is the input")
    yield case("convert IN is a directory without a model",
               lambda d: (d / "empty").mkdir() or ["convert", str(d / "empty"), str(d / "o.gguf"), "Q8_0"])
    yield case("convert IN missing", lambda d: ["convert", str(d / "nothing.gguf"), str(d / "o.gguf"), "Q8_0"],
               "no such file")
    yield case("convert IN is /dev/zero", lambda d: ["convert", "/dev/zero", str(d / "o.gguf"), "Q8_0"], "regular file")
    yield case("convert unknown type", lambda d: ["convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q9_9"], "Q9_9")
    yield case("convert NTHREADS not a number",
               lambda d: ["convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q8_0", "many"], "NTHREADS")
    yield case("convert too many positionals",
               lambda d: ["convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q8_0", "2", "3"], "unexpected")
    for label, data in (("binary", bytes(range(256)) * 4), ("not UTF-8", b"blk\\.0\xff=Q8_0\n"),
                        ("bad entry", b"attn_v=NOPE\n")):
        yield case(f"tensor-type-file {label}", lambda d, data=data: put(d / "tt.txt", data) or
                   ["convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q8_0", "--tensor-type-file", str(d / "tt.txt")],
                   "tensor-type-file")
    for value, frag in (("str:x", "general.alignment"), ("int:48", "general.alignment"),
                        ("int:0", "general.alignment"), ("float:32", "general.alignment")):
        yield case(f"override alignment {value}", lambda d, value=value: [
            "convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q8_0", "--override-kv", f"general.alignment={value}"], frag)
    yield case("override-kv without type", lambda d: [
        "convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q8_0", "--override-kv", "general.name=x"], "override-kv")
    yield case("prune-layers garbage", lambda d: [
        "convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q8_0", "--prune-layers", "a,b"], "prune-layers")
    yield case("include and exclude", lambda d: [
        "convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q8_0", "--include-weights", "a", "--exclude-weights", "b"],
        "together")
    yield case("inspect missing", lambda d: ["inspect", str(d / "nothing.gguf")], "no such file")
    yield case("inspect a directory", lambda d: ["inspect", str(d)])


def imatrix_command_cases() -> Iterator[Case]:
    def case(cid, argv_of, *fragments):
        def build(d: Path) -> list[str]:
            (d / "in.gguf").write_bytes(stories_bytes())
            (d / "text.txt").write_bytes(TEXT.read_bytes()[:20000])
            return ["imatrix", *argv_of(d)]
        return Case(cid, "imatrix command", build, fragments=fragments)

    def run_args(d: Path, out) -> list[str]:
        return [str(d / "in.gguf"), "-f", str(d / "text.txt"), "-o", str(out), "-c", "64", "--chunks", "1", "-q"]

    yield case("imatrix -o MODEL", lambda d: run_args(d, d / "in.gguf"), "output is the input")
    yield case("imatrix -o TEXT", lambda d: run_args(d, d / "text.txt"), "output is the input")
    yield case("imatrix -o MODEL by symlink", lambda d: os.symlink(d / "in.gguf", d / "l.gguf") or
               run_args(d, d / "l.gguf"), "output is the input")
    yield case("imatrix -o in-file", lambda d: put(d / "old.gguf", imatrix_gguf(good_imatrix_entries())) or
               run_args(d, d / "old.gguf") + ["--in-file", str(d / "old.gguf")], "output is the input")
    yield case("imatrix -o existing directory", lambda d: (d / "od").mkdir() or run_args(d, d / "od"), "directory")
    yield case("imatrix -o trailing slash", lambda d: run_args(d, str(d / "new") + "/"), "directory")
    yield case("imatrix -o missing directory", lambda d: run_args(d, d / "no" / "i.gguf"), "does not exist")
    yield case("imatrix text not UTF-8", lambda d: put(d / "text.txt", b"abc\xff\xfe" * 100) or
               run_args(d, d / "i.gguf"), "UTF-8")
    yield case("imatrix text empty", lambda d: put(d / "text.txt", b"") or run_args(d, d / "i.gguf"), "empty")
    yield case("imatrix text too short", lambda d: put(d / "text.txt", b"Once upon a time") or
               run_args(d, d / "i.gguf"), "tokens")
    yield case("imatrix text is a directory", lambda d: (d / "td").mkdir() or
               [str(d / "in.gguf"), "-f", str(d / "td"), "-o", str(d / "i.gguf")], "directory")
    yield case("imatrix model corrupt", lambda d: put(d / "in.gguf", stories_bytes()[:5000]) or
               run_args(d, d / "i.gguf"), "truncated")
    yield case("imatrix model offsets overlap", lambda d: put(d / "in.gguf", _overlap()) or
               run_args(d, d / "i.gguf"), "offset")
    yield case("imatrix model block_count string", lambda d: put(d / "in.gguf", _block_count_str()) or
               run_args(d, d / "i.gguf"), "block_count")
    yield case("imatrix model shape lies", lambda d: put(d / "in.gguf", _shape_lie()) or
               run_args(d, d / "i.gguf"), "wrong shape")
    yield case("imatrix in-file truncated", lambda d: put(d / "old.gguf", 
        imatrix_gguf(good_imatrix_entries())[:300]) or run_args(d, d / "i.gguf") + ["--in-file", str(d / "old.gguf")])
    yield case("imatrix in-file count too large", lambda d: put(d / "old.gguf", _huge_count()) or
               ["--in-file", str(d / "old.gguf"), "-o", str(d / "i.gguf")], "count")
    yield case("imatrix ctx 0", lambda d: [str(d / "in.gguf"), "-f", str(d / "text.txt"), "-o", str(d / "i.gguf"),
                                          "-c", "0"], "ctx-size")


def _shape_lie() -> bytes:
    """blk.0.attn_q.weight stored as [0, 64]: a valid GGUF whose shape contradicts its hparams."""
    good = stories()
    tensors = [(i, good.tensor_bytes(i, 4 * _count(i.ne))) for i in good.infos]
    tensors[3] = (Info(tensors[3][0].name, [0, 64], 0, 0), b"")
    m = good.copy()
    m.relayout(tensors)
    return m.to_bytes()


def _overlap() -> bytes:
    m = stories(); m.infos[4].offset = m.infos[3].offset
    return m.to_bytes()


def _block_count_str() -> bytes:
    m = stories(); m.set_kv("llama.block_count", STR, "five")
    return m.to_bytes()


def _huge_count() -> bytes:
    e = good_imatrix_entries(); e["blk.0.attn_v.weight"] = (e["blk.0.attn_v.weight"][0], 1e30)
    return imatrix_gguf(e)


# --- non-regular files ---------------------------------------------------------------------------

HF_CONFIG = (b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, '
             b'"intermediate_size": 172, "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 4, '
             b'"vocab_size": 32, "rms_norm_eps": 1e-5, "max_position_embeddings": 128}')


def fifo_cases() -> Iterator[Case]:
    """A FIFO blocks open() until a writer appears: each must be refused before it is opened."""
    def case(cid, argv_of, *fragments):
        def build(d: Path) -> list[str]:
            (d / "in.gguf").write_bytes(stories_bytes())
            (d / "text.txt").write_bytes(TEXT.read_bytes()[:20000])
            os.mkfifo(d / "fifo")
            return argv_of(d)
        return Case(cid, "fifo", build, fragments=fragments)

    yield case("FIFO as convert IN", lambda d: ["convert", str(d / "fifo"), str(d / "o.gguf"), "Q8_0"], "FIFO")
    yield case("FIFO as inspect FILE", lambda d: ["inspect", str(d / "fifo")], "FIFO")
    yield case("FIFO as --imatrix", lambda d: ["convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q4_0",
                                               "--imatrix", str(d / "fifo")], "FIFO")
    yield case("FIFO as --tensor-type-file", lambda d: ["convert", str(d / "in.gguf"), str(d / "o.gguf"), "Q8_0",
                                                        "--tensor-type-file", str(d / "fifo")], "FIFO")
    yield case("FIFO as imatrix MODEL", lambda d: ["imatrix", str(d / "fifo"), "-f", str(d / "text.txt"),
                                                   "-o", str(d / "i.gguf")], "FIFO")
    yield case("FIFO as imatrix -f", lambda d: ["imatrix", str(d / "in.gguf"), "-f", str(d / "fifo"),
                                                "-o", str(d / "i.gguf")], "FIFO")
    yield case("FIFO as imatrix --in-file", lambda d: ["imatrix", "--in-file", str(d / "fifo"),
                                                       "-o", str(d / "i.gguf")], "FIFO")
    yield case("FIFO as a safetensors shard", lambda d: (d / "hf").mkdir() or put(d / "hf" / "config.json", HF_CONFIG)
               or os.mkfifo(d / "hf" / "model.safetensors") or
               ["convert", str(d / "hf"), str(d / "o.gguf"), "Q8_0", "--no-vocab"], "FIFO")
    yield case("FIFO as convert OUT", lambda d: ["convert", str(d / "in.gguf"), str(d / "fifo"), "Q8_0"], "FIFO")


# --- safetensors folders -------------------------------------------------------------------------

def hf_cases() -> Iterator[Case]:
    import json

    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 172, "num_hidden_layers": 1, "num_attention_heads": 8,
              "num_key_value_heads": 4, "vocab_size": 32, "rms_norm_eps": 1e-5, "max_position_embeddings": 128}

    def folder(cid, files: dict[str, bytes], *fragments):
        def build(d: Path) -> list[str]:
            hf = d / "hf"
            hf.mkdir()
            for name, data in files.items():
                (hf / name).write_bytes(data)
            return ["convert", str(hf), str(d / "o.gguf"), "Q8_0", "--no-vocab"]
        return Case(cid, "safetensors folder", build, fragments=fragments)

    def st(header: dict | bytes, body: bytes = b"", length: int | None = None) -> bytes:
        h = header if isinstance(header, bytes) else json.dumps(header).encode()
        return struct.pack("<Q", len(h) if length is None else length) + h + body

    cfg = json.dumps(config).encode()
    w = {"dtype": "F32", "shape": [32, 64], "data_offsets": [0, 32 * 64 * 4]}
    yield folder("hf empty folder", {})
    yield folder("hf config not JSON", {"config.json": b"{not json", "model.safetensors": st({})})
    yield folder("hf config is a list", {"config.json": b"[1, 2]", "model.safetensors": st({})})
    yield folder("hf no safetensors", {"config.json": cfg})
    yield folder("hf header length huge", {"config.json": cfg, "model.safetensors": st({}, length=1 << 60)})
    yield folder("hf header not JSON", {"config.json": cfg, "model.safetensors": st(b"\xff\xfe{{")})
    yield folder("hf tensor past the end", {"config.json": cfg,
                                            "model.safetensors": st({"model.embed_tokens.weight": w}, b"\0" * 100)})
    yield folder("hf bad dtype", {"config.json": cfg, "model.safetensors": st(
        {"model.embed_tokens.weight": dict(w, dtype="Q9")}, b"\0" * (32 * 64 * 4))})
    yield folder("hf shape lies", {"config.json": cfg, "model.safetensors": st(
        {"model.embed_tokens.weight": dict(w, shape=[64, 64])}, b"\0" * (32 * 64 * 4))})
    yield folder("hf truncated file", {"config.json": cfg, "model.safetensors": st(
        {"model.embed_tokens.weight": w}, b"\0" * (32 * 64 * 4))[:50]})


def all_cases() -> list[Case]:
    cases: list[Case] = []
    for cid, klass, blob, frags in gguf_cases():
        cases.append(_model_case(cid, klass, blob, *frags))
        if klass in ("header", "metadata", "tensor info", "offsets") or cid.startswith("cut kv"):
            if klass != "metadata" or "alignment" in cid or "key" in cid or "type" in cid:
                cases.append(_model_case(f"inspect {cid}", klass, blob, *frags, command="inspect"))
    cases += list(weight_cases())
    cases += list(imatrix_cases())
    cases += list(cli_cases())
    cases += list(imatrix_command_cases())
    cases += list(fifo_cases())
    cases += list(hf_cases())
    return cases


def accepted_cases() -> list[tuple[str, bytes, str, bytes | None]]:
    """Hostile-looking input that llama-quantize converts: we must convert it too, and where
    `same_as` is given, to the same bytes as that input gives (id, bytes, TYPE, same_as)."""
    good = stories()
    blob = stories_bytes()
    m = good.copy(); m.kvs.append((b"bad.\xff\xfekey", kv_bytes(b"bad.\xff\xfekey", U32, 1)))
    scalar = good.copy()  # a 0-dimensional F32 tensor: one element, as ggml reads it
    sizes = [4 * _count(i.ne) for i in good.infos]  # every stories260K tensor is F32
    scalar.relayout([(i, good.tensor_bytes(i, n)) for i, n in zip(good.infos, sizes)]
                    + [(Info(b"extra.scalar", [], 0, 0), struct.pack("<f", 0.5))])
    padded = good.copy()  # [64, 64, 1, 1]: trailing 1s are no dimensions (ggml_n_dims is 2)
    padded.infos[3] = Info(good.infos[3].name, good.infos[3].ne + [1, 1], 0, good.infos[3].offset)
    return [
        ("0-dimensional tensor", scalar.to_bytes(), "Q8_0", None),
        ("trailing dimensions of 1", padded.to_bytes(), "Q8_0", blob),
        ("huge weight in a kept F32 tensor", f32_at(stories(), "output_norm.weight", 5, 1e5).to_bytes(), "F16", None),
        ("3e38 weight, F32 target", f32_at(stories(), "blk.1.attn_q.weight", 7, 3e38).to_bytes(), "F32", None),
        ("6e4 weight, Q8_0 (scale fits fp16)", f32_at(stories(), "blk.1.attn_q.weight", 7, 6e4).to_bytes(), "Q8_0",
         None),
        ("GGUF version 2", blob[:4] + struct.pack("<I", 2) + blob[8:], "Q8_0", blob),
        ("key that is not UTF-8", m.to_bytes(), "Q8_0", None),
    ]


def _count(ne: list[int]) -> int:
    n = 1
    for d in ne:
        n *= d
    return n
