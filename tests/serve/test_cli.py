"""``ecomtl serve``: argument errors end with a message and exit 2, before Ray starts."""

from __future__ import annotations

from ecomtl.cli import build_parser, main


def test_serve_is_a_command():
    args = build_parser().parse_args(["serve", "/some/bundle", "--port", "8123"])
    assert (args.bundle, args.port, args.layout, args.host) == ("/some/bundle", 8123, "shared", "127.0.0.1")


def test_serve_refuses_a_directory_that_is_no_bundle(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a complete bundle" in capsys.readouterr().err
