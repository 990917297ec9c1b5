"""``dyhead-serve serve``'s flags are generated from the server's settings: one per setting, with
the setting's description and its one default."""

from __future__ import annotations

import argparse

from dyhead_serve.cli.main import build_parser
from dyhead_serve.server.settings import ServerSettings


def _serve_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = subparsers.choices["serve"]
    return {action.dest: action for action in serve._actions}


def test_every_setting_has_a_flag_with_its_description_and_default():
    actions = _serve_actions()
    for name, field in ServerSettings.model_fields.items():
        if name == "overrides":  # --set KEY VALUE, shared with predict
            assert "--set" in actions["set"].option_strings
            continue
        action = actions[name]
        assert action.default is None, name  # unset: the environment and then the default decide
        if name in ("model", "config", "weights", "backend", "device", "threads"):
            continue  # the model flags predict has too, with its help
        assert action.help is not None and field.description is not None
        assert field.description in action.help, name
        value = field.get_default(call_default_factory=True)
        if value not in (None, []) and field.annotation is not bool:
            default = f"{value:g}" if isinstance(value, float) else str(value)
            assert action.help.endswith(f"(default {default})"), (name, action.help)
        else:
            assert "default" not in action.help, (name, action.help)


def test_flag_names_are_the_setting_names():
    actions = _serve_actions()
    assert actions["max_batch_size"].option_strings == ["--max-batch-size"]
    assert actions["warmup"].option_strings == ["--no-warmup"]
    assert actions["api_key"].option_strings == ["--api-key"]
    args = build_parser().parse_args(["serve", "--no-warmup", "--port", "9000", "--max-upload-mb", "2.5"])
    assert (args.warmup, args.port, args.max_upload_mb) == (False, 9000, 2.5)
