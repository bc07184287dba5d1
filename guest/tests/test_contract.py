"""The documents this program shares with imgforge, against their schemas (guest/schema/,
generated from imgforge's Rust types): a key on one side only fails here."""

import glob
import json
import os
import re
import unittest

import jsonschema

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
    def test_the_layout_has_no_entry_imgforge_lacks(self):
        # The user-data's copy leaves out what only the rendered files use: no entry is
        # required here, none may be unknown (imgforge's own test reads the whole file).
        with open(os.path.join(PROGRAM, "layout.json")) as f:
            doc = json.load(f)
        self.assertIn("state_dir", doc)
        loose = dict(schema.schema("layout"), required=[])
        jsonschema.Draft202012Validator(loose).validate(doc)


class Requests(unittest.TestCase):
    def test_a_deploy_request_as_imgforge_sends_it(self):
        head = {"image": "imgforge/classifier:0.2.0", "env": "A=1\n", "drain": 30,
                "bundle": {"size": 4, "sha256": "0" * 64}}
        schema.check("deploy-request", head)
        with self.assertRaises(AssertionError):
            schema.check("deploy-request", dict(head, health_timout=90))


# A VM path: an absolute path under one of the file system's top directories (not a URL's
# path), not followed by ":" (a PATH list, or the app container's tmpfs spec).
VM_PATH = re.compile(r"(?<![\w.:/-])/(?:etc|var|usr|run|srv|opt|dev|proc|sys|tmp|home|root|boot"
                     r"|lib|bin|sbin|mnt|media)(?:/[\w.@*\[\]-]*)*(?![\w.@*\[\]:/-])")
# The kernel's interfaces, which are no deployment's files.
KERNEL = ("/dev/null", "/proc/")


def listed(path, values):
    """Whether layout.json lists path: a value, under a directory value, or a glob's."""
    import fnmatch
    return any(path == v or path.startswith(v.rstrip("/") + "/") or fnmatch.fnmatch(path, v)
               or (("*" in v) and v.startswith(path)) for v in values)


def layout_values(doc):
    if isinstance(doc, dict):
        return [v for x in doc.values() for v in layout_values(x)]
    if isinstance(doc, list):
        return [v for x in doc for v in layout_values(x)]
    return [doc] if isinstance(doc, str) and doc.startswith("/") else []


class EveryPathIsListed(unittest.TestCase):
    """Every VM path the program names (a string constant, docstrings and comments aside)
    is one layout.json lists, or under one: nothing else says where things are."""

    def test_the_programs_paths_are_layout_jsons(self):
        import ast
        with open(os.path.join(GUEST, "imgforge_vm", "layout.json")) as f:
            values = layout_values(json.load(f))
        unlisted = []
        for path in sorted(glob.glob(os.path.join(PROGRAM, "*.py"))):
            with open(path) as f:
                tree = ast.parse(f.read())
            docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                          if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
                          and n.body and isinstance(n.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and id(node) not in docstrings):
                    for p in VM_PATH.findall(node.value):
                        if not p.startswith(KERNEL) and not listed(p, values):
                            unlisted.append(f"{os.path.basename(path)}: {p}")
        self.assertEqual(unlisted, [], "paths layout.json does not list")
        self.assertFalse(listed("/etc/imgforge/other.conf", values))
