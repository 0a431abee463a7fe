"""`linkscope probe`'s targets: read from arguments and --file, located in errors, repeats
dropped with a note. In process: no packet is sent (each case stops at bad input) and names are
answered from /etc/hosts only (conftest)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from linkscope.cli.probe import TargetArg, read_targets, unique_targets


def _probe(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `linkscope probe ARGV`, which must fail with exit 2; its one stderr line."""
    from linkscope.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["probe", *argv, "-c", "1", "--no-trace", "--no-geo", "--db", str(tmp_path / "h.db")])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == "", captured
    (line,) = captured.err.strip().splitlines()
    return line


def test_file_targets_keep_their_line_and_skip_blanks_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "targets.txt"
    f.write_text("\ufeff# lab\n\n127.0.0.1\n   # indented comment\n::1 127.0.0.2  # two\n")
    where = str(f)
    assert read_targets(["localhost", " "], f) == [
        TargetArg("localhost"),
        TargetArg("127.0.0.1", where, 3),
        TargetArg("::1", where, 5),
        TargetArg("127.0.0.2", where, 5),
    ]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("127.1", "malformed address: '127.1': 2 parts, not 4"),
        ("0x7f.1", "malformed address: '0x7f.1': hex part '0x7f'"),
        ("fe80::1%nosuch", "unknown interface scope 'nosuch'"),
        ("no-such-host.invalid", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_a_bad_line_in_the_targets_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, words: str
) -> None:
    f = tmp_path / "targets.txt"
    f.write_text(f"# lab targets\n127.0.0.1\n\n  {line}  # the bad one\n127.0.0.2\n")
    error = _probe(["127.0.0.3", "--file", str(f)], tmp_path, capsys)
    assert error.startswith(f"linkscope: error: {f}:4: {words}"), error


def test_a_bad_line_on_stdin_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("127.0.0.1\n0177.0.0.1\n"))
    error = _probe(["--file", "-"], tmp_path, capsys)
    assert error.startswith("linkscope: error: <stdin>:2: malformed address: '0177.0.0.1'")


def test_the_first_bad_target_in_input_order_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "t.txt"
    f.write_text("127.1\n")
    error = _probe(["no-such-host.invalid", "--file", str(f)], tmp_path, capsys)
    assert error.startswith("linkscope: error: cannot resolve 'no-such-host.invalid'")


def test_an_argument_error_has_no_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _probe(["127.1"], tmp_path, capsys)
    assert error.startswith("linkscope: error: malformed address: '127.1': 2 parts, not 4")


def test_repeats_are_dropped_with_one_note_each() -> None:
    given = [
        TargetArg("127.0.0.1"),
        TargetArg("[::1]"),
        TargetArg("localhost"),
        TargetArg("127.0.0.1", "t.txt", 1),
        TargetArg("0:0:0:0:0:0:0:1", "t.txt", 2),
        TargetArg("::1", "t.txt", 3),
        TargetArg("LocalHost.", "t.txt", 4),
        TargetArg("127.0.0.1", "t.txt", 5),
        TargetArg("::1%lo", "t.txt", 6),  # another spelling, with a scope: another target
    ]
    kept, notes = unique_targets(given)
    assert [t.text for t in kept] == ["127.0.0.1", "[::1]", "localhost", "::1%lo"]
    assert notes == [
        "127.0.0.1 given 3 times; probed once",
        "[::1] given 3 times (also as 0:0:0:0:0:0:0:1, ::1); probed once",
        "localhost given twice (also as LocalHost.); probed once",
    ]
    assert unique_targets([TargetArg("127.0.0.1"), TargetArg("::1")])[1] == []
