"""Foundations every stage uses: shared names, errors, atomic files, output folders, process
policy.
"""
