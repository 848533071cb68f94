"""Relevo: a streaming personalization engine for e-commerce search.

Everything installs under this one namespace, one subpackage per concern in
data-flow order (each is a top-level folder of the repository): ``core`` (the
ground), ``streams``, ``features``, ``drift``, ``search``, ``suggestions``,
``models`` (learning), ``serving`` (HTTP) and ``runtime`` (processes and commands).
"""

__version__ = "0.1.0"
