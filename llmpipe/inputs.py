"""Files a user names (params.yaml's data files, recipes, --params), checked where every one is opened:
a folder, a missing file or one that cannot be read is one `error:` line naming the path, the setting
it came from and the cause, never a traceback from deeper down."""

import codecs
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from llmpipe.errors import UserError


def checked(path: str | Path, setting: str) -> Path:
    """`path` as a file to read; `setting` says where the user named it (e.g. "params.yaml `classify_data`")."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file ({setting}); name the file inside it")
    if not path.exists():
        raise UserError(f"{path}: file not found ({setting}); check the path (relative to the repository root)")
    return path


@contextmanager
def open_binary(path: str | Path, setting: str) -> Iterator[BinaryIO]:
    path = checked(path, setting)
    try:
        handle = open(path, "rb")
    except OSError as err:  # permissions, a broken mount, ...
        raise UserError(f"{path}: cannot be read ({err.strerror}; {setting})") from None
    with handle:
        yield handle


def read_bytes(path: str | Path, setting: str) -> bytes:
    with open_binary(path, setting) as handle:
        return handle.read()


def decode_utf8(raw: bytes, path: Path, offset: int) -> str:
    """UTF-8 text of `raw`, read from `path` at byte `offset`; a byte-order mark at the start of a file
    (Windows editors write one) is dropped."""
    if offset == 0 and raw.startswith(codecs.BOM_UTF8):
        raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not UTF-8 text (byte offset {offset + err.start}: {raw[err.start:err.start + 4]!r}); "
            "convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def read_text(path: str | Path, setting: str) -> str:
    """A UTF-8 file the user named in `setting`."""
    return decode_utf8(read_bytes(path, setting), Path(path), 0)
