"""Tests of policy-lint."""
