"""Tests of the splat job kind."""
