"""What every command works with: the deployment (deploy.json), the layout, status.json."""

import json

from . import status
from .layout import Layout


class Ctx:
    def __init__(self, conf, paths, step_names=()):
        self.conf = conf
        self.paths = paths
        self.step_names = list(step_names)

    @classmethod
    def load(cls, step_names, root=""):
        paths = Layout.load(root)
        with open(paths.config) as f:
            conf = json.load(f)
        return cls(conf, paths, step_names)

    def update(self, steps=None, **fields):
        return status.update(self.paths, self.step_names, steps, **fields)
