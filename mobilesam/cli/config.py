"""--config FILE: a TOML file whose table sets a subcommand's defaults (flags still win).

Used by "mobilesam distill cache" ([cache] table) and "mobilesam distill train" ([train]
table). A key is an option's long name or its destination, with "-" or "_"
("batch-size", "batch_size"). Each value is checked as the option's own value would be: its
type, its choices, a list where the option takes several values; an unknown key, a bad value
or an unreadable file is a usage error naming the file, the table and the key. Options the
command requires may come from the file instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .common import CliParser


class ConfigFileParser(CliParser):
    """A subcommand parser with ``--config FILE`` when ``config_section`` is given.

    Only options added with this parser's own :meth:`add_argument` (not through argument
    groups) can be set from the file.
    """

    def __init__(self, *args: Any, config_section: str | None = None, **kwargs: Any) -> None:
        self.config_section = config_section
        self.config_keys: dict[str, argparse.Action] = {}  # filled by add_argument
        super().__init__(*args, **kwargs)
        if config_section is not None:
            self.add_argument(
                "--config",
                metavar="FILE",
                help=f"TOML file whose [{config_section}] table sets defaults for the options "
                "below (keys as the option names); options given here still win",
            )

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        names = [action.dest] + [o[2:] for o in action.option_strings if o.startswith("--")]
        for name in names:
            if name not in ("help", "config"):
                self.config_keys.setdefault(name.replace("-", "_"), action)
        return action

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.config_section is not None:
            pre = CliParser(prog=self.prog, add_help=False)
            pre.add_argument("--config")
            path = pre.parse_known_args(args)[0].config
            if path is not None:
                self.apply_config(path)
        return super().parse_known_args(args, namespace)

    def apply_config(self, path: str) -> None:
        """Make the values in ``path``'s table this parser's defaults (and options they set
        no longer required on the command line)."""
        table = self._read_table(path)
        where = f"{path} [{self.config_section}]"
        unknown = sorted(set(table) - set(self.config_keys))
        if unknown:
            self.error(
                f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                f"(known: {', '.join(sorted(self.config_keys))})"
            )
        values = {}
        for key, value in table.items():
            action = self.config_keys[key]
            values[action.dest] = self._checked(action, f"{where} {key}", value)
            action.required = False
        self.set_defaults(**values)

    def _read_table(self, path: str) -> dict[str, Any]:
        """The config file's table for this subcommand, keys with "_" for "-"."""
        try:
            import tomllib
        except ImportError:  # Python 3.10
            self.error("--config needs Python 3.11 or later (tomllib)")
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            self.error(f"cannot read --config {path}: {exc.strerror or exc}")
        except UnicodeDecodeError as exc:  # TOML is UTF-8 text; tomllib decodes it whole
            self.error(
                f"--config {path} is not UTF-8 text, as TOML must be: byte "
                f"0x{exc.object[exc.start]:02x} at offset {exc.start}"
            )
        except tomllib.TOMLDecodeError as exc:
            self.error(f"--config {path} is not valid TOML: {exc}")
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            self.error(f"--config {path} nests too deeply to read (arrays or tables in tables)")
        table = data.get(self.config_section)
        if not isinstance(table, dict):
            self.error(f"--config {path} has no [{self.config_section}] table")
        return {k.replace("-", "_"): v for k, v in table.items()}

    def _checked(self, action: argparse.Action, where: str, value: Any) -> Any:
        """``value`` converted as the option would convert it on the command line."""
        if action.nargs == 0:  # a flag: store_true and the like
            if not isinstance(value, bool):
                self.error(f"{where} must be true or false, got {_short(value)}")
            return value
        many = action.nargs in ("+", "*")
        if many and isinstance(value, str):
            value = [value]
        if isinstance(value, list) != many:
            self.error(
                f"{where} must be {'a list' if many else 'a single value'}, got {_short(value)}"
            )
        items = [self._checked_item(action, where, v) for v in (value if many else [value])]
        return items if many else items[0]

    def _checked_item(self, action: argparse.Action, where: str, value: Any) -> Any:
        """One value (a TOML string or number) through the option's type and choices."""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            self.error(f"{where} has the wrong type: {_short(value)}")
        if action.type is not None:
            try:
                value = action.type(str(value))
            except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                self.error(f"{where} = {_short(value)}: {exc}")
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            self.error(f"{where} = {_short(value)} is not one of {choices}")
        return value


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a value from the file may be a
    list of 100,000 items, and the error is one line)."""
    try:
        text = repr(value)
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
