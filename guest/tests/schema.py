"""The contracts with imgforge (guest/schema/, generated from its Rust types): every
document these tests see the program write is checked against its schema, so a key one
side has and the other lacks fails a test."""

import json
import os

import jsonschema  # Debian's python3-jsonschema (tests/ci.sh installs it)

DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
_SCHEMAS = {}


def schema(name):
    if name not in _SCHEMAS:
        with open(os.path.join(DIR, f"{name}.schema.json")) as f:
            _SCHEMAS[name] = json.load(f)
    return _SCHEMAS[name]


def check(name, doc):
    """Raises AssertionError naming the first place where doc breaks schema `name`."""
    validator = jsonschema.Draft202012Validator(schema(name))
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the document"
        raise AssertionError(f"{name}: {where}: {error.message}")
    return doc


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


def shape(doc):
    """The keys of doc at every depth (list items merged): what two documents of one kind
    share whatever their values."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        merged = {}
        for item in doc:
            s = shape(item)
            if isinstance(s, dict):
                merged.update(s)
        return [merged] if merged else []
    return None


def properties(name):
    """deploy.json's top-level keys, as the schema lists them."""
    return set(schema(name)["properties"])
