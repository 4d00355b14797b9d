"""Parentheses in arithmetic: a 0.66M pilot transformer and its 10.65M scale-up."""
