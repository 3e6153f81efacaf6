"""Experiments behind the shipped default model: feature caches, origin-grouped validation, backbones."""
