"""The documents this program shares with imgforge, against their schemas (guest/schema/,
generated from imgforge's Rust types): a key on one side only fails here."""

import glob
import json
import os
import re
import unittest

from . import schema

GUEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(GUEST, "imgforge_vm")
# The repository's templates (beside guest/), or a copy beside the program under test.
TEMPLATES = next(p for p in (os.path.join(os.path.dirname(GUEST), "templates"),
                             os.path.join(GUEST, "templates")) if os.path.isdir(p))


def text_of(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            out.append(f.read())
    return "\n".join(out)


class DeployJson(unittest.TestCase):
    def test_every_key_render_writes_is_read_by_the_program_or_a_template(self):
        program = text_of(os.path.join(PROGRAM, "*.py"))
        templates = text_of(os.path.join(TEMPLATES, "*.hbs"))
        unread = [k for k in schema.properties("deploy")
                  if f'"{k}"' not in program and f"'{k}'" not in program
                  and f"config.{k}" not in templates]
        self.assertEqual(unread, [], "deploy.json keys nothing on the VM reads")

    def test_every_key_the_program_reads_is_one_render_writes(self):
        program = text_of(os.path.join(PROGRAM, "*.py"))
        read = set(re.findall(r"""conf(?:ig)?(?:\[|\.get\()["']([a-z_]+)["']""", program))
        self.assertTrue(read, "no conf[...] read found: the pattern is out of date")
        self.assertEqual(sorted(read - schema.properties("deploy")), [],
                         "keys the program reads that deploy.json does not have")

    def test_the_fixture_is_a_deploy_json(self):
        schema.check("deploy", schema.fixture("deploy-v1.json"))


class LayoutJson(unittest.TestCase):
    def test_the_shipped_layout_is_one_imgforge_reads(self):
        with open(os.path.join(PROGRAM, "layout.json")) as f:
            schema.check("layout", json.load(f))


class Requests(unittest.TestCase):
    def test_a_deploy_request_as_imgforge_sends_it(self):
        head = {"image": "imgforge/classifier:0.2.0", "env": "A=1\n", "drain": 30,
                "bundle": {"size": 4, "sha256": "0" * 64}}
        schema.check("deploy-request", head)
        with self.assertRaises(AssertionError):
            schema.check("deploy-request", dict(head, health_timout=90))
