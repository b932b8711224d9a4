"""Reading YAML with the line of every key and item, so problems can name it."""

from __future__ import annotations

from typing import Any

import yaml

from peerbot.config.model import ConfigProblem

_Path = tuple[str | int, ...]


def _fmt(path: _Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _Reader:
    """Walks a composed YAML tree, remembering the line of every key and item."""

    def __init__(self, text: str) -> None:
        self.lines: dict[_Path, int] = {}
        self.problems: list[ConfigProblem] = []
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            if "quoted scalar" in str(getattr(exc, "context", "")):
                # An unclosed quote fails at the end of the file: point at where it opened.
                mark = getattr(exc, "context_mark", None) or mark
            line = mark.line + 1 if mark is not None else None
            what = getattr(exc, "problem", None) or str(exc)
            self.problems.append(ConfigProblem("", f"not valid YAML: {what}", line))
            self.data: Any = None
            return
        if node is None:
            self.data = None
            return
        self._index(node, ())
        loader = yaml.SafeLoader("")
        try:
            self.data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            self.problems.append(ConfigProblem("", f"not valid YAML: {exc}", line))
            self.data = None
        finally:
            loader.dispose()

    def _index(self, node: yaml.Node, path: _Path) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.problems.append(
                        ConfigProblem(
                            _fmt((*path, key)), "duplicate key", key_node.start_mark.line + 1
                        )
                    )
                seen.add(key)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                self._index(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                self._index(item, (*path, i))

    def line(self, path: _Path) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)
