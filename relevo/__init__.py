"""Relevo: a streaming personalization engine for e-commerce search."""

__version__ = "0.1.0"
