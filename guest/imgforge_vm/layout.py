"""Where things live on the VM: layout.json, the one list imgforge and this program share."""

import json
import os
import pkgutil


class Layout:
    def __init__(self, values, root=""):
        self._values = values
        self.root = root

    @classmethod
    def load(cls, root=""):
        """The shipped layout; with `root`, every absolute path lives under it (tests)."""
        return cls(json.loads(pkgutil.get_data(__package__, "layout.json")), root)

    def __getattr__(self, name):
        try:
            value = self._values[name]
        except KeyError:
            raise AttributeError(name) from None
        return self._rooted(value)

    def _rooted(self, value):
        if isinstance(value, str) and value.startswith("/"):
            return self.root + value
        if isinstance(value, list):
            return [self._rooted(v) for v in value]
        if isinstance(value, dict):
            return {k: self._rooted(v) for k, v in value.items()}
        return value

    def under(self, name, *parts):
        """A path inside the directory `name` names."""
        return os.path.join(getattr(self, name), *parts)

    def slot_port(self, slot):
        return self.slots[slot]

    def container(self, slot):
        return f"{self._values['container']}-{slot}"
