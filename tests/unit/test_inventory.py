"""Inventory and key-file validation: every bad input names the file, the line and the reason."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linkscope.errors import ConfigError, ExitStatus
from linkscope.inventory import (
    NODE_KEYS,
    Inventory,
    default_inventory_path,
    load_inventory,
    read_key_file,
)

KEY_HEX = "ab" * 32
REPO = Path(__file__).resolve().parents[2]


def write_key(path: Path, text: str = KEY_HEX + "\n", mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def write_inv(tmp_path: Path, body: str) -> Path:
    inv = tmp_path / "nodes.toml"
    inv.write_text(body)
    return inv


GOOD = """\
# two nodes
[nodes.sh]
host = "sh.example.net"
port = 7070
key_file = "keys/sh.key"
lat = 31.23
lon = 121.47

[nodes.mx]
host = "192.0.2.7"
port = 7443
key_file = "keys/mx.key"
"""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    write_key(tmp_path / "keys" / "sh.key")
    write_key(tmp_path / "keys" / "mx.key", "CD" * 40 + "\n")
    return tmp_path


def test_load_good_inventory(keys: Path) -> None:
    inv = load_inventory(write_inv(keys, GOOD))
    assert isinstance(inv, Inventory)
    assert list(inv.nodes) == ["sh", "mx"]
    sh = inv["sh"]
    assert (sh.host, sh.port, sh.lat, sh.lon) == ("sh.example.net", 7070, 31.23, 121.47)
    assert sh.key == bytes.fromhex(KEY_HEX)
    assert sh.key_file == keys / "keys" / "sh.key"
    mx = inv["mx"]
    assert mx.lat is None and mx.lon is None and len(mx.key) == 40
    assert inv.warnings == ()
    assert KEY_HEX not in repr(sh) and "key=" not in repr(sh)  # the secret never shows
    assert "sh" in inv and len(inv) == 2


def test_world_readable_key_is_a_warning(keys: Path) -> None:
    (keys / "keys" / "sh.key").chmod(0o644)
    inv = load_inventory(write_inv(keys, GOOD))
    assert len(inv.warnings) == 1
    assert "sh" in inv.warnings[0] and "0644" in inv.warnings[0]


def test_absolute_key_path(tmp_path: Path) -> None:
    key = write_key(tmp_path / "elsewhere" / "k.key")
    sub = tmp_path / "conf"
    sub.mkdir()
    inv_path = sub / "n.toml"
    inv_path.write_text(f'[nodes.a]\nhost = "h"\nport = 1\nkey_file = "{key}"\n')
    assert load_inventory(inv_path)["a"].key_file == key


def test_inline_table_form(keys: Path) -> None:
    inv = write_inv(keys, '[nodes]\nsh = {host = "h", port = 70, key_file = "keys/sh.key"}\n')
    assert load_inventory(inv)["sh"].port == 70


def test_empty_inventory_has_no_nodes(tmp_path: Path) -> None:
    assert len(load_inventory(write_inv(tmp_path, "# nothing yet\n"))) == 0


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        (GOOD.replace("port = 7070", "port = 70700"), 4, "port must be an integer from 1 to 65535"),
        (GOOD.replace("port = 7070", "port = 0"), 4, "port"),
        (GOOD.replace("port = 7070", 'port = "7070"'), 4, "port"),
        (GOOD.replace("port = 7070", "port = true"), 4, "port"),
        (GOOD.replace("lat = 31.23", "latitude = 31.23"), 6, "unknown key 'latitude'"),
        (GOOD.replace("lat = 31.23", "lat = 91.0"), 6, "lat must be a number"),
        (GOOD.replace("lon = 121.47", "lon = -181"), 7, "lon must be a number"),
        (GOOD.replace("lon = 121.47\n", ""), 2, "both lat and lon"),
        (GOOD.replace('host = "sh.example.net"\n', ""), 2, "missing required key 'host'"),
        (GOOD.replace('host = "sh.example.net"', 'host = ""'), 3, "host must be"),
        (GOOD.replace('host = "sh.example.net"', 'host = "a b"'), 3, "host must be"),
        (GOOD.replace("[nodes.mx]", "[nodes.sh]"), 9, "duplicate node name 'sh'"),
        (GOOD.replace("[nodes.mx]", "[nodes.SH]"), 9, "duplicate node name 'SH'"),
        (GOOD.replace("[nodes.mx]", '[nodes."m x"]'), 9, "invalid node name 'm x'"),
        (GOOD.replace("[nodes.mx]", '[nodes."a,b"]'), 9, "invalid node name"),
        (GOOD + "\n[relays.x]\nhost = 1\n", 14, "unknown top-level key 'relays'"),
        (GOOD + "\nverbose = true\n", 14, "node 'mx': unknown key 'verbose'"),
        (GOOD.replace("port = 7443", "port = "), 11, "invalid TOML"),
        (GOOD.replace('"keys/mx.key"', '"keys/none.key"'), 12, "cannot read key file"),
        (GOOD.replace('"keys/mx.key"', "12"), 12, "key_file must be a path"),
        ("nodes = 3\n", 1, "'nodes' must be a table"),
        ("[nodes]\nsh = 3\n", 2, "must be a table"),
    ],
)
def test_bad_inventory(keys: Path, body: str, line: int, needle: str) -> None:
    inv = write_inv(keys, body)
    with pytest.raises(ConfigError) as err:
        load_inventory(inv)
    exc = err.value
    assert exc.exit_status == ExitStatus.USAGE
    assert exc.path == str(inv)
    assert exc.line == line, str(exc)
    assert needle in exc.reason, str(exc)
    assert str(exc).startswith(f"{inv}:{line}: ")


def test_missing_inventory_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read inventory") as err:
        load_inventory(tmp_path / "absent.toml")
    assert err.value.path == str(tmp_path / "absent.toml") and err.value.line is None


def test_bad_key_inside_inventory_names_inventory_line(keys: Path) -> None:
    write_key(keys / "keys" / "mx.key", "zz" * 32)
    with pytest.raises(ConfigError) as err:
        load_inventory(write_inv(keys, GOOD))
    assert err.value.line == 12 and "not hexadecimal" in err.value.reason
    assert "mx.key" in err.value.reason


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [
        ("", "empty", None),
        ("\n\n", "empty", None),
        ("ab" * 31 + "\n", "at least 32", 1),
        ("abc" * 30 + "a\n", "odd number", 1),
        ("xy" * 32 + "\n", "not hexadecimal", 1),
        (KEY_HEX + "\n" + KEY_HEX + "\n", "more than one line", 2),
    ],
)
def test_bad_key_file(tmp_path: Path, text: str, needle: str, line: int | None) -> None:
    path = write_key(tmp_path / "k", text)
    with pytest.raises(ConfigError) as err:
        read_key_file(path)
    assert needle in err.value.reason and err.value.line == line
    assert err.value.path == str(path)


def test_key_file_tolerates_whitespace(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k", "\n  " + KEY_HEX.upper() + "  \n\n")
    assert read_key_file(path) == bytes.fromhex(KEY_HEX)


def test_key_file_non_ascii_and_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not ASCII"):
        read_key_file(path)
    with pytest.raises(ConfigError, match="cannot read key file"):
        read_key_file(tmp_path / "nope")
    with pytest.raises(ConfigError, match="cannot read key file"):
        read_key_file(tmp_path)  # a directory


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_inventory_path() == tmp_path / "linkscope" / "nodes.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    assert default_inventory_path() == Path.home() / ".config" / "linkscope" / "nodes.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_inventory_path() == Path.home() / ".config" / "linkscope" / "nodes.toml"


def test_load_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    conf = tmp_path / "linkscope"
    write_key(conf / "keys" / "sh.key")
    write_key(conf / "keys" / "mx.key")
    (conf / "nodes.toml").write_text(GOOD)
    assert list(load_inventory().nodes) == ["sh", "mx"]


def test_example_inventory_parses_and_documents_every_key() -> None:
    example = REPO / "data" / "nodes.example.toml"
    doc = tomllib.loads(example.read_text())
    text = example.read_text()
    # each key opens a line of the key list ("#   host  required ..."); lat and lon share one
    documented = set()
    for m in re.finditer(r"^#\s{3}(\w+(?:, \w+)*)\s{2,}(?:required|optional)\b", text, re.M):
        documented.update(m.group(1).split(", "))
    assert documented == NODE_KEYS == {"host", "port", "key_file", "lat", "lon"}
    assert "#   lat, lon" in text
    assert set(doc["nodes"]) == {"sh", "mx", "fra"}


def test_example_inventory_loads_with_keys(tmp_path: Path) -> None:
    text = (REPO / "data" / "nodes.example.toml").read_text()
    text = text.replace("/etc/linkscope/keys/fra.key", "keys/fra.key")
    for n in ("sh", "mx", "fra"):
        write_key(tmp_path / "keys" / f"{n}.key", os.urandom(32).hex() + "\n")
    inv = load_inventory(write_inv(tmp_path, text))
    assert [n.port for n in inv.nodes.values()] == [7070, 7070, 7443]


names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)
ports = st.integers(min_value=-5, max_value=70000)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=st.lists(st.tuples(names, ports), min_size=1, max_size=5))
def test_inventory_property(tmp_path: Path, entries: list[tuple[str, int]]) -> None:
    """Random inventories: loads exactly when names are unique and ports valid, else ConfigError."""
    write_key(tmp_path / "k.key")
    body = "".join(
        f'[nodes.{n}]\nhost = "h{i}"\nport = {p}\nkey_file = "k.key"\n\n'
        for i, (n, p) in enumerate(entries)
    )
    inv = write_inv(tmp_path, body)
    folded = [n.lower() for n, _ in entries]
    valid = len(set(folded)) == len(folded) and all(1 <= p <= 65535 for _, p in entries)
    if valid:
        loaded = load_inventory(inv)
        assert [(n.name, n.port) for n in loaded.nodes.values()] == entries
    else:
        with pytest.raises(ConfigError) as err:
            load_inventory(inv)
        assert err.value.line is not None and err.value.path == str(inv)
        assert 1 <= err.value.line <= body.count("\n")


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_inventory_fuzz_never_crashes(text: str) -> None:
    """Arbitrary text is either a valid inventory or a ConfigError, never another exception."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        inv = Path(d) / "n.toml"
        inv.write_text(text, encoding="utf-8", errors="surrogatepass") if _encodable(text) else None
        if not inv.exists():
            return
        try:
            load_inventory(inv)
        except ConfigError as exc:
            assert exc.path == str(inv)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
