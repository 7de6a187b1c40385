"""``lmforge plugin new NAME --kind format``: a data format for ``{"question": ..., "answer": ...}`` records."""

TESTS = "runs lmforge.testing.check_data_format on sample records"
TEST_DEPS = ""

FILES = {
    "$pkg/plugin.py": '''"""Registers the $name data format (pure Python)."""

from lmforge import hookimpl
from lmforge.plugins.descriptors import DataFormat, Example, Message, RecordError

FIELDS = ("question", "answer")


def detect(record):
    return isinstance(record, dict) and all(k in record for k in FIELDS)


def convert(record):
    """One supervised example: the question is the prompt, the answer is trained."""
    for key in FIELDS:
        if not isinstance(record.get(key), str):
            raise RecordError(f"field {key!r} must be a string, got {type(record.get(key)).__name__}")
    return [Example(messages=(Message("user", record["question"]), Message("assistant", record["answer"])))]


FORMAT = DataFormat(
    name="$name",
    detect=detect,
    convert=convert,
    required_fields=FIELDS,
    description="{question, answer} records: one user turn and its answer",
    priority=5,
)


@hookimpl
def register_data_formats(register):
    register(FORMAT)
''',
    "tests/test_conformance.py": '''"""lmforge's conformance suite for this data format."""

from lmforge.testing import check_data_format

RECORDS = [{"question": "What is 2 plus 2?", "answer": "4"}, {"question": "你好", "answer": "你好！"}]


def test_format_conforms():
    check_data_format("$name", RECORDS)
''',
}
