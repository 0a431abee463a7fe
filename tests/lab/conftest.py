"""Lab fixtures for every test under tests/lab/."""

from linkscope.lab.testing import brazil_lab, lab_factory  # noqa: F401
